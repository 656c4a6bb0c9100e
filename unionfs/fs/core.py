"""The core of `UnionFS`: the state every part shares, and the requests that
read through the layers.

`Core` holds the layers (top first; with an upper layer, it is layer 0), the
inode table, the event log, the open files and directory listings, and the
directory-descriptor cache. It resolves a name across the layers (the merge
rules, with the I/O they need), gives each entry its node (numbered by its
origin, so a copy-up keeps the inode number), and serves lookup, forget,
getattr, open/read/write/fsync/release, readlink and statfs. The other
concerns are mixins over it, assembled in `unionfs.fs.vfs`: `listing`,
`copyup`, `writes`, `xattrs`.

Directory descriptors: each lookup needs the parent directory open in every
layer it merges from. Those descriptors live in a bounded LRU cache keyed by
(inode, layer); a miss reopens the directory from the nearest cached ancestor,
one component at a time with ``O_NOFOLLOW``.
"""

import errno
import logging
import os
import stat
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import xxhash

from unionfs.fs import layer as io
from unionfs.fs import overridestat, whiteout
from unionfs.fs.events import EventLog
from unionfs.fs.inodes import (
    ROOT_INO,
    InodeTable,
    Node,
    OriginKey,
    StatLike,
    origin_ino,
    origin_key,
)
from unionfs.fs.layer import NAME_MAX, Layer
from unionfs.fs.merge import Copy, Kind, Location, Resolution, resolve
from unionfs.fs.owners import IDENTITY, IdMap
from unionfs.fs.search import Search
from unionfs.fs.upper import Upper, read_origin, unpack_origin

if TYPE_CHECKING:
    from unionfs.fs.listing import DirListing

log = logging.getLogger(__name__)

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND | os.O_CREAT
# Flags passed on to the layer file; O_APPEND is not: the kernel gives every
# write its offset (it appends at the size it knows).
_OPEN_KEEP = os.O_ACCMODE | os.O_TRUNC | os.O_SYNC | os.O_DSYNC


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


class Core:
    """The shared state of `UnionFS` and its reading requests; the mixins of
    the other concerns build on it."""

    def __init__(
        self,
        layers: Sequence[Layer],
        *,
        upper: Upper | None = None,
        fd_cache_size: int = 1024,
        events: EventLog | None = None,
        redirect_dir: bool = True,
        sync: bool = True,
        uids: IdMap = IDENTITY,
        gids: IdMap = IDENTITY,
        override_stat: bool = False,
    ) -> None:
        """`layers` top first; with `upper`, ``layers[0]`` is its (writable) layer.
        What the filesystem does (copy-ups, whiteouts, ...) is recorded in
        `events` (a new `EventLog` when not given). `redirect_dir` false refuses
        to rename a directory with lower content (EXDEV) instead of writing a
        redirect; redirects found in the layers are followed either way.
        `sync` false makes fsync a no-op (overlayfs's ``volatile``). `uids` and
        `gids` translate owners given to the writing calls into the owners
        stored (`shown_owner` the other way). `override_stat` reads every
        layer's ``user.containers.override_stat`` (`overridestat`); without
        it, they are read when a layer's root carries one (fuse-overlayfs's
        rule), so a layer unpacked rootless shows its real owners."""
        if not layers:
            raise ValueError("at least one layer is needed")
        if upper is not None and upper.layer is not layers[0]:
            raise ValueError("the upper layer must be the first layer")
        self.layers = list(layers)
        self.upper = upper
        self.redirect_dir = redirect_dir
        self.sync = sync
        self.uids, self.gids = uids, gids
        self.record_owners = override_stat  # chown/chmod always go to the record
        self.override_stat = override_stat or any(
            io.fd_getxattr(la.root_fd, overridestat.XATTR) is not None for la in layers
        )
        self.events = events if events is not None else EventLog()
        self._fds = DirFdCache(fd_cache_size)
        top = self.layers[0]
        if self.override_stat and upper is not None:
            _mark_upper(top.root_fd)
        root_st = os.fstat(top.root_fd)
        root_copies = tuple(Copy(la.index, Kind.DIR) for la in self.layers)
        root = Node(ROOT_INO, None, b"", root_copies, root_st, origin_key(top.fsid, root_st))
        self.inodes = InodeTable(root)
        self.show_override(root)
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
        """`node` (a directory) open in `layer`, reopened from a cached ancestor
        (or from the layer root, for a copy a redirect placed there)."""
        if node.parent is None:
            return self.layers[layer].root_fd
        fd = self._fds.get((node.ino, layer))
        if fd is not None:
            return fd
        chain: list[tuple[Node, bytes]] = []
        cur: Node | None = node
        while True:
            if cur is None or cur.parent is None:
                fd = self.layers[layer].root_fd
                break
            cached = self._fds.get((cur.ino, layer))
            if cached is not None:
                fd = cached
                break
            loc = cur.location(layer)
            if isinstance(loc, tuple):
                fd = io.open_path(self.layers[layer].root_fd, loc)
                self._fds.put((cur.ino, layer), fd)
                break
            chain.append((cur, loc))
            cur = cur.parent
        for step, name in reversed(chain):
            fd = io.open_dir_at(fd, name)
            self._fds.put((step.ino, layer), fd)
        return fd

    def layer_path(self, node: Node, layer: int) -> tuple[bytes, ...]:
        """The names leading from `layer`'s root to `node`'s copy there."""
        parts: list[bytes] = []
        cur: Node | None = node
        while cur is not None and cur.parent is not None:
            loc = cur.location(layer)
            if isinstance(loc, tuple):
                return (*loc, *reversed(parts))
            parts.append(loc)
            cur = cur.parent
        return tuple(reversed(parts))

    def parent_fd(self, node: Node) -> int:
        """The directory holding `node`'s top copy, open in that copy's layer."""
        if node.parent is None:
            raise _err(errno.EINVAL)
        return self.dir_fd(node.parent, node.top_layer)

    def shown_owner(self, st: StatLike) -> tuple[int, int]:
        """The owner a mount reports for an entry whose stored owner is in `st`."""
        return self.uids.shown(st.st_uid), self.gids.shown(st.st_gid)

    def stored_owner(self, uid: int, gid: int) -> tuple[int, int]:
        """The owner to write for one given through the mount (-1: unchanged);
        EINVAL for an id outside the mapping, as fuse-overlayfs."""
        su = uid if uid == -1 else self.uids.stored(uid)
        sg = gid if gid == -1 else self.gids.stored(gid)
        if su is None or sg is None:
            raise _err(errno.EINVAL)
        return su, sg

    def _attr_target(self, node: Node) -> bytes | int:
        """A path for the *at-less calls that reaches exactly this upper entry."""
        if node.parent is None:
            return self.layers[0].root_fd
        if node.unlinked:
            if not node.open_fds:
                raise _err(errno.ESTALE)
            return next(iter(node.open_fds))
        return io.child_path(self.parent_fd(node), node.name)

    # -- lookup ----------------------------------------------------------------

    def resolve_child(
        self, parent: Node, name: bytes, *, why: bool = True
    ) -> tuple[Resolution, os.stat_result | None]:
        """Apply the merge rules to `name` in `parent`; the top copy's lstat.

        Redirects are followed as overlayfs follows them (`Search`): a
        directory whose copy carries one continues in the layers below under
        the name (or, absolute, the path from the root) it gives.

        With `why` false the caller wants only what exists: an OCI whiteout in
        the bottom layer of `parent` hides nothing, so it is not looked for
        (a lookup of a new name in a directory of one layer costs one lstat).
        """
        search = Search(self, parent, name, why)
        res = resolve(search.observations(), search.is_opaque)
        if not res.exists:
            return res, None
        if search.where or search.redirect is not None:
            where = tuple((c.layer, search.where[c.layer]) for c in res.visible
                          if c.layer in search.where)  # fmt: skip
            res = replace(res, where=where, redirect=search.redirect)
        return res, search.stats[res.visible[0].layer]

    def _key_for(self, parent: Node, name: bytes, copy: Copy, st: StatLike) -> OriginKey:
        """The origin identity of an entry: a copied-up upper entry carries its
        origin's; anything else is its own."""
        if self.upper is None:
            return origin_key(self.layers[copy.layer].fsid, st)
        if copy.layer == 0:
            own = origin_key(self.layers[0].fsid, st)
            if self._known_without_origin(parent, name, own):
                return own
            recorded = unpack_origin(read_origin(self.dir_fd(parent, 0), name))
            if recorded is not None:
                return recorded
            return own
        elif st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            # A lower hard-link group is one file only until one of its names is
            # written, and FUSE says which inode is opened, not through which
            # name: on a writable mount each name is an inode of its own, so the
            # copy-up of one name leaves the others alone (as overlayfs without
            # index=on). All of them show the group's st_ino (`shown_ino`).
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
        where: tuple[tuple[int, Location], ...] = (),
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
            node.where = where
            self.show_override(node)
            return self.inodes.intern(node) if intern else node
        if known.unlinked or known.copies[0].layer != copies[0].layer:
            # A name the kernel still holds was removed and this entry took its
            # number (a reused backing inode), or it was copied up meanwhile.
            known.parent, known.name, known.unlinked = parent, name, False
            known.copies = copies
            known.where = where
            known.set_st(st)
            known.xattr_names = None
        else:
            if where != known.where and known.parent is parent and known.name == name:
                known.where = where
            known.set_st(st)  # fresher than what the node had: upper entries change
            known.add_link(parent, name)
        self.show_override(known)
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
            node = self._node_for(parent, name, res.visible, st, where=res.where)
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

    def shown_ino(self, node: Node) -> int:
        """The ``st_ino`` to show for `node` (its inode number but for one case).

        The names of a lower hard-link group are one file until one of them is
        copied up, and show one ``st_ino`` (what a read-only mount numbers the
        file), as overlayfs does. On a writable mount each name is still its own
        inode for the kernel (`_key_for`): FUSE says which inode is opened, not
        through which name, and a write must copy up only the name it was made
        through (as overlayfs without ``index=on``). A copied-up name shows
        its own number."""
        if self.upper is None or node.copies[0].layer == 0 or node.st.st_nlink < 2:
            return node.ino
        if stat.S_ISDIR(node.st.st_mode):
            return node.ino
        return origin_ino(origin_key(self.layers[node.copies[0].layer].fsid, node.st))

    @staticmethod
    def link_count(node: Node) -> int:
        """A merged directory reports one link, as overlayfs does (counting the
        subdirectories of every layer would cost a scan of each)."""
        return 1 if node.is_merged_dir else node.st.st_nlink

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

    def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2) on a file open for writing, hence in the upper layer:
        every mode its filesystem supports (0, KEEP_SIZE, PUNCH_HOLE, ...), as
        overlayfs. Only a pyfuse3 that carries patches/pyfuse3 dispatches
        FUSE_FALLOCATE; with a stock one the kernel answers EOPNOTSUPP itself."""
        io.fallocate(fh, mode, offset, length)

    def fsync(self, fh: int, datasync: bool) -> None:
        if not self.sync:
            return
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)

    def fsyncdir(self, ino: int) -> None:
        node = self.node(ino)
        if self.sync and self.upper is not None and node.copies[0].layer == 0:
            os.fsync(self.dir_fd(node, 0))

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
        self.show_override(node)
        return node

    # -- recorded owners (rootless layers) -------------------------------------------

    def _top_copy(self, node: Node) -> tuple[int, bytes | None]:
        """`node`'s top copy as a descriptor of it (name None) or a directory
        descriptor and the name in it. An unlinked node is its first open
        descriptor (the caller checks it has one)."""
        layer = node.top_layer
        if node.parent is None:
            return self.layers[layer].root_fd, None
        if node.unlinked and node.open_fds:
            return node.open_fds[0], None
        loc = node.location(layer)
        if isinstance(loc, tuple):
            return self.dir_fd(node, layer), None
        return self.dir_fd(node.parent, layer), loc

    def override_value(self, node: Node) -> bytes | None:
        """The ``user.containers.override_stat`` of `node`'s top copy (None:
        not set, or this mount does not read them)."""
        if not self.override_stat or (node.unlinked and not node.open_fds):
            return None
        fd, name = self._top_copy(node)
        if name is None:
            return io.fd_getxattr(fd, overridestat.XATTR)
        return io.getxattr_at(fd, name, overridestat.XATTR)

    def show_override(self, node: Node) -> None:
        """Turn `node.st` (a fresh lstat of its top copy) into the stat shown:
        the owner and mode its override records, if any."""
        if self.override_stat and overridestat.may_carry(node.st):
            value = self.override_value(node)
            if value is not None:
                node.set_st(overridestat.shown(node.st, value))

    def disk_stat(self, node: Node) -> StatLike:
        """The lstat of `node`'s top copy as it is on disk (`node.st` is what
        the mount shows; they differ where an override records another owner)."""
        if not self.override_stat:
            return node.st
        fd, name = self._top_copy(node)
        if name is None:
            return os.fstat(fd)
        st = io.lstat_at(fd, name)
        if st is None:
            raise _err(errno.ENOENT)
        return st

    def getattr(self, ino: int) -> Node:
        return self.refresh(self.node(ino))

    if TYPE_CHECKING:
        # `CopyUps` (unionfs.fs.copyup) has it: opening for writing copies up.
        def copy_up(self, node: Node, reason: str) -> None: ...


_U64 = (1 << 64) - 1


def _mark_upper(fd: int) -> None:
    """Mark the upper layer as one whose records count (its root records
    itself as it is), so that fuse-overlayfs reads them too."""
    try:
        overridestat.mark(fd)
    except OSError as e:
        log.warning("upper layer not marked as one with recorded owners: %s", e.strerror)


def mount_path(node: Node, name: bytes = b"") -> str:
    """Where `node` (or its child `name`) is in the mount: ``/etc/motd``."""
    parts = [name] if name else []
    cur: Node | None = node
    while cur is not None and cur.parent is not None:
        parts.append(cur.name)
        cur = cur.parent
    return "/" + os.fsdecode(b"/".join(reversed(parts)))


def _pack(key: OriginKey) -> bytes:
    return struct.pack("<QQQ", *key)
