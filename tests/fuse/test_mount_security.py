"""Setuid programs and device nodes of a mount, seen by another local user.

A read-only mount (an image, or layer dirs) is ``nosuid,nodev`` unless ``-o
suid,dev`` asks; a container's writable mount is ``suid,dev``. The kernel
decides: a normal user runs the image's setuid-root ``id`` and opens its
``/dev/null`` through the mount, and the test looks at what happened.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import oci
from tests.support.cli import run_unionfs
from tests.support.kernel import (
    TmpMounts,
    force_unmount,
    is_mountpoint,
    mountinfo,
    mounts_under,
)
from tests.support.oci import Entry, Layer, directory, file
from tests.support.users import temporary_user

pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount for another user"),
]

ID = Path(shutil.which("id") or "/usr/bin/id")


@pytest.fixture
def user() -> Iterator[str]:
    """A normal user made for the test, and removed after it."""
    with temporary_user() as pw:
        yield pw.pw_name


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A dir another user can reach (pytest's tmp dirs are root's own, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="unionfs-suid-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        # (torn down before tmp_mounts: unmount what is under it first)
        for m in reversed(mounts_under(path)):
            force_unmount(m.mountpoint)
        shutil.rmtree(path)


def _image_layer() -> Layer:
    return Layer(
        oci.tar_bytes(
            [
                directory("bin"),
                file("bin/id", ID.read_bytes(), 0o4755),  # setuid root
                directory("dev"),
                Entry("dev/null", "chardev", mode=0o666, devmajor=1, devminor=3),
            ]
        )
    )


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    layout = oci.oci_layout(tmp_path / "layout", [([_image_layer()], None)])
    root = tmp_path / "store"
    run_unionfs("image", "import", str(layout), "suid:1", root=root)
    return root


def _as_user(user: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", "--reuid", user, "--regid", user, "--clear-groups", "--", *cmd],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def _euid_running_its_id(user: str, mnt: Path) -> int:
    proc = _as_user(user, str(mnt / "bin/id"), "-u")  # -u: the effective uid
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout)


def _opens_its_dev_null(user: str, mnt: Path) -> bool:
    """Whether the user can open the image's device node (nodev: EACCES)."""
    proc = _as_user(user, "sh", "-c", f"echo x > {mnt}/dev/null")
    return proc.returncode == 0


def _options(mnt: Path) -> set[str]:
    [info] = [m for m in mountinfo() if Path(m.mountpoint) == mnt]
    return set(info.options.split(","))


def _mount(root: Path, tmp_mounts: TmpMounts, where: Path, *args: str) -> Path:
    mnt = tmp_mounts.register(where)
    mnt.mkdir()
    run_unionfs("mount", *args, str(mnt), root=root)
    assert is_mountpoint(mnt)
    return mnt


def test_read_only_image_mount_is_nosuid_nodev(
    store_root: Path, tmp_mounts: TmpMounts, public_dir: Path, user: str
) -> None:
    uid = pwd.getpwnam(user).pw_uid
    mnt = _mount(store_root, tmp_mounts, public_dir / "image", "suid:1", "--read-only")
    assert {"nosuid", "nodev"} <= _options(mnt)
    assert (mnt / "bin/id").stat().st_mode & 0o7777 == 0o4755  # the bit is shown...
    assert _euid_running_its_id(user, mnt) == uid  # ...and has no effect
    assert not _opens_its_dev_null(user, mnt)
    tmp_mounts.unmount(mnt)

    # asked for: the kernel honours them
    mnt = _mount(
        store_root, tmp_mounts, public_dir / "asked", "suid:1", "--read-only", "-o", "suid,dev"
    )
    assert not {"nosuid", "nodev"} & _options(mnt)
    assert _euid_running_its_id(user, mnt) == 0
    assert _opens_its_dev_null(user, mnt)


def test_lower_mount_is_nosuid_nodev_and_a_container_is_not(
    store_root: Path, tmp_mounts: TmpMounts, public_dir: Path, user: str
) -> None:
    uid = pwd.getpwnam(user).pw_uid
    [diff_id] = [p.name for p in (store_root / "layers").iterdir() if p.is_dir()]
    layer = store_root / "layers" / diff_id / "diff"
    mnt = _mount(store_root, tmp_mounts, public_dir / "lower", "--lower", str(layer))
    assert {"nosuid", "nodev"} <= _options(mnt)
    assert _euid_running_its_id(user, mnt) == uid
    assert not _opens_its_dev_null(user, mnt)
    tmp_mounts.unmount(mnt)

    # a container's root filesystem needs them: writable mounts have them
    run_unionfs("create", "suid:1", "--name", "box", root=store_root)
    mnt = _mount(store_root, tmp_mounts, public_dir / "box", "box")
    assert not {"nosuid", "nodev"} & _options(mnt)
    assert _euid_running_its_id(user, mnt) == 0
    assert _opens_its_dev_null(user, mnt)
    tmp_mounts.unmount(mnt)

    # ...unless refused with -o
    mnt = _mount(store_root, tmp_mounts, public_dir / "box-nosuid", "box", "-o", "nosuid")
    assert "nosuid" in _options(mnt) and "nodev" not in _options(mnt)
    assert _euid_running_its_id(user, mnt) == uid
