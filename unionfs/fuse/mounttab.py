"""Reading the mount table (/proc/self/mountinfo) for unionfs mounts.

No FUSE here, only the text the kernel publishes: which mount points exist in
this process's namespace, of which filesystem type and from which source. The
store and the commands use it to tell whether something is mounted without
pulling in pyfuse3 and the daemon.
"""

import os
import re
from dataclasses import dataclass
from pathlib import Path

FSTYPE = "fuse.unionfs"


@dataclass(frozen=True)
class MountEntry:
    mountpoint: str
    fstype: str
    source: str
    super_options: str = ""  # the filesystem's own options (FUSE: user_id=, group_id=, ...)
    mount_id: int = 0

    @property
    def fuse_owner(self) -> int | None:
        """The uid that mounted this FUSE filesystem (``user_id=``), or None."""
        for opt in self.super_options.split(","):
            if opt.startswith("user_id="):
                try:
                    return int(opt[len("user_id=") :])
                except ValueError:
                    return None
        return None


def _unescape_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts() -> list[MountEntry]:
    """The mount table of this process's namespace."""
    entries = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(fields) < 5 or len(rfields) < 2:
                continue
            entries.append(
                MountEntry(
                    _unescape_mountinfo(fields[4]),
                    rfields[0],
                    _unescape_mountinfo(rfields[1]),
                    rfields[2] if len(rfields) > 2 else "",
                    int(fields[0]) if fields[0].isdigit() else 0,
                )
            )
    return entries


def find_mount(path: Path) -> MountEntry | None:
    """The topmost mount whose mount point is exactly `path` (resolved)."""
    target = os.path.realpath(path)
    found = None
    for entry in mounts():
        if entry.mountpoint == target:
            found = entry
    return found


def unionfs_mounts() -> list[MountEntry]:
    """Every unionfs mount of this namespace, in mount order."""
    return [m for m in mounts() if m.fstype == FSTYPE]
