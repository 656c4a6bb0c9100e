"""The inode table: FUSE inode numbers, lookup counts, and the nodes behind them.

Inode numbers are derived from the identity of the entry's origin (the
filesystem id, device and inode number of its topmost copy) with xxh64, so the
same file gets the same number on every mount, `stat` and `readdir` agree, and
copies in different layers never share a number. The root is always 1.

The kernel holds a lookup count on every inode it knows; a node stays in the
table until `forget` brings its count to zero. A forgotten node may live on as
the `parent` of a node the kernel still knows (a hard link reached through a
different directory); it is then reachable only through that child.
"""

import errno
import logging
import os
import struct
from collections.abc import Iterable

import xxhash

from unionfs.fs.merge import Copy, Location

log = logging.getLogger(__name__)

ROOT_INO = 1
_INO_MASK = (1 << 63) - 1  # keep st_ino positive for every consumer of stat
_KEY = struct.Struct("<QQQ")
_U64 = 0xFFFFFFFFFFFFFFFF
# Filesystem ids and device numbers repeat across the entries of a layer: one
# int object each in the origin keys instead of one per node (Python shares
# only the ints up to 256).
_SHARED_INTS: dict[int, int] = {}


def _shared(value: int) -> int:
    return _SHARED_INTS.setdefault(value, value)


# The packed layout of `NodeStat`: (field name, struct code), in order.
_FIELDS = (
    ("st_mode", "I"),
    ("st_uid", "I"),
    ("st_gid", "I"),
    ("st_nlink", "I"),
    ("st_ino", "Q"),
    ("st_dev", "I"),  # the kernel's dev_t is 32 bits
    ("st_rdev", "I"),
    ("st_size", "q"),
    ("st_blksize", "I"),
    ("st_blocks", "q"),
    ("st_atime_ns", "q"),
    ("st_mtime_ns", "q"),
    ("st_ctime_ns", "q"),
)
_PACKED = struct.Struct("<" + "".join(code for _, code in _FIELDS))
FIELD_NAMES = tuple(name for name, _ in _FIELDS)


def _field(index: int) -> "property":
    code = _FIELDS[index][1]
    offset = struct.calcsize("<" + "".join(c for _, c in _FIELDS[:index]))
    unpack_from = struct.Struct("<" + code).unpack_from

    def get(self: bytes) -> int:
        return unpack_from(self, offset)[0]  # type: ignore[no-any-return]

    get.__name__ = _FIELDS[index][0]
    return property(get)


class NodeStat(bytes):
    """The lstat fields a node answers with, packed in one `bytes` (76 bytes of
    data, 128 with the object and its GC header) instead of an `os.stat_result` or an object of
    thirteen ints (about 300 bytes): a node lives as long as the kernel holds
    its inode, so this is most of the daemon's memory on a large tree.

    Immutable: `with_fields` makes a changed copy. Each field reads as the
    attribute of `os.stat_result`'s name; `fields()` unpacks them all at once
    (in `FIELD_NAMES` order) for a reader that wants most of them.
    """

    __slots__ = ()

    def __new__(cls, st: "os.stat_result | NodeStat") -> "NodeStat":
        if isinstance(st, NodeStat):
            return st
        return bytes.__new__(
            cls,
            _PACKED.pack(
                st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_ino, st.st_dev,
                st.st_rdev, st.st_size, st.st_blksize, st.st_blocks,
                st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns,
            ),
        )  # fmt: skip

    st_mode = _field(0)
    st_uid = _field(1)
    st_gid = _field(2)
    st_nlink = _field(3)
    st_ino = _field(4)
    st_dev = _field(5)
    st_rdev = _field(6)
    st_size = _field(7)
    st_blksize = _field(8)
    st_blocks = _field(9)
    st_atime_ns = _field(10)
    st_mtime_ns = _field(11)
    st_ctime_ns = _field(12)

    def fields(self) -> tuple[int, ...]:
        """Every field, in `FIELD_NAMES` order."""
        return _PACKED.unpack(self)

    def with_fields(self, **changes: int) -> "NodeStat":
        """A copy with the fields named in `changes` set."""
        values = list(_PACKED.unpack(self))
        for name, value in changes.items():
            values[FIELD_NAMES.index(name)] = value
        return bytes.__new__(NodeStat, _PACKED.pack(*values))

    def __repr__(self) -> str:
        return (
            f"NodeStat(mode={self.st_mode:o}, ino={self.st_ino}, size={self.st_size}, "
            f"nlink={self.st_nlink})"
        )


StatLike = os.stat_result | NodeStat


class Node:
    """One merged-view entry: where it lives and what the kernel knows of it.

    `copies` are the visible copies, top first: one for a non-directory, the
    merging stack for a directory. `st` is the lstat of the top copy (layers are
    immutable, so it stays valid). `parent`/`name` lead from the root to it.
    `extra_links` and `open_fds` are tuples, empty (and shared) for almost
    every node. `where` places the directory copies that are not under `name`
    in their layer (a renamed directory's lower content, found through a
    redirect): (layer, location) pairs, empty for almost every node.
    """

    __slots__ = (
        "copies",
        "extra_links",
        "ino",
        "key",
        "lookups",
        "name",
        "open_fds",
        "parent",
        "st",
        "unlinked",
        "where",
        "xattr_names",
    )

    def __init__(
        self,
        ino: int,
        parent: "Node | None",
        name: bytes,
        copies: tuple[Copy, ...],
        st: StatLike,
        key: "OriginKey" = (0, 0, 0),
    ) -> None:
        self.ino = ino
        self.parent = parent
        self.name = name
        self.copies = copies
        self.st = st if isinstance(st, NodeStat) else NodeStat(st)
        self.key = key
        self.lookups = 0
        self.xattr_names: tuple[bytes, ...] | None = None
        # Further names of an upper-layer file with hard links, as the kernel
        # looked them up; `parent`/`name` is always one that still exists.
        self.extra_links: tuple[tuple[Node, bytes], ...] = ()
        self.open_fds: tuple[int, ...] = ()
        self.unlinked = False
        self.where: tuple[tuple[int, Location], ...] = ()

    def location(self, layer: int) -> Location:
        """Where this directory's copy in `layer` is: its own name in the
        parent's copy there, unless a redirect placed it elsewhere."""
        for la, loc in self.where:
            if la == layer:
                return loc
        return self.name

    def set_st(self, st: StatLike) -> None:
        """Replace the attributes (with a fresh lstat of the top copy)."""
        self.st = st if isinstance(st, NodeStat) else NodeStat(st)

    def add_fd(self, fd: int) -> None:
        self.open_fds = (*self.open_fds, fd)

    def discard_fd(self, fd: int) -> None:
        self.open_fds = tuple(f for f in self.open_fds if f != fd)

    def links(self) -> list[tuple["Node", bytes]]:
        if self.unlinked or self.parent is None:
            return list(self.extra_links)
        return [(self.parent, self.name), *self.extra_links]

    def add_link(self, parent: "Node", name: bytes) -> None:
        if self.unlinked:
            self.parent, self.name, self.unlinked = parent, name, False
        elif (parent, name) != (self.parent, self.name) and (parent, name) not in self.extra_links:
            self.extra_links = (*self.extra_links, (parent, name))

    def drop_link(self, parent: "Node", name: bytes) -> None:
        """`parent/name` no longer names this node; keep another name if any."""
        if (parent, name) in self.extra_links:
            rest = list(self.extra_links)
            rest.remove((parent, name))
            self.extra_links = tuple(rest)
        elif (parent, name) == (self.parent, self.name):
            if self.extra_links:
                (self.parent, self.name), *rest = self.extra_links
                self.extra_links = tuple(rest)
            else:
                self.unlinked = True

    @property
    def top_layer(self) -> int:
        return self.copies[0].layer

    @property
    def is_merged_dir(self) -> bool:
        return len(self.copies) > 1

    def __repr__(self) -> str:
        return f"Node(ino={self.ino}, name={self.name!r}, layers={[c.layer for c in self.copies]})"


OriginKey = tuple[int, int, int]  # (filesystem id, st_dev, st_ino) of the origin


def origin_key(fsid: int, st: StatLike) -> OriginKey:
    return (_shared(fsid & _U64), _shared(st.st_dev), st.st_ino)


def origin_ino(key: OriginKey, salt: int = 0) -> int:
    """The inode number for an entry whose origin is `key`."""
    ino = xxhash.xxh64_intdigest(_KEY.pack(*key), seed=salt) & _INO_MASK
    return ino if ino > ROOT_INO else ino + 2


class InodeTable:
    """Inode number -> `Node` for every inode the kernel holds a count on."""

    def __init__(self, root: Node) -> None:
        if root.ino != ROOT_INO:
            raise ValueError("the root node must carry inode number 1")
        self.root = root
        root.lookups = 1  # the kernel never forgets the root
        self._nodes: dict[int, Node] = {ROOT_INO: root}

    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, ino: int) -> Node:
        """The node for `ino`; KeyError if the kernel should not know it."""
        return self._nodes[ino]

    def find(self, ino: int) -> Node | None:
        return self._nodes.get(ino)

    def number_for(self, key: OriginKey) -> int:
        """The inode number of the entry whose origin is `key`.

        A 64-bit hash collision with a different live entry (never seen, but
        possible) is resolved by rehashing with the next seed.
        """
        for salt in range(16):
            ino = origin_ino(key, salt)
            node = self._nodes.get(ino)
            if node is None or node.key == key:
                return ino
            log.warning("inode number collision on %d (salt %d)", ino, salt)
        raise OSError(errno.EOVERFLOW, "no free inode number")

    def intern(self, candidate: Node) -> Node:
        """The table's node for `candidate`'s inode number, adding it if new.

        Does not count a lookup: call `remember` once the kernel has the reply.
        """
        existing = self._nodes.get(candidate.ino)
        if existing is None:
            self._nodes[candidate.ino] = candidate
            return candidate
        return existing

    def remember(self, node: Node) -> None:
        """Count one lookup the kernel now holds on `node`."""
        if node.lookups == 0:
            self._nodes[node.ino] = node
        node.lookups += 1

    def drop_if_unused(self, node: Node) -> None:
        """Remove a node that was interned but never handed to the kernel."""
        if node.lookups == 0 and self._nodes.get(node.ino) is node:
            del self._nodes[node.ino]

    def forget(self, pairs: Iterable[tuple[int, int]]) -> list[Node]:
        """Apply the kernel's forgets; return the nodes that left the table.

        Never raises: an unknown inode or an excess count is logged and skipped.
        """
        gone: list[Node] = []
        for ino, requested in pairs:
            node = self._nodes.get(ino)
            if node is None or ino == ROOT_INO:
                if node is None:
                    log.warning("forget for unknown inode %d", ino)
                continue
            count = requested
            if count > node.lookups:
                log.warning("forget(%d) of inode %d with lookup count %d", count, ino, node.lookups)
                count = node.lookups
            node.lookups -= count
            if node.lookups == 0:
                del self._nodes[ino]
                gone.append(node)
        return gone
