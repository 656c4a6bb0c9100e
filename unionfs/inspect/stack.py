"""The layers of a union as a person knows them, and the one numbering every command shows.

A `Stack` names the layers of a union (top first) the way a person knows them.
Lower layers are numbered from the bottom, as docker numbers an image's layers
and `unionfs history` counts them (1 = the bottom, oldest layer): a store
image's are ``layer 3 of 4 (sha256:abcd1234abcd), made by: RUN ...`` with the
history step that made it; the ``--lower`` dirs of a plain mount, given top
first on the command line, are ``lower 1`` (the last ``--lower``, the bottom)
to ``lower N`` (the first, the top). A writable layer is ``upper``: "the
container's upper layer" of a container, "the upper layer" of a plain mount's
``--upper``. These keys (a number or ``upper``) are what `unionfs tree --layer`
takes, what `tree`'s legend shows and what JSON output names.

Every command names a layer through its `StackLayer`: `tree` and `explain`
directly; `events` and `stats` too, whose daemon counts its layers by stack
index (0 = the top, the upper layer of a writable mount): the command
translates each index with the stack of the mount (`mount_stack`). A stack's
`StackLayer.index` is that same index, and is never shown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from unionfs.errors import UnionfsError
from unionfs.fuse.runstate import MountState
from unionfs.inspect.history import history_rows
from unionfs.store.records import ContainerRecord, ImageRecord, short_id
from unionfs.store.store import Store

_STEP_WIDTH = 60


@dataclass(frozen=True)
class StackLayer:
    """One layer of a stack as a person names it.

    `index` is the position in the stack, 0 = top (as `merge.Copy.layer` and
    the daemon's events and counters); it is never shown. `key` is what
    ``--layer`` takes and JSON output uses (``upper``, or the layer's number,
    as `tree`'s legend shows it); `short` names it inside a sentence (``layer 3``); `label`
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
    """Plain layer dirs: `lowers` top first, as the command line gives them, but
    numbered from the bottom like an image's layers (``lower 1`` = the bottom,
    the last ``--lower``), and an upper."""
    layers: list[StackLayer] = []
    if upper is not None:
        layers.append(
            StackLayer(0, upper, "upper", "the upper layer", f"the upper layer ({upper})")
        )
    n = len(lowers)
    for position, p in enumerate(lowers):
        number = n - position
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
