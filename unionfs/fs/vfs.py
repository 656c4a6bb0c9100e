"""The merged filesystem's semantics, with no FUSE in sight.

`UnionFS` answers every filesystem request over a stack of read-only layers
and, when it has one, a writable upper layer, in terms of inode numbers,
`bytes` names and `OSError`s. The pyfuse3 adapter (`fuse_ops`) only translates
its answers; unit tests call it directly.

Directory descriptors: each lookup needs the parent directory open in every
layer it merges from. Those descriptors live in a bounded LRU cache keyed by
(inode, layer); a miss reopens the directory from the nearest cached ancestor,
one component at a time with ``O_NOFOLLOW``.
"""

import contextlib
import errno
import fcntl
import logging
import os
import stat
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import xxhash

from unionfs.fs import layer as io
from unionfs.fs import whiteout
from unionfs.fs.events import EventLog, file_type, setattr_reason
from unionfs.fs.inodes import ROOT_INO, InodeTable, Node, OriginKey, StatLike, origin_key
from unionfs.fs.layer import NAME_MAX, Layer
from unionfs.fs.merge import Copy, Kind, Resolution, resolve
from unionfs.fs.upper import ORIGIN_XATTR, Upper, read_xattrs, replace, unpack_origin

log = logging.getLogger(__name__)

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT
# Flags passed on to the layer file; O_APPEND is not: the kernel gives every
# write its offset (it appends at the size it knows).
_OPEN_KEEP = os.O_ACCMODE | os.O_TRUNC | os.O_SYNC | os.O_DSYNC
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
    """A directory's merged entries, taken when a read starts at offset 0.

    Offsets handed to the kernel are positions in `entries` (plus one), so a
    listing resumed at any offset never repeats or skips a name.
    """

    node: Node
    entries: list[tuple[bytes, Node]]


class UnionFS:
    """A union of layer directories (index 0 is the top layer), writable when
    it has an upper layer."""

    def __init__(
        self,
        layers: Sequence[Layer],
        *,
        upper: Upper | None = None,
        fd_cache_size: int = 1024,
        events: EventLog | None = None,
    ) -> None:
        """`layers` top first; with `upper`, ``layers[0]`` is its (writable) layer.
        What the filesystem does (copy-ups, whiteouts, ...) is recorded in
        `events` (a new `EventLog` when not given)."""
        if not layers:
            raise ValueError("at least one layer is needed")
        if upper is not None and upper.layer is not layers[0]:
            raise ValueError("the upper layer must be the first layer")
        self.layers = list(layers)
        self.upper = upper
        self.events = events if events is not None else EventLog()
        self._fds = DirFdCache(fd_cache_size)
        top = self.layers[0]
        root_st = os.fstat(top.root_fd)
        root_copies = tuple(Copy(la.index, Kind.DIR) for la in self.layers)
        root = Node(ROOT_INO, None, b"", root_copies, root_st, origin_key(top.fsid, root_st))
        self.inodes = InodeTable(root)
        self._listings: dict[int, DirListing] = {}
        self._next_dir_fh = 1
        self._files: dict[int, Node] = {}  # fh (== the open descriptor) -> its node
        self._stacks: dict[tuple[Copy, ...], tuple[Copy, ...]] = {}

    @property
    def writable(self) -> bool:
        return self.upper is not None

    def close(self) -> None:
        """Close every descriptor this object holds (the layers stay open)."""
        self._fds.close()
        for fd in self._files:
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

    def resolve_child(
        self, parent: Node, name: bytes, *, why: bool = True
    ) -> tuple[Resolution, os.stat_result | None]:
        """Apply the merge rules to `name` in `parent`; the top copy's lstat.

        With `why` false the caller wants only what exists: an OCI whiteout in
        the bottom layer of `parent` hides nothing, so it is not looked for
        (a lookup of a new name in a directory of one layer costs one lstat).
        """
        stats: dict[int, os.stat_result | None] = {}
        bottom = parent.copies[-1].layer

        def observations() -> Iterator[Copy]:
            for pc in parent.copies:
                fd = self.dir_fd(parent, pc.layer)
                copy, st = io.observe(pc.layer, fd, name, oci=why or pc.layer != bottom)
                stats[pc.layer] = st
                yield copy

        res = resolve(observations(), lambda c: self._child_is_opaque(parent, name, c))
        return res, (stats[res.visible[0].layer] if res.exists else None)

    def _key_for(self, parent: Node, name: bytes, copy: Copy, st: StatLike) -> OriginKey:
        """The origin identity of an entry: a copied-up upper entry carries its
        origin's; anything else is its own."""
        if self.upper is None:
            return origin_key(self.layers[copy.layer].fsid, st)
        if copy.layer == 0:
            own = origin_key(self.layers[0].fsid, st)
            if self._known_without_origin(parent, name, own):
                return own
            recorded = unpack_origin(io.getxattr_at(self.dir_fd(parent, 0), name, ORIGIN_XATTR))
            if recorded is not None:
                return recorded
            return own
        elif st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            # A lower hard-link group is one file only until one of its names is
            # written, and FUSE says which inode is opened, not through which
            # name: on a writable mount each name is an inode of its own, so the
            # copy-up of one name leaves the others alone (as overlayfs without
            # index=on).
            fsid, dev, ino = origin_key(self.layers[copy.layer].fsid, st)
            return fsid, dev, xxhash.xxh64_intdigest(_pack(parent.key) + name, seed=ino & _U64)
        return origin_key(self.layers[copy.layer].fsid, st)

    def _known_without_origin(self, parent: Node, name: bytes, own: OriginKey) -> bool:
        """Whether the table already holds this upper entry (`parent/name`,
        identity `own`) as one without an origin xattr, so that reading the
        xattr again can be skipped (`rm -rf` asks for every name it listed).

        A node keyed by its own upper identity was created here or found
        without an origin; while that file lives, no other entry has its
        inode number, and a copy-up always writes a new file.
        """
        known = self.inodes.find(self.inodes.number_for(own))
        if known is None or known.unlinked or known.key != own or known.copies[0].layer != 0:
            return False
        link = (parent, name)
        return (known.parent is parent and known.name == name) or link in known.extra_links

    def _node_for(
        self,
        parent: Node,
        name: bytes,
        copies: tuple[Copy, ...],
        st: StatLike,
        *,
        intern: bool = True,
        key: OriginKey | None = None,
    ) -> Node:
        """The node of an entry: the table's if the kernel knows it, else a new
        one (entered in the table unless `intern` is false). `key` is its origin
        identity when the caller knows it (an entry it just created)."""
        if key is None:
            key = self._key_for(parent, name, copies[0], st)
        ino = self.inodes.number_for(key)
        known = self.inodes.find(ino)
        if known is None:
            # Stacks of copies repeat (most are one copy in one layer): share them.
            copies = self._stacks.setdefault(copies, copies)
            node = Node(ino, parent, name, copies, st, key)
            return self.inodes.intern(node) if intern else node
        if known.unlinked or known.copies[0].layer != copies[0].layer:
            # A name the kernel still holds was removed and this entry took its
            # number (a reused backing inode), or it was copied up meanwhile.
            known.parent, known.name, known.unlinked = parent, name, False
            known.copies = copies
            known.set_st(st)
            known.xattr_names = None
        else:
            known.set_st(st)  # fresher than what the node had: upper entries change
            known.add_link(parent, name)
        return known

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
            res, st = self.resolve_child(parent, name, why=False)
            if st is None:
                raise _err(errno.ENOENT)
            node = self._node_for(parent, name, res.visible, st)
            self.events.count_lookup(res.visible[0].layer)
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
        self._listings[fh] = DirListing(node, [])
        return fh

    def readdir(self, fh: int, start: int) -> Iterator[tuple[bytes, Node, int]]:
        """Entries from offset `start` on, each with the offset that follows it.

        The listing is taken when a read starts at offset 0 (the first read, or
        after rewinddir) and kept for the reads that continue it."""
        listing = self._listings[fh]
        if start == 0:
            listing.entries = self.list_dir(listing.node)
        entries = listing.entries
        for i in range(start, len(entries)):
            name, node = entries[i]
            # Attributes go to the kernel with each entry: upper entries may have
            # changed since the listing was taken.
            yield name, self.refresh(node), i + 1

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
        """Open a regular file; the descriptor is the handle. Opening for
        writing copies the file up first (unless `copy_up` already did)."""
        node = self.node(ino)
        if stat.S_ISDIR(node.st.st_mode):
            raise _err(errno.EISDIR)
        if flags & _WRITE_FLAGS:
            if self.upper is None:
                raise _err(errno.EROFS)
            self.copy_up(node, "write")
        fd = self._open_node(node, (flags & _OPEN_KEEP) | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._files[fd] = node
        node.add_fd(fd)
        return fd

    def _open_node(self, node: Node, flags: int) -> int:
        if node.unlinked:
            if not node.open_fds:
                raise _err(errno.ESTALE)
            # Reopen the file itself: it has no name left.
            fd = next(iter(node.open_fds))
            return os.open(f"/proc/self/fd/{fd}", flags & ~os.O_NOFOLLOW)
        return os.open(node.name, flags, dir_fd=self.parent_fd(node))

    def read(self, fh: int, offset: int, size: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, fh: int, offset: int, data: bytes) -> int:
        return os.pwrite(fh, data, offset)

    def fsync(self, fh: int, datasync: bool) -> None:
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)

    def release(self, fh: int) -> None:
        node = self._files.pop(fh)
        node.discard_fd(fh)
        os.close(fh)

    def readlink(self, ino: int) -> bytes:
        node = self.node(ino)
        if not stat.S_ISLNK(node.st.st_mode):
            raise _err(errno.EINVAL)
        return os.readlink(node.name, dir_fd=self.parent_fd(node))

    def statfs(self) -> os.statvfs_result:
        """The filesystem of the upper layer, or of the top layer when read-only."""
        return os.fstatvfs(self.layers[0].root_fd)

    # -- extended attributes -----------------------------------------------------

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
            return io.fd_getxattr(self.dir_fd(node, node.top_layer), stored)
        if node.unlinked:
            return io.fd_getxattr(next(iter(node.open_fds)), stored) if node.open_fds else None
        return io.getxattr_at(self.parent_fd(node), node.name, stored)

    # -- attributes of changing entries ----------------------------------------------

    def refresh(self, node: Node) -> Node:
        """Bring `node.st` up to date (entries in the upper layer change)."""
        if node.copies[0].layer != 0 or self.upper is None:
            return node
        if node.parent is None:
            node.set_st(os.fstat(self.layers[0].root_fd))
        elif node.unlinked:
            if node.open_fds:
                node.set_st(os.fstat(node.open_fds[0]))
        else:
            st = io.lstat_at(self.parent_fd(node), node.name)
            if st is not None:
                node.set_st(st)
        return node

    def getattr(self, ino: int) -> Node:
        return self.refresh(self.node(ino))

    # -- copy-up ---------------------------------------------------------------------

    def _need_upper(self) -> Upper:
        if self.upper is None:
            raise _err(errno.EROFS)
        return self.upper

    def upper_dir(self, node: Node, reason: str = "parent") -> int:
        """`node` (a directory) in the upper layer, copying it and its parents
        up first if needed; returns its descriptor there. `reason` is what
        the copy-up of `node` itself is recorded as (its parents' is "parent")."""
        upper = self._need_upper()
        chain: list[Node] = []
        cur: Node | None = node
        while cur is not None and cur.copies[0].layer != 0:
            chain.append(cur)
            cur = cur.parent
        for d in reversed(chain):
            assert d.parent is not None  # the root always has an upper copy
            started = time.perf_counter()
            pfd = self.dir_fd(d.parent, 0)
            src = self.dir_fd(d, d.top_layer)
            temp = upper.copy_dir(src, d.st, _pack(d.key))
            with _parent_times_kept(pfd):
                upper.install(temp, pfd, d.name)
            source = d.top_layer
            d.copies = (Copy(0, Kind.DIR), *d.copies)
            d.xattr_names = None
            self.events.copy_up(
                mount_path(d),
                reason if d is node else "parent",
                layer=source,
                data=False,
                nbytes=0,
                seconds=time.perf_counter() - started,
            )
        return self.dir_fd(node, 0)

    def needs_copy_up(self, node: Node) -> bool:
        return self.upper is not None and node.copies[0].layer != 0

    def prepare_copy_up(self, node: Node, reason: str) -> "CopyUp":
        """Step 1 of a copy-up (on the event loop): parents up, source open.
        `reason` is what the copy-up is recorded as (`events.REASONS`)."""
        upper = self._need_upper()
        assert node.parent is not None
        self.upper_dir(node.parent)
        started = time.perf_counter()
        lower_pfd = self.parent_fd(node)
        st = node.st
        origin = _pack(node.key)
        xattrs = read_xattrs(lower_pfd, node.name)
        if stat.S_ISREG(st.st_mode):
            src = os.open(node.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=lower_pfd)
            return CopyUp(upper, node, st, xattrs, origin, reason, started, src_fd=src)
        target = os.readlink(node.name, dir_fd=lower_pfd) if stat.S_ISLNK(st.st_mode) else None
        return CopyUp(upper, node, st, xattrs, origin, reason, started, target=target)

    def finish_copy_up(self, job: "CopyUp", temp: bytes) -> None:
        """Step 3 (on the event loop): rename the copy into place, repoint readers."""
        node = job.node
        assert node.parent is not None
        pfd = self.dir_fd(node.parent, 0)
        with _parent_times_kept(pfd):
            job.upper.install(temp, pfd, node.name)
        source = node.top_layer
        node.copies = (Copy(0, Kind.NONDIR),)
        node.xattr_names = None
        self.refresh(node)
        # Files opened read-only before the copy-up now read the copy.
        for fd in node.open_fds:
            new = os.open(node.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            os.dup2(new, fd)
            os.close(new)
        data = stat.S_ISREG(job.st.st_mode)
        self.events.copy_up(
            mount_path(node),
            job.reason,
            layer=source,
            data=data,
            nbytes=job.st.st_size if data else 0,
            seconds=time.perf_counter() - job.started,
        )

    def copy_up(self, node: Node, reason: str) -> None:
        """Copy a non-directory (or a directory's metadata) into the upper layer;
        `reason` is what the copy-up is recorded as (`events.REASONS`)."""
        if not self.needs_copy_up(node):
            return
        if stat.S_ISDIR(node.st.st_mode):
            self.upper_dir(node, reason)
            return
        job = self.prepare_copy_up(node, reason)
        try:
            temp = job.run()
        finally:
            job.close()
        self.finish_copy_up(job, temp)

    # -- helpers for changes -----------------------------------------------------------

    def _lower_has(self, parent: Node, name: bytes) -> bool:
        """Whether `name` in `parent` resolves to something below the upper layer
        (so removing it from the upper needs a whiteout)."""
        lowers = [c for c in parent.copies if c.layer != 0]
        if not lowers:
            return False
        probe = Node(0, parent.parent, parent.name, tuple(lowers), parent.st)
        probe.ino = parent.ino  # share the directory descriptors cached for it
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
        return self._node_for(parent, name, res.visible, st, intern=False)

    def peek(self, parent_ino: int, name: bytes) -> Node:
        """The node `name` names in a directory (ENOENT if none), not counted."""
        node = self._peek(self.node(parent_ino), name)
        if node is None:
            raise _err(errno.ENOENT)
        return node

    def listing_node(self, fh: int) -> Node:
        return self._listings[fh].node

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
            temp = upper.temp_name()
            make(upper.work_fd, temp)
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
        self, parent_ino: int, name: bytes, mode: int, flags: int, uid: int, gid: int
    ) -> tuple[int, Node]:
        def make(dirfd: int, n: bytes) -> None:
            os.close(os.open(n, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                             stat.S_IMODE(mode), dir_fd=dirfd))  # fmt: skip

        node = self._create(parent_ino, name, uid, gid, make)
        return self.open(node.ino, flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC)), node

    def mknod(self, parent_ino: int, name: bytes, mode: int, rdev: int, uid: int, gid: int) -> Node:
        return self._create(
            parent_ino, name, uid, gid, lambda d, n: os.mknod(n, mode, rdev, dir_fd=d)
        )

    def mkdir(self, parent_ino: int, name: bytes, mode: int, uid: int, gid: int) -> Node:
        return self._create(
            parent_ino, name, uid, gid, lambda d, n: os.mkdir(n, mode, dir_fd=d), is_dir=True
        )

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

    def rename(
        self, old_parent_ino: int, old_name: bytes, new_parent_ino: int, new_name: bytes, flags: int
    ) -> None:
        upper = self._need_upper()
        old_parent, new_parent = self.node(old_parent_ino), self.node(new_parent_ino)
        self._check_new_name(new_parent, new_name)
        src = self._peek(old_parent, old_name)
        if src is None:
            raise _err(errno.ENOENT)
        dst = self._peek(new_parent, new_name)
        if dst is src:
            return
        exchange = bool(flags & io.RENAME_EXCHANGE)
        if exchange and dst is None:
            raise _err(errno.ENOENT)
        if dst is not None and flags & io.RENAME_NOREPLACE:
            raise _err(errno.EEXIST)
        # A directory with content in lower layers cannot move without
        # redirects: EXDEV makes mv fall back to copy and delete, as overlayfs.
        for moving in (src, dst if exchange else None):
            if (
                moving is not None
                and stat.S_ISDIR(moving.st.st_mode)
                and any(c.layer != 0 for c in moving.copies)
            ):
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
        self.copy_up(src, "rename")
        if exchange and dst is not None:
            self.copy_up(dst, "rename")
        old_pfd = self.upper_dir(old_parent)
        new_pfd = self.upper_dir(new_parent)
        old_hides = self._lower_has(old_parent, old_name)
        new_hides = self._lower_has(new_parent, new_name)
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
        if src_dir and not exchange and (new_hides or len(new_parent.copies) > 1):
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
        if uid is not None or gid is not None:
            os.chown(target, -1 if uid is None else uid, -1 if gid is None else gid,
                     follow_symlinks=False)  # fmt: skip
        if mode is not None and not stat.S_ISLNK(node.st.st_mode):
            os.chmod(target, stat.S_IMODE(mode))
        if atime_ns is not None or mtime_ns is not None:
            cur = self.refresh(node).st
            os.utime(target, ns=(cur.st_atime_ns if atime_ns is None else atime_ns,
                                 cur.st_mtime_ns if mtime_ns is None else mtime_ns),
                     follow_symlinks=False)  # fmt: skip
        return self.refresh(node)

    def _attr_target(self, node: Node) -> bytes | int:
        """A path for the *at-less calls that reaches exactly this upper entry."""
        if node.parent is None:
            return self.layers[0].root_fd
        if node.unlinked:
            if not node.open_fds:
                raise _err(errno.ESTALE)
            return next(iter(node.open_fds))
        return io.child_path(self.parent_fd(node), node.name)

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        stored = whiteout.stored_xattr(name)
        if stored is None:
            raise _err(errno.EPERM)
        node = self.node(ino)
        self._need_upper()
        self.copy_up(node, "setxattr")
        target = self._attr_target(node)
        try:
            os.setxattr(target, stored, value, flags, follow_symlinks=isinstance(target, int))
        finally:
            node.xattr_names = None

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

    def fsyncdir(self, ino: int) -> None:
        node = self.node(ino)
        if self.upper is not None and node.copies[0].layer == 0:
            os.fsync(self.dir_fd(node, 0))


@dataclass(eq=False)
class CopyUp:
    """A copy-up in progress: `run` (the data copy) may go to a worker thread."""

    upper: Upper
    node: Node
    st: StatLike
    xattrs: dict[bytes, bytes]
    origin: bytes | None
    reason: str  # what it is recorded as
    started: float  # time.perf_counter() when the source was opened
    src_fd: int | None = None
    target: bytes | None = None

    def run(self) -> bytes:
        """Build the copy in the work dir; returns its temporary name."""
        if self.src_fd is not None:
            return self.upper.copy_file(self.src_fd, self.st, self.xattrs, self.origin)
        return self.upper.copy_special(self.st, self.target, self.xattrs, self.origin)

    def close(self) -> None:
        if self.src_fd is not None:
            os.close(self.src_fd)
            self.src_fd = None


_U64 = (1 << 64) - 1


def mount_path(node: Node, name: bytes = b"") -> str:
    """Where `node` (or its child `name`) is in the mount: ``/etc/motd``."""
    parts = [name] if name else []
    cur: Node | None = node
    while cur is not None and cur.parent is not None:
        parts.append(cur.name)
        cur = cur.parent
    return "/" + os.fsdecode(b"/".join(reversed(parts)))


def _whiteout_form(upper: Upper) -> str:
    return "oci" if upper.oci_whiteouts else "chardev"


def _pack(key: OriginKey) -> bytes:
    return struct.pack("<QQQ", *key)


def _fd_flags(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_GETFL)


@contextlib.contextmanager
def _parent_times_kept(dirfd: int) -> Iterator[None]:
    """A copy-up is invisible: the parent directory keeps its timestamps."""
    st = os.fstat(dirfd)
    yield
    os.utime(dirfd, ns=(st.st_atime_ns, st.st_mtime_ns))


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
