"""What a container changed: its upper layer compared with its image, as `docker diff` lists it.

Two read-only unions are built from the same directories: the image's view
(the lower layers) and the container's view (the upper layer over them). Both
come from `UnionFS.list_dir`, so whiteouts in every form, opaque directories
and the other merge rules are read by the code that serves the mount, not by a
second copy of it. The two views are then walked together, entering only the
directories whose top copy is in the upper layer (nothing else can differ):

* a name the container's view shows from the upper layer is ``A`` (added) when
  the image's view lacks it, else ``C`` (changed). Any upper copy counts as a
  change, as in docker's overlay diff: a copy-up happens only for a write, a
  metadata change or a link, and a directory is in the upper layer only
  because something in it (or itself) changed;
* a name the image's view shows and the container's view does not is ``D``
  (deleted). Only that path is listed, not what was under it. This covers a
  whiteout and the children of an opaque directory that the upper layer does
  not hold again;
* a whiteout with nothing below it in the image changes nothing: not listed.

Consequences: everything under an added directory is ``A``; a directory that
holds a change is in the upper layer, so it is listed too (``C``, or ``A`` if
new); a name the image deletes in one of its own layers and the container
creates again is ``A``; replacing a file by a directory (or back) is ``C`` of
that path, with ``A`` for what the new directory holds.

Where `docker diff` on overlay2 (moby's and containers/storage's
``OverlayChanges``) differs, and why this module does otherwise:

* it lists an opaque directory as ``D`` of the directory and then ``A``/``C``
  of its upper children, and never the lower children it hides; here it is
  ``C`` of the directory plus ``D`` of each hidden child, which is what the
  merged view lost (and what docker's naive ``ChangesDirs`` reports);
* it lists every upper whiteout as ``D``, even with nothing below it;
* it decides ``A`` or ``C`` by a stat of the path in each lower layer on its
  own (following symlinks, blind to the image's own OCI whiteouts and opaque
  dirs); here the image's merged view decides;
* it leaves out an upper directory whose size, mode and mtime equal the lower
  one's unless an ``A`` or ``D`` is below it; here every upper directory the
  image has is ``C``;
* it reads only char-device whiteouts and ``trusted.overlay.opaque``; here
  every form in `unionfs.whiteout` is read.

Reading a mounted container's upper layer gives a best-effort snapshot: a
directory that changes while it is read is read again, and skipped if it keeps
vanishing.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from unionfs.errors import UnionfsError
from unionfs.fs.inodes import ROOT_INO, Node
from unionfs.fs.layer import Layer
from unionfs.fs.vfs import UnionFS

log = logging.getLogger(__name__)

ChangeKind = Literal["A", "C", "D"]
_VANISHED = (errno.ENOENT, errno.ENOTDIR, errno.ESTALE)
_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Change:
    """One changed path: ``A`` added, ``C`` changed, ``D`` deleted.

    `path` is absolute in the container (``/etc/motd``); a name that is not
    UTF-8 is decoded with surrogate escapes (`os.fsdecode`).
    """

    kind: ChangeKind
    path: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "path": self.path}

    def line(self) -> bytes:
        """The line `docker diff` prints, with the name's original bytes."""
        return self.kind.encode() + b" " + os.fsencode(self.path)


def container_changes(upper: Path, lowers: Sequence[Path]) -> list[Change]:
    """The changes `upper` makes to the union of `lowers` (top first), sorted by path."""
    for d in (upper, *lowers):
        if not d.is_dir():
            raise UnionfsError(f"layer directory {d} is missing")
    with ExitStack() as stack:
        new = open_union(stack, [upper, *lowers])
        old = open_union(stack, lowers) if lowers else None
        found = [change for change, _, _ in walk(new, old)]
    found.sort(key=lambda c: os.fsencode(c.path))
    return found


def open_union(stack: ExitStack, dirs: Sequence[Path]) -> UnionFS:
    """A read-only union of `dirs` (top first), closed when `stack` closes."""
    layers: list[Layer] = []
    for i, d in enumerate(dirs):
        layer = Layer.open(i, d)
        stack.callback(layer.close)
        layers.append(layer)
    fs = UnionFS(layers)
    stack.callback(fs.close)
    return fs


def walk(new: UnionFS, old: UnionFS | None) -> Iterator[tuple[Change, Node | None, Node | None]]:
    """Compare the two views, entering the directories the upper layer holds.

    Yields each change (unsorted) with its entry in `new` (None for ``D``) and
    in `old` (None for ``A``), so that callers can read their types and sizes
    or walk what a ``D`` removed with `entries`."""
    pending: list[tuple[bytes, Node, Node | None]] = [
        (b"", new.node(ROOT_INO), old.node(ROOT_INO) if old is not None else None)
    ]
    while pending:
        path, new_dir, old_dir = pending.pop()
        now = entries(new, new_dir, path)
        before = entries(old, old_dir, path) if old is not None and old_dir is not None else {}
        if now is None or before is None:
            continue
        for name, node in now.items():
            if node.top_layer != 0:
                continue  # the image's own entry: the upper layer holds nothing of it
            child = path + b"/" + name
            was = before.get(name)
            yield Change("A" if was is None else "C", os.fsdecode(child)), node, was
            if stat.S_ISDIR(node.st.st_mode):
                was_dir = was is not None and stat.S_ISDIR(was.st.st_mode)
                pending.append((child, node, was if was_dir else None))
        for name in before.keys() - now.keys():
            yield Change("D", os.fsdecode(path + b"/" + name)), None, before[name]


def entries(fs: UnionFS, node: Node, path: bytes) -> dict[bytes, Node] | None:
    """A directory's merged entries by name; None if it vanished while being read."""
    for _ in range(_ATTEMPTS):
        try:
            return {name: n for name, n in fs.list_dir(node) if name not in (b".", b"..")}
        except OSError as e:
            if e.errno not in _VANISHED:
                raise
            last = e
    log.info("skipped %s: it changed while being read (%s)", os.fsdecode(path or b"/"), last)
    return None
