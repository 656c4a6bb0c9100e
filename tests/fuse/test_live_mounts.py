"""Live mounts from the outside: ``unionfs mounts``, ``unionfs umount --all``, and
the background daemon's manners (it leaves the caller's working directory, and
its logs go somewhere even without /dev/log)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import oci
from tests.support.cli import REPO, run_unionfs
from tests.support.kernel import (
    WAIT_LIMIT,
    TmpMounts,
    is_mountpoint,
    lazy_unmount,
    process_gone,
    unionfs_daemon_pids,
    wait_for,
)
from tests.support.oci import Layer, directory, file
from unionfs.fuse import runstate

pytestmark = pytest.mark.mount

needs_unshare = pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare")


def survey(root: Path | None = None) -> dict[str, dict[str, Any]]:
    """`unionfs mounts --json`, by mount point."""
    out = run_unionfs("mounts", "--json", root=root, timeout=WAIT_LIMIT).stdout
    return {m["mountpoint"]: m for m in json.loads(out)}


@pytest.fixture
def layers(tmp_path: Path) -> list[Path]:
    top, bottom = tmp_path / "top", tmp_path / "bottom"
    (top / "etc").mkdir(parents=True)
    (top / "etc/motd").write_text("top\n")
    bottom.mkdir()
    (bottom / "base").write_text("base\n")
    return [top, bottom]


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    layer = Layer(oci.tar_bytes([directory("etc"), file("etc/hostname", b"image\n")]))
    layout = oci.oci_layout(tmp_path / "layout", [([layer], None)])
    root = tmp_path / "store"
    run_unionfs("image", "import", str(layout), "small:1", root=root)
    run_unionfs("create", "--name", "box", "small:1", root=root)
    return root


def test_mounts_lists_every_kind_of_mount_and_its_state(
    tmp_path: Path, tmp_mounts: TmpMounts, layers: list[Path], store_root: Path
) -> None:
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    plain = tmp_mounts.unionfs(
        layers, name="plain", args=("--upper", str(upper), "--work", str(work))
    )
    opts = tmp_mounts.mountpoint("opts")
    run_unionfs("mount", "-o", f"lowerdir={layers[0]}:{layers[1]}", str(opts))
    box = tmp_mounts.mountpoint("box")
    run_unionfs("mount", "box", str(box), root=store_root)
    image = tmp_mounts.mountpoint("image")
    run_unionfs("mount", "small:1", str(image), "--read-only", root=store_root)

    seen = survey()
    for mnt in (plain, opts, box, image):
        assert str(mnt) in seen, f"{mnt} missing from `unionfs mounts`"
        entry = seen[str(mnt)]
        assert entry["state"] == "live"
        assert {entry["pid"]} == unionfs_daemon_pids(mnt)
        assert entry["state_file"].startswith(str(runstate.run_dir()))
        # Without --log-file: syslog or the journal when there is one, else a file.
        log = entry["log"]
        assert log.startswith(("syslog", "journal")) or "mounted" in Path(log).read_text()
    assert seen[str(plain)]["source"] == "unionfs"
    assert seen[str(plain)]["lowers"] == [str(p) for p in layers]
    assert (seen[str(plain)]["upper"], seen[str(plain)]["work"]) == (str(upper), str(work))
    assert seen[str(opts)]["lowers"] == [str(p) for p in layers]
    assert seen[str(opts)]["upper"] is None
    assert seen[str(box)]["source"].startswith("unionfs:container:")
    assert seen[str(box)]["upper"] is not None
    assert seen[str(image)]["source"].startswith("unionfs:image:")
    assert len(seen[str(image)]["lowers"]) == 1

    table = run_unionfs("mounts").stdout.splitlines()
    assert table[0].split() == ["MOUNTPOINT", "SOURCE", "STATE", "PID", "LAYERS", "LOG"]
    [row] = [line for line in table if line.startswith(f"{plain} ")]
    assert row.split()[1:6] == ["unionfs", "live", str(seen[str(plain)]["pid"]), "2", "+"]

    # A killed daemon: still in the mount table, its state says so; `umount`
    # removes both the mount and the state it left.
    os.kill(seen[str(opts)]["pid"], signal.SIGKILL)
    wait_for(lambda: process_gone(seen[str(opts)]["pid"]), "the killed daemon is still there")
    assert survey()[str(opts)]["state"] == "daemon gone"
    run_unionfs("umount", str(opts))
    assert not is_mountpoint(opts)
    assert str(opts) not in survey()
    assert not Path(seen[str(opts)]["state_file"]).exists()

    # Killed and unmounted behind unionfs's back: a stale state file.
    os.kill(seen[str(image)]["pid"], signal.SIGKILL)
    wait_for(lambda: process_gone(seen[str(image)]["pid"]), "the killed daemon is still there")
    lazy_unmount(image)
    try:
        assert survey()[str(image)]["state"] == "stale state file"
    finally:
        runstate.withdraw_stale(image)


def test_the_daemon_leaves_the_working_directory(
    tmp_path: Path, tmp_mounts: TmpMounts, layers: list[Path]
) -> None:
    """Started from inside a mounted filesystem, the daemon does not keep it busy;
    relative paths given on the command line still name the right dirs."""
    here = tmp_mounts.mountpoint("here")
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(here)], check=True)
    mnt = tmp_mounts.mountpoint("union")
    proc = subprocess.run(
        [sys.executable, "-m", "unionfs", "mount",
         "--lower", os.path.relpath(layers[0], here), "--lower", os.path.relpath(layers[1], here),
         os.path.relpath(mnt, here)],
        cwd=here, env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=WAIT_LIMIT, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (pid,) = unionfs_daemon_pids(Path(os.path.relpath(mnt, here)))
    assert os.readlink(f"/proc/{pid}/cwd") == "/"
    subprocess.run(["umount", str(here)], check=True)  # not busy: no -l needed
    assert not is_mountpoint(here)
    assert (mnt / "etc/motd").read_text() == "top\n"
    assert (mnt / "base").read_text() == "base\n"
    tmp_mounts.unmount(mnt)
    wait_for(lambda: process_gone(pid), f"the daemon {pid} outlived its mount")


@needs_unshare
def test_without_dev_log_the_daemon_logs_beside_its_state(
    tmp_path: Path, layers: list[Path]
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = runstate.log_file_path(str(mnt))
    # /dev without a log socket (fuse and null only), and no journal either.
    script = r"""
set -e
mount -t tmpfs -o mode=755 none /dev
mknod -m 666 /dev/fuse c 10 229
mknod -m 666 /dev/null c 1 3
if [ -d /run/systemd/journal ]; then mount -t tmpfs none /run/systemd/journal; fi
unionfs() { "$PY" -m unionfs "$@"; }
unionfs mount --lower "$1" --lower "$2" "$3"
trap 'umount -l "$3" 2>/dev/null || true' EXIT
cat "$3/etc/motd" >/dev/null
stat -c %a "$4"
cat "$4"
echo ---
unionfs mounts --json
unionfs umount "$3"
"""
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", script, "bash",
         str(layers[0]), str(layers[1]), str(mnt), str(log)],
        cwd=REPO, env={**os.environ, "PY": sys.executable}, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=WAIT_LIMIT, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    mode_and_log, _, listing = proc.stdout.partition("---\n")
    mode, text = mode_and_log.split("\n", 1)
    [entry] = [m for m in json.loads(listing) if m["mountpoint"] == str(mnt)]
    assert entry["log"] == str(log)
    assert log.parent == Path(entry["state_file"]).parent
    assert mode == "600"
    assert f"unionfs[{entry['pid']}] unionfs.fuse.daemon INFO mounted {mnt}" in text
    # A clean end with nothing worth reading: the file goes with the mount.
    wait_for(lambda: process_gone(entry["pid"]), "the daemon outlived its mount")
    assert not log.exists()


@needs_unshare
def test_umount_all_unmounts_every_mount_but_a_busy_one(tmp_path: Path, layers: list[Path]) -> None:
    mnts = [tmp_path / f"m{i}" for i in range(3)]
    for m in mnts:
        m.mkdir()
    # In a namespace of its own, so that "every mount" is no one else's business.
    script = r"""
unionfs() { "$PY" -m unionfs "$@"; }
lower=$1; shift
for m in "$@"; do unionfs mount --lower "$lower" "$m" || exit 9; done
exec 3<"$2/etc/motd"             # keeps the second mount busy
unionfs umount --all
echo "rc=$?"
exec 3<&-
grep -c " $1 \| $3 " /proc/self/mountinfo || true
unionfs umount "$2" && echo "then unmounted"
"""
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", script, "bash",
         str(layers[0]), *map(str, mnts)],
        cwd=REPO, env={**os.environ, "PY": sys.executable}, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=WAIT_LIMIT, check=False,
    )  # fmt: skip
    out = proc.stdout.splitlines()
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert str(mnts[0]) in out and str(mnts[2]) in out
    assert str(mnts[1]) not in out
    assert "rc=1" in out
    assert out[-2:] == ["0", "then unmounted"]
    errors = [line for line in proc.stderr.splitlines() if str(mnts[1]) in line]
    assert errors and errors[0].startswith("unionfs: error: cannot unmount")
    assert "busy" in proc.stderr
    assert "1 of " in proc.stderr


def _nobody(*args: str, namespace: bool = False) -> subprocess.CompletedProcess[str]:
    """``python -m unionfs ARGS`` as user nobody (in a mount namespace of its own)."""
    prefix = ["unshare", "--mount", "--propagation", "private"] if namespace else []
    return subprocess.run(
        [*prefix, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-m", "unionfs", *args],
        cwd=REPO, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=WAIT_LIMIT,
        check=False,
    )  # fmt: skip


@needs_unshare
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv")
def test_a_normal_user_sees_root_mounts_without_their_details(
    tmp_mounts: TmpMounts, layers: list[Path]
) -> None:
    probe = _nobody("--version")
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot run the test interpreter: {probe.stderr.strip()}")
    mnt = tmp_mounts.unionfs(layers)
    proc = _nobody("mounts", "--json")
    assert proc.returncode == 0, proc.stderr
    [entry] = [m for m in json.loads(proc.stdout) if m["mountpoint"] == str(mnt)]
    assert entry["state"] == "no state file"
    assert entry["source"] == "unionfs"
    assert (entry["pid"], entry["lowers"], entry["log"]) == (None, None, None)
    # Not its mount: --all leaves it alone (and succeeds, having nothing to do).
    proc = _nobody("umount", "--all", namespace=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
    assert survey()[str(mnt)]["state"] == "live"
