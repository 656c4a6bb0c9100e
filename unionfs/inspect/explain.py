"""Why the merged view looks as it does: where every entry comes from and what it hides.

A `Stack` names the layers of a union (top first) the way a person knows them:
the layers of a store image are numbered as docker numbers them (1 = the bottom,
oldest layer; ``layer 3 of 4 (sha256:abcd1234abcd), made by: RUN ...`` with the
history step that made it), a container's writable layer is "the container's
upper layer", and the ``--lower`` dirs of a plain mount are numbered in the
order the command line gives them (``lower 1`` = the top, the first
``--lower``; its ``--upper`` is "the upper layer"). These numbers (or
``upper``) are what `unionfs tree --layer` takes and what JSON output names.

A `StackView` opens the layers once and answers two questions:

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

import errno
import os
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from unionfs.errors import UnionfsError
from unionfs.fs import layer as io
from unionfs.fs import whiteout
from unionfs.fs.inodes import ROOT_INO, Node, origin_key
from unionfs.fs.layer import Layer
from unionfs.fs.merge import Kind, Resolution, Stop
from unionfs.fs.upper import ORIGIN_XATTR, unpack_origin
from unionfs.fs.vfs import UnionFS
from unionfs.fuse.runstate import MountState
from unionfs.inspect.history import history_rows
from unionfs.store.store import ContainerRecord, ImageRecord, Store, short_id

Status = Literal["visible", "merged", "shadowed", "hidden", "whiteout"]
CauseKind = Literal["whiteout", "opaque", "nondir", "above", "reserved"]
_DOTS = (b".", b"..")
_STEP_WIDTH = 60

# -- the stack --------------------------------------------------------------------------


@dataclass(frozen=True)
class StackLayer:
    """One layer of a stack as a person names it.

    `index` is the position in the stack, 0 = top (as `merge.Copy.layer`);
    `key` is what ``--layer`` takes and JSON output uses (``upper``, or the
    layer's number); `short` names it inside a sentence (``layer 3``); `label`
    names it in full (``layer 3 of 4 (sha256:abcd1234abcd), made by: ...``).
    """

    index: int
    path: Path
    key: str
    short: str
    label: str
    diff_id: str | None = None
    created_by: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "key": self.key,
            "label": self.label,
            "path": str(self.path),
            "diff_id": self.diff_id,
            "created_by": self.created_by,
        }


@dataclass(frozen=True)
class Stack:
    """The layers of a union, top first, and what they are (`what`, for headings)."""

    layers: tuple[StackLayer, ...]
    what: str

    @property
    def has_upper(self) -> bool:
        """Whether the top layer is a writable (container) layer, where copy-ups land."""
        return bool(self.layers) and self.layers[0].key == "upper"

    def layer(self, index: int) -> StackLayer:
        return self.layers[index]

    def by_key(self, key: str) -> StackLayer:
        """The layer a person named (``3``, ``upper``), or a one-line error."""
        for la in self.layers:
            if la.key == key.strip().lower():
                return la
        keys = ", ".join(la.key for la in self.layers)
        raise UnionfsError(f"no layer {key} in {self.what}: its layers are {keys}")


def dir_stack(lowers: Sequence[Path], upper: Path | None = None, what: str = "") -> Stack:
    """Plain layer dirs: lowers top first (``lower 1`` = the top), and an upper."""
    layers: list[StackLayer] = []
    if upper is not None:
        layers.append(
            StackLayer(0, upper, "upper", "the upper layer", f"the upper layer ({upper})")
        )
    n = len(lowers)
    for number, p in enumerate(lowers, 1):
        layers.append(
            StackLayer(
                len(layers), p, str(number), f"lower {number}", f"lower {number} of {n} ({p})"
            )
        )
    return Stack(tuple(layers), what or f"{n} layer dir{'s' if n != 1 else ''}")


def _step_text(created_by: str) -> str:
    text = " ".join(created_by.split())
    return text if len(text) <= _STEP_WIDTH else text[: _STEP_WIDTH - 1] + "…"


def _image_layers(
    store: Store, diff_ids: Sequence[str], steps: Mapping[int, str], first_index: int
) -> list[StackLayer]:
    """A store image's layers (`diff_ids` bottom first) as stack layers, top first;
    `steps` maps a layer's number (1 = bottom) to the history step that made it."""
    n = len(diff_ids)
    out: list[StackLayer] = []
    for number in range(n, 0, -1):
        diff_id = diff_ids[number - 1]
        step = steps.get(number) or None
        label = f"layer {number} of {n} (sha256:{short_id(diff_id)})"
        if step:
            label += f", made by: {_step_text(step)}"
        out.append(
            StackLayer(
                first_index + len(out), store.layer_path(diff_id), str(number),
                f"layer {number}", label, diff_id, step,
            )
        )  # fmt: skip
    return out


def history_steps(store: Store, image: ImageRecord) -> dict[int, str]:
    """The history step (``created_by``) that made each layer, by layer number (1 = bottom)."""
    return {
        int(row["layer_index"]): str(row["created_by"])
        for row in history_rows(store, image)
        if row["layer"] and row["created_by"]
    }


def _image_name(store: Store, image: ImageRecord) -> str:
    tags = store.tags_of(image.id)
    return str(tags[0]) if tags else short_id(image.id)


def image_stack(store: Store, image: ImageRecord) -> Stack:
    """An image of the store: its layers, named by docker's count and history."""
    store.lowers(image.diff_ids)  # a one-line error for a layer missing from the store
    layers = _image_layers(store, image.diff_ids, history_steps(store, image), 0)
    return Stack(tuple(layers), f"image {_image_name(store, image)}")


def container_stack(store: Store, container: ContainerRecord) -> Stack:
    """A container of the store: its upper layer over its image's layers."""
    store.lowers(container.diff_ids)
    image = store.image(container.image)
    steps = (
        history_steps(store, image)
        if image is not None and image.diff_ids == container.diff_ids
        else {}
    )
    upper = StackLayer(
        0,
        store.container_upper(container),
        "upper",
        "the upper layer",
        "the container's upper layer",
    )
    layers = [upper, *_image_layers(store, container.diff_ids, steps, 1)]
    return Stack(tuple(layers), f"container {container.name} ({container.image_ref})")


def store_stack(store: Store, text: str) -> Stack:
    """A container (first, as `unionfs mount` looks) or an image of the store."""
    container = store.find_container(text)
    if container is not None:
        return container_stack(store, container)
    try:
        image = store.resolve_image(text)
    except UnionfsError:
        raise UnionfsError(f"no such container or image: {text}") from None
    return image_stack(store, image)


def mount_stack(state: MountState) -> Stack:
    """The layers of a live mount; a store container's or image's mount is named
    as the store names it, plain dirs as ``lower N`` and ``upper``."""
    found = _store_mount_stack(state)
    if found is not None:
        return found
    upper = Path(state.upper) if state.upper else None
    return dir_stack([Path(p) for p in state.lowers], upper, f"the mount on {state.mountpoint}")


def _store_root(path: Path, kind: Literal["layer", "upper"]) -> Path | None:
    """The store that holds `path` as a layer's ``layers/<hex>/diff`` or a
    container's ``containers/<id>/upper``, or None."""
    want = ("diff", "layers") if kind == "layer" else ("upper", "containers")
    if path.name != want[0] or path.parent.parent.name != want[1]:
        return None
    root = path.parents[2]
    return root if (root / "store.json").is_file() else None


def _store_mount_stack(state: MountState) -> Stack | None:
    lowers = [Path(p) for p in state.lowers]
    upper = Path(state.upper) if state.upper else None
    if upper is None and lowers and _store_root(lowers[0], "upper") is not None:
        upper, lowers = lowers[0], lowers[1:]  # a container mounted --read-only
    roots = {_store_root(p, "layer") for p in lowers}
    if upper is not None:
        roots.add(_store_root(upper, "upper"))
    if len(roots) != 1 or None in roots:
        return None
    root = roots.pop()
    assert root is not None
    store = Store(root)
    diff_ids = tuple("sha256:" + p.parent.name for p in reversed(lowers))
    where = f" on {state.mountpoint}"
    if upper is not None:
        for c in store.containers():
            if store.container_upper(c) == upper and c.diff_ids == diff_ids:
                found = container_stack(store, c)
                return Stack(found.layers, found.what + where)
        return None
    for image in store.images():
        if image.diff_ids == diff_ids:
            found = image_stack(store, image)
            return Stack(found.layers, found.what + where)
    return Stack(tuple(_image_layers(store, diff_ids, {}, 0)), "store layers" + where)


# -- what an explanation says -------------------------------------------------------------


@dataclass(frozen=True)
class Cause:
    """What keeps a copy out of the merged view (or what it loses to).

    `kind`: ``whiteout`` (a whiteout at `path`), ``opaque`` (the opaque
    directory `path` cuts off the layers below it), ``nondir`` (a
    non-directory at `path` ends the directories' merge there), ``above`` (a
    copy at the same path in a higher layer wins), ``reserved`` (``.wh.``
    names are never shown). `path` is the copy's own path or one of its
    parents; `form` says how a whiteout or opaque marker is written.
    """

    kind: CauseKind
    layer: int
    path: str
    form: str | None = None

    def to_json(self, stack: Stack) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "layer": stack.layer(self.layer).key,
            "path": self.path,
            "form": self.form,
        }


@dataclass(frozen=True)
class CopyInfo:
    """What one layer holds at a path, and its fate in the merged view.

    `status`: ``visible`` (the copy shown), ``merged`` (a directory merged into
    the visible one), ``shadowed``/``hidden`` (see `by`), ``whiteout`` (a
    whiteout that takes effect: it hides what is below, if anything). `form`
    is a whiteout's form; `opaque` an opaque directory's marker.
    """

    layer: int
    type: str
    status: Status
    by: Cause | None = None
    form: str | None = None
    opaque: str | None = None
    mode: int | None = None
    size: int | None = None

    def to_json(self, stack: Stack) -> dict[str, Any]:
        return {
            "layer": stack.layer(self.layer).key,
            "type": self.type,
            "status": self.status,
            "by": self.by.to_json(stack) if self.by else None,
            "form": self.form,
            "opaque": self.opaque,
            "mode": f"{self.mode:04o}" if self.mode is not None else None,
            "size": self.size,
        }


@dataclass(frozen=True)
class Attrs:
    """The visible entry's type and metadata."""

    type: str
    mode: int
    uid: int
    gid: int
    size: int
    nlink: int
    mtime_ns: int
    target: str | None = None
    rdev: tuple[int, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "mode": f"{self.mode:04o}",
            "uid": self.uid,
            "gid": self.gid,
            "size": self.size,
            "nlink": self.nlink,
            "mtime_ns": self.mtime_ns,
            "target": self.target,
            "rdev": list(self.rdev) if self.rdev else None,
        }


@dataclass(frozen=True)
class UpperInfo:
    """How the upper layer's visible copy relates to the layers below it.

    `relation`: ``copied-up`` (a lower copy of the same type is below it),
    ``replaced`` (a lower copy of another type, or a directory made again
    over a deleted one), ``created`` (no lower layer shows this path).
    `origin`: whether the copy-up origin recorded on the upper copy
    (``trusted.overlay.unionfs.origin``) names `layer`'s copy (``matches``),
    something else (``other``), or is not recorded (``none``).
    """

    relation: Literal["copied-up", "replaced", "created"]
    layer: int | None
    origin: Literal["matches", "other", "none"]

    def to_json(self, stack: Stack) -> dict[str, Any]:
        return {
            "relation": self.relation,
            "layer": stack.layer(self.layer).key if self.layer is not None else None,
            "origin": self.origin,
        }


@dataclass(frozen=True)
class Blocked:
    """The first parent of a path that is not a directory of the merged view.

    `status`: ``nondir`` (a visible non-directory from `layer`), ``hidden``
    (the top real copy, in `layer`, is hidden: see `by`), ``deleted`` (only
    whiteouts, the top one in `layer`), ``absent`` (no layer has it).
    """

    path: str
    status: Literal["nondir", "hidden", "deleted", "absent"]
    layer: int | None = None
    type: str | None = None
    by: Cause | None = None
    form: str | None = None

    def to_json(self, stack: Stack) -> dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status,
            "layer": stack.layer(self.layer).key if self.layer is not None else None,
            "type": self.type,
            "by": self.by.to_json(stack) if self.by else None,
            "form": self.form,
        }


@dataclass(frozen=True)
class Explanation:
    """Everything the stack says about one path.

    `status`: ``visible``; ``hidden`` (some layer holds a real copy, none is
    shown); ``absent`` (no layer holds anything but, perhaps, whiteouts).
    `copies` lists every layer that holds something at the path, top first.
    """

    stack: Stack
    path: str
    status: Literal["visible", "hidden", "absent"]
    copies: tuple[CopyInfo, ...]
    entry: Attrs | None = None
    layer: int | None = None
    reason: Cause | None = None
    blocked: Blocked | None = None
    upper: UpperInfo | None = None
    reserved: bool = False

    @property
    def merged_layers(self) -> tuple[int, ...]:
        return tuple(c.layer for c in self.copies if c.status in ("visible", "merged"))

    @property
    def unknown(self) -> bool:
        """Nothing in any layer relates to the path: neither it nor its first
        missing parent is held by any layer (not even as a whiteout)."""
        return (
            self.status == "absent" and self.blocked is not None and self.blocked.status == "absent"
        )

    def to_json(self) -> dict[str, Any]:
        s = self.stack
        return {
            "path": self.path,
            "status": self.status,
            "layer": s.layer(self.layer).key if self.layer is not None else None,
            "entry": self.entry.to_json() if self.entry else None,
            "merged_layers": [s.layer(i).key for i in self.merged_layers]
            if self.entry and self.entry.type == "directory"
            else None,
            "copies": [c.to_json(s) for c in self.copies],
            "reason": self.reason.to_json(s) if self.reason else None,
            "blocked": self.blocked.to_json(s) if self.blocked else None,
            "upper": self.upper.to_json(s) if self.upper else None,
            "reserved": self.reserved,
            "stack": {"what": s.what, "layers": [la.to_json() for la in s.layers]},
        }


@dataclass
class TreeEntry:
    """One entry of `StackView.tree`.

    A visible entry has `hidden_by` None, `layer` = its visible copy's layer
    and, for a directory, `layers` = every layer merged into it. A hidden
    entry (with ``show_hidden``) has `layer` = its top hidden copy's layer and
    `hidden_by` = what hides it. `children` is None where the depth limit
    stopped the walk (or for a non-directory). `opaque` is the layer whose
    opaque copy of this directory cuts off the layers below it.
    """

    name: str
    path: str
    type: str
    layer: int
    layers: tuple[int, ...] = ()
    hidden_by: Cause | None = None
    target: str | None = None
    opaque: int | None = None
    children: list[TreeEntry] | None = None

    def to_json(self, stack: Stack) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "type": self.type,
            "layer": stack.layer(self.layer).key,
            "layers": [stack.layer(i).key for i in self.layers],
            "hidden_by": self.hidden_by.to_json(stack) if self.hidden_by else None,
            "target": self.target,
            "opaque": stack.layer(self.opaque).key if self.opaque is not None else None,
            "children": [c.to_json(stack) for c in self.children]
            if self.children is not None
            else None,
        }

    def walk(self) -> Iterator[TreeEntry]:
        """This entry and everything below it, depth first."""
        yield self
        for c in self.children or ():
            yield from c.walk()


def type_name(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISCHR(mode):
        return "char device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "unknown"


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
    stats: dict[int, os.stat_result]
    dir_fds: dict[int, int] = field(default_factory=dict)

    def close(self) -> None:
        for fd in self.dir_fds.values():
            os.close(fd)
        self.dir_fds = {}


def _whiteout_form(dirfd: int, name: bytes, st: os.stat_result | None) -> str:
    """How a whiteout that `layer.observe` found is written (for people)."""
    if st is None:
        return f"OCI {os.fsdecode(whiteout.OCI_PREFIX + name)} entry"
    if whiteout.is_chardev_whiteout(st):
        return "char device 0/0"
    for attr in whiteout.WHITEOUT_XATTRS:
        if io.getxattr_at(dirfd, name, attr) is not None:
            return f"xattr {attr.decode()}"
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
        found: list[tuple[int, Kind, os.stat_result | None, str | None, str | None]] = []
        try:
            for index in sorted(here.fds):
                fd = here.fds[index]
                copy, st = io.observe(index, fd, name)
                form = opaque = None
                if copy.kind is Kind.ABSENT:
                    continue
                if copy.kind is Kind.WHITEOUT:
                    form = _whiteout_form(fd, name, st)
                elif copy.kind is Kind.DIR:
                    dfd = io.open_dir_at(fd, name)
                    out.dir_fds[index] = dfd
                    opaque = _opaque_form(dfd)
                if st is not None and copy.kind is not Kind.WHITEOUT:
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
                    CopyInfo(index, type_name(mode), status, by, None, opaque,
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
        top = os.fstat(self._layers[0].root_fd)
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
        return Explanation(
            self.stack, path, "visible", copies, _attrs(st, target), top, None, None, upper
        )

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
        recorded = unpack_origin(io.getxattr_at(here.fds[0], name, ORIGIN_XATTR))
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
            root.children = self._children(here, 1, depth, show_hidden, layer)
            return root
        finally:
            here.close()

    def _entry(self, path: str, name: bytes, node: Node) -> TreeEntry:
        mode = node.st.st_mode
        target = os.fsdecode(self.fs.readlink(node.ino)) if stat.S_ISLNK(mode) else None
        layers = tuple(c.layer for c in node.copies) if stat.S_ISDIR(mode) else (node.top_layer,)
        return TreeEntry(os.fsdecode(name), path, type_name(mode), node.top_layer, layers,
                         target=target)  # fmt: skip

    def _children(
        self,
        here: _Here,
        level: int,
        depth: int | None,
        show_hidden: bool,
        only: int | None,
    ) -> list[TreeEntry]:
        assert here.node is not None
        visible = {n: node for n, node in self.fs.list_dir(here.node) if n not in _DOTS}
        names = set(visible)
        if show_hidden:
            for fd in here.fds.values():
                for n, _ in io.scan_dir(fd):
                    if n != whiteout.OCI_OPAQUE:
                        names.add(whiteout.oci_whiteout_target(n) or n)
        out: list[TreeEntry] = []
        for name in sorted(names):
            path = os.fsdecode(_join(here.path, name))
            node = visible.get(name)
            if node is None:
                entry = self._hidden_entry(here, name)
                if entry is not None and (
                    only is None
                    or only == entry.layer
                    or (entry.hidden_by is not None and only == entry.hidden_by.layer)
                ):
                    out.append(entry)
                continue
            entry = self._entry(path, name, node)
            is_dir = stat.S_ISDIR(node.st.st_mode)
            if is_dir and (depth is None or level < depth):
                if show_hidden:
                    info = self._look(here, name)
                    entry.opaque = _opaque_layer(info.res)
                    sub = self._descend(here, name, info)
                    try:
                        entry.children = self._children(sub, level + 1, depth, show_hidden, only)
                    finally:
                        sub.close()
                elif only is None or only in entry.layers:
                    sub = _Here(_join(here.path, name), node, {}, {}, owned=False)
                    entry.children = self._children(sub, level + 1, depth, show_hidden, only)
            if only is None or entry.layer == only or entry.children or entry.opaque == only:
                out.append(entry)
        return out

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


def _opaque_layer(res: Resolution | None) -> int | None:
    """The layer whose opaque directory ended a lookup, if one did."""
    if res is None or res.stop is not Stop.OPAQUE or res.stopped_by is None:
        return None
    return res.stopped_by.layer


def _attrs(st: os.stat_result, target: str | None) -> Attrs:
    mode = st.st_mode
    rdev = None
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
    return Attrs(type_name(mode), stat.S_IMODE(mode), st.st_uid, st.st_gid, st.st_size,
                 st.st_nlink, st.st_mtime_ns, target, rdev)  # fmt: skip
