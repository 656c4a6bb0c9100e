"""The merged filesystem's semantics, with no FUSE in sight.

`UnionFS` answers lookup, getattr, readdir, open/read, readlink, statfs and
xattr requests over a stack of read-only layers, in terms of inode numbers,
`bytes` names and `OSError`s. The pyfuse3 adapter (`fuse_ops`) only translates
its answers; unit tests call it directly.

Directory descriptors: each lookup needs the parent directory open in every
layer it merges from. Those descriptors live in a bounded LRU cache keyed by
(inode, layer); a miss reopens the directory from the nearest cached ancestor,
one component at a time with ``O_NOFOLLOW``.
"""

import errno
import logging
import os
import stat
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from . import layer as io
from . import whiteout
from .inodes import ROOT_INO, InodeTable, Node
from .layer import NAME_MAX, Layer
from .merge import Copy, Kind, Resolution, resolve

log = logging.getLogger(__name__)

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT
_DOTS = (b".", b"..")


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class DirFdCache:
    """A bounded LRU of open layer directories, keyed by (inode, layer)."""

    def __init__(self, capacity: int = 1024) -> None:
        if capacity < 4:
            raise ValueError("capacity must be at least 4")
        self.capacity = capacity
        self._fds: OrderedDict[tuple[int, int], int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._fds)

    def get(self, key: tuple[int, int]) -> int | None:
        fd = self._fds.get(key)
        if fd is not None:
            self._fds.move_to_end(key)
        return fd

    def put(self, key: tuple[int, int], fd: int) -> None:
        old = self._fds.pop(key, None)
        if old is not None and old != fd:
            os.close(old)
        self._fds[key] = fd
        while len(self._fds) > self.capacity:
            _, victim = self._fds.popitem(last=False)
            os.close(victim)

    def discard_inode(self, ino: int, layers: Sequence[int]) -> None:
        for layer in layers:
            fd = self._fds.pop((ino, layer), None)
            if fd is not None:
                os.close(fd)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


@dataclass(slots=True)
class DirListing:
    """A directory's merged entries, fixed when it is opened.

    Offsets handed to the kernel are positions in `entries` (plus one), so a
    listing resumed at any offset never repeats or skips a name.
    """

    node: Node
    entries: list[tuple[bytes, Node]]


class UnionFS:
    """A read-only union of layer directories (index 0 is the top layer)."""

    def __init__(self, layers: Sequence[Layer], *, fd_cache_size: int = 1024) -> None:
        if not layers:
            raise ValueError("at least one layer is needed")
        self.layers = list(layers)
        self._fds = DirFdCache(fd_cache_size)
        top = self.layers[0]
        root_st = os.fstat(top.root_fd)
        root_copies = tuple(Copy(la.index, Kind.DIR) for la in self.layers)
        self.inodes = InodeTable(Node(ROOT_INO, None, b"", root_copies, root_st))
        self._listings: dict[int, DirListing] = {}
        self._next_dir_fh = 1
        self._files: dict[int, int] = {}  # fh -> open descriptor (fh == descriptor)

    def close(self) -> None:
        """Close every descriptor this object holds (the layers stay open)."""
        self._fds.close()
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()
        self._listings.clear()

    # -- paths inside layers -------------------------------------------------

    def dir_fd(self, node: Node, layer: int) -> int:
        """`node` (a directory) open in `layer`, reopened from a cached ancestor."""
        if node.parent is None:
            return self.layers[layer].root_fd
        fd = self._fds.get((node.ino, layer))
        if fd is not None:
            return fd
        chain: list[Node] = []
        cur: Node | None = node
        while cur is not None and cur.parent is not None:
            cached = self._fds.get((cur.ino, layer))
            if cached is not None:
                fd = cached
                break
            chain.append(cur)
            cur = cur.parent
        else:
            fd = self.layers[layer].root_fd
        for step in reversed(chain):
            fd = io.open_dir_at(fd, step.name)
            self._fds.put((step.ino, layer), fd)
        return fd

    def parent_fd(self, node: Node) -> int:
        """The directory holding `node`'s top copy, open in that copy's layer."""
        if node.parent is None:
            raise _err(errno.EINVAL)
        return self.dir_fd(node.parent, node.top_layer)

    # -- lookup ----------------------------------------------------------------

    def _child_is_opaque(self, parent: Node, name: bytes, copy: Copy) -> bool:
        if copy.layer == parent.copies[-1].layer:
            return False  # nothing below the bottom layer to cut off
        fd = io.open_dir_at(self.dir_fd(parent, copy.layer), name)
        try:
            return io.is_opaque_dir(fd)
        finally:
            os.close(fd)

    def resolve_child(self, parent: Node, name: bytes) -> tuple[Resolution, os.stat_result | None]:
        """Apply the merge rules to `name` in `parent`; the top copy's lstat."""
        stats: dict[int, os.stat_result | None] = {}

        def observations() -> Iterator[Copy]:
            for pc in parent.copies:
                copy, st = io.observe(pc.layer, self.dir_fd(parent, pc.layer), name)
                stats[pc.layer] = st
                yield copy

        res = resolve(observations(), lambda c: self._child_is_opaque(parent, name, c))
        return res, (stats[res.visible[0].layer] if res.exists else None)

    def _node_for(
        self, parent: Node, name: bytes, copies: tuple[Copy, ...], st: os.stat_result
    ) -> Node:
        ino = self.inodes.number_for(self.layers[copies[0].layer].fsid, st)
        known = self.inodes.find(ino)
        if known is not None:
            return known
        return self.inodes.intern(Node(ino, parent, name, copies, st))

    def _check_name(self, name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise _err(errno.ENAMETOOLONG)
        if b"/" in name or b"\0" in name or not name:
            raise _err(errno.EINVAL)

    def lookup(self, parent_ino: int, name: bytes) -> Node:
        """Find `name` in a directory and count the lookup the kernel now holds."""
        parent = self.node(parent_ino)
        if not stat.S_ISDIR(parent.st.st_mode):
            raise _err(errno.ENOTDIR)
        if name == b".":
            node = parent
        elif name == b"..":
            node = parent.parent or parent
        else:
            self._check_name(name)
            if whiteout.is_reserved_name(name):
                raise _err(errno.ENOENT)
            res, st = self.resolve_child(parent, name)
            if st is None:
                raise _err(errno.ENOENT)
            node = self._node_for(parent, name, res.visible, st)
        self.inodes.remember(node)
        return node

    def node(self, ino: int) -> Node:
        try:
            return self.inodes.get(ino)
        except KeyError:
            log.warning("request for unknown inode %d", ino)
            raise _err(errno.ESTALE) from None

    def forget(self, pairs: Sequence[tuple[int, int]]) -> None:
        for node in self.inodes.forget(pairs):
            if stat.S_ISDIR(node.st.st_mode):
                self._fds.discard_inode(node.ino, [c.layer for c in node.copies])

    # -- attributes ------------------------------------------------------------

    @staticmethod
    def link_count(node: Node) -> int:
        """A merged directory reports one link, as overlayfs does (counting the
        subdirectories of every layer would cost a scan of each)."""
        return 1 if node.is_merged_dir else node.st.st_nlink

    # -- directories -----------------------------------------------------------

    def list_dir(self, node: Node) -> list[tuple[bytes, Node]]:
        """The merged entries of a directory, top layer's names first."""
        per_name: dict[bytes, list[tuple[Copy, os.stat_result | None]]] = {}
        fds: dict[int, int] = {}
        for dc in node.copies:
            fd = self.dir_fd(node, dc.layer)
            fds[dc.layer] = fd
            for name, st in io.scan_dir(fd):
                if name == whiteout.OCI_OPAQUE:
                    continue
                target = whiteout.oci_whiteout_target(name)
                if target is not None:
                    copies = per_name.setdefault(target, [])
                    if not copies or copies[-1][0].layer != dc.layer:
                        copies.append((Copy(dc.layer, Kind.WHITEOUT), None))
                    continue
                copies = per_name.setdefault(name, [])
                if copies and copies[-1][0].layer == dc.layer:
                    copies.pop()  # a real entry beats an OCI whiteout of itself
                copies.append((io.classify(dc.layer, fd, name, st), st))

        entries: list[tuple[bytes, Node]] = [(b".", node), (b"..", node.parent or node)]
        for name, seen in per_name.items():
            if len(name) > NAME_MAX:
                continue
            below = {c.layer: i for i, (c, _) in enumerate(seen)}

            def is_opaque(
                copy: Copy,
                seen: list[tuple[Copy, os.stat_result | None]] = seen,
                below: dict[int, int] = below,
                name: bytes = name,
            ) -> bool:
                if below[copy.layer] == len(seen) - 1:
                    return False  # no copy below: opacity changes nothing
                fd = io.open_dir_at(fds[copy.layer], name)
                try:
                    return io.is_opaque_dir(fd)
                finally:
                    os.close(fd)

            res = resolve((c for c, _ in seen), is_opaque)
            if not res.exists:
                continue
            top_st = seen[below[res.visible[0].layer]][1]
            assert top_st is not None  # a visible copy always has its lstat
            entries.append((name, self._node_for(node, name, res.visible, top_st)))
        return entries

    def opendir(self, ino: int) -> int:
        node = self.node(ino)
        if not stat.S_ISDIR(node.st.st_mode):
            raise _err(errno.ENOTDIR)
        fh = self._next_dir_fh
        self._next_dir_fh += 1
        self._listings[fh] = DirListing(node, self.list_dir(node))
        return fh

    def readdir(self, fh: int, start: int) -> Iterator[tuple[bytes, Node, int]]:
        """Entries from offset `start` on, each with the offset that follows it."""
        entries = self._listings[fh].entries
        for i in range(start, len(entries)):
            name, node = entries[i]
            yield name, node, i + 1

    def entry_returned(self, name: bytes, node: Node) -> None:
        """The kernel accepted a readdir entry: it now holds a lookup on it
        (except for "." and "..", which readdirplus never links)."""
        if name not in _DOTS:
            self.inodes.remember(node)

    def entry_not_returned(self, node: Node) -> None:
        self.inodes.drop_if_unused(node)

    def releasedir(self, fh: int) -> None:
        listing = self._listings.pop(fh)
        for _, node in listing.entries:
            self.inodes.drop_if_unused(node)

    # -- files -------------------------------------------------------------------

    def open(self, ino: int, flags: int) -> int:
        """Open a regular file for reading; the descriptor is the handle."""
        node = self.node(ino)
        if flags & _WRITE_FLAGS:
            raise _err(errno.EROFS)
        if stat.S_ISDIR(node.st.st_mode):
            raise _err(errno.EISDIR)
        fd = os.open(
            node.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.parent_fd(node)
        )
        self._files[fd] = fd
        return fd

    def read(self, fh: int, offset: int, size: int) -> bytes:
        return os.pread(self._files[fh], size, offset)

    def release(self, fh: int) -> None:
        os.close(self._files.pop(fh))

    def readlink(self, ino: int) -> bytes:
        node = self.node(ino)
        if not stat.S_ISLNK(node.st.st_mode):
            raise _err(errno.EINVAL)
        return os.readlink(node.name, dir_fd=self.parent_fd(node))

    def statfs(self) -> os.statvfs_result:
        return os.fstatvfs(self.layers[0].root_fd)

    # -- extended attributes -----------------------------------------------------

    def listxattr(self, ino: int) -> tuple[bytes, ...]:
        """Visible xattr names (overlay bookkeeping hidden), cached per node."""
        node = self.node(ino)
        if node.xattr_names is None:
            if node.parent is None:
                raw = io.fd_listxattr(self.dir_fd(node, node.top_layer))
            else:
                raw = io.listxattr_at(self.parent_fd(node), node.name)
            node.xattr_names = tuple(n for n in raw if not whiteout.is_private_xattr(n))
        return node.xattr_names

    def getxattr(self, ino: int, name: bytes) -> bytes:
        if name not in self.listxattr(ino):
            raise _err(errno.ENODATA)
        node = self.node(ino)
        if node.parent is None:
            value = io.fd_getxattr(self.dir_fd(node, node.top_layer), name)
        else:
            value = io.getxattr_at(self.parent_fd(node), node.name, name)
        if value is None:
            raise _err(errno.ENODATA)
        return value
