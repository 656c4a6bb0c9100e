"""Changes to the namespace of `UnionFS`: create, mknod, mkdir, symlink,
link, unlink, rmdir, rename, and setattr.

All changes go to the upper layer, after the copy-up of what they touch. A
whiteout is written only where a lower layer still has the name; a new entry
replaces an upper whiteout in one rename and is chowned to the caller; a
directory created where a lower layer has the name, or moved into a merged
directory, is opaque; a directory with lower content moves with a redirect to
it (overlayfs ``redirect_dir=on``). The node table follows every change (names
added and dropped, nodes whose last name is gone).
"""

import errno
import fcntl
import os
import stat
from collections.abc import Callable

from unionfs.fs import layer as io
from unionfs.fs import overridestat, whiteout
from unionfs.fs.copyup import CopyUps
from unionfs.fs.core import _err, mount_path
from unionfs.fs.events import file_type, setattr_reason
from unionfs.fs.inodes import Node, origin_key
from unionfs.fs.listing import Listings
from unionfs.fs.merge import Copy, Kind, Resolution
from unionfs.fs.upper import ACL_DEFAULT_XATTR, Upper, replace


class Writes(CopyUps, Listings):
    """The requests that change names and attributes."""

    # -- helpers for changes -----------------------------------------------------------

    def _lower_has(self, parent: Node, name: bytes) -> bool:
        """Whether `name` in `parent` resolves to something below the upper layer
        (so removing it from the upper needs a whiteout)."""
        lowers = [c for c in parent.copies if c.layer != 0]
        if not lowers:
            return False
        probe = Node(0, parent.parent, parent.name, tuple(lowers), parent.st)
        probe.ino = parent.ino  # share the directory descriptors cached for it
        probe.where = parent.where
        res, _ = self.resolve_child(probe, name, why=False)
        return res.exists

    def _existing(self, parent: Node, name: bytes) -> tuple[Resolution, os.stat_result | None]:
        self._check_name(name)
        if whiteout.is_reserved_name(name):
            return Resolution(()), None
        return self.resolve_child(parent, name, why=False)

    def _peek(self, parent: Node, name: bytes) -> Node | None:
        """The node for an existing child, without counting a lookup."""
        res, st = self._existing(parent, name)
        if st is None:
            return None
        return self._node_for(parent, name, res.visible, st, intern=False, where=res.where)

    def peek(self, parent_ino: int, name: bytes) -> Node:
        """The node `name` names in a directory (ENOENT if none), not counted."""
        node = self._peek(self.node(parent_ino), name)
        if node is None:
            raise _err(errno.ENOENT)
        return node

    def _check_new_name(self, parent: Node, name: bytes) -> None:
        if not stat.S_ISDIR(parent.st.st_mode):
            raise _err(errno.ENOTDIR)
        self._check_name(name)
        if whiteout.is_reserved_name(name):
            raise _err(errno.EINVAL)  # as fuse-overlayfs: the OCI format owns .wh.*

    def _create(
        self,
        parent_ino: int,
        name: bytes,
        uid: int,
        gid: int,
        make: Callable[[int, bytes], None],
        *,
        is_dir: bool = False,
    ) -> Node:
        """Create `name` with `make(dirfd, name)` as the caller, replacing a
        whiteout of the upper layer in one rename when there is one."""
        upper = self._need_upper()
        uid, gid = self.stored_owner(uid, gid)
        parent = self.node(parent_ino)
        self._check_new_name(parent, name)
        res, _ = self.resolve_child(parent, name, why=False)
        if res.exists:
            raise _err(errno.EEXIST)
        pfd = self.upper_dir(parent)
        pst = os.fstat(pfd)
        if pst.st_mode & stat.S_ISGID:
            gid = pst.st_gid  # BSD group semantics of a setgid directory
        hides_lower = self._lower_has(parent, name)
        in_upper = io.lstat_at(pfd, name) is not None  # a whiteout sits there
        if in_upper:
            temp = upper.make_temp(pfd, make)
            try:
                _own(upper.work_fd, temp, uid, gid, is_dir and bool(pst.st_mode & stat.S_ISGID))
                if is_dir and hides_lower:
                    _opaque(upper, upper.work_fd, temp)
                upper.install(temp, pfd, name)
            except BaseException:
                upper.discard_temp(temp)
                raise
        else:
            make(pfd, name)
            try:
                _own(pfd, name, uid, gid, is_dir and bool(pst.st_mode & stat.S_ISGID))
                if is_dir and hides_lower:
                    _opaque(upper, pfd, name)
            except BaseException:
                _remove(pfd, name)
                raise
        upper.remove_whiteout(pfd, name)
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        path = mount_path(parent, name)
        self.events.create(path, file_type(st.st_mode))
        if is_dir and hides_lower:
            self.events.opaque(path)
        kind = Kind.DIR if is_dir else Kind.NONDIR
        # A new entry has no origin xattr: it is its own origin.
        key = origin_key(self.layers[0].fsid, st)
        node = self._node_for(parent, name, (Copy(0, kind),), st, key=key)
        self.inodes.remember(node)
        return node

    # -- creating ------------------------------------------------------------------------

    def create(
        self,
        parent_ino: int,
        name: bytes,
        mode: int,
        flags: int,
        uid: int,
        gid: int,
        umask: int = 0,
    ) -> tuple[int, Node]:
        mode = self.new_mode(parent_ino, mode, umask)

        def make(dirfd: int, n: bytes) -> None:
            os.close(os.open(n, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             stat.S_IMODE(mode), dir_fd=dirfd))  # fmt: skip

        node = self._create(parent_ino, name, uid, gid, make)
        return self.open(node.ino, flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC)), node

    def mknod(
        self, parent_ino: int, name: bytes, mode: int, rdev: int, uid: int, gid: int, umask: int = 0
    ) -> Node:
        if stat.S_ISCHR(mode) and rdev == 0:
            raise _err(errno.EPERM)  # as overlayfs: a 0/0 device is a whiteout
        mode = self.new_mode(parent_ino, mode, umask)
        return self._create(
            parent_ino, name, uid, gid, lambda d, n: os.mknod(n, mode, rdev, dir_fd=d)
        )

    def mkdir(
        self, parent_ino: int, name: bytes, mode: int, uid: int, gid: int, umask: int = 0
    ) -> Node:
        mode = self.new_mode(parent_ino, mode, umask)
        return self._create(
            parent_ino, name, uid, gid, lambda d, n: os.mkdir(n, mode, dir_fd=d), is_dir=True
        )

    def new_mode(self, parent_ino: int, mode: int, umask: int) -> int:
        """The mode a new entry is made with: the caller's `umask` applies
        unless the parent has a default POSIX ACL, which replaces it (POSIX, and
        the VFS's mode_strip_umask). The kernel leaves the umask to the daemon
        only when it granted FUSE_DONT_MASK; where it applied it itself, applying
        it again changes nothing."""
        if not umask:
            return mode
        parent = self.node(parent_ino)  # its top copy: what a copy-up carries
        if io.fd_getxattr(self.dir_fd(parent, parent.top_layer), ACL_DEFAULT_XATTR) is None:
            return mode & ~umask
        return mode

    def symlink(self, parent_ino: int, name: bytes, target: bytes, uid: int, gid: int) -> Node:
        return self._create(
            parent_ino, name, uid, gid, lambda d, n: os.symlink(target, n, dir_fd=d)
        )

    def link(self, ino: int, new_parent_ino: int, new_name: bytes) -> Node:
        node = self.node(ino)
        if stat.S_ISDIR(node.st.st_mode):
            raise _err(errno.EPERM)
        self.copy_up(node, "link")
        src_pfd, src_name = self._name_of(node)

        def make(dirfd: int, n: bytes) -> None:
            os.link(src_name, n, src_dir_fd=src_pfd, dst_dir_fd=dirfd, follow_symlinks=False)

        parent = self.node(new_parent_ino)
        self._check_new_name(parent, new_name)
        res, _ = self.resolve_child(parent, new_name, why=False)
        if res.exists:
            raise _err(errno.EEXIST)
        upper = self._need_upper()
        pfd = self.upper_dir(parent)
        if io.lstat_at(pfd, new_name) is not None:
            temp = upper.temp_name()
            make(upper.work_fd, temp)
            upper.install(temp, pfd, new_name)
        else:
            make(pfd, new_name)
        upper.remove_whiteout(pfd, new_name)
        self.events.create(mount_path(parent, new_name), "hardlink")
        node.add_link(parent, new_name)
        self.refresh(node)
        self.inodes.remember(node)
        return node

    def _name_of(self, node: Node) -> tuple[int, bytes]:
        if node.unlinked or node.parent is None:
            raise _err(errno.ENOENT)
        return self.parent_fd(node), node.name

    # -- removing --------------------------------------------------------------------------

    def unlink(self, parent_ino: int, name: bytes, victim: Node | None = None) -> None:
        """Remove a non-directory. `victim` is what `peek` just returned for
        the same name, when nothing could have changed since (it saves
        resolving the name a second time)."""
        upper = self._need_upper()
        parent = self.node(parent_ino)
        if victim is None:
            victim = self._peek(parent, name)
        if victim is None:
            raise _err(errno.ENOENT)
        if stat.S_ISDIR(victim.st.st_mode):
            raise _err(errno.EISDIR)
        pfd = self.upper_dir(parent)
        if self._lower_has(parent, name):
            upper.write_whiteout(pfd, name)
            self.events.whiteout(mount_path(parent, name), _whiteout_form(upper))
        else:
            os.unlink(name, dir_fd=pfd)
        victim.drop_link(parent, name)
        self.inodes.drop_if_unused(victim)

    def rmdir(self, parent_ino: int, name: bytes) -> None:
        upper = self._need_upper()
        parent = self.node(parent_ino)
        victim = self._peek(parent, name)
        if victim is None:
            raise _err(errno.ENOENT)
        if not stat.S_ISDIR(victim.st.st_mode):
            raise _err(errno.ENOTDIR)
        if victim is self.inodes.root:
            raise _err(errno.EBUSY)
        if len(self.list_dir(victim)) > 2:
            raise _err(errno.ENOTEMPTY)
        pfd = self.upper_dir(parent)
        hides_lower = self._lower_has(parent, name)
        if victim.copies[0].layer == 0:
            self._fds.discard_inode(victim.ino, [c.layer for c in victim.copies])
            if hides_lower and not upper.oci_whiteouts:
                # Swap the directory with a fresh whiteout in one step.
                temp = upper.temp_name()
                os.mknod(temp, stat.S_IFCHR, os.makedev(0, 0), dir_fd=upper.work_fd)
                io.renameat2(upper.work_fd, temp, pfd, name, io.RENAME_EXCHANGE)
                upper.discard_temp(temp)
                self.events.whiteout(mount_path(parent, name), "chardev")
                hides_lower = False
            else:
                temp = upper.temp_name()
                os.rename(name, temp, src_dir_fd=pfd, dst_dir_fd=upper.work_fd)
                upper.discard_temp(temp)
        if hides_lower:
            upper.write_whiteout(pfd, name)
            self.events.whiteout(mount_path(parent, name), _whiteout_form(upper))
        victim.drop_link(parent, name)
        self.inodes.drop_if_unused(victim)

    # -- renaming ----------------------------------------------------------------------------

    def check_rename(
        self, old_parent_ino: int, old_name: bytes, new_parent_ino: int, new_name: bytes, flags: int
    ) -> tuple[Node, Node | None] | None:
        """The checks of a rename that come before any copy-up, as overlayfs: a
        rename they fail (EXDEV for a lower directory without redirects, ...) copies
        nothing up. The source and destination nodes, or None for nothing to do."""
        old_parent, new_parent = self.node(old_parent_ino), self.node(new_parent_ino)
        self._check_new_name(new_parent, new_name)
        src = self._peek(old_parent, old_name)
        if src is None:
            raise _err(errno.ENOENT)
        dst = self._peek(new_parent, new_name)
        if dst is src:
            return None
        exchange = bool(flags & io.RENAME_EXCHANGE)
        if exchange and dst is None:
            raise _err(errno.ENOENT)
        if dst is not None and flags & io.RENAME_NOREPLACE:
            raise _err(errno.EEXIST)
        # A directory with content in lower layers moves with a redirect to it;
        # without redirects it cannot: EXDEV makes mv fall back to copy and
        # delete, as overlayfs with redirect_dir=off.
        for moving in (src, dst if exchange else None):
            if moving is not None and _has_lower_dir(moving) and not self.redirect_dir:
                raise _err(errno.EXDEV)
        src_dir = stat.S_ISDIR(src.st.st_mode)
        if dst is not None and not exchange:
            dst_dir = stat.S_ISDIR(dst.st.st_mode)
            if src_dir and not dst_dir:
                raise _err(errno.ENOTDIR)
            if dst_dir and not src_dir:
                raise _err(errno.EISDIR)
            if dst_dir and len(self.list_dir(dst)) > 2:
                raise _err(errno.ENOTEMPTY)
        return src, dst

    def rename(
        self, old_parent_ino: int, old_name: bytes, new_parent_ino: int, new_name: bytes, flags: int
    ) -> None:
        upper = self._need_upper()
        nodes = self.check_rename(old_parent_ino, old_name, new_parent_ino, new_name, flags)
        if nodes is None:
            return
        src, dst = nodes
        old_parent, new_parent = self.node(old_parent_ino), self.node(new_parent_ino)
        exchange = bool(flags & io.RENAME_EXCHANGE)
        src_dir = stat.S_ISDIR(src.st.st_mode)
        self.copy_up(src, "rename")
        if exchange and dst is not None:
            self.copy_up(dst, "rename")
        old_pfd = self.upper_dir(old_parent)
        new_pfd = self.upper_dir(new_parent)
        old_hides = self._lower_has(old_parent, old_name)
        new_hides = self._lower_has(new_parent, new_name)
        samedir = old_parent is new_parent
        # As overlayfs (redirect_dir=on): a directory with lower content records
        # where that content is before it moves; its lower copies stay put.
        src_redirected = _has_lower_dir(src)
        if src_redirected:
            self._set_redirect(src, old_parent, old_name, samedir)
        if exchange and dst is not None and _has_lower_dir(dst):
            self._set_redirect(dst, new_parent, new_name, samedir)
        if exchange:
            io.renameat2(old_pfd, old_name, new_pfd, new_name, io.RENAME_EXCHANGE)
        else:
            if dst is not None and stat.S_ISDIR(dst.st.st_mode):
                self._clear_upper_dir(new_pfd, new_name)
            replace(old_pfd, old_name, new_pfd, new_name)
            upper.remove_whiteout(new_pfd, new_name)
            if old_hides:
                upper.write_whiteout(old_pfd, old_name)
                self.events.whiteout(mount_path(old_parent, old_name), _whiteout_form(upper))
        # As overlayfs: a directory moved into a merged directory becomes opaque,
        # so that nothing a lower layer has (or later gets) under its new name
        # shows through.
        if (
            src_dir
            and not src_redirected
            and not exchange
            and (new_hides or len(new_parent.copies) > 1)
        ):
            fd = io.open_dir_at(new_pfd, new_name)
            try:
                if not io.is_opaque_dir(fd):
                    upper.make_opaque(fd)
                    self.events.opaque(mount_path(new_parent, new_name))
            finally:
                os.close(fd)
        if dst is not None:
            dst.drop_link(new_parent, new_name)
            if exchange:
                dst.add_link(old_parent, old_name)
            self.inodes.drop_if_unused(dst)
        src.drop_link(old_parent, old_name)
        src.add_link(new_parent, new_name)

    def _set_redirect(self, node: Node, parent: Node, name: bytes, samedir: bool) -> None:
        """Before `node` (a directory with lower content, copied up, now
        `parent/name`) moves: write its redirect as overlayfs does, and pin its
        lower copies to where they are.

        overlayfs keeps a redirect the directory already has when it stays in
        its directory or the redirect is absolute; otherwise it writes the old
        name (a rename within the directory) or the absolute path of the lower
        content (across directories: each ancestor's own redirect, or its
        name, up to the root or to an absolute redirect)."""
        fd = self.dir_fd(node, 0)
        current = io.redirect_at(fd, b".")
        if current is None or not (samedir or current.startswith(b"/")):
            if samedir:
                value = name
            else:
                parts: list[bytes] = []
                cur, cur_name = node, name
                while True:
                    own = io.redirect_at(self.dir_fd(cur, 0), b".") if cur.top_layer == 0 else None
                    parts.append(own or cur_name)
                    if (own or b"").startswith(b"/"):
                        break
                    up = parent if cur is node else cur.parent
                    if up is None or up.parent is None:
                        parts.append(b"")
                        break
                    cur, cur_name = up, up.name
                value = b"/".join(reversed(parts))
            self.upper_redirect(fd, value)
        node.where = tuple(
            (c.layer, self.layer_path(node, c.layer)) for c in node.copies if c.layer != 0
        )

    def upper_redirect(self, fd: int, value: bytes) -> None:
        """Write a redirect on an upper directory (``trusted.overlay.redirect``,
        ``user.overlay.redirect`` with ``userxattr`` or where ``trusted.*``
        cannot be written)."""
        try:
            if os.geteuid() != 0 or (self.upper is not None and self.upper.user_xattrs):
                raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))
            os.setxattr(fd, whiteout.REDIRECT_XATTRS[0], value)
        except PermissionError:
            os.setxattr(fd, whiteout.REDIRECT_XATTRS[1], value)

    def _clear_upper_dir(self, pfd: int, name: bytes) -> None:
        """Empty an upper directory about to be replaced (it holds only whiteouts)."""
        if io.lstat_at(pfd, name) is None:
            return
        fd = io.open_dir_at(pfd, name)
        try:
            for entry, _ in io.scan_dir(fd):
                os.unlink(entry, dir_fd=fd)
        finally:
            os.close(fd)

    # -- changing ------------------------------------------------------------------------------

    def setattr(
        self,
        ino: int,
        fh: int | None,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
    ) -> Node:
        node = self.node(ino)
        self._need_upper()
        if uid is not None or gid is not None:
            uid, gid = self.stored_owner(-1 if uid is None else uid, -1 if gid is None else gid)
        reason = setattr_reason(
            size=size is not None,
            owner=uid is not None or gid is not None,
            mode=mode is not None,
            times=atime_ns is not None or mtime_ns is not None,
        )
        self.copy_up(node, reason)
        fd = fh if fh is not None and fh in self._files else None
        if size is not None:
            if fd is not None and os.O_ACCMODE & _fd_flags(fd) != os.O_RDONLY:
                os.ftruncate(fd, size)
            else:
                wfd = self._open_node(node, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    os.ftruncate(wfd, size)
                finally:
                    os.close(wfd)
        target = self._attr_target(node)
        # An fd (the root, an unlinked open file) is the entry itself: the
        # *at-less calls refuse follow_symlinks=False with one.
        nofollow = not isinstance(target, int)
        if (uid is not None or gid is not None or mode is not None) and self._record_owner(node):
            self._write_override(node, target, uid, gid, mode)
            uid = gid = mode = None
        if uid is not None or gid is not None:
            os.chown(target, -1 if uid is None else uid, -1 if gid is None else gid,
                     follow_symlinks=not nofollow)  # fmt: skip
        if mode is not None and not stat.S_ISLNK(node.st.st_mode):
            os.chmod(target, stat.S_IMODE(mode))
        if atime_ns is not None or mtime_ns is not None:
            cur = self.refresh(node).st
            os.utime(target, ns=(cur.st_atime_ns if atime_ns is None else atime_ns,
                                 cur.st_mtime_ns if mtime_ns is None else mtime_ns),
                     follow_symlinks=not nofollow)  # fmt: skip
        return self.refresh(node)

    def _record_owner(self, node: Node) -> bool:
        """Whether a chown or chmod of `node` (copied up) goes to its
        ``user.containers.override_stat`` instead of the file: on a mount that
        reads them, for a file or directory that has one, or always where the
        daemon is not root (it could not give the file another owner) or the
        mount asked for it (``xattr_permissions=``, as fuse-overlayfs)."""
        if not self.override_stat or not overridestat.may_carry(self.disk_stat(node)):
            return False
        if self.record_owners or os.geteuid() != 0:
            return True
        return self.override_value(node) is not None

    def _write_override(
        self, node: Node, target: bytes | int, uid: int | None, gid: int | None,
        mode: int | None,
    ) -> None:  # fmt: skip
        """Record a new owner and mode over the ones the mount shows now. A
        change of owner clears the set-id bits, as chown(2) does."""
        cur = self.refresh(node).st
        new_uid = cur.st_uid if uid is None or uid == -1 else uid
        new_gid = cur.st_gid if gid is None or gid == -1 else gid
        bits = stat.S_IMODE(cur.st_mode) if mode is None else stat.S_IMODE(mode)
        if mode is None and (new_uid, new_gid) != (cur.st_uid, cur.st_gid):
            bits &= ~(stat.S_ISUID | stat.S_ISGID)
        value = overridestat.format_value(new_uid, new_gid, stat.S_IFMT(cur.st_mode) | bits,
                                          cur.st_rdev)  # fmt: skip
        os.setxattr(target, overridestat.XATTR, value, follow_symlinks=isinstance(target, int))
        node.xattr_names = None


def _has_lower_dir(node: Node) -> bool:
    """A directory with content in a lower layer (a merged or lower one)."""
    return stat.S_ISDIR(node.st.st_mode) and any(c.layer != 0 for c in node.copies)


def _whiteout_form(upper: Upper) -> str:
    return "oci" if upper.oci_whiteouts else "chardev"


def _fd_flags(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_GETFL)


def _own(dirfd: int, name: bytes, uid: int, gid: int, inherit_setgid: bool) -> None:
    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    os.chown(name, uid, gid, dir_fd=dirfd, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        mode = stat.S_IMODE(st.st_mode) | (stat.S_ISGID if inherit_setgid else 0)
        if mode != stat.S_IMODE(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode):
            os.chmod(io.child_path(dirfd, name), mode)


def _opaque(upper: Upper, dirfd: int, name: bytes) -> None:
    fd = io.open_dir_at(dirfd, name)
    try:
        upper.make_opaque(fd)
    finally:
        os.close(fd)


def _remove(dirfd: int, name: bytes) -> None:
    st = io.lstat_at(dirfd, name)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        os.rmdir(name, dir_fd=dirfd)
    else:
        os.unlink(name, dir_fd=dirfd)
