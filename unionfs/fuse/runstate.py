"""What a live mount tells other commands: a small JSON file per mount.

The daemon writes it once the mount is live and removes it when it ends;
`unionfs explain PATH`, `tree MOUNTPOINT`, `events` and `stats` read it to
find a mount's layers and its control socket. A file whose daemon is gone
(kill -9) is recognised by its pid and ignored.

Where: ``/run/unionfs/mounts`` for root, ``$XDG_RUNTIME_DIR/unionfs/mounts``
(or ``/tmp/unionfs-<uid>/mounts``) for others; the name is a hash of the
mount point's real path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from unionfs.errors import UnionfsError


def run_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/run/unionfs")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "unionfs"
    return Path(f"/tmp/unionfs-{os.geteuid()}")  # noqa: S108 (private: mode 0700, checked owner)


def _state_dir() -> Path:
    return run_dir() / "mounts"


def _key(real_mountpoint: str) -> str:
    """The file name of a mount's state. The path must already be real: the
    daemon must not resolve its own mount point before it serves requests."""
    return hashlib.sha256(os.fsencode(real_mountpoint)).hexdigest()[:16]


@dataclass(frozen=True)
class MountState:
    """One live mount: its layers top first (the upper, if any, is not among them)."""

    mountpoint: str
    pid: int
    lowers: list[str]
    upper: str | None
    work: str | None
    control: str  # path of the daemon's control socket

    @property
    def state_path(self) -> Path:
        return _state_dir() / f"{_key(self.mountpoint)}.json"

    @property
    def layer_paths(self) -> list[str]:
        """Every layer, top first: the upper (if any), then the lowers."""
        return ([self.upper] if self.upper else []) + self.lowers


def control_socket_path(real_mountpoint: str) -> str:
    return str(_state_dir() / f"{_key(real_mountpoint)}.sock")


def _private_dir(path: Path) -> None:
    """Make `path` (mode 0700, ours) or check that it is: the daemon runs with
    umask 0, and another user must not be able to plant state files."""
    try:
        path.mkdir(mode=0o700)
        os.chmod(path, 0o700)
    except FileExistsError:
        pass
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise OSError(f"{path} is not a private directory of this user")


def publish(state: MountState) -> None:
    """Write the state file of a mount that just became live (mode 0600)."""
    base = run_dir()
    base.parent.mkdir(parents=True, exist_ok=True)
    _private_dir(base)
    d = _state_dir()
    _private_dir(d)
    tmp = d / f".{_key(state.mountpoint)}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(json.dumps(asdict(state), indent=2))
    os.replace(tmp, state.state_path)


def withdraw(state: MountState) -> None:
    """Remove the state file and the socket (when the mount ends)."""
    with contextlib.suppress(FileNotFoundError):
        state.state_path.unlink()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state.control)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(mountpoint: str | os.PathLike[str]) -> MountState | None:
    """The state of the live unionfs mount at `mountpoint`, or None."""
    path = _state_dir() / f"{_key(os.path.realpath(mountpoint))}.json"
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as e:
        raise UnionfsError(f"{path}: unreadable mount state: {e}") from None
    state = MountState(**data)
    return state if pid_alive(state.pid) else None


def find_mount_of(path: str | os.PathLike[str]) -> tuple[MountState, str] | None:
    """The live unionfs mount that holds `path`, and `path` relative to its root
    ("" for the root itself); None when `path` is on no unionfs mount."""
    # The last name is not followed: explaining a symlink explains the link.
    absolute = os.path.abspath(path)
    head, tail = os.path.split(absolute)
    real = os.path.join(os.path.realpath(head), tail) if tail else os.path.realpath(absolute)
    probe = real
    while True:
        path = _state_dir() / f"{_key(probe)}.json"
        state = read_state(probe) if path.exists() else None
        if state is not None:
            rel = os.path.relpath(real, probe)
            return state, "" if rel == "." else rel
        parent = os.path.dirname(probe)
        if parent == probe:
            return None
        probe = parent
