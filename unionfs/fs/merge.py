"""The merge rules of a union mount, with no I/O.

A name in a merged directory is looked up layer by layer, top first. Each layer
contributes one `Copy` observation: absent, a whiteout, a directory, or some
other file. `resolve` turns that sequence into a `Resolution`:

* a whiteout above everything found so far hides the name;
* a non-directory found first is the whole answer and hides all below it;
* directories merge, top first, until an opaque directory, a whiteout or a
  non-directory ends the stack (a non-directory below a directory is ignored,
  as in overlayfs);
* the first copy found gives the entry's attributes.

`resolve` consumes its input lazily so that lookups stop touching layers as
soon as the answer is known, and asks `is_opaque` about directory copies only
(a caller may answer False without any I/O where nothing lies below the copy).
The same function serves lookup, readdir and inspection.
"""

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass

#: Where a directory copy sits in its layer when that is not under its own name
#: in its parent's copy there (a redirect was followed): a name inside the
#: parent's copy in the same layer (relative), or a path of names from the
#: layer's root (absolute).
Location = bytes | tuple[bytes, ...]


class Kind(enum.Enum):
    ABSENT = "absent"
    WHITEOUT = "whiteout"
    DIR = "dir"
    NONDIR = "nondir"


@dataclass(frozen=True, slots=True)
class Copy:
    """What one layer holds under one name. `layer` is the stack index, 0 = top."""

    layer: int
    kind: Kind


class Stop(enum.Enum):
    """Why the search for a name ended before the bottom layer."""

    WHITEOUT = "whiteout"
    OPAQUE = "opaque directory"
    NONDIR = "non-directory below a directory"


@dataclass(frozen=True, slots=True)
class Resolution:
    """The outcome of looking a name up through the layers.

    `visible` is empty when the name does not exist in the merged view;
    otherwise it holds one non-directory copy, or the stack of directory copies
    that merge (top first). `stopped_by`/`stop` say what ended the search, if
    anything did: a whiteout (that hides the name when `visible` is empty), an
    opaque directory among the visible copies, or an ignored non-directory.
    `where` places the copies a redirect led to (`Location`).
    """

    visible: tuple[Copy, ...]
    stop: Stop | None = None
    stopped_by: Copy | None = None
    #: For the visible copies reached through a redirect: (layer, location).
    where: tuple[tuple[int, Location], ...] = ()
    #: The redirect of the top copy, as its layer records it (None: none).
    redirect: bytes | None = None

    @property
    def exists(self) -> bool:
        return bool(self.visible)

    @property
    def is_dir(self) -> bool:
        return bool(self.visible) and self.visible[0].kind is Kind.DIR

    @property
    def is_merged(self) -> bool:
        """A directory whose content comes from more than one layer."""
        return len(self.visible) > 1


NOT_FOUND = Resolution(())


def resolve(observations: Iterable[Copy], is_opaque: Callable[[Copy], bool]) -> Resolution:
    """Apply the merge rules to one name's copies, top layer first."""
    found: list[Copy] = []
    for copy in observations:
        kind = copy.kind
        if kind is Kind.ABSENT:
            continue
        if kind is Kind.WHITEOUT:
            return Resolution(tuple(found), Stop.WHITEOUT, copy)
        if kind is Kind.NONDIR:
            if found:
                return Resolution(tuple(found), Stop.NONDIR, copy)
            return Resolution((copy,))
        found.append(copy)
        if is_opaque(copy):
            return Resolution(tuple(found), Stop.OPAQUE, copy)
    return Resolution(tuple(found)) if found else NOT_FOUND
