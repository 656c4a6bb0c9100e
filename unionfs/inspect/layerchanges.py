"""What one layer of a stack does to the layers below it: added, changed, removed.

A layer's changes are `changes.walk`'s answer for that layer over the layers
below it, exactly as `unionfs diff` reads a container's upper layer over its
image: the two views come from `UnionFS.list_dir`, so whiteouts in every form,
opaque directories and the other merge rules are the mount's own. Each
`LayerChange` adds what the merged views know of the entry:

* ``A``/``C``: the layer's own entry at the path (its type, and its size if a
  regular file). Every directory the layer holds is ``C`` (or ``A``), as in
  `unionfs diff`;
* ``D``, and ``C`` of a directory replaced by a non-directory or back: the
  regular files and other non-directories of the view below that the layer
  removes there (`LayerChange.removed`, each with its size and layer), read
  from the view below through `changes.entries`. A directory removed by a
  whiteout, and the children an opaque directory cuts off (``D`` each), list
  everything under them.

`prefix` is a stack as of one of its layers: that layer and the ones below, as
an image's layer N is seen by the build step that made layer N+1.
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

from unionfs.errors import UnionfsError
from unionfs.fs.events import file_type
from unionfs.fs.inodes import Node
from unionfs.fs.vfs import UnionFS
from unionfs.inspect.changes import ChangeKind, entries, open_union, walk
from unionfs.inspect.stack import Stack

_DOTS = (b".", b"..")


@dataclass(frozen=True, slots=True)
class Removed:
    """A non-directory of the view below that a layer removes: its path, type,
    size (regular files; 0 for the others) and the stack index of its layer."""

    path: str
    type: str
    size: int
    layer: int


@dataclass(frozen=True, slots=True)
class LayerChange:
    """One path a layer changes (`kind` as `unionfs diff` says it).

    `type` is the layer's entry (None for ``D``), `size` its bytes if it is a
    regular file (else 0); `removed` lists the non-directories of the view
    below that the change takes away (empty for an ``A``, or a ``C`` of a
    non-directory over a non-directory or of a directory over a directory:
    the overwritten copy of a file is not removed, it is shadowed).
    """

    kind: ChangeKind
    path: str
    type: str | None
    size: int
    removed: tuple[Removed, ...] = ()


def prefix(stack: Stack, index: int) -> Stack:
    """`stack` as of its layer `index`: that layer (now the top, index 0) and
    those below it, each keeping its key and label, so that `explain` and
    `tree` over it name layers as over the whole stack."""
    if not 0 <= index < len(stack.layers):
        raise UnionfsError(f"no layer at position {index} in {stack.what}")
    if index == 0:
        return stack
    layers = tuple(dataclasses.replace(la, index=i) for i, la in enumerate(stack.layers[index:]))
    return dataclasses.replace(stack, layers=layers, what=f"{stack.what} as of {layers[0].short}")


def _size(node: Node) -> int:
    return node.st.st_size if stat.S_ISREG(node.st.st_mode) else 0


def _non_dirs(fs: UnionFS, node: Node, path: bytes, offset: int) -> Iterator[Removed]:
    """Every non-directory of `fs`'s view at or under `path` (`node`); layers
    shifted by `offset` to the whole stack's indexes."""
    if not stat.S_ISDIR(node.st.st_mode):
        yield Removed(os.fsdecode(path), file_type(node.st.st_mode), _size(node),
                      node.top_layer + offset)  # fmt: skip
        return
    pending = [(path, node)]
    while pending:
        where, dir_node = pending.pop()
        found = entries(fs, dir_node, where) or {}
        for name, child in sorted(found.items()):
            child_path = where + b"/" + name
            if stat.S_ISDIR(child.st.st_mode):
                pending.append((child_path, child))
            else:
                yield Removed(os.fsdecode(child_path), file_type(child.st.st_mode), _size(child),
                              child.top_layer + offset)  # fmt: skip


def layer_changes(stack: Stack, index: int) -> list[LayerChange]:
    """What layer `index` of `stack` (0 = top) changes in the view of the layers
    below it, sorted by path. The bottom layer adds everything it holds."""
    if not 0 <= index < len(stack.layers):
        raise UnionfsError(f"no layer at position {index} in {stack.what}")
    dirs = [la.path for la in stack.layers[index:]]
    for d in dirs:
        if not d.is_dir():
            raise UnionfsError(f"layer directory {d} is missing")
    below = index + 1  # the old view's layer 0 is the stack's layer index + 1
    out: list[LayerChange] = []
    with ExitStack() as es:
        new = open_union(es, dirs)
        old = open_union(es, dirs[1:]) if len(dirs) > 1 else None
        for change, node, was in walk(new, old):
            kind, path = change.kind, change.path
            type_ = file_type(node.st.st_mode) if node is not None else None
            size = _size(node) if node is not None else 0
            removed: tuple[Removed, ...] = ()
            if old is not None and was is not None:
                was_dir = stat.S_ISDIR(was.st.st_mode)
                is_dir = node is not None and stat.S_ISDIR(node.st.st_mode)
                if node is None or was_dir != is_dir:
                    removed = tuple(_non_dirs(old, was, os.fsencode(path), below))
            out.append(LayerChange(kind, path, type_, size, removed))
    out.sort(key=lambda c: os.fsencode(c.path))
    return out


def layer_bytes(changes: list[LayerChange]) -> int:
    """The bytes of the regular files a layer holds, from its changes."""
    return sum(c.size for c in changes if c.kind != "D")
