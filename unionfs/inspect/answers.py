"""What `StackView` answers: the fate of every copy of a path, and the labelled tree.

Plain data, each with ``to_json(stack)``: layers are held as stack indexes
(0 = top, as `merge.Copy.layer`) and named in JSON by their `StackLayer.key`
(``upper``, or the layer's number), as every command names them.

`Explanation` is `StackView.explain`'s answer: every `CopyInfo` of a path (one
per layer that holds something there, top first) with its status and, for a
copy that is not shown, the `Cause` that keeps it out; the visible entry's
`Attrs`; for a path under something that is not a directory, the `Blocked`
parent; for a container's upper copy, the `UpperInfo` that says what it was
copied up from. `TreeEntry` is one entry of `StackView.tree`. Entry types are
`unionfs.fs.events.file_type`'s words (``file``, ``directory``, ...), as in
`unionfs events`; whiteout forms are `unionfs.fs.events.whiteout_form`'s.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from unionfs.inspect.stack import Stack

Status = Literal["visible", "merged", "shadowed", "hidden", "whiteout"]
CauseKind = Literal["whiteout", "opaque", "nondir", "above", "reserved"]


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
class Renamed:
    """A renamed directory: its redirect leads to `source` (a path of the
    layers below, as overlayfs records it), where `layers` hold its content."""

    source: str
    layers: tuple[int, ...]

    def to_json(self, stack: Stack) -> dict[str, Any]:
        return {"from": self.source, "layers": [stack.layer(i).key for i in self.layers]}


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
    renamed: Renamed | None = None

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
            "renamed": self.renamed.to_json(s) if self.renamed else None,
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
    opaque copy of this directory cuts off the layers below it. `renamed_from`
    is where a renamed directory's redirect leads (its content in lower layers).
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
    renamed_from: str | None = None  # a renamed directory: where its content is

    def to_json(self, stack: Stack) -> dict[str, Any]:
        """This entry and everything below it (built without recursion: a
        tree may be of any depth)."""
        top = self._own_json(stack)
        pending = [(self, top)]
        while pending:
            entry, out = pending.pop()
            if entry.children is None:
                continue
            kids = out["children"] = []
            for c in entry.children:
                kid = c._own_json(stack)
                kids.append(kid)
                pending.append((c, kid))
        return top

    def _own_json(self, stack: Stack) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "type": self.type,
            "layer": stack.layer(self.layer).key,
            "layers": [stack.layer(i).key for i in self.layers],
            "hidden_by": self.hidden_by.to_json(stack) if self.hidden_by else None,
            "target": self.target,
            "opaque": stack.layer(self.opaque).key if self.opaque is not None else None,
            "renamed_from": self.renamed_from,
            "children": None,
        }

    def walk(self) -> Iterator[TreeEntry]:
        """This entry and everything below it, depth first (without recursion)."""
        pending = [self]
        while pending:
            entry = pending.pop()
            yield entry
            pending.extend(reversed(entry.children or ()))
