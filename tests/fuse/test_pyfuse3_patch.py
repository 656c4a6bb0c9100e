"""What the pyfuse3 patches unionfs carries (patches/pyfuse3) make a mount do,
against kernel overlayfs where overlayfs has the behaviour.

- FUSE_FALLOCATE reaches the daemon: every fallocate(2) mode the upper's
  filesystem supports works as through overlayfs.
- FUSE_DONT_MASK: see test_acl_diff (a default ACL replaces the umask, the
  umask applies elsewhere).
- FOPEN_CACHE_DIR: a warm listing never reaches the daemon, and a cached
  listing still sees every change made through the mount.
- `EntryAttributes.reported_ino`: an entry reports an inode number apart from
  its node id (lower hard links: see test_redirect_diff and test_write_diff).
- The request loop reads the non-blocking FUSE fd before it waits for it, and
  other tasks still run while clients keep the request queue full.

With a stock pyfuse3 the tests of a missing feature are expected failures with
their reason; the listing tests hold either way.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pyfuse3
import pytest

from tests.fuse.test_parity_diff import _fallocate
from tests.fuse.test_write_diff import differential
from tests.support import pyfuse3_features
from tests.support.cli import REPO
from tests.support.kernel import TmpMounts, unionfs_daemon_pids, wait_for
from tests.support.stack import Dir, File, HardLink, Layer, Whiteout, build_stack
from unionfs.fuse import control, entryino, runstate

pytestmark = pytest.mark.mount

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

STACK: list[Layer] = [
    [
        File("d/top", b"top\n"),
        Whiteout("d/gone"),
        Dir("d/sub"),
        File("d/sub/inner", b"inner\n"),
        File("data/big", b"x" * 20000),
    ],
    [
        File("d/low", b"low\n"),
        File("d/gone", b"gone\n"),
        Dir("d/lowdir"),
        File("d/lowdir/f", b"f\n"),
        File("e/moved", b"moved\n"),
        File("h/one", b"linked\n"),
        HardLink("h/two", "h/one"),
    ],
]


def requests(mnt: Path) -> dict[str, int]:
    """The daemon's request counts by type (what `unionfs stats` shows)."""
    state = runstate.read_state(mnt)
    assert state is not None, f"no live state for {mnt}"
    ((_, stats),) = list(control.query(state.control, str(mnt), {"op": "stats"}))
    return dict(stats["requests"])


def listing(p: Path) -> list[str]:
    return sorted(os.listdir(p))


# --------------------------------------------------------------------------- fallocate


def fallocate_more(m: Path) -> object:
    """A file made through the mount: mode 0 growing it, KEEP_SIZE past its
    end, ZERO_RANGE and PUNCH_HOLE inside; a large lower file punched (copy-up
    on open for writing)."""
    results: list[object] = []
    fd = os.open(m / "d/new", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b"a" * 10000)
        _fallocate(fd, 0, 0, 16384)
        _fallocate(fd, FALLOC_FL_KEEP_SIZE, 16384, 65536)
        _fallocate(fd, FALLOC_FL_ZERO_RANGE, 4096, 4096)
        _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096)
        st = os.fstat(fd)
        data = os.pread(fd, 16384, 0)
        results.append((st.st_size, st.st_blocks > 0, data.count(b"a"), data.count(b"\0")))
        try:  # a punch without KEEP_SIZE is invalid everywhere
            _fallocate(fd, FALLOC_FL_PUNCH_HOLE, 0, 1)
        except OSError as e:
            results.append(e.errno)
    finally:
        os.close(fd)
    fd = os.open(m / "data/big", os.O_RDWR)
    try:
        _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 8192)
        data = os.pread(fd, 20000, 0)
        results.append((os.fstat(fd).st_size, data.count(b"x"), data.count(b"\0")))
    finally:
        os.close(fd)
    return results


@pytest.mark.xfail(
    not pyfuse3_features.FALLOCATE,
    reason="a stock pyfuse3 (3.5) does not dispatch FUSE_FALLOCATE: the kernel answers"
    " EOPNOTSUPP (patches/pyfuse3 adds it)",
    strict=True,
)
def test_fallocate_modes_match_overlayfs(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    differential(tmp_path, tmp_mounts, fallocate_more, STACK)


# --------------------------------------------------------------------------- cached listings


def list_change_list(m: Path) -> object:
    """Each change made through the mount, with the listings of the directories
    it touches read (twice, so a cache is warm) before it and again after it."""
    d, e = m / "d", m / "e"
    out: list[object] = []

    def show(step: str) -> None:
        for _ in range(2):
            listing(d)
            listing(e)
            listing(d / "sub")
        out.append((step, listing(d), listing(e), listing(d / "sub")))

    show("start")
    (d / "created").write_bytes(b"c\n")
    show("create")
    (d / "madedir").mkdir()
    show("mkdir")
    os.mkfifo(d / "fifo")
    show("mknod")
    os.symlink("top", d / "link")
    show("symlink")
    os.link(d / "top", d / "sub/hard")
    show("link")
    os.unlink(d / "low")
    show("unlink of a lower file (whiteout)")
    os.unlink(d / "created")
    show("unlink of a new file")
    os.rmdir(d / "madedir")
    show("rmdir")
    os.rename(e / "moved", d / "moved")
    show("rename between directories")
    os.rename(d / "top", d / "sub/top")
    show("rename into a subdirectory")
    (d / "created").write_bytes(b"again\n")
    show("create again")
    return out


def inode_numbers(d: Path) -> dict[str, tuple[bool, bool]]:
    """For each entry: does its d_ino equal its st_ino, and the first entry's?"""
    entries = sorted(os.scandir(d), key=lambda e: e.name)
    first = entries[0].stat(follow_symlinks=False).st_ino
    return {
        e.name: (e.inode() == e.stat(follow_symlinks=False).st_ino, e.inode() == first)
        for e in entries
    }


def copy_up_hard_link(m: Path) -> object:
    """A lower hard-link pair shows one inode; writing one name copies it up
    alone, and the (cached) listing's d_ino follows its new st_ino."""
    h = m / "h"
    before = [inode_numbers(h), inode_numbers(h)]
    with open(h / "two", "ab") as f:
        f.write(b"more\n")
    return before, inode_numbers(h), (h / "one").read_bytes(), (h / "two").read_bytes()


def test_cached_listing_follows_a_copied_up_hard_link(
    tmp_path: Path, tmp_mounts: TmpMounts
) -> None:
    differential(tmp_path, tmp_mounts, copy_up_hard_link, STACK)


def test_cached_listing_sees_changes_through_the_mount(
    tmp_path: Path, tmp_mounts: TmpMounts
) -> None:
    differential(tmp_path, tmp_mounts, list_change_list, STACK)


@pytest.mark.xfail(
    not pyfuse3_features.CACHE_DIRS,
    reason="a stock pyfuse3 (3.5) cannot set FOPEN_CACHE_DIR: every listing is read"
    " from the daemon (patches/pyfuse3 adds it)",
    strict=True,
)
def test_warm_listing_stays_in_the_kernel(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    """A second listing of an unchanged directory sends no READDIR; a change
    through the mount makes the next listing ask the daemon again."""
    lowers = build_stack(STACK, tmp_path / "layers", "chardev")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    mnt = tmp_mounts.unionfs(lowers, args=["--upper", str(upper), "--work", str(work)])
    first = listing(mnt / "d")
    cold = requests(mnt).get("readdir", 0)
    assert cold > 0
    for _ in range(3):
        assert listing(mnt / "d") == first
    assert requests(mnt).get("readdir", 0) == cold, "a warm listing reached the daemon"
    (mnt / "d/created").touch()
    assert listing(mnt / "d") == sorted([*first, "created"])
    assert requests(mnt).get("readdir", 0) > cold


# --------------------------------------------------------------------------- reported inode


@pytest.mark.xfail(
    not pyfuse3_features.REPORTED_INO,
    reason="a stock pyfuse3 (3.5) sets the node id and the reported st_ino together"
    " (patches/pyfuse3 adds reported_ino; unionfs writes the struct through ctypes)",
    strict=True,
)
def test_reported_ino_is_apart_from_the_node_id() -> None:
    attr = pyfuse3.EntryAttributes()
    attr.st_ino = 41
    assert attr.reported_ino == 41
    entryino.set_reported_ino(attr, 97)
    assert (attr.st_ino, attr.reported_ino) == (41, 97)
    attr.st_ino = 42  # st_ino sets both, as before
    assert (attr.st_ino, attr.reported_ino) == (42, 42)
    assert entryino.API and entryino.SUPPORTED


# --------------------------------------------------------------------------- request loop


def fuse_fd_flags(pid: int) -> int:
    """The open flags of the daemon's /dev/fuse descriptor."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        if os.readlink(fd) == "/dev/fuse":
            fdinfo = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
            (flags,) = (ln.split()[1] for ln in fdinfo.splitlines() if ln.startswith("flags:"))
            return int(flags, 8)
    raise AssertionError(f"process {pid} has no /dev/fuse open")


@pytest.mark.xfail(
    not pyfuse3_features.RECEIVES_FIRST,
    reason="a stock pyfuse3 (3.5) waits for the FUSE fd through the event loop before"
    " every read, on a blocking fd (patches/pyfuse3 reads first)",
    strict=True,
)
def test_workers_read_a_non_blocking_fuse_fd(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    """The daemon's FUSE fd is non-blocking, so a worker can try a read before
    it waits: with a blocking fd that read would stall the event loop."""
    mnt = tmp_mounts.unionfs(build_stack(STACK, tmp_path / "layers", "chardev"))
    (pid,) = unionfs_daemon_pids(mnt)
    assert fuse_fd_flags(pid) & os.O_NONBLOCK
    assert (mnt / "d/top").read_bytes() == b"top\n"


# A client that keeps asking one file for its attributes and an attribute it
# does not have, until the stop file exists; prints how many rounds it did.
FLOOD_CLIENT = """
import errno, os, sys
path, want, stop = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
n = 0
while n < 200 or not os.path.exists(stop):
    assert os.lstat(path).st_size == len(want)
    try:
        os.getxattr(path, "user.nothing", follow_symlinks=False)
    except OSError as e:
        assert e.errno == errno.ENODATA, e
    else:
        raise AssertionError("user.nothing is there")
    if n % 50 == 0:
        with open(path, "rb") as f:
            assert f.read() == want
    n += 1
print(n)
"""


def test_other_tasks_run_during_a_flood_of_requests(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    """Clients that keep the request queue full get right answers, and the
    daemon's other tasks (its control socket) still answer meanwhile: workers
    that never wait for the fd yield to the event loop now and then."""
    mnt = tmp_mounts.unionfs(build_stack(STACK, tmp_path / "layers", "chardev"))
    stop = tmp_path / "stop"
    files = [("d/top", "top\n"), ("d/low", "low\n"), ("d/sub/inner", "inner\n")]
    clients = [
        subprocess.Popen(
            [sys.executable, "-c", FLOOD_CLIENT, str(mnt / name), want, str(stop)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for name, want in files * 2
    ]
    try:
        wait_for(lambda: requests(mnt).get("getxattr", 0) >= 1000, "no flood of getxattr")
        before = requests(mnt)["getxattr"]
        # Each check is a control query answered while the clients keep asking.
        wait_for(
            lambda: requests(mnt)["getxattr"] >= before + 5000,
            "the control socket stopped answering, or the clients stopped",
        )
        assert all(c.poll() is None for c in clients), "a client ended before the stop file"
    finally:
        stop.touch()
        outs = [c.communicate()[0] for c in clients]
    assert [c.returncode for c in clients] == [0] * len(clients)
    assert all(int(out) >= 200 for out in outs), outs


def test_the_test_environment_runs_the_patched_pyfuse3() -> None:
    """scripts/test runs scripts/setup, which installs pyfuse3 built with every
    patch in patches/pyfuse3 (version ``3.5.0+unionfs.<hash of the patches>``):
    a build that fell back to a stock pyfuse3 would turn the feature tests above
    into expected failures, so this one says so instead."""
    patches = sorted((REPO / "patches" / "pyfuse3").glob("*.patch"))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in patches)).hexdigest()[:12]
    assert metadata.version("pyfuse3") == f"3.5.0+unionfs.{digest}"
    assert all(
        (
            pyfuse3_features.FALLOCATE,
            pyfuse3_features.DONT_MASK,
            pyfuse3_features.CACHE_DIRS,
            pyfuse3_features.REPORTED_INO,
            pyfuse3_features.RECEIVES_FIRST,
        )
    )
