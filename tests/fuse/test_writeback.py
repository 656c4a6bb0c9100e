"""Requests on the write path, and the writeback cache (``-o writeback=1``).

unionfs answers FLUSH with ENOSYS, so the kernel sends it once per mount and
never again. With ``writeback=1`` the kernel caches writes and sends them in
large WRITEs; the write operations of the differential tests must still agree
with kernel overlayfs then (the one known exception, a truncate(2) to the size a
file already has, is documented in the README and not among them).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.fuse.test_write_diff import OPERATIONS, STACK, differential
from tests.support.cli import run_unionfs
from tests.support.kernel import WAIT_LIMIT, TmpMounts
from tests.support.stack import build_stack

pytestmark = pytest.mark.mount

#: The differential operations that write data or create, open or remove files:
#: where the writeback cache changes what the kernel sends.
WRITE_OPERATIONS = [
    "create, write, read back",
    "create with mode 0600",
    "write a new file, list its dir",
    "write a lower file",
    "write a top-layer file",
    "write inside a big lower file",
    "append to a lower file",
    "truncate a lower file shorter",
    "truncate a lower file longer",
    "ftruncate a lower file",
    "open O_TRUNC a lower file",
    "open O_RDWR a lower file, no write",
    "st_ino kept across copy-up by write",
    "read-only fd sees a later write",
    "unlink a lower file",
    "unlink a lower file, create it again",
    "unlink an open upper file",
    "unlink an open lower file",
    "unlink a lower file open for writing",
    "unlink one name of a lower hard link",
    "write one name of a lower hard link",
    "mmap write to a lower file",
    "create as uid 1000",
    "write as uid 1000 clears setuid and setgid",
    "truncate as uid 1000 clears setuid and setgid",
    "uid 1000 writes its own lower file",
]


def mount_writeback(
    tmp_mounts: TmpMounts, lowers: list[Path], upper: Path, work: Path, name: str
) -> Path:
    args = ["--upper", str(upper), "--work", str(work), "-o", "writeback=1"]
    return tmp_mounts.unionfs(lowers, name=name, args=args)


@pytest.mark.parametrize("name", WRITE_OPERATIONS)
def test_writeback_matches_kernel(tmp_path: Path, tmp_mounts: TmpMounts, name: str) -> None:
    differential(tmp_path, tmp_mounts, OPERATIONS[name], subject=mount_writeback)


def _requests(mnt: Path) -> dict[str, int]:
    out = run_unionfs("stats", "--json", str(mnt), timeout=WAIT_LIMIT).stdout
    stats: dict[str, Any] = json.loads(out)
    requests: dict[str, int] = stats["requests"]
    return requests


def _mount(tmp_path: Path, tmp_mounts: TmpMounts, *options: str) -> Path:
    lowers = build_stack(STACK, tmp_path / "layers", "chardev")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    args = ["--upper", str(upper), "--work", str(work)]
    for option in options:
        args += ["-o", option]
    return tmp_mounts.unionfs(lowers, args=args)


@pytest.mark.parametrize("writeback", ["writeback=0", "writeback=1"])
def test_flush_is_sent_once(tmp_path: Path, tmp_mounts: TmpMounts, writeback: str) -> None:
    mnt = _mount(tmp_path, tmp_mounts, writeback)
    for _ in range(3):
        assert (mnt / "data/other").read_bytes() == b"other\n"
        (mnt / "data/new").write_bytes(b"new\n")  # dirty pages, written back on close
        assert (mnt / "data/new").read_bytes() == b"new\n"
    assert _requests(mnt).get("flush", 0) == 1  # answered ENOSYS, then never sent again


def test_writeback_batches_small_writes(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    """1 MiB in 256 write(2) calls of 4 KiB: the kernel sends far fewer WRITEs,
    and fsync makes the data reach the upper layer."""
    mnt = _mount(tmp_path, tmp_mounts, "writeback=1")
    block = os.urandom(4096)
    fd = os.open(mnt / "data/written", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for _ in range(256):
            os.write(fd, block)
        os.fsync(fd)
        on_disk = (tmp_path / "upper/data/written").read_bytes()
        assert on_disk == block * 256
        assert os.fstat(fd).st_size == 256 * 4096
    finally:
        os.close(fd)
    assert _requests(mnt)["write"] < 64
