"""Where a daemon keeps its state when it is root of a user namespace (as
rootless podman runs its mount program): not /run, which is not that root's,
but the user's own run dir, which the commands in the same namespace find;
and a run dir it cannot use at all never fails a mount.

The tests run as a user made for them (removed after), in ``unshare -Urm``,
with /dev/fuse set to Debian's 0666 for their length (restored after).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kernel import force_unmount, mounts_under
from tests.support.users import temporary_user
from unionfs.fuse import runstate

REPO = Path(__file__).resolve().parents[2]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a user")
needs_unshare = pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")

RUN_DIR = f"{sys.executable} -c 'from unionfs.fuse import runstate; print(runstate.run_dir())'"

#: No run dir at all: a fresh /tmp whose unionfs-<uid> another could write
#: (mode 0777), no $XDG_RUNTIME_DIR, and /run is the machine root's.
NO_RUN_DIR = """\
{py} -m unionfs mount --lower {b}/lower {b}/mnt
cat {b}/mnt/f
{py} -m unionfs mounts --json
{py} -m unionfs umount {b}/mnt
"""


@pytest.fixture
def user() -> Iterator[int]:
    with temporary_user() as pw:
        yield pw.pw_uid


@pytest.fixture
def base(user: int) -> Iterator[Path]:
    # Not under /tmp, which a test hides behind a tmpfs.
    path = Path(tempfile.mkdtemp(prefix="unionfs-rundir-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        for d in ("lower", "mnt", "xdg", "tmp"):
            (path / d).mkdir()
            os.chown(path / d, user, user)
        (path / "xdg").chmod(0o700)
        (path / "lower/f").write_text("low\n")
        yield path
    finally:
        for m in mounts_under(path):
            force_unmount(m.mountpoint)
        shutil.rmtree(path)


def _in_userns(uid: int, script: str, **env: str) -> str:
    """Run `script` (sh) as `uid`, root of a new user and mount namespace."""
    proc = subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--",
         "unshare", "-Urm", "sh", "-ec", script],
        env={"PATH": os.environ["PATH"], **env}, cwd=REPO,
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    if proc.returncode != 0 and "unshare:" in proc.stderr:
        pytest.skip(f"no user namespaces for a normal user here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_machines_root_keeps_its_state_in_run() -> None:
    if os.geteuid() != 0 or runstate.outer_uid() != 0:
        pytest.skip("needs the machine's root")
    assert runstate.run_dir() == Path("/run/unionfs")


@needs_root
@needs_unshare
def test_root_of_a_user_namespace_uses_the_users_run_dir(user: int, base: Path) -> None:
    xdg = base / "xdg"
    assert _in_userns(user, RUN_DIR, XDG_RUNTIME_DIR=str(xdg)).strip() == f"{xdg}/unionfs"
    # Without $XDG_RUNTIME_DIR: the /tmp dir named by the user's own uid, as
    # outside the namespace (which is the same dir).
    assert _in_userns(user, RUN_DIR).strip() == f"/tmp/unionfs-{user}"


@needs_root
@needs_unshare
def test_a_daemon_without_a_run_dir_still_mounts(user: int, base: Path, open_fuse: None) -> None:
    """Its log goes to a new file in $TMPDIR that says why; `mounts` lists the
    mount without a state file, `umount` unmounts it."""
    # The user's /tmp dir taken by a dir it cannot use (not its own, open to
    # all), and no $XDG_RUNTIME_DIR.
    taken = Path(f"/tmp/unionfs-{user}")
    shutil.rmtree(taken, ignore_errors=True)  # a gone user's of the same uid
    taken.mkdir()
    try:
        taken.chmod(0o777)
        script = NO_RUN_DIR.format(b=base, py=sys.executable)
        out = _in_userns(user, script, TMPDIR=str(base / "tmp"))
    finally:
        shutil.rmtree(taken)
    text, listing = out.split("\n", 1)
    assert text == "low"
    entry = next(m for m in json.loads(listing) if m["mountpoint"] == str(base / "mnt"))
    assert entry["state"] == runstate.NO_STATE
    (log_file,) = (base / "tmp").glob("unionfs-*.log")
    logged = log_file.read_text()
    assert f"no log file possible in /tmp/unionfs-{user}" in logged
    assert "cannot publish the mount's state" in logged
    assert "Traceback" not in logged


@pytest.mark.allow_warnings
def test_withdraw_logs_what_it_cannot_remove(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A state file or socket that cannot be removed never stops an unmount."""
    busy = tmp_path / "not-a-socket"
    busy.mkdir()
    state = runstate.MountState(
        mountpoint=str(tmp_path / "nowhere"), pid=os.getpid(), lowers=[], upper=None,
        work=None, control=str(busy),
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="unionfs.fuse.runstate"):
        runstate.withdraw(state)
    assert f"cannot remove {busy}" in caplog.text
    assert busy.is_dir()
