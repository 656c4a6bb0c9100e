"""The daemon keeps lookup counts and honours forget: walking large trees again
and again does not grow its memory; what it holds per entry stays small; and it
is an interpreter of its own, without the command line's modules."""

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.kernel import TmpMounts, unionfs_daemon_pids, wait_for
from unionfs.fuse import control, runstate

pytestmark = [pytest.mark.mount, pytest.mark.slow]

FILES_PER_TREE = 20000
#: What the daemon may hold per entry the kernel knows (node, packed lstat,
#: name, origin key, inode table slot, and the allocator's slack): about 480
#: bytes measured on this tree (780 on the benchmark's stack before the lstat
#: was packed: docs/benchmarks.md).
BYTES_PER_ENTRY = 650


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def forgets_answered(mnt: Path) -> int:
    """How many FORGET requests the daemon of `mnt` has handled."""
    state = runstate.read_state(mnt)
    assert state is not None, f"no live state for {mnt}"
    ((_, stats),) = list(control.query(state.control, str(mnt), {"op": "stats"}))
    return int(stats["requests"].get("forget", 0))


def no_forget_pending(mnt: Path) -> bool:
    """True when a request sent now reaches the daemon with no FORGET before it.
    The kernel hands queued FORGETs to the daemon ahead of other requests, and
    statvfs always goes to the daemon: if the count did not move across one
    statvfs round trip, nothing was queued."""
    before = forgets_answered(mnt)
    os.statvfs(mnt)
    return forgets_answered(mnt) == before


def forget_everything(pid: int, mnt: Path) -> int:
    """Make the kernel drop its dentries and inodes, wait until the daemon has
    handled every FORGET that sent, and return the daemon's RSS then."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("2\n")
    wait_for(lambda: no_forget_pending(mnt), f"FORGETs kept coming to the daemon of {mnt}")
    return rss_kib(pid)


def test_walks_do_not_grow_memory(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    bottom = tmp_path / "bottom"
    for tree in ("a", "b"):
        for i in range(FILES_PER_TREE):
            d = bottom / tree / f"d{i // 500}"
            if i % 500 == 0:
                d.mkdir(parents=True)
            (d / f"f{i}").touch()
    top = tmp_path / "top"
    (top / "a").mkdir(parents=True)
    mnt = tmp_mounts.unionfs([top, bottom])
    (pid,) = unionfs_daemon_pids(mnt)

    idle = rss_kib(pid)
    peaks, after_forget = [], []
    for tree in "abab":
        subprocess.run(["find", str(mnt / tree)], check=True, stdout=subprocess.DEVNULL)
        peaks.append(rss_kib(pid))
        after_forget.append(forget_everything(pid, mnt))

    # Walking a different tree after the kernel forgot the first one reuses the
    # memory instead of adding to it (the drop right after a forget is not
    # asserted: when the allocator gives pages back to the system is its choice).
    assert max(peaks[1:]) < peaks[0] + 6 * 1024, (peaks, after_forget)
    entries = FILES_PER_TREE + FILES_PER_TREE // 500 + 1
    per_entry = (peaks[0] - idle) * 1024 / entries
    assert per_entry < BYTES_PER_ENTRY, (idle, peaks, per_entry)


def test_the_daemon_is_an_interpreter_of_its_own(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    """The background daemon does not carry the command line's modules: zstandard
    (image import and export) is loaded by `unionfs mount`, never mapped into
    the daemon (a fork of the command would hold it for the mount's life)."""
    layer = tmp_path / "layer"
    layer.mkdir()
    (layer / "f").write_text("x\n")
    mnt = tmp_mounts.unionfs([layer])
    (pid,) = unionfs_daemon_pids(mnt)
    assert (mnt / "f").read_text() == "x\n"
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "/pyfuse3" in maps  # the map is the daemon's
    assert "zstandard" not in maps, [line for line in maps.splitlines() if "zstandard" in line]
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert args[1:5] == [b"-m", b"unionfs.fuse", b"mount", str(mnt).encode()]
