"""Normal users that tests make with useradd and remove after them, the
subordinate uid/gid ranges (/etc/subuid, /etc/subgid) rootless podman needs,
and /dev/fuse opened to them for as long as a test needs it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

SUBID_FILES = (Path("/etc/subuid"), Path("/etc/subgid"))
DEV_FUSE = Path("/dev/fuse")
#: Who holds /dev/fuse open to users, and its mode before the first of them.
FUSE_HOLDERS = Path("/run/unionfs-tests/dev-fuse.json")


@contextlib.contextmanager
def temporary_user(prefix: str = "ufs") -> Iterator[pwd.struct_passwd]:
    """A system user (no home, no login shell) made for one test; `userdel` runs
    when the block ends, however it ends."""
    name = f"{prefix}{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )
    pw = pwd.getpwnam(name)
    try:
        yield pw
    finally:
        subprocess.run(["userdel", name], check=True, capture_output=True)
        _remove_run_dir(pw.pw_uid)


def _remove_run_dir(uid: int) -> None:
    """Remove the run dir a daemon of the gone user `uid` made without
    $XDG_RUNTIME_DIR (``/tmp/unionfs-UID``), as the end of a login session
    removes its runtime dir: the next user given the same uid must not find
    it."""
    path = Path(f"/tmp/unionfs-{uid}")
    with contextlib.suppress(FileNotFoundError):
        if path.lstat().st_uid == uid:
            shutil.rmtree(path)


def _first_free_subid(size: int) -> int:
    """The start of a range of `size` ids after every range /etc/subuid and
    /etc/subgid give out (at least 100000, as useradd would pick)."""
    end = 100000
    for path in SUBID_FILES:
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text().splitlines():
                fields = line.split(":")
                if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
                    end = max(end, int(fields[1]) + int(fields[2]))
    return -(-end // size) * size


@contextlib.contextmanager
def subordinate_ids(name: str, size: int = 65536) -> Iterator[int]:
    """Give user `name` a range of `size` subordinate uids and gids (the same
    numbers in both files); yields its start. The range is removed when the
    block ends, and a file that did not exist before and is empty again too."""
    absent = [path for path in SUBID_FILES if not path.exists()]
    for path in absent:  # usermod refuses to make them
        path.touch(mode=0o644)
    start = _first_free_subid(size)
    ids = f"{start}-{start + size - 1}"
    subprocess.run(
        ["usermod", "--add-subuids", ids, "--add-subgids", ids, name],
        check=True,
        capture_output=True,
    )
    try:
        yield start
    finally:
        subprocess.run(
            ["usermod", "--del-subuids", ids, "--del-subgids", ids, name],
            check=True,
            capture_output=True,
        )
        for path in absent:
            with contextlib.suppress(FileNotFoundError):
                if not path.read_text().strip():
                    path.unlink()


@contextlib.contextmanager
def _holders() -> Iterator[dict[str, object]]:
    """The holders record, locked against other test processes; written back."""
    FUSE_HOLDERS.parent.mkdir(parents=True, exist_ok=True)
    with open(FUSE_HOLDERS.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            record: dict[str, object] = json.loads(FUSE_HOLDERS.read_text())
        except (FileNotFoundError, ValueError):
            record = {}
        yield record
        if record:
            FUSE_HOLDERS.write_text(json.dumps(record))
        else:
            FUSE_HOLDERS.unlink(missing_ok=True)


def _live_holders(record: dict[str, object]) -> list[int]:
    """The holders in `record` whose process is still running."""
    pids = record.get("pids")
    live = []
    for pid in pids if isinstance(pids, list) else []:
        if isinstance(pid, int):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                continue
            live.append(pid)
    return live


@contextlib.contextmanager
def fuse_open_to_users() -> Iterator[None]:
    """/dev/fuse at mode 0666 (Debian's default) while the block runs. Test
    processes running at once share it: the mode the first one found comes
    back when the last one ends (a holder that died no longer counts)."""
    with _holders() as record:
        pids = _live_holders(record)
        mode = record.get("mode")
        if not isinstance(mode, int):
            mode = DEV_FUSE.stat().st_mode & 0o7777
        record.update(mode=mode, pids=[*pids, os.getpid()])
        os.chmod(DEV_FUSE, 0o666)
    try:
        yield
    finally:
        with _holders() as record:
            pids = _live_holders(record)
            if os.getpid() in pids:
                pids.remove(os.getpid())
            mode = record.get("mode")
            if pids:
                record["pids"] = pids
            else:
                record.clear()
                os.chmod(DEV_FUSE, mode if isinstance(mode, int) else 0o600)
