"""What kernel overlayfs refuses, and opaque directories as it reads them.

* ``mknod NAME c 0 0`` (a whiteout's shape) through the mount: EPERM.
* Upper, work and lower dirs that overlap: the kernel refuses the mount (ELOOP
  for a lower inside or equal to another layer dir, EINVAL for an upper and a
  work dir that contain each other); unionfs refuses every overlap with one line
  naming the two dirs.
* Every way a directory becomes opaque leaves an upper that kernel overlayfs
  reads as unionfs did, with no ``.wh..wh..opq`` entry to show; with
  ``--whiteout-format oci`` the entry is written (and never shown by unionfs).
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fuse.test_write_diff import (
    KERNEL_OPTS,
    STACK,
    differential,
    mount_kernel,
    mount_unionfs,
    write,
)
from tests.support import pyfuse3_features
from tests.support.cli import run_unionfs
from tests.support.kernel import MountError, TmpMounts
from tests.support.stack import OCI_OPAQUE, build_stack
from tests.support.tree import DEFAULT_FIELDS, compare, render, snapshot

pytestmark = pytest.mark.mount


# --------------------------------------------------------------------------- mknod


def mknod_whiteout_device(m: Path) -> None:
    os.mknod(m / "data/wh", stat.S_IFCHR | 0o600, os.makedev(0, 0))


def mknod_whiteout_device_over_lower_whiteout(m: Path) -> None:
    os.mknod(m / "etc/old.conf", stat.S_IFCHR | 0o600, os.makedev(0, 0))


@pytest.mark.parametrize("op", [mknod_whiteout_device, mknod_whiteout_device_over_lower_whiteout])
def test_mknod_of_a_whiteout_device(
    tmp_path: Path, tmp_mounts: TmpMounts, op: Callable[[Path], None]
) -> None:
    """Both refuse with EPERM and write nothing (the differential checks the
    result, the merged tree and the upper)."""
    differential(tmp_path, tmp_mounts, op)


# --------------------------------------------------------------------------- overlaps

#: (case, lowers, upper, work, what mount(8) says of the kernel's refusal), dirs
#: relative to a scratch dir holding A, B, U, W (each with a subdirectory ``sub``).
ELOOP = "Too many levels of symbolic links"
EINVAL = "wrong fs type, bad option"
OVERLAPS = [
    ("lower inside upper", ["U/sub", "B"], "U", "W", ELOOP),
    ("lower equal to upper", ["U", "B"], "U", "W", ELOOP),
    ("lower inside work", ["W/sub", "B"], "U", "W", ELOOP),
    ("lower equal to work", ["W", "B"], "U", "W", ELOOP),
    ("lower inside lower", ["A", "A/sub"], "U", "W", ELOOP),
    ("lower containing lower", ["A/sub", "A"], "U", "W", ELOOP),
    ("same lower twice", ["A", "A"], "U", "W", ELOOP),
    ("read-only, lower inside lower", ["A", "A/sub"], None, None, ELOOP),
    ("lower containing upper and work", [".", "B"], "U", "W", ELOOP),
    ("work inside upper", ["A", "B"], "U", "U/sub", EINVAL),
    ("upper inside work", ["A", "B"], "W/sub", "W", EINVAL),
    ("upper equal to work", ["A", "B"], "U", "U", EINVAL),
]

_LINE = re.compile(
    r"unionfs: error: overlapping dirs: (?:upper|work|lower) dir (\S+) is (?:inside )?"
    r"(?:upper|work|lower) dir (\S+)"
)

#: Overlaps the kernel mounts, and then answers ELOOP for the overlapping
#: directory when it is looked up; unionfs refuses them at mount time.
KERNEL_MOUNTS_THEN_ELOOP = [
    ("upper inside lower", ["A", "B"], "A/sub", "W"),
    ("work inside lower", ["A", "B"], "U", "A/sub"),
]


def _scratch(base: Path) -> Path:
    for d in ("A", "B", "U", "W"):
        (base / d / "sub").mkdir(parents=True)
    return base


def _kernel_mount(base: Path, tmp_mounts: TmpMounts, lowers: list[str], upper: str | None,
                  work: str | None) -> Path:  # fmt: skip
    return tmp_mounts.overlay(
        [base / p for p in lowers],
        name="k",
        upper=base / upper if upper else None,
        work=base / work if work else None,
        extra_opts=KERNEL_OPTS,
    )


def _unionfs_mount(base: Path, lowers: list[str], upper: str | None, work: str | None,
                   mnt: Path) -> subprocess.CompletedProcess[str]:  # fmt: skip
    args = ["mount"]
    for p in lowers:
        args += ["--lower", str(base / p)]
    if upper and work:
        args += ["--upper", str(base / upper), "--work", str(base / work)]
    return run_unionfs(*args, str(mnt), check=False)


@pytest.mark.parametrize(
    ("case", "lowers", "upper", "work", "kernel_says"), OVERLAPS, ids=[c[0] for c in OVERLAPS]
)
def test_overlapping_dirs_refused(
    tmp_path: Path,
    tmp_mounts: TmpMounts,
    case: str,
    lowers: list[str],
    upper: str | None,
    work: str | None,
    kernel_says: str,
) -> None:
    base = _scratch(tmp_path / "dirs")
    with pytest.raises(MountError) as kernel:
        _kernel_mount(base, tmp_mounts, lowers, upper, work)
    assert kernel_says in str(kernel.value)
    mnt = tmp_mounts.mountpoint("u")
    proc = _unionfs_mount(base, lowers, upper, work, mnt)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    found = _LINE.fullmatch(lines[0])
    assert found is not None, lines[0]
    given = {os.path.normpath(base / p) for p in [*lowers, upper, work] if p is not None}
    assert {found[1], found[2]} <= given, lines[0]
    assert not os.path.ismount(mnt)


@pytest.mark.parametrize(
    ("case", "lowers", "upper", "work"),
    KERNEL_MOUNTS_THEN_ELOOP,
    ids=[c[0] for c in KERNEL_MOUNTS_THEN_ELOOP],
)
def test_upper_or_work_inside_a_lower(
    tmp_path: Path,
    tmp_mounts: TmpMounts,
    case: str,
    lowers: list[str],
    upper: str,
    work: str,
) -> None:
    """The kernel mounts these but refuses to look up the overlapping dir (its
    writes land inside a lower layer); unionfs refuses the mount."""
    base = _scratch(tmp_path / "dirs")
    mnt = _kernel_mount(base, tmp_mounts, lowers, upper, work)
    try:
        with pytest.raises(OSError) as e:
            os.listdir(mnt / "sub")
        assert e.value.errno == errno.ELOOP
    finally:
        tmp_mounts.unmount(mnt)
    mnt = tmp_mounts.mountpoint("u")
    proc = _unionfs_mount(base, lowers, upper, work, mnt)
    assert proc.returncode != 0
    line = proc.stderr.strip()
    inner = base / (upper if upper.startswith("A") else work)
    assert line == (
        f"unionfs: error: overlapping dirs: {'upper' if inner == base / upper else 'work'} dir"
        f" {inner} is inside lower dir {base / 'A'}"
    )


def test_overlap_through_a_symlink(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    """Dirs are compared with symlinks resolved."""
    base = _scratch(tmp_path / "dirs")
    (base / "link").symlink_to(base / "U")
    proc = _unionfs_mount(base, ["link/sub", "B"], "U", "W", tmp_mounts.mountpoint("u"))
    assert proc.stderr.strip() == (
        f"unionfs: error: overlapping dirs: lower dir {base / 'link/sub'} is inside"
        f" upper dir {base / 'U'}"
    )


# --------------------------------------------------------------------------- opaque dirs


def opaque_every_way(m: Path) -> None:
    """Each way a directory of the upper becomes opaque."""
    # rm -rf, mkdir: a lower dir replaced by a new one (the container case)
    subprocess.run(["rm", "-rf", str(m / "data/tree")], check=True)
    (m / "data/tree").mkdir()
    write(m / "data/tree/fresh", b"fresh\n")
    # a merged dir emptied, removed and made again
    subprocess.run(["rm", "-rf", str(m / "srv/merged")], check=True)
    (m / "srv/merged").mkdir()
    # mkdir over a dir a higher lower layer whites out
    (m / "var/cache").mkdir()
    # a new dir renamed onto a removed lower dir, and into a merged dir
    (m / "fresh").mkdir()
    write(m / "fresh/f", b"f\n")
    subprocess.run(["rm", "-rf", str(m / "var/log")], check=True)
    os.rename(m / "fresh", m / "var/log")
    (m / "moved").mkdir()
    os.rename(m / "moved", m / "data/moved")
    # mkdir over a removed lower file
    os.unlink(m / "data/other")
    (m / "data/other").mkdir()
    # a dir whose only lower content is gone, made again twice
    os.rmdir(m / "data/empty")
    (m / "data/empty").mkdir()
    os.rmdir(m / "data/empty")
    (m / "data/empty").mkdir()


def test_opaque_dirs_match_kernel(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    differential(tmp_path, tmp_mounts, opaque_every_way)


@pytest.mark.parametrize("reader", ["overlayfs", "unionfs"])
def test_opaque_upper_read_back(tmp_path: Path, tmp_mounts: TmpMounts, reader: str) -> None:
    """An upper unionfs made opaque directories in reads the same when kernel
    overlayfs (or unionfs again) mounts it: no ``.wh..wh..opq`` entry appears,
    nothing hidden comes back."""
    lowers = build_stack(STACK, tmp_path / "layers", "chardev")
    upper = tmp_path / "upper"
    for d in (upper, tmp_path / "w1", tmp_path / "w2"):
        d.mkdir()
    mnt = mount_unionfs(tmp_mounts, lowers, upper, tmp_path / "w1", "writer")
    opaque_every_way(mnt)
    written = snapshot(mnt)
    tmp_mounts.unmount(mnt)
    assert [p for p in snapshot(upper) if os.path.basename(p) == OCI_OPAQUE] == []
    mount = mount_kernel if reader == "overlayfs" else mount_unionfs
    mnt = mount(tmp_mounts, lowers, upper, tmp_path / "w2", "reader")
    read = snapshot(mnt)
    diffs = compare(written, read, fields=DEFAULT_FIELDS, ignore={"ino@dir"},
                    names=("unionfs", reader))  # fmt: skip
    assert diffs == [], "\n".join(diffs) + "\n\nas read:\n" + render(read)


def test_oci_whiteout_mode_writes_the_opaque_entry(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    """With ``--whiteout-format oci`` an opaque directory gets ``.wh..wh..opq``
    (mode 0, empty) and the xattr; the mount never shows the entry, and a
    remount reads the same tree."""
    lowers = build_stack(STACK, tmp_path / "layers", "chardev")
    upper = tmp_path / "upper"
    for d in (upper, tmp_path / "w1", tmp_path / "w2"):
        d.mkdir()
    args = ["--upper", str(upper), "--work", str(tmp_path / "w1"), "--whiteout-format", "oci"]
    mnt = tmp_mounts.unionfs(lowers, name="oci", args=args)
    subprocess.run(["rm", "-rf", str(mnt / "data/tree")], check=True)
    (mnt / "data/tree").mkdir()
    assert os.listdir(mnt / "data/tree") == []
    written = snapshot(mnt)
    tmp_mounts.unmount(mnt)
    marker = upper / "data/tree" / OCI_OPAQUE
    st = marker.lstat()
    assert stat.S_ISREG(st.st_mode) and st.st_size == 0
    assert os.getxattr(upper / "data/tree", "trusted.overlay.opaque") == b"y"
    mnt = mount_unionfs(tmp_mounts, lowers, upper, tmp_path / "w2", "again")
    assert compare(written, snapshot(mnt), fields=DEFAULT_FIELDS, ignore={"ino@dir"}) == []


# --------------------------------------------------------------------------- fallocate

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def fallocate_modes(m: Path) -> object:
    """Mode 0 (also a lower file: copy-up), KEEP_SIZE, PUNCH_HOLE|KEEP_SIZE."""
    fd = os.open(m / "data/file", os.O_RDWR)
    try:
        _fallocate(fd, 0, 0, 8192)
        _fallocate(fd, 0x01, 8192, 8192)
        _fallocate(fd, 0x02 | 0x01, 0, 4)
        st = os.fstat(fd)
        return st.st_size, os.pread(fd, 12, 0)
    finally:
        os.close(fd)


@pytest.mark.xfail(
    not pyfuse3_features.FALLOCATE,
    reason="a stock pyfuse3 (3.5) does not dispatch FUSE_FALLOCATE: the kernel answers"
    " EOPNOTSUPP (patches/pyfuse3 adds it)",
    strict=True,
)
def test_fallocate(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    differential(tmp_path, tmp_mounts, fallocate_modes)
