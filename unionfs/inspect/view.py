"""`StackView`: explain and tree, answered by the filesystem core's own merge.

A `StackView` opens the layers of a `Stack` once and answers two questions:

* `StackView.explain`: for one path, every layer that holds something there
  (top first), what each copy is (a file, a directory, a whiteout in one of
  its three forms, an opaque directory) and its fate: visible, merged into the
  visible directory, shadowed by a copy above, hidden by a whiteout or cut off
  by an opaque directory or a non-directory, at the path itself or at one of
  its parents. For a container's upper layer it says whether the visible copy
  was copied up (and whether its recorded origin is that lower copy).
* `StackView.tree`: the merged tree with every entry labelled by its layer,
  optionally with what whiteouts and opaque directories hide.

Which copies are visible is never decided here: a read-only `UnionFS` over the
same directories answers (`resolve_child`, `list_dir`), so whiteouts, opaque
directories and the other merge rules are the mount's own. This module adds
what the mount does not need: the copies it never looks at (those below the
point where a lookup stops), and the name of the entry that stopped it.
A copy below the stop is shadowed or hidden by exactly that entry; a copy in a
layer whose parent directory is not part of the merged parent inherits the
reason its parent was left out.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

from unionfs.errors import UnionfsError
from unionfs.fs import layer as io
from unionfs.fs import overridestat, whiteout
from unionfs.fs.events import file_type, whiteout_form
from unionfs.fs.inodes import ROOT_INO, Node, StatLike, origin_key
from unionfs.fs.layer import Layer
from unionfs.fs.merge import Kind, Location, Resolution, Stop
from unionfs.fs.upper import read_origin, unpack_origin
from unionfs.fs.vfs import UnionFS
from unionfs.inspect.answers import (
    Attrs,
    Blocked,
    Cause,
    CopyInfo,
    Explanation,
    Renamed,
    Status,
    TreeEntry,
    UpperInfo,
)
from unionfs.inspect.stack import Stack

_DOTS = (b".", b"..")


def split_path(path: str | bytes) -> list[bytes]:
    """The names of an absolute path inside the union (``..`` taken lexically)."""
    raw = os.fsencode(path)
    parts: list[bytes] = []
    for name in raw.split(b"/"):
        if name in (b"", b"."):
            continue
        if name == b"..":
            if parts:
                parts.pop()
            continue
        parts.append(name)
    return parts


def _join(parent: bytes, name: bytes) -> bytes:
    return parent.rstrip(b"/") + b"/" + name


# -- reading the layers ---------------------------------------------------------------------


@dataclass
class _Here:
    """A directory path as the walk reaches it.

    `node` is its merged directory (None when the path is not one). `fds` holds
    the path open in every layer that has a directory there, whatever the
    merged view makes of it; `cut` says, for each of those layers whose
    directory is not merged into `node`, why not.
    """

    path: bytes
    node: Node | None
    fds: dict[int, int]
    cut: dict[int, Cause]
    owned: bool = True

    def close(self) -> None:
        if self.owned:
            for fd in self.fds.values():
                os.close(fd)
        self.fds = {}


@dataclass
class _Name:
    """One name in a `_Here`: the merge's answer and every layer's copy."""

    path: bytes
    res: Resolution | None
    copies: list[CopyInfo]
    stats: dict[int, StatLike]
    dir_fds: dict[int, int] = field(default_factory=dict)

    def close(self) -> None:
        for fd in self.dir_fds.values():
            os.close(fd)
        self.dir_fds = {}


@dataclass
class _Work:
    """An item of the tree walk: the directory `name` of `here` to read into
    `entry` (`here` is still open), or, without an entry, the closing of
    `here` once everything under it is read."""

    here: _Here
    name: bytes = b""
    entry: TreeEntry | None = None
    node: Node | None = None
    level: int = 0


@contextlib.contextmanager
def _located(
    layer: Layer, parent_fd: int | None, name: bytes, where: Location | None
) -> Iterator[tuple[int | None, bytes]]:
    """The directory holding a copy of `name` in `layer`, and its name there:
    `parent_fd` and `name`, unless a redirect placed the copy elsewhere (a
    sibling's name, or a path from the layer root). None when the layer has
    no such directory."""
    if where is None:
        yield parent_fd, name
    elif isinstance(where, bytes):
        yield parent_fd, where
    else:
        try:
            fd = io.open_path(layer.root_fd, where[:-1])
        except OSError:
            yield None, name
            return
        try:
            yield fd, where[-1]
        finally:
            os.close(fd)


def _whiteout_form(dirfd: int, name: bytes, st: os.stat_result | None) -> str:
    """How a whiteout that `layer.observe` found is written, as `whiteout_form`
    (and so the events) names it."""
    if st is None:
        return whiteout_form("oci", os.fsdecode(name))
    if whiteout.is_chardev_whiteout(st):
        return whiteout_form("chardev", os.fsdecode(name))
    for attr in whiteout.WHITEOUT_XATTRS:
        if io.getxattr_at(dirfd, name, attr) is not None:
            return whiteout_form(attr.decode(), os.fsdecode(name))
    return "whiteout"


def _opaque_form(fd: int) -> str | None:
    """How an opaque directory is marked, if `layer.is_opaque_dir` says it is."""
    if not io.is_opaque_dir(fd):
        return None
    forms = [
        f"xattr {attr.decode()}=y"
        for attr in whiteout.OPAQUE_XATTRS
        if io.fd_getxattr(fd, attr) == whiteout.OPAQUE_YES
    ]
    if io.lstat_at(fd, whiteout.OCI_OPAQUE) is not None:
        forms.append(f"OCI {whiteout.OCI_OPAQUE.decode()} entry")
    return " and ".join(forms)


def _changed(path: bytes) -> UnionfsError:
    return UnionfsError(f"{os.fsdecode(path)} changed while being read: try again")


class StackView:
    """A read-only union of a stack's layers, opened once; close it (or use `with`)."""

    def __init__(self, stack: Stack) -> None:
        if not stack.layers:
            raise ValueError("a stack needs at least one layer")
        self.stack = stack
        self._layers: list[Layer] = []
        try:
            for sl in stack.layers:
                if not sl.path.is_dir():
                    raise UnionfsError(f"layer directory {sl.path} is missing")
                self._layers.append(Layer.open(sl.index, sl.path))
            self.fs = UnionFS(self._layers)
        except BaseException:
            for la in self._layers:
                la.close()
            raise

    def close(self) -> None:
        self.fs.close()
        for la in self._layers:
            la.close()

    def __enter__(self) -> StackView:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- walking ------------------------------------------------------------------

    def _root(self) -> _Here:
        fds = {la.index: la.root_fd for la in self._layers}
        return _Here(b"/", self.fs.node(ROOT_INO), fds, {}, owned=False)

    def _look(self, here: _Here, name: bytes) -> _Name:
        """Every layer's copy of `name` in `here`, with its fate. The directory
        copies stay open in the result's `dir_fds` (close it, or `_descend`)."""
        path = _join(here.path, name)
        spath = os.fsdecode(path)
        reserved = whiteout.is_reserved_name(name)
        res: Resolution | None = None
        if here.node is not None and not reserved:
            res, _ = self.fs.resolve_child(here.node, name)
        out = _Name(path, res, [], {})
        found: list[tuple[int, Kind, StatLike | None, str | None, str | None]] = []
        # A renamed directory's lower copies are where its redirect leads.
        moved = dict(res.where) if res is not None else {}
        try:
            for index in sorted(set(here.fds) | set(moved)):
                with _located(self._layers[index], here.fds.get(index), name,
                              moved.get(index)) as (fd, own):  # fmt: skip
                    if fd is None:
                        continue
                    copy, st0 = io.observe(index, fd, own)
                    st: StatLike | None = st0
                    form = opaque = None
                    if copy.kind is Kind.ABSENT:
                        continue
                    if copy.kind is Kind.WHITEOUT:
                        form = _whiteout_form(fd, own, st0)
                    elif copy.kind is Kind.DIR:
                        dfd = io.open_dir_at(fd, own)
                        out.dir_fds[index] = dfd
                        opaque = _opaque_form(dfd)
                    if st is not None and copy.kind is not Kind.WHITEOUT:
                        if self.fs.override_stat and overridestat.may_carry(st):
                            value = io.getxattr_at(fd, own, overridestat.XATTR)
                            st = overridestat.shown(st, value)  # a rootless layer's owner
                        out.stats[index] = st
                    found.append((index, copy.kind, st, form, opaque))
            forms = {index: form or opaque for index, _, _, form, opaque in found}
            for index, kind, st, form, opaque in found:
                status, by = self._fate(here, spath, res, index, reserved, forms)
                if kind is Kind.WHITEOUT or st is None:
                    out.copies.append(CopyInfo(index, "whiteout", status, by, form))
                    continue
                mode = st.st_mode
                out.copies.append(
                    CopyInfo(index, file_type(mode), status, by, None, opaque,
                             stat.S_IMODE(mode), st.st_size)
                )  # fmt: skip
        except OSError as e:
            out.close()
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ESTALE):
                raise _changed(path) from None
            raise
        except BaseException:
            out.close()
            raise
        return out

    def _fate(
        self,
        here: _Here,
        path: str,
        res: Resolution | None,
        index: int,
        reserved: bool,
        forms: Mapping[int, str | None],
    ) -> tuple[Status, Cause | None]:
        """The status of layer `index`'s copy, from the merge's own resolution."""
        if reserved:
            return "hidden", Cause("reserved", index, path)
        if index in here.cut:
            return "hidden", here.cut[index]
        if res is None:
            raise _changed(here.path)
        visible = [c.layer for c in res.visible]
        if index in visible:
            return ("visible" if index == visible[0] else "merged"), None
        stopper = res.stopped_by.layer if res.stopped_by is not None else None
        if index == stopper:
            if res.stop is Stop.WHITEOUT:
                return "whiteout", None
            return "shadowed", Cause("above", visible[0], path)  # a non-dir below a dir
        if stopper is not None and stopper < index:
            if res.stop is Stop.WHITEOUT:
                return "hidden", Cause("whiteout", stopper, path, forms.get(stopper))
            if res.stop is Stop.OPAQUE:
                return "hidden", Cause("opaque", stopper, path, forms.get(stopper))
            return "hidden", Cause("nondir", stopper, path)
        if visible and visible[0] < index:
            return "shadowed", Cause("above", visible[0], path)
        raise _changed(os.fsencode(path))  # the layer changed between the two reads

    def _descend(self, here: _Here, name: bytes, info: _Name) -> _Here:
        """`here/name` as a directory to walk into; takes over `info.dir_fds`."""
        node: Node | None = None
        visible: set[int] = set()
        if info.res is not None and info.res.is_dir and here.node is not None:
            node = self.fs.lookup(here.node.ino, name)
            visible = {c.layer for c in info.res.visible}
        cut: dict[int, Cause] = {}
        by_layer = {c.layer: c for c in info.copies}
        for index in info.dir_fds:
            if index in visible:
                continue
            by = by_layer[index].by
            if by is None:
                raise _changed(info.path)
            if by.kind == "above":  # a non-directory above ends the directories here
                by = Cause("nondir", by.layer, by.path)
            cut[index] = by
        fds, info.dir_fds = info.dir_fds, {}
        return _Here(info.path, node, fds, cut)

    @staticmethod
    def _blocked(info: _Name) -> Blocked:
        path = os.fsdecode(info.path)
        if info.res is not None and info.res.exists:
            layer = info.res.visible[0].layer
            kind = next((c.type for c in info.copies if c.layer == layer), None)
            return Blocked(path, "nondir", layer, kind)
        real = [c for c in info.copies if c.type != "whiteout"]
        if real:
            return Blocked(path, "hidden", real[0].layer, real[0].type, real[0].by)
        if info.copies:
            top = info.copies[0]
            return Blocked(path, "deleted", top.layer, "whiteout", None, top.form)
        return Blocked(path, "absent")

    # -- explain ------------------------------------------------------------------

    def explain(self, path: str | bytes) -> Explanation:
        """Every layer's copy of `path` (absolute inside the union) and its fate."""
        parts = split_path(path)
        if not parts:
            return self._explain_root()
        here = self._root()
        blocked: Blocked | None = None
        try:
            for name in parts[:-1]:
                info = self._look(here, name)
                if blocked is None and (info.res is None or not info.res.is_dir):
                    blocked = self._blocked(info)
                nxt = self._descend(here, name, info)
                here.close()
                here = nxt
            info = self._look(here, parts[-1])
            try:
                return self._explanation(here, parts[-1], info, blocked)
            finally:
                info.close()
        finally:
            here.close()

    def _explain_root(self) -> Explanation:
        copies = []
        for la in self._layers:
            st = os.fstat(la.root_fd)
            copies.append(
                CopyInfo(la.index, "directory", "visible" if la.index == 0 else "merged",
                         mode=stat.S_IMODE(st.st_mode), size=st.st_size)
            )  # fmt: skip
        top = self.fs.inodes.root.st  # with a recorded owner and mode
        return Explanation(self.stack, "/", "visible", tuple(copies), _attrs(top, None), 0)

    def _explanation(
        self, here: _Here, name: bytes, info: _Name, blocked: Blocked | None
    ) -> Explanation:
        path = os.fsdecode(info.path)
        copies = tuple(info.copies)
        reserved = whiteout.is_reserved_name(name)
        real = [c for c in copies if c.type != "whiteout"]
        if info.res is None or not info.res.exists:
            status: Literal["hidden", "absent"] = "hidden" if real else "absent"
            reason = real[0].by if real else None
            return Explanation(self.stack, path, status, copies, None, None, reason, blocked,
                               None, reserved)  # fmt: skip
        top = info.res.visible[0].layer
        st = info.stats.get(top)
        if st is None:
            raise _changed(info.path)
        target = None
        if stat.S_ISLNK(st.st_mode):
            target = os.fsdecode(os.readlink(name, dir_fd=here.fds[top]))
        upper = self._upper_info(here, name, info, top)
        renamed = None
        if info.res.redirect is not None and info.res.where:
            value = os.fsdecode(info.res.redirect)
            if not value.startswith("/"):  # a sibling's name
                value = os.fsdecode(_join(here.path, info.res.redirect))
            renamed = Renamed(value, tuple(layer for layer, _ in info.res.where))
        return Explanation(
            self.stack, path, "visible", copies, _attrs(st, target), top, None, None, upper,
            renamed=renamed,
        )  # fmt: skip

    def _upper_info(self, here: _Here, name: bytes, info: _Name, top: int) -> UpperInfo | None:
        """What the container's upper copy was made from (only for an upper copy)."""
        if top != 0 or not self.stack.has_upper:
            return None
        below = None
        for c in info.copies:
            if c.layer == 0 or c.type == "whiteout":
                continue
            if c.status == "merged" or (c.by is not None and c.by.layer == 0):
                below = c
                break
        recorded = unpack_origin(read_origin(here.fds[0], name))
        origin: Literal["matches", "other", "none"] = "none"
        if recorded is not None:
            origin = "other"
            if below is not None and below.layer in info.stats:
                key = origin_key(self._layers[below.layer].fsid, info.stats[below.layer])
                if key == recorded:
                    origin = "matches"
        if below is None:
            return UpperInfo("created", None, origin)
        same = below.type == info.copies[0].type and (below.by is None or below.by.kind == "above")
        return UpperInfo("copied-up" if same else "replaced", below.layer, origin)

    # -- tree -----------------------------------------------------------------------

    def tree(
        self,
        path: str | bytes = "/",
        *,
        depth: int | None = None,
        show_hidden: bool = False,
        layer: int | None = None,
    ) -> TreeEntry:
        """The merged tree under `path`, each entry labelled by its layer.

        `depth` limits how many levels below `path` are read (None: all);
        `show_hidden` adds what whiteouts and opaque directories hide (as
        leaves: a hidden directory is not entered); `layer` keeps only what
        that layer contributes (its visible entries, and with `show_hidden`
        the copies it holds that are hidden and what its whiteouts and opaque
        directories hide), with their parent directories as context.
        """
        parts = split_path(path)
        here = self._root()
        opaque: int | None = None
        try:
            for name in parts:
                info = self._look(here, name)
                opaque = _opaque_layer(info.res)
                if info.res is None or not info.res.exists:
                    info.close()
                    raise UnionfsError(
                        f"{os.fsdecode(info.path)}: not in the merged view "
                        "(unionfs explain says why)"
                    )
                if not info.res.is_dir:
                    info.close()
                    assert here.node is not None
                    node = self.fs.lookup(here.node.ino, name)
                    return self._entry(os.fsdecode(info.path), name, node)
                nxt = self._descend(here, name, info)
                here.close()
                here = nxt
            assert here.node is not None
            root = self._entry(os.fsdecode(here.path), parts[-1] if parts else b"/", here.node)
            root.opaque = opaque if show_hidden else None
            root.children = self._children(here, depth, show_hidden, layer)
            return root
        finally:
            here.close()

    def _entry(self, path: str, name: bytes, node: Node) -> TreeEntry:
        mode = node.st.st_mode
        target = os.fsdecode(self.fs.readlink(node.ino)) if stat.S_ISLNK(mode) else None
        layers = tuple(c.layer for c in node.copies) if stat.S_ISDIR(mode) else (node.top_layer,)
        renamed = None
        if node.where and node.parent is not None:
            value = io.redirect_at(self.fs.dir_fd(node.parent, node.top_layer), node.name)
            if value is not None:
                parent = os.path.dirname(path.rstrip("/")) or "/"
                renamed = os.fsdecode(value)
                if not renamed.startswith("/"):  # a sibling's name
                    renamed = os.path.join(parent, renamed)
        return TreeEntry(os.fsdecode(name), path, file_type(mode), node.top_layer, layers,
                         target=target, renamed_from=renamed)  # fmt: skip

    def _children(
        self,
        top: _Here,
        depth: int | None,
        show_hidden: bool,
        only: int | None,
    ) -> list[TreeEntry]:
        """The entries under `top` (level 1 = its children), read without
        recursion: a tree of any depth is walked with one `_Here` open per level
        of the current path."""
        result: list[TreeEntry] = []
        work: list[_Work] = []
        try:
            self._read_dir(top, 1, depth, show_hidden, only, result, work)
            while work:
                item = work.pop()
                if item.entry is None:
                    item.here.close()
                    continue
                if show_hidden:
                    info = self._look(item.here, item.name)
                    item.entry.opaque = _opaque_layer(info.res)
                    sub = self._descend(item.here, item.name, info)
                else:
                    sub = _Here(_join(item.here.path, item.name), item.node, {}, {}, owned=False)
                work.append(_Work(sub))
                item.entry.children = []
                self._read_dir(sub, item.level, depth, show_hidden, only, item.entry.children, work)
        finally:
            for item in work:
                if item.entry is None:
                    item.here.close()
        if only is not None:
            result = _prune(result, only)
        return result

    def _read_dir(
        self,
        here: _Here,
        level: int,
        depth: int | None,
        show_hidden: bool,
        only: int | None,
        out: list[TreeEntry],
        work: list[_Work],
    ) -> None:
        """Append the entries of `here` (at `level`) to `out`, sorted, and queue
        the directories among them that the walk enters."""
        assert here.node is not None
        visible = {n: node for n, node in self.fs.list_dir(here.node) if n not in _DOTS}
        names = set(visible)
        if show_hidden:
            for fd in here.fds.values():
                for n, _ in io.scan_dir(fd):
                    if n != whiteout.OCI_OPAQUE:
                        names.add(whiteout.oci_whiteout_target(n) or n)
        entered: list[_Work] = []
        for name in sorted(names):
            path = os.fsdecode(_join(here.path, name))
            node = visible.get(name)
            if node is None:
                hidden = self._hidden_entry(here, name)
                if hidden is not None and (
                    only is None
                    or only == hidden.layer
                    or (hidden.hidden_by is not None and only == hidden.hidden_by.layer)
                ):
                    out.append(hidden)
                continue
            entry = self._entry(path, name, node)
            is_dir = stat.S_ISDIR(node.st.st_mode)
            if (
                is_dir
                and (depth is None or level < depth)
                and (show_hidden or only is None or only in entry.layers)
            ):
                entered.append(_Work(here, name, entry, node, level + 1))
            out.append(entry)
        work.extend(reversed(entered))

    def _hidden_entry(self, here: _Here, name: bytes) -> TreeEntry | None:
        """A name no layer shows: its top real copy and what hides it (None when
        the layers hold only whiteouts of it, which hide nothing)."""
        info = self._look(here, name)
        info.close()
        real = [c for c in info.copies if c.type != "whiteout"]
        if not real or real[0].by is None:
            return None
        top = real[0]
        return TreeEntry(os.fsdecode(name), os.fsdecode(info.path), top.type, top.layer,
                         hidden_by=top.by)  # fmt: skip


def _prune(entries: list[TreeEntry], only: int) -> list[TreeEntry]:
    """Keep what layer `only` contributes and the directories leading to it
    (bottom up, without recursion)."""

    def keep(e: TreeEntry) -> bool:
        return e.layer == only or bool(e.children) or e.opaque == only or e.hidden_by is not None

    order: list[TreeEntry] = []
    pending = list(entries)
    while pending:
        e = pending.pop()
        order.append(e)
        pending.extend(e.children or ())
    for e in reversed(order):  # every entry after its descendants
        if e.children:
            e.children = [c for c in e.children if keep(c)]
    return [e for e in entries if keep(e)]


def _opaque_layer(res: Resolution | None) -> int | None:
    """The layer whose opaque directory ended a lookup, if one did."""
    if res is None or res.stop is not Stop.OPAQUE or res.stopped_by is None:
        return None
    return res.stopped_by.layer


def _attrs(st: StatLike, target: str | None) -> Attrs:
    mode = st.st_mode
    rdev = None
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
    return Attrs(file_type(mode), stat.S_IMODE(mode), st.st_uid, st.st_gid, st.st_size,
                 st.st_nlink, st.st_mtime_ns, target, rdev)  # fmt: skip
