"""What a live mount tells other commands: a small JSON file per mount.

The daemon writes it once the mount is live and removes it when it ends;
`unionfs explain PATH`, `tree MOUNTPOINT`, `events`, `stats` and `mounts`
read it to find a mount's layers, its control socket and where its daemon
logs. A file whose daemon is gone (kill -9) is recognised by its pid and
ignored (`mounts` lists it as stale).

Where (`run_dir`): ``/run/unionfs/mounts`` for root, ``$XDG_RUNTIME_DIR/unionfs/mounts``
(or ``/tmp/unionfs-<uid>/mounts``) for others; the name is a hash of the
mount point's real path: ``<hash>.json`` the state, ``<hash>.sock`` the
control socket, ``<hash>.log`` the daemon's log when it has no syslog
(kept after the mount ends when there is something to read in it).
Root of a user namespace (rootless podman runs its mount program there) is
not the machine's root: ``/run`` is not its own, so it takes the first of
those dirs it can write, like a normal user, and ``<uid>`` is then the uid
it is outside the namespace (the user's own dir, seen from inside).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from unionfs.errors import UnionfsError
from unionfs.fuse.mounttab import unionfs_mounts

log = logging.getLogger(__name__)


def run_dir() -> Path:
    """The first of `run_dir_candidates` this process can use: the daemon and
    the commands of one user (in one user namespace) agree on it."""
    candidates = run_dir_candidates()
    for d in candidates:
        if _usable(d):
            return d
    return candidates[-1]


def run_dir_candidates() -> list[Path]:
    """Where a mount's state may go, first choice first: ``/run/unionfs`` for
    root, then ``$XDG_RUNTIME_DIR/unionfs``, then ``/tmp/unionfs-<uid>``
    with the uid this user has outside its user namespace."""
    dirs = [Path("/run/unionfs")] if os.geteuid() == 0 else []
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        dirs.append(Path(runtime) / "unionfs")
    dirs.append(Path(f"/tmp/unionfs-{outer_uid()}"))  # noqa: S108 (private: mode 0700, checked owner)
    return dirs


def outer_uid() -> int:
    """The uid that this process's euid is in the parent user namespace (the
    euid itself outside any user namespace, or without /proc)."""
    euid = os.geteuid()
    try:
        with open("/proc/self/uid_map", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return euid
    for line in lines:
        try:
            inside, outside, count = (int(x) for x in line.split())
        except ValueError:
            continue
        if inside <= euid < inside + count:
            return outside + euid - inside
    return euid


def _usable(path: Path) -> bool:
    """Whether `path` is a private dir of this user, or one it can make: root
    of a user namespace sees the machine's /run/unionfs as owned by nobody
    and cannot write /run."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent  # make_state_dir makes the missing parents
        return os.access(parent, os.W_OK | os.X_OK, effective_ids=_EFFECTIVE)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


_EFFECTIVE = os.access in os.supports_effective_ids


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
    log: str | None = None  # where the daemon logs: a file's path, or "syslog ..."/"journal ..."

    @property
    def state_path(self) -> Path:
        return _state_dir() / f"{_key(self.mountpoint)}.json"

    @property
    def layer_paths(self) -> list[str]:
        """Every layer, top first: the upper (if any), then the lowers."""
        return ([self.upper] if self.upper else []) + self.lowers


def control_socket_path(real_mountpoint: str) -> str:
    return str(_state_dir() / f"{_key(real_mountpoint)}.sock")


def log_file_path(real_mountpoint: str) -> Path:
    """Where the daemon of `real_mountpoint` logs when there is no syslog."""
    return _state_dir() / f"{_key(real_mountpoint)}.log"


def make_state_dir() -> Path:
    """The directory of the state files, made private if it is not there yet."""
    base = run_dir()
    base.parent.mkdir(parents=True, exist_ok=True)
    _private_dir(base)
    d = _state_dir()
    _private_dir(d)
    return d


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
    d = make_state_dir()
    tmp = d / f".{_key(state.mountpoint)}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(json.dumps(asdict(state), indent=2))
    os.replace(tmp, state.state_path)


def withdraw(state: MountState) -> None:
    """Remove the state file and the socket (when the mount ends); one that
    cannot be removed is logged, never raised: the unmount goes on."""
    for path in (state.state_path, Path(state.control)):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot remove %s: %s", path, e.strerror or e)


def withdraw_stale(mountpoint: str | os.PathLike[str]) -> bool:
    """Remove the state file and socket left at `mountpoint` by a daemon that is
    gone (killed); True if there was one. The log file stays."""
    path = _state_dir() / f"{_key(os.path.realpath(mountpoint))}.json"
    try:
        state = _state_from(json.loads(path.read_text()))
    except (OSError, ValueError):
        return False
    if state is None or pid_alive(state.pid):
        return False
    withdraw(state)
    return True


def pid_alive(pid: int) -> bool:
    """Whether process `pid` is running (ours or another user's); a zombie, dead
    but not yet reaped by its parent, is not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            status = f.read()
    except OSError:
        return True  # no /proc: kill(0) has the last word
    # "pid (comm) state ...": the name may hold spaces and parentheses.
    return not status[status.rfind(b")") + 2 :].startswith((b"Z", b"X"))


def read_state(mountpoint: str | os.PathLike[str]) -> MountState | None:
    """The state of the live unionfs mount at `mountpoint`, or None."""
    path = _state_dir() / f"{_key(os.path.realpath(mountpoint))}.json"
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as e:
        raise UnionfsError(f"{path}: unreadable mount state: {e}") from None
    state = _state_from(data)
    if state is None:
        raise UnionfsError(f"{path}: unreadable mount state")
    return state if pid_alive(state.pid) else None


_FIELDS = {f.name for f in fields(MountState)}


def _state_from(data: object) -> MountState | None:
    """The state in a file's JSON; fields a newer daemon added are ignored."""
    if not isinstance(data, dict):
        return None
    try:
        return MountState(**{k: v for k, v in data.items() if k in _FIELDS})
    except TypeError:
        return None


def _state_dirs() -> list[Path]:
    """The state dirs this user may read: its own; for root also every user's."""
    dirs = [_state_dir()]
    if os.geteuid() == 0:
        dirs += sorted(Path("/run/user").glob("*/unionfs/mounts"))
        dirs += sorted(Path("/tmp").glob("unionfs-*/mounts"))  # noqa: S108 (see run_dir)
    return dirs


def all_states() -> list[tuple[Path, MountState]]:
    """Every readable state file and its state, live or stale (whose daemon is
    gone); unreadable or foreign ones are skipped. A state dir not owned by
    the user it belongs to (or root) is not trusted."""
    found = []
    for d in _state_dirs():
        try:
            st = d.parent.lstat()
            names = sorted(os.listdir(d))
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            continue
        for name in names:
            if name.startswith(".") or not name.endswith(".json"):
                continue
            path = d / name
            try:
                if path.lstat().st_uid not in (st.st_uid, 0):
                    continue
                state = _state_from(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
            if state is not None:
                found.append((path, state))
    return found


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


# -- every mount at once (`unionfs mounts`) ----------------------------------------

LIVE = "live"
DAEMON_GONE = "daemon gone"
STALE = "stale state file"
ELSEWHERE = "not in this mount namespace"
NO_STATE = "no state file"


@dataclass(frozen=True)
class MountReport:
    """One unionfs mount, or one state file without its mount, as `mounts` lists it.

    `state` is LIVE (mounted, daemon running), DAEMON_GONE (still in the mount
    table, its daemon dead: every access fails with ENOTCONN until unmounted),
    STALE (a state file whose daemon is gone and mount is not there),
    ELSEWHERE (a running daemon whose mount this namespace does not show), or
    NO_STATE (mounted, but no state file this user can read: another user's
    mount, or a daemon that could not publish its state).
    Fields the state file would give are None without one (another user's
    mount, seen by a normal user)."""

    mountpoint: str
    source: str | None
    state: str
    pid: int | None
    lowers: list[str] | None
    upper: str | None
    work: str | None
    log: str | None
    state_file: str | None

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def survey() -> list[MountReport]:
    """Every unionfs mount of this namespace (mount order) with what its state
    file says, then the state files that match no mount here. A state file is
    matched only to a mount made by the user who owns the file (``user_id=``):
    another user's file cannot pass for the state of root's mount."""
    states: dict[tuple[str, int], tuple[Path, MountState]] = {}
    for path, state in all_states():
        try:
            key = (state.mountpoint, path.stat().st_uid)
        except OSError:
            continue
        known = states.get(key)
        if known is None or (pid_alive(state.pid) and not pid_alive(known[1].pid)):
            states[key] = (path, state)
    reports = []
    for entry in unionfs_mounts():
        owner = entry.fuse_owner
        found = states.pop((entry.mountpoint, owner if owner is not None else -1), None)
        if found is None:
            reports.append(
                MountReport(
                    entry.mountpoint, entry.source, NO_STATE, None, None, None, None, None, None
                )
            )
            continue
        path, state = found
        alive = pid_alive(state.pid)
        reports.append(_report(path, state, entry.source, LIVE if alive else DAEMON_GONE))
    for path, state in states.values():
        alive = pid_alive(state.pid)
        reports.append(_report(path, state, None, ELSEWHERE if alive else STALE))
    return reports


def _report(path: Path, state: MountState, source: str | None, what: str) -> MountReport:
    return MountReport(
        mountpoint=state.mountpoint,
        source=source,
        state=what,
        pid=state.pid,
        lowers=list(state.lowers),
        upper=state.upper,
        work=state.work,
        log=state.log,
        state_file=str(path),
    )
