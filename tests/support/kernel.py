"""Kernel overlayfs as the reference implementation, and mount bookkeeping for tests.

    with overlay_mount(layer_dirs, tmp_path / "ref") as ref:
        expected = snapshot(ref)

Every helper here shells out to the standard tools (mount, umount, fusermount3) and
reads /proc/self/mountinfo; none of them needs unionfs.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

__all__ = [
    "REQUIRE_MOUNTS_ENV",
    "WAIT_LIMIT",
    "MountError",
    "MountInfo",
    "TmpMounts",
    "escape_option_path",
    "force_unmount",
    "is_mountpoint",
    "lazy_unmount",
    "mount_overlay",
    "mount_support_problem",
    "mountinfo",
    "mounts_under",
    "overlay_mount",
    "overlay_options",
    "process_gone",
    "requires_root_and_fuse",
    "unionfs_daemon_pids",
    "unmount",
    "wait_daemons_gone",
    "wait_for",
]

#: If set to a non-empty value, tests marked ``mount`` FAIL instead of being skipped
#: when the machine cannot run them (so CI cannot silently skip them).
REQUIRE_MOUNTS_ENV = "UNIONFS_TESTS_REQUIRE_MOUNTS"

#: Marks a test that needs root, /dev/fuse and kernel overlayfs (the ``mount`` marker;
#: tests/conftest.py skips such tests, with the reason, where they cannot run).
requires_root_and_fuse = pytest.mark.mount

#: How long one unmount step may take before the next, stronger one is tried.
_TIMEOUT = 30.0

_T = TypeVar("_T")

#: The safety net of every wait on a condition in the tests: no machine, however
#: loaded, takes this long for what the tests wait for; reaching it means the
#: condition will never come, and the test fails saying which.
WAIT_LIMIT = 300.0


def wait_for(condition: Callable[[], _T | None], what: str, *, limit: float = WAIT_LIMIT) -> _T:
    """Poll `condition` until it returns a true value, and return that value.

    A wait on a condition, not a clock: it returns as soon as the condition
    holds, however slow the machine. ``limit`` seconds is only a safety net
    against a hang; reaching it fails with ``what`` (say what did not happen)."""
    deadline = time.monotonic() + limit
    pause = 0.001
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (still not after {limit:g}s)")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


_REPO = Path(__file__).resolve().parents[2]
_MAX_STACKED = 16
# The legacy mount(2) data argument is limited to one page.
_MAX_OPTIONS = 4095


class MountError(RuntimeError):
    """A mount or unmount command failed."""


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/self/mountinfo, unescaped."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mountpoint: str
    options: str
    fstype: str
    source: str
    super_options: str


_OCTAL = re.compile(rb"\\([0-7]{3})")


def _unescape(field: bytes) -> str:
    """Undo mountinfo's octal escapes (``\\040`` space, ``\\011`` tab, ``\\012``
    newline, ``\\134`` backslash)."""
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def mountinfo() -> list[MountInfo]:
    """All mounts of this process's mount namespace, in mount order."""
    with open("/proc/self/mountinfo", "rb") as f:
        data = f.read()
    out: list[MountInfo] = []
    for line in data.splitlines():
        parts = line.split(b" ")
        sep = parts.index(b"-", 6)
        major, minor = parts[2].split(b":")
        out.append(
            MountInfo(
                mount_id=int(parts[0]),
                parent_id=int(parts[1]),
                major=int(major),
                minor=int(minor),
                root=_unescape(parts[3]),
                mountpoint=_unescape(parts[4]),
                options=_unescape(parts[5]),
                fstype=_unescape(parts[sep + 1]),
                source=_unescape(parts[sep + 2]),
                super_options=_unescape(parts[sep + 3]) if len(parts) > sep + 3 else "",
            )
        )
    return out


def _canonical(path: Path | str) -> str:
    """The absolute path as mountinfo spells it, without touching the last component
    (stat on a dead or hung FUSE mount fails or blocks)."""
    p = os.path.abspath(os.fspath(path))
    if p == "/":
        return p
    parent, name = os.path.split(p)
    return os.path.join(os.path.realpath(parent), name)


def _mounts_at(path: Path | str) -> list[MountInfo]:
    target = _canonical(path)
    return [m for m in mountinfo() if m.mountpoint == target]


def is_mountpoint(path: Path | str) -> bool:
    """True if something is mounted at ``path`` (per /proc/self/mountinfo)."""
    return bool(_mounts_at(path))


def mounts_under(base: Path | str) -> list[MountInfo]:
    """Mounts at or below ``base``, in the order to unmount them (deepest, newest first)."""
    root = _canonical(base)
    prefix = root.rstrip("/") + "/"
    found = [m for m in mountinfo() if m.mountpoint == root or m.mountpoint.startswith(prefix)]
    return sorted(found, key=lambda m: (m.mountpoint.count("/"), m.mount_id), reverse=True)


# --------------------------------------------------------------------------- mounting


def escape_option_path(path: Path | str) -> str:
    """Escape a path for overlayfs mount options: ``\\``, ``:`` and ``,``."""
    return re.sub(r"([\\:,])", r"\\\1", os.path.abspath(os.fspath(path)))


def overlay_options(
    lowers: Sequence[Path],
    upper: Path | None = None,
    work: Path | None = None,
    extra_opts: Iterable[str] = (),
) -> str:
    """The ``-o`` string for kernel overlayfs; ``lowers`` top first."""
    if not lowers:
        raise ValueError("overlayfs needs at least one lower directory")
    if (upper is None) != (work is None):
        raise ValueError("upper and work directories go together")
    if upper is None and len(lowers) < 2:
        raise ValueError(
            "kernel overlayfs refuses a single lowerdir without an upperdir;"
            " add an empty layer below"
        )
    opts = ["lowerdir=" + ":".join(escape_option_path(p) for p in lowers)]
    if upper is not None and work is not None:
        opts += [f"upperdir={escape_option_path(upper)}", f"workdir={escape_option_path(work)}"]
    opts += list(extra_opts)
    joined = ",".join(opts)
    if len(joined) > _MAX_OPTIONS:
        raise ValueError(f"overlay options are {len(joined)} bytes; mount(2) takes one page")
    return joined


def _run(args: Sequence[str], timeout: float) -> tuple[bool, str]:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return False, f"{args[0]}: not installed"
    except subprocess.TimeoutExpired:
        return False, f"{' '.join(args)}: timed out after {timeout}s"
    if proc.returncode == 0:
        return True, ""
    detail = (proc.stderr or proc.stdout).strip()
    return False, f"{' '.join(args)}: exit {proc.returncode}: {detail}"


def _kernel_log_tail(pattern: str = "overlayfs", lines: int = 3) -> str:
    try:
        proc = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    hits = [line for line in proc.stdout.splitlines() if pattern in line]
    return "\n".join(hits[-lines:])


def mount_overlay(
    lowers: Sequence[Path],
    mountpoint: Path,
    upper: Path | None = None,
    work: Path | None = None,
    extra_opts: Iterable[str] = (),
    *,
    source: str = "overlay",
    timeout: float = WAIT_LIMIT,
) -> Path:
    """Mount kernel overlayfs (``lowers`` top first) at ``mountpoint``; returns it.

    Without ``upper`` the mount is read-only and needs at least two lowers.
    ``extra_opts`` are appended as given, e.g. ``("userxattr",)``.
    """
    opts = overlay_options(lowers, upper, work, extra_opts)
    ok, message = _run(["mount", "-t", "overlay", source, "-o", opts, str(mountpoint)], timeout)
    if not ok:
        kernel = _kernel_log_tail()
        raise MountError(message + (f"\nkernel log:\n{kernel}" if kernel else ""))
    return mountpoint


def _fuse_abort(info: MountInfo) -> None:
    """Abort the FUSE connection behind ``info`` (needs fusectl mounted)."""
    abort = Path(f"/sys/fs/fuse/connections/{info.minor}/abort")
    with contextlib.suppress(OSError):
        abort.write_text("1")


def _unmount(mountpoint: Path | str, commands: Sequence[Sequence[str]], timeout: float) -> None:
    target = _canonical(mountpoint)
    for _ in range(_MAX_STACKED):
        mounts = _mounts_at(target)
        if not mounts:
            return
        errors = []
        for cmd in commands:
            if cmd[0] == "fusermount3" and not mounts[-1].fstype.startswith("fuse"):
                continue
            if cmd[0] == "abort":
                if mounts[-1].fstype.startswith("fuse"):
                    _fuse_abort(mounts[-1])
                continue
            ok, message = _run([*cmd, target], timeout)
            if ok:
                break
            if not is_mountpoint(target):
                return
            errors.append(message)
        else:
            raise MountError(f"could not unmount {target}:\n" + "\n".join(errors))
    if is_mountpoint(target):
        raise MountError(f"{target} is still mounted after {_MAX_STACKED} unmounts")


def unmount(mountpoint: Path | str, *, timeout: float = _TIMEOUT) -> None:
    """Unmount ``mountpoint``: ``umount``, then ``umount -l`` as a last resort.

    Does nothing if nothing is mounted there; unmounts stacked mounts one by one.
    Raises MountError only if the mount could not be removed at all.
    """
    _unmount(mountpoint, [["umount", "-c"], ["umount", "-c", "-l"]], timeout)


def force_unmount(mountpoint: Path | str, *, timeout: float = _TIMEOUT) -> None:
    """Like ``unmount`` but for any mount, FUSE included: ``fusermount3 -u``, then
    ``umount``, then (FUSE only) abort the connection, then ``umount -l``."""
    _unmount(
        mountpoint,
        [["fusermount3", "-u"], ["umount", "-c"], ["abort"], ["umount", "-c", "-l"]],
        timeout,
    )


def lazy_unmount(mountpoint: Path | str, *, timeout: float = _TIMEOUT) -> None:
    """Detach ``mountpoint`` at once (``umount -l``); no-op if not mounted."""
    _unmount(mountpoint, [["umount", "-c", "-l"]], timeout)


@contextlib.contextmanager
def overlay_mount(
    lowers: Sequence[Path],
    mountpoint: Path,
    upper: Path | None = None,
    work: Path | None = None,
    extra_opts: Iterable[str] = (),
) -> Iterator[Path]:
    """``mount_overlay`` for the duration of a ``with`` block; always unmounted."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    mount_overlay(lowers, mountpoint, upper, work, extra_opts)
    try:
        yield mountpoint
    finally:
        unmount(mountpoint)


# --------------------------------------------------------------------------- fixtures


class TmpMounts:
    """Mountpoints a test creates; ``cleanup`` unmounts all of them (the fixture
    ``tmp_mounts`` in tests/conftest.py calls it at teardown, pass or fail)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self._mountpoints: list[Path] = []

    @property
    def mountpoints(self) -> list[Path]:
        return list(self._mountpoints)

    def register(self, mountpoint: Path) -> Path:
        """Have ``mountpoint`` unmounted at teardown; returns it."""
        if mountpoint not in self._mountpoints:
            self._mountpoints.append(mountpoint)
        return mountpoint

    def mountpoint(self, name: str = "mnt") -> Path:
        """A new empty directory under the test's tmp dir, registered."""
        self.base.mkdir(parents=True, exist_ok=True)
        path = self.base / name
        n = 1
        while path.exists():
            n += 1
            path = self.base / f"{name}-{n}"
        path.mkdir()
        return self.register(path)

    def overlay(
        self,
        lowers: Sequence[Path],
        *,
        name: str = "overlay",
        upper: Path | None = None,
        work: Path | None = None,
        extra_opts: Iterable[str] = (),
    ) -> Path:
        """Mount kernel overlayfs on a new registered mountpoint; returns it."""
        return mount_overlay(lowers, self.mountpoint(name), upper, work, extra_opts)

    def unionfs(
        self,
        lowers: Sequence[Path],
        *,
        name: str = "unionfs",
        args: Iterable[str] = (),
        timeout: float = WAIT_LIMIT,
    ) -> Path:
        """Mount unionfs (``lowers`` top first) on a new registered mountpoint by
        running ``python -m unionfs mount --lower ... [args] MOUNTPOINT``, which
        returns once the mount is live; returns the mountpoint."""
        mnt = self.mountpoint(name)
        cmd = [sys.executable, "-m", "unionfs", "mount"]
        for lower in lowers:
            cmd += ["--lower", str(lower)]
        cmd += [*args, str(mnt)]
        # stderr to a file, not a pipe: a daemon that keeps inherited pipes open
        # would make waiting for EOF hang.
        log = mnt.with_name(mnt.name + ".stderr")
        with open(log, "w+") as err:
            try:
                proc = subprocess.run(
                    cmd,
                    cwd=_REPO,
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise MountError(f"{' '.join(cmd)}: timed out after {timeout}s") from exc
            err.seek(0)
            output = err.read().strip()
        if proc.returncode != 0:
            raise MountError(f"{' '.join(cmd)}: exit {proc.returncode}: {output}")
        if not is_mountpoint(mnt):
            raise MountError(f"{' '.join(cmd)} succeeded but {mnt} is not mounted: {output}")
        return mnt

    def unmount(self, mountpoint: Path) -> None:
        """Unmount one registered mountpoint now (it stays registered), and wait
        for its unionfs daemon, if any, to be gone."""
        daemons = unionfs_daemon_pids(mountpoint)
        force_unmount(mountpoint)
        wait_daemons_gone(daemons, mountpoint)

    def cleanup(self) -> list[str]:
        """Unmount everything registered, newest first, and wait for their
        daemons to end (a daemon still ending must not be seen by the next
        test); returns what failed."""
        problems: list[str] = []
        for mountpoint in reversed(self._mountpoints):
            try:
                self.unmount(mountpoint)
            except (MountError, OSError, AssertionError) as exc:
                problems.append(f"{mountpoint}: {exc}")
        return problems


def process_gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie, not yet reaped, counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return status[status.rindex(b")") + 2 :].startswith(b"Z")


def wait_daemons_gone(pids: set[int], mountpoint: Path | str, *, limit: float = 60.0) -> None:
    """Wait until the daemons `pids` of the unmounted `mountpoint` have exited;
    past `limit` they are killed and the wait fails."""
    try:
        wait_for(
            lambda: all(process_gone(p) for p in pids),
            f"the daemon(s) {sorted(pids)} of {mountpoint} did not exit after the unmount",
            limit=limit,
        )
    except AssertionError:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        raise


def unionfs_daemon_pids(mountpoint: Path) -> set[int]:
    """Processes whose command line is a ``unionfs mount`` of ``mountpoint``."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mount" in args and str(mountpoint).encode() in args:
            pids.add(int(entry.name))
    return pids


# --------------------------------------------------------------------------- skipping


def _filesystems() -> set[str]:
    with contextlib.suppress(OSError), open("/proc/filesystems") as f:
        return {line.split()[-1] for line in f if line.strip()}
    return set()


@functools.cache
def mount_support_problem() -> str | None:
    """Why this machine cannot run mount tests, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (mount, mknod of whiteouts, trusted.* xattrs)"
    try:
        st = os.stat("/dev/fuse")
    except OSError as exc:
        return f"needs /dev/fuse ({errno.errorcode.get(exc.errno or 0, exc.errno)})"
    if not stat.S_ISCHR(st.st_mode):
        return "needs /dev/fuse to be a character device"
    if "overlay" not in _filesystems():
        if shutil.which("modprobe"):
            _run(["modprobe", "-q", "overlay"], 10)
        if "overlay" not in _filesystems():
            return "needs kernel overlayfs (overlay is not in /proc/filesystems)"
    for tool in ("mount", "umount"):
        if shutil.which(tool) is None:
            return f"needs the {tool} command"
    return None
