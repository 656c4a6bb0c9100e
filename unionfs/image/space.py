"""The free space a layer being unpacked may still take on its filesystem.

A layer is refused as soon as writing it would leave less than a reserve free,
before the disk is full: every entry and every chunk of file data is taken
from a budget (`Space.take`), which is what ``fstatvfs`` says is free beyond
the reserve, looked at again every `_RECHECK` bytes (other writers share the
filesystem).
"""

from __future__ import annotations

import os

from unionfs.image.decompress import Refused

_RECHECK = 64 << 20
"""Bytes written between two looks at the free space of the layer's filesystem."""


class Space:
    """The free space the layer may still use: what its filesystem has free
    beyond `reserve` bytes, looked at again every `_RECHECK` bytes (other
    writers share the filesystem), so a layer is refused before it fills the
    disk. No reserve (None): no checks."""

    def __init__(self, fd: int, reserve: int | None) -> None:
        self._fd = fd
        self.reserve = reserve
        self._slack = 0

    def take(self, nbytes: int) -> None:
        """Account for `nbytes` about to be written; Refused when they would eat
        into the reserve."""
        if self.reserve is None:
            return
        if nbytes <= self._slack:
            self._slack -= nbytes
            return
        st = os.fstatvfs(self._fd)
        free = st.f_bavail * st.f_frsize
        if free - nbytes < self.reserve:
            raise Refused(
                f"it would leave less than {_human(self.reserve)} free on the store's "
                f"filesystem ({_human(free)} free; the reserve is UNIONFS_MIN_FREE)"
            )
        self._slack = min(free - self.reserve - nbytes, _RECHECK)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
