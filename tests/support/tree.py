"""Snapshots of directory trees, and comparisons between them.

``snapshot`` records what a tree *shows* (through a mount or on a plain disk)
without following symlinks; ``compare`` lists the differences between two
snapshots in words, so an assertion failure says what differs:

    assert compare(snapshot(kernel_mnt), snapshot(unionfs_mnt)) == []
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

__all__ = [
    "ALL_FIELDS",
    "DEFAULT_FIELDS",
    "TYPE_NAMES",
    "Node",
    "check_ino_consistency",
    "compare",
    "describe",
    "render",
    "snapshot",
]


@dataclass(frozen=True)
class Node:
    """One path of a tree. A None field was not recorded (or does not apply)."""

    #: file, dir, symlink, fifo, chardev, blockdev, socket; "error" if lstat failed.
    type: str
    #: Permission bits including setuid/setgid/sticky (``S_IMODE``).
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    #: ``st_size`` for every type (a symlink's is the target's length).
    size: int | None = None
    #: Hex sha256 of a regular file's content.
    sha256: str | None = None
    #: A symlink's target.
    target: str | None = None
    #: (major, minor) of a device node.
    rdev: tuple[int, int] | None = None
    #: Extended attributes visible through ``listxattr``, sorted by name.
    xattrs: dict[str, bytes] | None = None
    nlink: int | None = None
    mtime_ns: int | None = None
    ino: int | None = None
    #: The inode number readdir reported for the name (None for the root).
    d_ino: int | None = None
    dev: int | None = None
    #: What failed while recording this node, e.g. "lstat: ENOENT".
    error: str | None = None


ALL_FIELDS: frozenset[str] = frozenset(f.name for f in fields(Node))
#: What must agree between unionfs and kernel overlayfs over the same layers. Inode
#: and device numbers are excluded: the two number inodes differently.
DEFAULT_FIELDS: frozenset[str] = ALL_FIELDS - {"ino", "d_ino", "dev"}

TYPE_NAMES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
    stat.S_IFSOCK: "socket",
}
_NO_XATTRS = {errno.ENOTSUP, errno.EPERM, errno.EOPNOTSUPP, errno.ENODATA}


def _err(what: str, exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return f"{what}: {name}"


def _read_xattrs(path: str) -> tuple[dict[str, bytes], str | None]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _NO_XATTRS:
            return {}, None
        return {}, _err("listxattr", exc)
    out: dict[str, bytes] = {}
    for name in sorted(names):
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno in _NO_XATTRS:
                continue
            return out, _err(f"getxattr {name}", exc)
    return out, None


def _hash(path: str) -> tuple[str | None, str | None]:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest(), None
    except OSError as exc:
        return None, _err("read", exc)


def _record(path: str, d_ino: int | None, *, xattrs: bool, content: bool) -> Node:
    try:
        st = os.lstat(path)
    except OSError as exc:
        return Node(type="error", d_ino=d_ino, error=_err("lstat", exc))
    kind = TYPE_NAMES.get(stat.S_IFMT(st.st_mode), f"unknown:{stat.S_IFMT(st.st_mode):o}")
    problems: list[str] = []
    sha256 = target = None
    rdev = None
    if kind == "file" and content:
        sha256, problem = _hash(path)
        problems += [problem] if problem else []
    elif kind == "symlink":
        try:
            target = os.readlink(path)
        except OSError as exc:
            problems.append(_err("readlink", exc))
    elif kind in ("chardev", "blockdev"):
        rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
    attrs: dict[str, bytes] | None = None
    if xattrs:
        attrs, problem = _read_xattrs(path)
        problems += [problem] if problem else []
    return Node(
        type=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size,
        sha256=sha256,
        target=target,
        rdev=rdev,
        xattrs=attrs,
        nlink=st.st_nlink,
        mtime_ns=st.st_mtime_ns,
        ino=st.st_ino,
        d_ino=d_ino,
        dev=st.st_dev,
        error="; ".join(problems) or None,
    )


def snapshot(root: Path, *, xattrs: bool = True, content: bool = True) -> dict[str, Node]:
    """Record every path under ``root`` (``"."`` is ``root`` itself), sorted by path.

    Symlinks are never followed. A name that readdir lists but lstat cannot stat is
    recorded as ``Node(type="error")``; other failures land in ``Node.error``.
    ``content=False`` skips hashing files, ``xattrs=False`` skips xattrs.
    """
    out: dict[str, Node] = {}
    top = os.fspath(root)
    pending: list[tuple[str, str, int | None]] = [(".", top, None)]
    while pending:
        rel, path, d_ino = pending.pop()
        node = _record(path, d_ino, xattrs=xattrs, content=content)
        if node.type == "dir":
            try:
                with os.scandir(path) as it:
                    found = sorted((e.name, e.inode()) for e in it)
            except OSError as exc:
                extra = _err("readdir", exc)
                error = f"{node.error}; {extra}" if node.error else extra
                node = replace(node, error=error)
                found = []
            for name, ino in reversed(found):
                child = name if rel == "." else f"{rel}/{name}"
                pending.append((child, os.path.join(path, name), ino))
        out[rel] = node
    return dict(sorted(out.items()))


def _parse_fields(spec: Iterable[str]) -> tuple[set[str], set[tuple[str, str]]]:
    plain: set[str] = set()
    per_type: set[tuple[str, str]] = set()
    for item in spec:
        name, _, kind = item.partition("@")
        if name not in ALL_FIELDS:
            raise ValueError(f"unknown node field {name!r} in {item!r}")
        if kind:
            per_type.add((name, kind))
        else:
            plain.add(name)
    return plain, per_type


def _fmt(name: str, value: object) -> str:
    if value is None:
        return "-"
    if name == "mode" and isinstance(value, int):
        return oct(value)
    if name == "rdev" and isinstance(value, tuple):
        return f"{value[0]}:{value[1]}"
    return repr(value)


def _xattr_diff(a: Mapping[str, bytes], b: Mapping[str, bytes], names: tuple[str, str]) -> str:
    parts = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            parts.append(f"{key}: {a.get(key)!r} != {b.get(key)!r}")
    return f"xattrs ({names[0]} vs {names[1]}) " + ", ".join(parts)


def compare(
    a: Mapping[str, Node],
    b: Mapping[str, Node],
    *,
    fields: Iterable[str] = DEFAULT_FIELDS,
    ignore: Iterable[str] = (),
    names: tuple[str, str] = ("a", "b"),
) -> list[str]:
    """Differences between two snapshots, one readable line each; [] means equal.

    ``fields`` are the Node fields compared (default ``DEFAULT_FIELDS``); ``ignore``
    removes fields, either for every node (``"mtime_ns"``) or for one node type
    (``"size@dir"``, ``"nlink@dir"``). ``type`` and ``error`` are always compared
    unless ignored explicitly. ``names`` label the two sides in the messages.
    """
    wanted, wanted_typed = _parse_fields(fields)
    skipped, skipped_typed = _parse_fields(ignore)
    out: list[str] = []
    for path in sorted(set(a) | set(b)):
        x, y = a.get(path), b.get(path)
        if x is None or y is None:
            side, node = (names[1], y) if x is None else (names[0], x)
            assert node is not None
            out.append(f"{path}: only in {side} ({describe(node)})")
            continue
        if x.type != y.type and "type" not in skipped:
            out.append(f"{path}: type {x.type} != {y.type}")
            continue
        for name in sorted(ALL_FIELDS):
            if name == "type":
                continue
            if name != "error" and name not in wanted and (name, x.type) not in wanted_typed:
                continue
            if name in skipped or (name, x.type) in skipped_typed:
                continue
            va, vb = getattr(x, name), getattr(y, name)
            if va == vb:
                continue
            if name == "xattrs" and isinstance(va, dict) and isinstance(vb, dict):
                out.append(f"{path}: {_xattr_diff(va, vb, names)}")
            else:
                out.append(f"{path}: {name} {_fmt(name, va)} != {_fmt(name, vb)}")
    return out


def check_ino_consistency(snap: Mapping[str, Node]) -> list[str]:
    """Problems with inode numbers inside one snapshot.

    Each name's ``st_ino`` must equal the ``d_ino`` readdir gave for it, and names
    sharing (st_dev, st_ino) must be non-directories with equal metadata and content
    and a link count of at least the number of such names.
    """
    out: list[str] = []
    groups: dict[tuple[int | None, int], list[str]] = {}
    for path, node in snap.items():
        if node.ino is None:
            continue
        if node.d_ino is not None and node.d_ino != node.ino:
            out.append(f"{path}: st_ino {node.ino} != d_ino {node.d_ino}")
        groups.setdefault((node.dev, node.ino), []).append(path)
    same = ("type", "mode", "uid", "gid", "size", "sha256", "target", "nlink", "mtime_ns")
    for (_, ino), group in sorted(groups.items(), key=lambda kv: kv[1]):
        if len(group) < 2:
            continue
        first = snap[group[0]]
        if first.type == "dir":
            out.append(f"directories share st_ino {ino}: {', '.join(group)}")
            continue
        for other in group[1:]:
            node = snap[other]
            for name in same:
                if getattr(node, name) != getattr(first, name):
                    out.append(
                        f"{group[0]} and {other} share st_ino {ino} but differ in {name}:"
                        f" {_fmt(name, getattr(first, name))} != {_fmt(name, getattr(node, name))}"
                    )
        if first.nlink is not None and first.nlink < len(group):
            out.append(f"st_ino {ino} has nlink {first.nlink} but {len(group)} names: {group}")
    return out


def describe(node: Node) -> str:
    """A one-line summary of a node."""
    if node.type == "error":
        return f"error {node.error}"
    parts = [node.type, _fmt("mode", node.mode), f"{node.uid}:{node.gid}"]
    if node.type == "file":
        parts.append(f"size={node.size} sha256={(node.sha256 or '-')[:12]}")
    elif node.type == "symlink":
        parts.append(f"-> {node.target}")
    elif node.rdev is not None:
        parts.append(f"rdev={_fmt('rdev', node.rdev)}")
    parts.append(f"nlink={node.nlink} mtime_ns={node.mtime_ns}")
    if node.xattrs:
        parts.append(f"xattrs={sorted(node.xattrs)}")
    if node.error:
        parts.append(f"error={node.error}")
    return " ".join(parts)


def render(snap: Mapping[str, Node]) -> str:
    """The whole snapshot, one ``path: summary`` line per node (for failure output)."""
    return "\n".join(f"{path}: {describe(node)}" for path, node in snap.items())
