"""Extended attributes of `UnionFS`: listing, reading, setting, removing.

The overlay's own bookkeeping attributes (origins, opacity) never show through
the mount; a ``trusted.overlay.X`` set through the mount is stored escaped, as
overlayfs does for nested overlays (`unionfs.fs.whiteout`). The visible names
of an entry are cached in its node until it changes. Setting or removing copies
the entry up first; removing a name a lower entry lacks fails before any
copy-up, as overlayfs. The ids inside POSIX ACLs are translated with the
mount's owner mapping (`unionfs.fs.owners.acl_shown`/`acl_stored`).
"""

import errno
import os
import stat

from unionfs.fs import layer as io
from unionfs.fs import whiteout
from unionfs.fs.copyup import CopyUps
from unionfs.fs.core import _err
from unionfs.fs.owners import ACL_XATTRS, acl_shown, acl_stored

#: A file's access POSIX ACL.
ACL_ACCESS_XATTR = b"system.posix_acl_access"


class Xattrs(CopyUps):
    """The xattr requests."""

    def listxattr(self, ino: int) -> tuple[bytes, ...]:
        """Visible xattr names (overlay bookkeeping hidden), cached per node."""
        node = self.node(ino)
        if node.xattr_names is None:
            if node.parent is None:
                raw = io.fd_listxattr(self.dir_fd(node, node.top_layer))
            elif node.unlinked:
                raw = io.fd_listxattr(next(iter(node.open_fds))) if node.open_fds else []
            else:
                raw = io.listxattr_at(self.parent_fd(node), node.name)
            visible = (whiteout.visible_xattr(n) for n in raw)
            node.xattr_names = tuple(n for n in visible if n is not None)
        return node.xattr_names

    def getxattr(self, ino: int, name: bytes) -> bytes:
        value = self.xattr_value(ino, name)
        if value is None:
            raise _err(errno.ENODATA)
        return value

    def xattr_value(self, ino: int, name: bytes) -> bytes | None:
        """The attribute's value, or None when it is not set. "Not set" is the
        common answer (``ls -l`` asks every entry for two attributes that are
        almost never there): it comes from the cached name list, no syscall and
        no exception."""
        if name not in self.listxattr(ino):
            return None
        stored = whiteout.stored_xattr(name)
        assert stored is not None  # listed names always have a stored form
        node = self.node(ino)
        if node.parent is None:
            value = io.fd_getxattr(self.dir_fd(node, node.top_layer), stored)
        elif node.unlinked:
            value = io.fd_getxattr(next(iter(node.open_fds)), stored) if node.open_fds else None
        else:
            value = io.getxattr_at(self.parent_fd(node), node.name, stored)
        if value is not None and name in ACL_XATTRS:
            return acl_shown(value, self.uids, self.gids)
        return value

    def setxattr(
        self,
        ino: int,
        name: bytes,
        value: bytes,
        flags: int = 0,
        *,
        caller_groups: frozenset[int] | None = None,
    ) -> None:
        """Set an attribute (copy-up first). `caller_groups` are the groups of
        a caller without CAP_FSETID (None: a privileged caller): setting an
        access ACL on a setgid file of a group the caller is not in clears the
        setgid bit, as the kernel does (the daemon, root, would keep it)."""
        stored = whiteout.stored_xattr(name)
        if stored is None:
            raise _err(errno.EPERM)
        if name in ACL_XATTRS:
            mapped = acl_stored(value, self.uids, self.gids)
            if mapped is None:
                raise _err(errno.EINVAL)
            value = mapped
        node = self.node(ino)
        self._need_upper()
        self.copy_up(node, "setxattr")
        target = self._attr_target(node)
        follow = isinstance(target, int)
        try:
            os.setxattr(target, stored, value, flags, follow_symlinks=follow)
        finally:
            node.xattr_names = None
        if name == ACL_ACCESS_XATTR and caller_groups is not None:
            st = os.stat(target, follow_symlinks=follow)
            if st.st_mode & stat.S_ISGID and st.st_gid not in caller_groups:
                os.chmod(target, stat.S_IMODE(st.st_mode) & ~stat.S_ISGID, follow_symlinks=follow)

    def check_settable(self, name: bytes, value: bytes) -> None:
        """EINVAL for an ACL naming an id the owner mapping cannot store,
        before (and instead of) any copy-up, as the kernel checks first."""
        if name in ACL_XATTRS and acl_stored(value, self.uids, self.gids) is None:
            raise _err(errno.EINVAL)

    def check_removable(self, ino: int, name: bytes) -> None:
        """ENODATA for removing an attribute a lower entry lacks, before (and
        instead of) its copy-up, as overlayfs."""
        if self.needs_copy_up(self.node(ino)) and name not in self.listxattr(ino):
            raise _err(errno.ENODATA)

    def removexattr(self, ino: int, name: bytes) -> None:
        """As overlayfs: a missing name fails before any copy-up."""
        stored = whiteout.stored_xattr(name)
        if stored is None:
            raise _err(errno.ENODATA)
        node = self.node(ino)
        self._need_upper()
        self.check_removable(ino, name)
        self.copy_up(node, "removexattr")
        target = self._attr_target(node)
        try:
            os.removexattr(target, stored, follow_symlinks=isinstance(target, int))
        finally:
            node.xattr_names = None
