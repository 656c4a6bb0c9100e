"""An image's efficiency and wasted bytes, as dive defines them.

dive (github.com/wagoodman/dive, ``filetree/efficiency.go``) reads every
layer's own files, bottom first, and gathers by path every copy any layer
holds: a file's content (its size) and a whiteout that deletes it (0 bytes).
A path held more than once is *wasteful*: a later layer overwrote, deleted or
duplicated it, and the image carries every copy. Then:

* ``wasted_bytes`` is the sum, over wasteful paths, of all their copies' bytes
  (the copy still shown included, as dive counts it);
* ``efficiency`` is, over every path, the sum of its smallest copy divided by
  the sum of all its copies (1.0 for an image with no bytes): 1.0 when no
  path is held twice, lower as more bytes are spent on copies that are later
  replaced or deleted;
* ``total_bytes`` is the bytes of every layer's regular files; ``user_bytes``
  leaves out the bottom (base) layer, and ``wasted_user_percent`` is
  ``wasted_bytes`` as a percentage of it (dive's ``highestUserWastedPercent``).

Which copies a layer holds and which a layer deletes is read with the merge
code of the mount (`layerchanges.layer_changes`, over `changes.walk`), not by
parsing whiteouts again: a whiteout in any form, an opaque directory (each
file it cuts off is deleted by it) and a non-directory that replaces a
directory (each file under it) all delete copies. Where dive differs:

* dive records a deleted directory once, at the directory's path, which no
  other layer holds as a leaf, so the files under it are never counted as
  waste; here each file under it is deleted, so each is wasteful;
* dive does not read opaque directories as deleting what is below them;
  here they do, as `unionfs tree --show-hidden` shows;
* sizes are those of regular files (a directory, a symlink or a device is 0
  bytes, as in a layer tar's headers); a hard link counts at every path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from unionfs.inspect.layerchanges import layer_changes
from unionfs.inspect.stack import Stack

CopyKind = Literal["stored", "deleted"]


@dataclass(frozen=True, slots=True)
class PathCopy:
    """One layer's copy of a path: ``stored`` (the layer holds it, `size`
    bytes) or ``deleted`` (the layer removes the copies below; 0 bytes).
    `layer` is the stack index (0 = top)."""

    layer: int
    kind: CopyKind
    size: int


@dataclass(frozen=True)
class Wasteful:
    """A path held by more than one layer, its copies bottom first."""

    path: str
    copies: tuple[PathCopy, ...]

    @property
    def bytes(self) -> int:
        return sum(c.size for c in self.copies)

    def to_json(self, stack: Stack) -> dict[str, Any]:
        return {
            "path": self.path,
            "wasted_bytes": self.bytes,
            "copies": [
                {"layer": stack.layer(c.layer).key, "kind": c.kind, "bytes": c.size}
                for c in self.copies
            ],
        }


@dataclass
class Analysis:
    """What `analyze` finds (see the module's docstring for the definitions).

    `wasteful` is sorted by wasted bytes, largest first (then by path);
    `layer_bytes` holds each layer's bytes by stack index (0 = top)."""

    stack: Stack
    total_bytes: int
    user_bytes: int
    wasted_bytes: int
    efficiency: float
    wasteful: list[Wasteful]
    layer_bytes: list[int] = field(default_factory=list)

    @property
    def wasted_user_percent(self) -> float:
        """`wasted_bytes` as a percentage of the bytes above the base layer
        (0 without waste; 100 for waste with no bytes above the base layer)."""
        if self.wasted_bytes == 0:
            return 0.0
        if self.user_bytes == 0:
            return 100.0
        return 100.0 * self.wasted_bytes / self.user_bytes

    def to_json(self) -> dict[str, Any]:
        s = self.stack
        return {
            "what": s.what,
            "total_bytes": self.total_bytes,
            "user_bytes": self.user_bytes,
            "wasted_bytes": self.wasted_bytes,
            "wasted_user_percent": round(self.wasted_user_percent, 4),
            "efficiency": round(self.efficiency, 6),
            "layers": [{**la.to_json(), "bytes": self.layer_bytes[la.index]} for la in s.layers],
            "wasteful": [w.to_json(s) for w in self.wasteful],
        }


def analyze(stack: Stack, progress: Callable[[int, int], None] | None = None) -> Analysis:
    """The efficiency and waste of `stack`'s layers (read bottom first);
    `progress(done, total)` is called after each layer."""
    n = len(stack.layers)
    copies: dict[str, list[PathCopy]] = {}
    layer_bytes = [0] * n
    for done, index in enumerate(range(n - 1, -1, -1), 1):
        for change in layer_changes(stack, index):
            for gone in change.removed:
                copies.setdefault(gone.path, []).append(PathCopy(index, "deleted", 0))
            if change.kind != "D" and change.type != "directory":
                copies.setdefault(change.path, []).append(PathCopy(index, "stored", change.size))
                layer_bytes[index] += change.size
        if progress is not None:
            progress(done, n)
    smallest = total = 0
    wasteful: list[Wasteful] = []
    for path, held in copies.items():
        sizes = [c.size for c in held]
        smallest += min(sizes)
        total += sum(sizes)
        if len(held) > 1:
            wasteful.append(Wasteful(path, tuple(held)))
    wasteful.sort(key=lambda w: (-w.bytes, w.path))
    user = total - layer_bytes[n - 1]
    return Analysis(
        stack,
        total_bytes=total,
        user_bytes=user,
        wasted_bytes=sum(w.bytes for w in wasteful),
        efficiency=smallest / total if total else 1.0,
        wasteful=wasteful,
        layer_bytes=layer_bytes,
    )
