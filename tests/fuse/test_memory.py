"""The daemon keeps lookup counts and honours forget: walking large trees again
and again does not grow its memory."""

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.kernel import TmpMounts, unionfs_daemon_pids

pytestmark = [pytest.mark.mount, pytest.mark.slow]

FILES_PER_TREE = 20000


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def forget_everything(pid: int, below_kib: int) -> int:
    """Make the kernel drop its dentries and inodes (it then sends FORGETs, in
    batches, asynchronously); return the daemon's RSS once it fell below
    `below_kib`, or after four seconds (asking the kernel again after two)."""
    rss = rss_kib(pid)
    for attempt in range(40):
        if attempt % 20 == 0:
            os.sync()
            Path("/proc/sys/vm/drop_caches").write_text("2\n")
        time.sleep(0.1)
        rss = rss_kib(pid)
        if rss < below_kib:
            break
    return rss


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
        after_forget.append(forget_everything(pid, peaks[-1] - 8 * 1024))

    # Walking a different tree after the kernel forgot the first one reuses the
    # memory instead of adding to it (the drop right after a forget is not
    # asserted: when the allocator gives pages back to the system is its choice).
    assert max(peaks[1:]) < peaks[0] + 6 * 1024, (peaks, after_forget)
