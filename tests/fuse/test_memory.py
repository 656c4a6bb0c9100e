"""The daemon keeps lookup counts and honours forget: walking large trees again
and again does not grow its memory."""

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.kernel import TmpMounts, unionfs_daemon_pids, wait_for
from unionfs.fuse import control, runstate

pytestmark = [pytest.mark.mount, pytest.mark.slow]

FILES_PER_TREE = 20000


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

    peaks, after_forget = [], []
    for tree in "abab":
        subprocess.run(["find", str(mnt / tree)], check=True, stdout=subprocess.DEVNULL)
        peaks.append(rss_kib(pid))
        after_forget.append(forget_everything(pid, mnt))

    # Walking a different tree after the kernel forgot the first one reuses the
    # memory instead of adding to it (the drop right after a forget is not
    # asserted: when the allocator gives pages back to the system is its choice).
    assert max(peaks[1:]) < peaks[0] + 6 * 1024, (peaks, after_forget)
