"""Metadata changes on the mount root, unionfs against kernel overlayfs.

The root of a writable overlay is the upper dir itself: chown, chmod, utimes,
setxattr and removexattr there change the upper dir, as on any other upper
directory (podman chowns and touches every container's root). Each side runs
the same steps on its own fresh upper over identical lower layers; results
(value or errno), the root's metadata seen through the mount and the upper
dir's on disk must agree after every step. A read-only mount refuses them all
with EROFS. Also the other entry the daemon reaches by a file descriptor
rather than a path: an open file that was unlinked, changed through its fd.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fuse.test_write_diff import mount_kernel, mount_unionfs, mount_unionfs_o
from tests.support.kernel import TmpMounts
from tests.support.stack import Dir, File, Layer, build_stack

pytestmark = pytest.mark.mount

STACK: list[Layer] = [
    [File("etc/motd", b"top\n")],
    [Dir("etc", mode=0o755), File("bin/sh", b"#!\n", mode=0o755)],
]

T1 = 1_000_000_000_123_456_789
T2 = 1_000_000_100_987_654_321
RECENT = "recent"

Step = Callable[[Path], object]


def _xattr_replace(m: Path) -> None:
    os.setxattr(m, "user.k", b"v2", os.XATTR_REPLACE)


def _xattr_create_again(m: Path) -> None:
    os.setxattr(m, "user.k", b"v3", os.XATTR_CREATE)


def _setfacl(m: Path) -> tuple[int, str]:
    """Access and default ACLs on the root; the exit status and getfacl's view."""
    done = subprocess.run(
        ["setfacl", "-m", "u:1234:rx", "-d", "-m", "g:99:rwx", str(m)], capture_output=True
    )
    shown = subprocess.run(["getfacl", "-cn", str(m)], capture_output=True, text=True, check=True)
    return done.returncode, shown.stdout


ROOT_STEPS: list[tuple[str, Step]] = [
    ("chown 0:0", lambda m: os.chown(m, 0, 0)),
    ("chown 1000:1001", lambda m: os.chown(m, 1000, 1001)),
    ("chown uid only", lambda m: os.chown(m, 2000, -1)),
    ("chown gid only", lambda m: os.chown(m, -1, 2001)),
    ("chmod 0o700", lambda m: os.chmod(m, 0o700)),
    ("chmod 0o3777", lambda m: os.chmod(m, 0o3777)),
    ("chown back 0:0 (setgid kept for root)", lambda m: os.chown(m, 0, 0)),
    ("utime explicit", lambda m: os.utime(m, ns=(T1, T2))),
    ("setxattr user.k", lambda m: os.setxattr(m, "user.k", b"v")),
    ("setxattr replace", _xattr_replace),
    ("setxattr create existing", _xattr_create_again),
    ("setxattr trusted.x", lambda m: os.setxattr(m, "trusted.x", b"t")),
    ("getxattr user.k", lambda m: os.getxattr(m, "user.k")),
    ("removexattr user.k", lambda m: os.removexattr(m, "user.k")),
    ("removexattr missing", lambda m: os.removexattr(m, "user.k")),
    ("setfacl", _setfacl),
    ("touch (now)", os.utime),
    ("chmod 0o755", lambda m: os.chmod(m, 0o755)),
]


def _run(step: Step, m: Path) -> object:
    try:
        return ("ok", step(m))
    except OSError as exc:
        return ("errno", exc.errno)


def _meta(path: Path, started_ns: int) -> dict[str, object]:
    st = os.stat(path, follow_symlinks=False)
    xattrs = {
        name: os.getxattr(path, name, follow_symlinks=False)
        for name in sorted(os.listxattr(path, follow_symlinks=False))
        if not name.startswith("trusted.overlay.")
    }

    def when(ns: int) -> object:
        return RECENT if ns >= started_ns else ns

    return {
        "type": stat.S_IFMT(st.st_mode),
        "mode": oct(stat.S_IMODE(st.st_mode)),
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mtime": when(st.st_mtime_ns),
        "atime": when(st.st_atime_ns),
        "xattrs": xattrs,
    }


def _play(
    tmp_mounts: TmpMounts, tmp_path: Path, mounter: Callable[..., Path], side: str
) -> list[object]:
    lowers = build_stack(STACK, tmp_path / side / "layers", "chardev")
    upper, work = tmp_path / side / "upper", tmp_path / side / "work"
    upper.mkdir()
    work.mkdir()
    os.utime(upper, ns=(T2, T1))
    started = time.time_ns()
    mnt = mounter(tmp_mounts, lowers, upper, work, side)
    record: list[object] = []
    try:
        for what, step in ROOT_STEPS:
            result = _run(step, mnt)
            record.append((what, result, _meta(mnt, started), _meta(upper, started)))
    finally:
        tmp_mounts.unmount(mnt)
    record.append(("upper after unmount", _meta(upper, started)))
    return record


@pytest.mark.parametrize("mounter", [mount_unionfs, mount_unionfs_o], ids=["lower", "o"])
def test_root_metadata_like_overlayfs(
    tmp_mounts: TmpMounts, tmp_path: Path, mounter: Callable[..., Path]
) -> None:
    kernel = _play(tmp_mounts, tmp_path, mount_kernel, "kernel")
    ours = _play(tmp_mounts, tmp_path, mounter, "unionfs")
    for k, u in zip(kernel, ours, strict=True):
        assert u == k


def test_root_metadata_refused_read_only(tmp_mounts: TmpMounts, tmp_path: Path) -> None:
    lowers = build_stack(STACK, tmp_path / "layers", "chardev")
    results = {}
    for side, mnt in (
        ("kernel", tmp_mounts.overlay(lowers, name="kernel")),
        ("unionfs", tmp_mounts.unionfs(lowers, name="unionfs")),
    ):
        results[side] = [_run(step, mnt) for what, step in ROOT_STEPS]
    assert results["unionfs"] == results["kernel"]
    assert ("errno", 30) in results["kernel"]  # EROFS


def _unlinked_steps(m: Path) -> list[object]:
    fd = os.open(m / "etc/motd", os.O_RDWR)
    try:
        os.unlink(m / "etc/motd")
        steps: list[Step] = [
            lambda _m: os.ftruncate(fd, 2),
            lambda _m: os.fchown(fd, 1000, 1001),
            lambda _m: os.fchmod(fd, 0o640),
            lambda _m: os.utime(fd, ns=(T1, T2)),
        ]
        out: list[object] = [_run(step, m) for step in steps]
        st = os.fstat(fd)
        out.append((st.st_uid, st.st_gid, oct(st.st_mode), st.st_mtime_ns, st.st_size))
        return out
    finally:
        os.close(fd)


def test_unlinked_open_file_metadata_like_overlayfs(tmp_mounts: TmpMounts, tmp_path: Path) -> None:
    results: list[list[object]] = []
    for side, mounter in (("kernel", mount_kernel), ("unionfs", mount_unionfs)):
        lowers = build_stack(STACK, tmp_path / side / "layers", "chardev")
        upper, work = tmp_path / side / "upper", tmp_path / side / "work"
        upper.mkdir()
        work.mkdir()
        mnt = mounter(tmp_mounts, lowers, upper, work, side)
        try:
            results.append(_unlinked_steps(mnt))
        finally:
            tmp_mounts.unmount(mnt)
    assert results[1] == results[0]
    assert results[0][-1] == (1000, 1001, oct(0o100640), T2, 2)
