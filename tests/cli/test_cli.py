"""Bad input at the command line: one clear line, a non-zero exit, no traceback."""

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root")


def unionfs(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "unionfs", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def assert_one_error_line(proc: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("unionfs: error: "), lines[0]
    assert text in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.fixture
def layer(tmp_path: Path) -> Path:
    d = tmp_path / "layer"
    d.mkdir()
    (d / "file").write_text("x")
    return d


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    m = tmp_path / "mnt"
    m.mkdir()
    yield m
    # a mount made by a failing assertion must not outlive the test
    if os.path.ismount(m):
        subprocess.run(["umount", "-l", str(m)], check=False)


def test_missing_layer(mnt: Path, tmp_path: Path) -> None:
    proc = unionfs("mount", "--lower", str(tmp_path / "nope"), str(mnt))
    assert_one_error_line(proc, 1, f"lower layer {tmp_path / 'nope'}: no such directory")


def test_layer_is_a_file(mnt: Path, layer: Path) -> None:
    proc = unionfs("mount", "--lower", str(layer / "file"), str(mnt))
    assert_one_error_line(proc, 1, "not a directory")


def test_missing_mountpoint(layer: Path, tmp_path: Path) -> None:
    proc = unionfs("mount", "--lower", str(layer), str(tmp_path / "nowhere"))
    assert_one_error_line(proc, 1, "mount point")


def test_mountpoint_is_a_file(layer: Path) -> None:
    proc = unionfs("mount", "--lower", str(layer), str(layer / "file"))
    assert_one_error_line(proc, 1, "not a directory")


def test_unknown_option(layer: Path, mnt: Path) -> None:
    proc = unionfs("mount", "-o", f"lowerdir={layer},frobnicate", str(mnt))
    assert_one_error_line(proc, 2, "unknown mount option 'frobnicate'")


def test_unknown_flag(layer: Path, mnt: Path) -> None:
    proc = unionfs("mount", "--lowr", str(layer), str(mnt))
    assert_one_error_line(proc, 2, "--lowr")


def test_no_layers(mnt: Path) -> None:
    proc = unionfs("mount", str(mnt))
    assert_one_error_line(proc, 2, "no layers")


def test_umount_of_a_plain_directory(mnt: Path) -> None:
    proc = unionfs("umount", str(mnt))
    assert_one_error_line(proc, 1, "is not mounted")


@needs_root
def test_already_mounted_and_foreign_umount(layer: Path, mnt: Path) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "none", str(mnt)], check=True)
    try:
        proc = unionfs("mount", "--lower", str(layer), str(mnt))
        assert_one_error_line(proc, 1, "is already mounted (tmpfs")
        proc = unionfs("umount", str(mnt))
        assert_one_error_line(proc, 1, "is not a unionfs mount (it is tmpfs)")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@needs_root
def test_no_dev_fuse(layer: Path, mnt: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    # In a private mount namespace whose /dev has no fuse device.
    script = 'mount -t tmpfs none /dev && exec "$@"'
    proc = unionfs(
        "mount", "--lower", str(layer), str(mnt),
        prefix=("unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"),
    )  # fmt: skip
    assert_one_error_line(proc, 1, "/dev/fuse is missing")


def _nobody_can_run_python() -> bool:
    probe = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-c", "import unionfs.cli.main"],
        capture_output=True, cwd=REPO, check=False,
    )  # fmt: skip
    return probe.returncode == 0


@needs_root
def test_no_permission_as_a_normal_user(layer: Path, mnt: Path) -> None:
    if shutil.which("setpriv") is None or not _nobody_can_run_python():
        pytest.skip("the test interpreter is not usable by an unprivileged user")
    os.chmod(mnt.parent, 0o755)
    os.chmod(layer.parent, 0o755)
    proc = unionfs(
        "mount", "--lower", str(layer), str(mnt),
        prefix=("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"),
    )  # fmt: skip
    assert_one_error_line(proc, 1, "permission denied")


def test_help_and_version() -> None:
    assert unionfs("--help").returncode == 0
    proc = unionfs("--version")
    assert proc.returncode == 0
    assert "unionfs" in proc.stdout


def test_upper_without_work(layer: Path, mnt: Path, tmp_path: Path) -> None:
    proc = unionfs("mount", "--lower", str(layer), "--upper", str(tmp_path), str(mnt))
    assert_one_error_line(proc, 2, "an upper layer needs a work dir")


def test_missing_work_dir(layer: Path, mnt: Path, tmp_path: Path) -> None:
    (tmp_path / "up").mkdir()
    proc = unionfs(
        "mount", "--lower", str(layer), "--upper", str(tmp_path / "up"),
        "--work", str(tmp_path / "nowork"), str(mnt),
    )  # fmt: skip
    assert_one_error_line(proc, 1, "work dir")


@needs_root
def test_work_dir_on_another_filesystem(layer: Path, mnt: Path, tmp_path: Path) -> None:
    (tmp_path / "up").mkdir()
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "none", str(other)], check=True)
    try:
        proc = unionfs(
            "mount", "--lower", str(layer), "--upper", str(tmp_path / "up"),
            "--work", str(other), str(mnt),
        )  # fmt: skip
        assert_one_error_line(proc, 1, "is not on the filesystem of upper dir")
    finally:
        subprocess.run(["umount", str(other)], check=True)


@needs_root
def test_upper_and_work_dirs_in_use(layer: Path, tmp_path: Path) -> None:
    up, work, work2 = tmp_path / "up", tmp_path / "work", tmp_path / "work2"
    for d in (up, work, work2):
        d.mkdir()
    first, second = tmp_path / "m1", tmp_path / "m2"
    first.mkdir()
    second.mkdir()
    base = ("mount", "--lower", str(layer), "--upper", str(up))
    assert unionfs(*base, "--work", str(work), str(first)).returncode == 0
    try:
        proc = unionfs(*base, "--work", str(work), str(second))
        assert_one_error_line(proc, 1, "the work dir is in use by another mount")
        proc = unionfs(*base, "--work", str(work2), str(second))
        assert_one_error_line(proc, 1, "the upper dir is in use by another mount")
    finally:
        for m in (first, second):
            if os.path.ismount(m):
                subprocess.run(["umount", "-l", str(m)], check=False)


def test_commands_start_without_the_browser_and_registry_libraries() -> None:
    """Every command, and every mount's daemon (which starts as the command),
    loads textual and httpx only for the commands that use them."""
    probe = subprocess.run(
        [sys.executable, "-c",
         "import sys, unionfs.cli.main; "
         "print(sorted(m for m in ('textual', 'httpx', 'pygments') if m in sys.modules))"],
        capture_output=True, text=True, cwd=REPO, check=True,
    )  # fmt: skip
    assert probe.stdout.strip() == "[]"
