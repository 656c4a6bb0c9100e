"""Declarative layer stacks for tests.

One description of a stack of layers can be written to disk in several formats
(how whiteouts and opaque directories are encoded) and also merged in pure Python
to get the tree that an overlay of those layers must show.

Layers are given TOP FIRST, like overlayfs' ``lowerdir=top:...:bottom``::

    layers = [
        [File("etc/hosts", b"new\\n", mode=0o600), Whiteout("etc/old")],   # top
        [File("etc/hosts", b"old\\n"), File("etc/old"), Dir("opt/app")],    # bottom
    ]
    dirs = build_stack(layers, tmp_path / "layers", "chardev")  # top first too
    merged = expected_merge(layers)

Paths inside a layer are relative (a leading ``/`` is ignored); ``"."`` is the layer
root. Parent directories a layer needs but does not declare are created with mode
0o755, owner 0:0 and the layer's default mtime, as a tar extraction would.
Unless an entry gives ``mtime_ns``, its mtime is ``default_mtime_ns(depth)``, where
depth counts layers from the BOTTOM, so a layer's times do not depend on how many
layers are stacked above it.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

import pytest

from tests.support.tree import Node

__all__ = [
    "DEFAULT_MTIME_NS",
    "FORMATS",
    "KERNEL_FORMATS",
    "OCI_OPAQUE",
    "OCI_WHITEOUT_PREFIX",
    "ROOT_FORMATS",
    "UNPREDICTABLE",
    "Device",
    "Dir",
    "Entry",
    "Fifo",
    "File",
    "Format",
    "HardLink",
    "Layer",
    "MergedEntry",
    "Symlink",
    "Whiteout",
    "build_layer",
    "build_stack",
    "default_mtime_ns",
    "expected_merge",
    "expected_snapshot",
    "format_params",
    "kernel_ghosts",
]

Format: TypeAlias = Literal["chardev", "xattr", "oci", "user"]
FORMATS: tuple[Format, ...] = ("chardev", "xattr", "oci", "user")
#: Formats kernel overlayfs understands ("user" needs the ``userxattr`` mount option).
KERNEL_FORMATS: tuple[Format, ...] = ("chardev", "xattr", "user")
#: Formats whose whiteouts need root to write (a char device, trusted.* xattrs).
ROOT_FORMATS: frozenset[Format] = frozenset({"chardev", "xattr"})


def format_params() -> list[object]:
    """Every format as a pytest parameter, skipped with the reason where it needs
    root and the tests do not run as root."""
    return [
        pytest.param(
            f,
            marks=pytest.mark.skipif(
                f in ROOT_FORMATS and os.geteuid() != 0, reason=f"{f} whiteouts need root"
            ),
        )
        for f in FORMATS
    ]


OCI_WHITEOUT_PREFIX = ".wh."
OCI_OPAQUE = ".wh..wh..opq"

#: 2023-11-14T22:13:20.123456789Z; a non-zero sub-second part catches truncation.
DEFAULT_MTIME_NS = 1_700_000_000_123_456_789
_LAYER_MTIME_STEP_NS = 86_400 * 1_000_000_000

#: Node fields of a real tree that a layer description cannot predict: inode
#: numbers, st_dev, and the size and link count of directories (filesystem details,
#: and overlayfs reports nlink 1 for merged directories).
UNPREDICTABLE = frozenset({"ino", "d_ino", "dev", "size@dir", "nlink@dir"})

XattrValue: TypeAlias = bytes | str


def default_mtime_ns(depth: int) -> int:
    """Default mtime of entries in the layer ``depth`` levels above the bottom one."""
    return DEFAULT_MTIME_NS + depth * _LAYER_MTIME_STEP_NS


def _norm(path: str) -> str:
    p = path.lstrip("/")
    if p in ("", "."):
        return "."
    if any(part == ".." for part in p.split("/")):
        raise ValueError(f"layer path must not contain '..': {path!r}")
    p = posixpath.normpath(p)
    if p.startswith(".."):
        raise ValueError(f"layer path escapes the layer: {path!r}")
    return p


def _parent(path: str) -> str:
    parent = posixpath.dirname(path)
    return parent or "."


def _join(parent: str, name: str) -> str:
    return name if parent == "." else f"{parent}/{name}"


@dataclass(frozen=True)
class _Base:
    path: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", _norm(self.path))


@dataclass(frozen=True)
class File(_Base):
    data: bytes = b""
    _: KW_ONLY
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    xattrs: Mapping[str, XattrValue] = field(default_factory=dict)
    mtime_ns: int | None = None


@dataclass(frozen=True)
class Dir(_Base):
    _: KW_ONLY
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    xattrs: Mapping[str, XattrValue] = field(default_factory=dict)
    mtime_ns: int | None = None
    opaque: bool = False


@dataclass(frozen=True)
class Symlink(_Base):
    target: str
    _: KW_ONLY
    uid: int = 0
    gid: int = 0
    #: Only trusted.* / security.* names work on symlinks; user.* gives EPERM.
    xattrs: Mapping[str, XattrValue] = field(default_factory=dict)
    mtime_ns: int | None = None


@dataclass(frozen=True)
class Whiteout(_Base):
    pass


@dataclass(frozen=True)
class HardLink(_Base):
    """Another name for the inode at ``target`` (a path in the SAME layer)."""

    target: str

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "target", _norm(self.target))


@dataclass(frozen=True)
class Fifo(_Base):
    _: KW_ONLY
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    xattrs: Mapping[str, XattrValue] = field(default_factory=dict)
    mtime_ns: int | None = None


@dataclass(frozen=True)
class Device(_Base):
    kind: Literal["char", "block"] = "char"
    major: int = 1
    minor: int = 3
    _: KW_ONLY
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    xattrs: Mapping[str, XattrValue] = field(default_factory=dict)
    mtime_ns: int | None = None


Entry: TypeAlias = File | Dir | Symlink | Whiteout | HardLink | Fifo | Device
Layer: TypeAlias = Sequence[Entry]
#: Entries that own an inode and its metadata.
Inode: TypeAlias = File | Dir | Symlink | Fifo | Device


@dataclass(frozen=True)
class MergedEntry:
    """One path of the expected merged tree."""

    path: str
    #: The winning entry as declared (or an implicit ``Dir``); never a ``Whiteout``.
    entry: Inode | HardLink
    #: The entry that carries the inode's metadata: ``entry`` itself, or for a
    #: ``HardLink`` the entry it points to.
    inode: Inode
    #: Index (top first) of the layer the entry comes from.
    layer: int
    #: For directories every layer merged into it, top first; else ``(layer,)``.
    layers: tuple[int, ...]
    #: Effective mtime (the entry's own or its layer's default).
    mtime_ns: int
    #: For non-directories the number of names the inode has in its layer.
    nlink: int | None


@dataclass
class _IndexedLayer:
    depth: int
    entries: dict[str, Entry]
    children: dict[str, list[str]]
    implicit: set[str]

    def mtime_of(self, entry: Inode) -> int:
        return entry.mtime_ns if entry.mtime_ns is not None else default_mtime_ns(self.depth)

    def inode_of(self, entry: Inode | HardLink) -> Inode:
        if isinstance(entry, HardLink):
            target = self.entries[entry.target]
            assert not isinstance(target, HardLink | Whiteout | Dir)
            return target
        return entry

    def link_count(self, entry: Inode | HardLink) -> int:
        key = self.inode_of(entry).path
        links = sum(1 for e in self.entries.values() if isinstance(e, HardLink) and e.target == key)
        return 1 + links


def _index_layer(layer: Layer, depth: int) -> _IndexedLayer:
    entries: dict[str, Entry] = {}
    for entry in layer:
        if entry.path in entries:
            raise ValueError(f"path declared twice in one layer: {entry.path!r}")
        entries[entry.path] = entry
    root = entries.get(".")
    if root is not None:
        if not isinstance(root, Dir):
            raise ValueError(f"the layer root can only be a Dir, not {root!r}")
        if root.opaque:
            raise ValueError("the layer root cannot be opaque")
    implicit: set[str] = set()
    for path in list(entries):
        parent = _parent(path) if path != "." else None
        while parent is not None:
            existing = entries.get(parent)
            if existing is None:
                entries[parent] = Dir(parent)
                implicit.add(parent)
            elif not isinstance(existing, Dir):
                raise ValueError(f"{path!r} needs {parent!r} to be a directory, not {existing!r}")
            parent = _parent(parent) if parent != "." else None
    if "." not in entries:
        entries["."] = Dir(".")
        implicit.add(".")
    children: dict[str, list[str]] = {}
    for path in sorted(entries):
        if path != ".":
            children.setdefault(_parent(path), []).append(posixpath.basename(path))
    for entry in entries.values():
        if isinstance(entry, HardLink):
            target = entries.get(entry.target)
            if not isinstance(target, File | Symlink | Fifo | Device):
                raise ValueError(
                    f"hard link {entry.path!r} must point to a non-directory declared in the"
                    f" same layer, not {target!r}"
                )
    return _IndexedLayer(depth, entries, children, implicit)


def _index_stack(layers: Sequence[Layer]) -> list[_IndexedLayer]:
    n = len(layers)
    return [_index_layer(layer, n - 1 - i) for i, layer in enumerate(layers)]


def _xattr_bytes(value: XattrValue) -> bytes:
    return value.encode() if isinstance(value, str) else value


# --------------------------------------------------------------------------- writing


def build_stack(layers: Sequence[Layer], root: Path, fmt: Format) -> list[Path]:
    """Write ``layers`` (top first) to ``root/layer0`` (top) ... ``root/layerN`` (bottom).

    Returns the layer directories top first, ready for ``lowerdir=``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown layer format {fmt!r}; expected one of {FORMATS}")
    root.mkdir(parents=True, exist_ok=True)
    n = len(layers)
    out: list[Path] = []
    for i, layer in enumerate(layers):
        path = root / f"layer{i}"
        build_layer(layer, path, fmt, depth=n - 1 - i)
        out.append(path)
    return out


def build_layer(layer: Layer, path: Path, fmt: Format, *, depth: int = 0) -> Path:
    """Write one layer into the new directory ``path``; ``depth`` sets default mtimes."""
    idx = _index_layer(layer, depth)
    if fmt == "oci":
        for p in idx.entries:
            if posixpath.basename(p).startswith(OCI_WHITEOUT_PREFIX):
                raise ValueError(f"{p!r}: names starting with '.wh.' are reserved in OCI layers")
    path.mkdir(parents=True)
    prefix = "user.overlay." if fmt == "user" else "trusted.overlay."

    def real(p: str) -> Path:
        return path if p == "." else path / p

    dirs = sorted((p for p, e in idx.entries.items() if isinstance(e, Dir)), key=_depth_key)
    for p in dirs:
        if p != ".":
            real(p).mkdir()

    # Directories that hold an xattr whiteout need opaque=x, unless opaque=y (the kernel
    # then lists those whiteouts; see kernel_ghosts).
    xwhiteout_parents: set[str] = set()
    for p, entry in sorted(idx.entries.items()):
        if isinstance(entry, Dir | HardLink):
            continue
        target = real(p)
        if isinstance(entry, Whiteout):
            _write_whiteout(path, p, fmt, prefix, default_mtime_ns(depth))
            if fmt in ("xattr", "user"):
                xwhiteout_parents.add(_parent(p))
            continue
        if isinstance(entry, File):
            with open(target, "xb") as f:
                f.write(entry.data)
        elif isinstance(entry, Symlink):
            os.symlink(entry.target, target)
        elif isinstance(entry, Fifo):
            os.mkfifo(target)
        else:
            kind = stat.S_IFCHR if entry.kind == "char" else stat.S_IFBLK
            os.mknod(target, kind | 0o600, os.makedev(entry.major, entry.minor))
        _apply_meta(target, entry, idx.mtime_of(entry))

    for p, entry in sorted(idx.entries.items()):
        if isinstance(entry, HardLink):
            os.link(real(entry.target), real(p), follow_symlinks=False)

    for p in dirs:
        d = idx.entries[p]
        assert isinstance(d, Dir)
        if d.opaque:
            if fmt == "oci":
                _write_empty(real(p) / OCI_OPAQUE, default_mtime_ns(depth))
            else:
                os.setxattr(real(p), prefix + "opaque", b"y")
        elif p in xwhiteout_parents:
            os.setxattr(real(p), prefix + "opaque", b"x")

    # Deepest first: creating children changes a directory's mtime.
    for p in reversed(dirs):
        d = idx.entries[p]
        assert isinstance(d, Dir)
        _apply_meta(real(p), d, idx.mtime_of(d))
    return path


def _depth_key(p: str) -> tuple[int, str]:
    return (0 if p == "." else p.count("/") + 1, p)


def _write_empty(target: Path, mtime_ns: int) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o000)
    os.close(fd)
    os.chmod(target, 0o000)
    os.utime(target, ns=(mtime_ns, mtime_ns), follow_symlinks=False)


def _write_whiteout(layer_root: Path, p: str, fmt: Format, prefix: str, mtime_ns: int) -> None:
    if fmt == "oci":
        parent, name = _parent(p), posixpath.basename(p)
        base = layer_root if parent == "." else layer_root / parent
        _write_empty(base / (OCI_WHITEOUT_PREFIX + name), mtime_ns)
        return
    target = layer_root / p
    if fmt == "chardev":
        os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        os.chmod(target, 0o000)
        os.utime(target, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
    else:
        _write_empty(target, mtime_ns)
        os.setxattr(target, prefix + "whiteout", b"")


def _apply_meta(target: Path, entry: Inode, mtime_ns: int) -> None:
    # chown first: it clears setuid/setgid bits that chmod then sets.
    os.chown(target, entry.uid, entry.gid, follow_symlinks=False)
    if not isinstance(entry, Symlink):
        os.chmod(target, entry.mode)
    for name, value in sorted(entry.xattrs.items()):
        os.setxattr(target, name, _xattr_bytes(value), follow_symlinks=False)
    os.utime(target, ns=(mtime_ns, mtime_ns), follow_symlinks=False)


# --------------------------------------------------------------------------- merging


def expected_merge(layers: Sequence[Layer]) -> dict[str, MergedEntry]:
    """The merged tree an overlay of ``layers`` (top first) must show, keyed by path.

    The rules are overlayfs': the upper name wins; a whiteout hides the name in every
    layer below; a non-directory hides everything below it; directories of one name
    merge until a layer without a directory there (whiteout or non-directory) or an
    opaque directory, which cuts off the layers below it. Merged directory metadata
    comes from the topmost directory. The root ``"."`` merges all layers.
    """
    if not layers:
        raise ValueError("a stack needs at least one layer")
    idx = _index_stack(layers)
    return _merge(idx)


def _merge(idx: list[_IndexedLayer]) -> dict[str, MergedEntry]:
    out: dict[str, MergedEntry] = {}
    root = idx[0].entries["."]
    assert isinstance(root, Dir)
    out["."] = MergedEntry(".", root, root, 0, tuple(range(len(idx))), idx[0].mtime_of(root), None)
    pending = ["."]
    while pending:
        d = pending.pop()
        contributing = out[d].layers
        names: set[str] = set()
        for i in contributing:
            names.update(idx[i].children.get(d, ()))
        for name in sorted(names):
            merged = _lookup(idx, _join(d, name), contributing)
            if merged is not None:
                out[merged.path] = merged
                if isinstance(merged.entry, Dir):
                    pending.append(merged.path)
    return dict(sorted(out.items()))


def _lookup(idx: list[_IndexedLayer], p: str, contributing: tuple[int, ...]) -> MergedEntry | None:
    for pos, i in enumerate(contributing):
        entry = idx[i].entries.get(p)
        if entry is None:
            continue
        if isinstance(entry, Whiteout):
            return None
        layer = idx[i]
        if not isinstance(entry, Dir):
            inode = layer.inode_of(entry)
            return MergedEntry(
                p, entry, inode, i, (i,), layer.mtime_of(inode), layer.link_count(entry)
            )
        merged = [i]
        if not entry.opaque:
            for j in contributing[pos + 1 :]:
                below = idx[j].entries.get(p)
                if below is None:
                    continue
                if not isinstance(below, Dir):
                    break
                merged.append(j)
                if below.opaque:
                    break
        return MergedEntry(p, entry, entry, i, tuple(merged), layer.mtime_of(entry), None)
    return None


def kernel_ghosts(layers: Sequence[Layer], fmt: Format) -> set[str]:
    """Whiteouts that kernel overlayfs LISTS in readdir (lookup then says ENOENT).

    Observed on Linux 6.x, lower layers only: the kernel filters whiteouts out of
    readdir only for merged directories (more than one layer contributes). In a
    directory that comes from a single layer (opaque, or absent elsewhere) every
    whiteout is listed. Xattr whiteouts are also listed in a merged directory if
    their own layer's directory lacks the ``opaque=x`` marker, which is the case when
    that directory is opaque (``y``). unionfs must never show whiteouts, so
    differential tests either avoid these stacks or leave these paths out.
    """
    if fmt not in KERNEL_FORMATS:
        raise ValueError(f"kernel overlayfs does not read the {fmt!r} layer format")
    idx = _index_stack(layers)
    merged = _merge(idx)
    ghosts: set[str] = set()
    for i, layer in enumerate(idx):
        for p, entry in layer.entries.items():
            if not isinstance(entry, Whiteout):
                continue
            parent = merged.get(_parent(p))
            if parent is None or i not in parent.layers:
                continue
            parent_dir = layer.entries[_parent(p)]
            assert isinstance(parent_dir, Dir)
            if len(parent.layers) == 1 or (fmt != "chardev" and parent_dir.opaque):
                ghosts.add(p)
    return ghosts


def expected_snapshot(layers: Sequence[Layer]) -> dict[str, Node]:
    """``expected_merge`` as ``tests.tree.Node`` values, for ``tests.tree.compare``.

    Fields the description cannot predict are None; compare with
    ``ignore=UNPREDICTABLE``.
    """
    return {p: _node(m) for p, m in expected_merge(layers).items()}


def _node(m: MergedEntry) -> Node:
    e = m.inode
    size: int | None = 0
    sha256: str | None = None
    target: str | None = None
    rdev: tuple[int, int] | None = None
    nlink = m.nlink
    if isinstance(e, Dir):
        kind, size, nlink = "dir", None, None
    elif isinstance(e, File):
        kind, size, sha256 = "file", len(e.data), hashlib.sha256(e.data).hexdigest()
    elif isinstance(e, Symlink):
        kind, size, target = "symlink", len(os.fsencode(e.target)), e.target
    elif isinstance(e, Fifo):
        kind = "fifo"
    else:
        kind, rdev = ("chardev" if e.kind == "char" else "blockdev"), (e.major, e.minor)
    return Node(
        type=kind,
        mode=0o777 if isinstance(e, Symlink) else e.mode,
        uid=e.uid,
        gid=e.gid,
        size=size,
        sha256=sha256,
        target=target,
        rdev=rdev,
        xattrs={k: _xattr_bytes(v) for k, v in sorted(e.xattrs.items())},
        nlink=nlink,
        mtime_ns=m.mtime_ns,
    )
