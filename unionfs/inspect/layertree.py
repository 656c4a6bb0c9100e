"""The merged tree as of one layer of a stack, each entry marked by what a layer did to it.

`LayerBrowser` answers what `unionfs browse` shows for a selected layer N of a
`Stack`: the merged view of N and the layers below it (`layerchanges.prefix`),
read by `StackView.tree` with what whiteouts and opaque directories hide, and
each entry marked by the layer that made it what it is there:

* a visible entry is ``added`` or ``changed`` by the layer its visible copy
  comes from, as that layer's own changes (`layerchanges.layer_changes`, the
  ``A``/``C`` of `unionfs diff`) say;
* a hidden entry is ``removed`` by the layer whose whiteout (or non-directory)
  hides it, or ``opaque``: cut off by that layer's opaque directory.

`tree(N, only=True)` keeps the entries that layer N marks (with their parent
directories as unmarked context): that layer's changes alone; `only=False` is
the whole merged tree as of N, every change of N and the layers below marked.
`StackView` decides what is visible and what hides what; this module only
names it. Every index in an answer is a position in the stack as of N (0 =
layer N), as `StackView` answers for that stack; `MarkedTree.stack` names
them. Changes are read once per layer and kept: `forget` drops a layer's
(a live container's upper layer changes while it is browsed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from unionfs.inspect.answers import Explanation, TreeEntry
from unionfs.inspect.changes import ChangeKind
from unionfs.inspect.layerchanges import LayerChange, layer_bytes, layer_changes, prefix
from unionfs.inspect.stack import Stack
from unionfs.inspect.view import StackView

Mark = Literal["added", "changed", "removed", "opaque"]
#: A mark as one letter: ``unionfs diff``'s for added, changed, deleted; O for opaque.
MARK_LETTERS: dict[Mark, str] = {"added": "A", "changed": "C", "removed": "D", "opaque": "O"}


@dataclass
class MarkedEntry:
    """A `TreeEntry` with its mark and the layer (index in the stack as of the
    selected layer; 0 = the selected layer) whose change it is. The root and
    context directories of a filtered tree have no mark."""

    entry: TreeEntry
    mark: Mark | None
    by: int | None
    children: list[MarkedEntry] | None = None

    @property
    def path(self) -> str:
        return self.entry.path

    @property
    def is_dir(self) -> bool:
        return self.children is not None

    def walk(self) -> Iterator[MarkedEntry]:
        """This entry and everything below it, depth first."""
        yield self
        for c in self.children or ():
            yield from c.walk()

    def find(self, path: str) -> MarkedEntry | None:
        for e in self.walk():
            if e.path == path:
                return e
        return None


@dataclass
class MarkedTree:
    """The tree as of layer `index` of the whole stack; `stack` is the stack
    as of that layer, which names the layers of `root`'s entries."""

    index: int
    stack: Stack
    root: MarkedEntry


class LayerBrowser:
    """A stack's layers, their changes and their marked trees, read on demand."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self._changes: dict[int, list[LayerChange]] = {}
        self._kinds: dict[int, dict[str, ChangeKind]] = {}

    def changes(self, index: int) -> list[LayerChange]:
        """Layer `index`'s changes over the layers below it (kept)."""
        if index not in self._changes:
            found = layer_changes(self.stack, index)
            self._changes[index] = found
            self._kinds[index] = {c.path: c.kind for c in found}
        return self._changes[index]

    def size(self, index: int) -> int:
        """The bytes of the regular files layer `index` holds."""
        return layer_bytes(self.changes(index))

    def forget(self, index: int) -> None:
        """Read layer `index`'s changes again next time (it changed)."""
        self._changes.pop(index, None)
        self._kinds.pop(index, None)

    def _kind(self, index: int, path: str) -> ChangeKind | None:
        self.changes(index)
        return self._kinds[index].get(path)

    def explain(self, index: int, path: str) -> Explanation:
        """`explain` of `path` as of layer `index`."""
        with StackView(prefix(self.stack, index)) as view:
            return view.explain(path)

    def tree(self, index: int, *, only: bool = False) -> MarkedTree:
        """The merged tree as of layer `index`, marked; with `only`, just what
        that layer changes (and the directories that lead to it)."""
        view_stack = prefix(self.stack, index)
        with StackView(view_stack) as view:
            root = view.tree("/", show_hidden=True)
        marked = self._mark(root, index)
        marked.mark = marked.by = None
        if only:
            marked = prune(marked, lambda e: e.by == 0) or MarkedEntry(marked.entry, None, None, [])
        return MarkedTree(index, view_stack, marked)

    def _mark(self, entry: TreeEntry, offset: int) -> MarkedEntry:
        mark: Mark | None = None
        by: int | None = None
        if entry.hidden_by is not None:
            by = entry.hidden_by.layer
            mark = "opaque" if entry.hidden_by.kind == "opaque" else "removed"
        else:
            kind = self._kind(offset + entry.layer, entry.path)
            if kind is not None:
                by, mark = entry.layer, "added" if kind == "A" else "changed"
        children = None
        if entry.type == "directory" and entry.hidden_by is None:
            children = [self._mark(c, offset) for c in entry.children or ()]
        return MarkedEntry(entry, mark, by, children)


def prune(
    root: MarkedEntry, keep: Callable[[MarkedEntry], bool], *, context_marks: bool = False
) -> MarkedEntry | None:
    """`root` with only the entries `keep` accepts and the directories that
    lead to them (as context: unmarked, unless `context_marks`); None if
    nothing under it is kept."""
    kept = keep(root)
    children = None
    if root.children is not None:
        children = [
            c
            for c in (prune(c, keep, context_marks=context_marks) for c in root.children)
            if c is not None
        ]
    if not kept and not children:
        return None
    if kept or context_marks:
        return MarkedEntry(root.entry, root.mark, root.by, children)
    return MarkedEntry(root.entry, None, None, children)


def path_filter(text: str) -> Callable[[MarkedEntry], bool]:
    """Entries whose path contains `text` (case-insensitive)."""
    needle = text.lower()
    return lambda e: needle in e.path.lower()
