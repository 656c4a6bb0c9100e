"""Real mounts: unionfs and kernel overlayfs over the same layers must agree,
tree by tree and errno by errno."""

import errno
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.kernel import (
    WAIT_LIMIT,
    TmpMounts,
    is_mountpoint,
    process_gone,
    unionfs_daemon_pids,
    wait_for,
)
from tests.support.stack import (
    KERNEL_FORMATS,
    UNPREDICTABLE,
    Device,
    Dir,
    Fifo,
    File,
    Format,
    HardLink,
    Layer,
    Symlink,
    Whiteout,
    build_stack,
    expected_snapshot,
    kernel_ghosts,
)
from tests.support.tree import Node, check_ino_consistency, compare, render, snapshot

pytestmark = pytest.mark.mount

REPO = Path(__file__).resolve().parents[2]

STACK: list[Layer] = [
    [  # top
        File("etc/motd", b"top motd\n", mode=0o600, uid=1000, gid=100),
        Whiteout("etc/old.conf"),
        Dir("etc/conf.d", opaque=True),
        File("etc/conf.d/only", b"only this\n"),
        Whiteout("var/cache"),
        Dir("opt/app/bin"),
        File("opt/app/bin/run", b"#!/bin/sh\n", mode=0o4755),
        File("usr/lib/was-a-dir", b"now a file\n"),
        Dir("usr/share/was-a-file"),
        File("usr/share/was-a-file/inside", b"in"),
        File("data/xattrs", b"x", xattrs={"user.comment": b"top\xff", "trusted.note": b"t"}),
    ],
    [  # middle
        File("etc/extra.conf", b"extra\n"),
        Dir("etc/sub"),
        File("etc/sub/mid", b"mid\n"),
        Whiteout("usr/lib/gone"),
        Dir("tmp", mode=0o1777),
        Symlink("etc/localtime", "/usr/share/zoneinfo/UTC"),
        Fifo("run/fifo"),
        Device("dev/null", "char", 1, 3, mode=0o666),
        File("srv/a", b"hard"),
        HardLink("srv/b", "srv/a"),
    ],
    [  # bottom
        File("etc/motd", b"bottom motd\n"),
        File("etc/old.conf", b"old\n"),
        File("etc/conf.d/a.conf", b"a\n"),
        File("etc/conf.d/b.conf", b"b\n"),
        File("etc/sub/low", b"low\n"),
        File("var/cache/big", os.urandom(70000)),
        File("var/log/messages", b"log\n"),
        Dir("usr/lib/was-a-dir"),
        File("usr/lib/was-a-dir/child"),
        File("usr/lib/gone", b"gone"),
        File("usr/lib/kept", b"kept", mode=0o755),
        File("usr/share/was-a-file", b"file"),
        Symlink("bin", "usr/bin"),
        Dir("usr/bin", mode=0o750, uid=0, gid=10),
        File("usr/bin/tool", b"tool", mode=0o2755, gid=10),
        File("data/xattrs", b"old", xattrs={"user.comment": b"bottom"}),
    ],
]


def unionfs_tree(tmp_mounts: TmpMounts, lowers: list[Path]) -> dict[str, Node]:
    return snapshot(tmp_mounts.unionfs(lowers))


def drop(snap: dict[str, Node], paths: set[str]) -> dict[str, Node]:
    return {p: n for p, n in snap.items() if p not in paths}


@pytest.mark.parametrize("fmt", KERNEL_FORMATS)
def test_tree_equals_kernel_overlayfs(tmp_path: Path, tmp_mounts: TmpMounts, fmt: Format) -> None:
    lowers = build_stack(STACK, tmp_path / "layers", fmt)
    opts = ["userxattr"] if fmt == "user" else []
    kernel = snapshot(tmp_mounts.overlay(lowers, extra_opts=opts))
    ours = unionfs_tree(tmp_mounts, lowers)
    # The kernel lists whiteouts of non-merged dirs in readdir (lookup then
    # fails); unionfs never shows a whiteout.
    kernel = drop(kernel, kernel_ghosts(STACK, fmt))
    diffs = compare(kernel, ours, names=("overlayfs", "unionfs"))
    assert diffs == [], "\n".join(diffs) + "\n\nunionfs tree:\n" + render(ours)
    assert check_ino_consistency(ours) == []


def test_oci_whiteouts_equal_kernel_on_overlay_format(
    tmp_path: Path, tmp_mounts: TmpMounts
) -> None:
    """OCI `.wh.` layers under unionfs == the same layers in overlayfs form under the kernel."""
    kernel = snapshot(tmp_mounts.overlay(build_stack(STACK, tmp_path / "k", "chardev")))
    kernel = drop(kernel, kernel_ghosts(STACK, "chardev"))
    ours = unionfs_tree(tmp_mounts, build_stack(STACK, tmp_path / "u", "oci"))
    # Layer directories hold different entries in the two formats, so their own
    # sizes may differ; everything else must match.
    diffs = compare(kernel, ours, ignore={"size@dir"}, names=("overlayfs", "unionfs"))
    assert diffs == [], "\n".join(diffs)
    assert not any(".wh." in p for p in ours)


@pytest.mark.parametrize("fmt", ["chardev", "xattr", "oci", "user"])
def test_tree_equals_expected_merge(tmp_path: Path, tmp_mounts: TmpMounts, fmt: Format) -> None:
    ours = unionfs_tree(tmp_mounts, build_stack(STACK, tmp_path / "layers", fmt))
    diffs = compare(expected_snapshot(STACK), ours, ignore=UNPREDICTABLE)
    assert diffs == [], "\n".join(diffs)


def outcome(op: Callable[[Path], object], mnt: Path) -> object:
    try:
        return ("ok", op(mnt))
    except OSError as e:
        return ("errno", errno.errorcode.get(e.errno or 0, e.errno))


def _read(p: Path) -> bytes:
    return p.read_bytes()


OPERATIONS: dict[str, Callable[[Path], object]] = {
    "read upper file": lambda m: _read(m / "etc/motd"),
    "read merged-dir file": lambda m: _read(m / "etc/sub/low"),
    "read big file": lambda m: len(_read(m / "var/log/messages")),
    "lookup whiteout": lambda m: os.lstat(m / "etc/old.conf"),
    "lookup under whited-out dir": lambda m: os.lstat(m / "var/cache/big"),
    "lookup cut off by opaque": lambda m: os.lstat(m / "etc/conf.d/a.conf"),
    "lookup under a file": lambda m: os.lstat(m / "usr/lib/was-a-dir/child"),
    "lookup .wh. name": lambda m: os.lstat(m / "etc/.wh.old.conf"),
    "readlink": lambda m: os.readlink(m / "bin"),
    "readlink of a file": lambda m: os.readlink(m / "etc/motd"),
    "listdir a file": lambda m: os.listdir(m / "etc/motd"),
    "open dir for reading as file": lambda m: _read(m / "etc"),
    "write a file": lambda m: os.open(m / "etc/motd", os.O_WRONLY),
    "create a file": lambda m: os.open(m / "etc/new", os.O_WRONLY | os.O_CREAT, 0o644),
    "mkdir": lambda m: os.mkdir(m / "newdir"),
    "unlink": lambda m: os.unlink(m / "etc/motd"),
    "rmdir": lambda m: os.rmdir(m / "etc/sub"),
    "rename": lambda m: os.rename(m / "etc/motd", m / "etc/motd2"),
    "chmod": lambda m: os.chmod(m / "etc/motd", 0o777),
    "symlink": lambda m: os.symlink("x", m / "newlink"),
    "setxattr": lambda m: os.setxattr(m / "etc/motd", "user.x", b"1"),
    "getxattr missing": lambda m: os.getxattr(m / "etc/motd", "user.none"),
    "getxattr private": lambda m: os.getxattr(m / "etc/conf.d", "trusted.overlay.opaque"),
    "getxattr": lambda m: os.getxattr(m / "data/xattrs", "user.comment"),
    "listxattr": lambda m: sorted(os.listxattr(m / "data/xattrs")),
    "listxattr opaque dir": lambda m: sorted(os.listxattr(m / "etc/conf.d")),
    "long name": lambda m: os.lstat(m / ("n" * 256)),
    "access W_OK": lambda m: os.access(m / "etc/motd", os.W_OK),
    "statvfs namemax": lambda m: os.statvfs(m).f_namemax,
}


def test_operations_match_kernel_errno_by_errno(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    lowers = build_stack(STACK, tmp_path / "layers", "chardev")
    kernel = tmp_mounts.overlay(lowers, extra_opts=["ro"])
    ours = tmp_mounts.unionfs(lowers)
    mismatches = []
    for name, op in OPERATIONS.items():
        want, got = outcome(op, kernel), outcome(op, ours)
        if want != got:
            mismatches.append(f"{name}: overlayfs {want!r}, unionfs {got!r}")
    assert mismatches == []


SCRIPT = 'read -r line < /etc/motd; echo "$line"; ls /etc; echo x > /etc/motd'


def test_chroot_runs_in_the_merged_view(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        pytest.skip("busybox-static is not installed")
    stack: list[Layer] = [
        [File("etc/motd", b"from the top layer\n"), Whiteout("etc/secret")],
        [
            File("bin/busybox", busybox.read_bytes(), mode=0o755),
            Symlink("bin/sh", "busybox"),
            File("etc/motd", b"old\n"),
            File("etc/secret", b"hidden\n"),
        ],
    ]
    mnt = tmp_mounts.unionfs(build_stack(stack, tmp_path / "layers", "oci"))
    proc = subprocess.run(
        [
            "chroot",
            str(mnt),
            "/bin/sh",
            "-c",
            'read -r l < /etc/motd; echo "$l"; ls /etc; echo x > /etc/motd',
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.stdout == "from the top layer\nmotd\n", proc.stderr
    assert "Read-only file system" in proc.stderr


def test_umount_command_and_daemon_exit(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    mnt = tmp_mounts.unionfs(build_stack(STACK, tmp_path / "layers", "chardev"))
    pids_before = unionfs_daemon_pids(mnt)
    assert len(pids_before) == 1
    subprocess.run([sys.executable, "-m", "unionfs", "umount", str(mnt)], cwd=REPO, check=True)
    assert not is_mountpoint(mnt)
    _wait_gone(pids_before)


def test_sigterm_unmounts_cleanly(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    mnt = tmp_mounts.unionfs(build_stack(STACK, tmp_path / "layers", "chardev"))
    (pid,) = unionfs_daemon_pids(mnt)
    os.kill(pid, signal.SIGTERM)
    _wait_gone({pid})
    assert not is_mountpoint(mnt)


def test_foreground_mount_serves_until_unmounted(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    lowers = build_stack(STACK, tmp_path / "layers", "chardev")
    mnt = tmp_mounts.mountpoint("fg")
    cmd = [sys.executable, "-m", "unionfs", "mount", "-f", "-o", f"lowerdir={lowers[0]}:"
           f"{lowers[1]}:{lowers[2]}", str(mnt)]  # fmt: skip
    log = tmp_path / "fg.log"
    with open(log, "w") as err, subprocess.Popen(cmd, cwd=REPO, stderr=err) as proc:
        try:
            wait_for(
                lambda: is_mountpoint(mnt) or proc.poll() is not None,
                f"the foreground mount never appeared on {mnt}",
            )
            assert proc.poll() is None, log.read_text()
            assert (mnt / "etc/motd").read_bytes() == b"top motd\n"
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=WAIT_LIMIT) == 0, log.read_text()
            assert not is_mountpoint(mnt)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert "unmounted" in log.read_text()


def _wait_gone(pids: set[int]) -> None:
    wait_for(lambda: all(process_gone(p) for p in pids), f"daemon {pids} still running")
