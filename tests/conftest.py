"""Shared fixtures and rules for the whole test suite.

- Tests marked ``mount`` (alias ``tests.kernel.requires_root_and_fuse``) are skipped,
  with the reason, where there is no root, /dev/fuse or kernel overlayfs. With
  UNIONFS_TESTS_REQUIRE_MOUNTS=1 in the environment they fail instead.
- ``tmp_mounts`` registers mountpoints and unmounts them at teardown, pass or fail.
- Mounts left under pytest's temp dirs by an earlier, killed run are lazily
  unmounted at session start, before pytest deletes old temp dirs. Anything a test
  left mounted is unmounted, and reported, at session end.
- A test fails if a ``unionfs*`` logger logged a WARNING or worse, unless the test
  is marked ``@pytest.mark.allow_warnings`` (optionally with regexes the messages
  must match: ``@pytest.mark.allow_warnings(r"copy-up of .* fell back")``).
- A test that leaves a child process behind (running, or exited and never waited
  for) fails itself, and the process is killed and reaped in its teardown: one
  test's leftover can never fail another (a `subprocess.Popen` collected during a
  later test would warn "still running" there, an error under filterwarnings).
"""

from __future__ import annotations

import contextlib
import gc
import getpass
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kernel import (
    REQUIRE_MOUNTS_ENV,
    MountError,
    TmpMounts,
    lazy_unmount,
    mount_support_problem,
    mounts_under,
    requires_root_and_fuse,
)
from unionfs.fuse.runstate import pid_alive

__all__ = ["requires_root_and_fuse"]

pytest_plugins = ["pytester"]

_LOGGER_PREFIX = "unionfs"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_warnings(*patterns): the test expects WARNING+ records from unionfs loggers;"
        " with patterns, each such message must match one of them (re.search)",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("mount") is None:
        return
    problem = mount_support_problem()
    if problem is None:
        return
    if os.environ.get(REQUIRE_MOUNTS_ENV):
        pytest.fail(f"mount test cannot run ({REQUIRE_MOUNTS_ENV} is set): {problem}")
    pytest.skip(f"mount test: {problem}")


# --------------------------------------------------------------------------- mounts


def _pytest_temp_roots(config: pytest.Config) -> list[Path]:
    """Where pytest puts (and later deletes) temp dirs, computed as pytest does,
    without creating the session's own dir."""
    given = config.getoption("basetemp", None)
    if given:
        return [Path(os.path.abspath(given))]
    from_env = os.environ.get("PYTEST_DEBUG_TEMPROOT")
    temproot = Path(from_env or tempfile.gettempdir()).resolve()
    try:
        user = getpass.getuser()
    except (ImportError, OSError, KeyError):
        user = "unknown"
    return [temproot / f"pytest-of-{user}", temproot / "pytest-of-unknown"]


def _owner_is_alive(mountpoint: str, root: Path) -> bool:
    """True if the pytest-N dir holding ``mountpoint`` belongs to a live pytest run
    (pytest writes the owner's pid into ``pytest-N/.lock`` and removes it at exit)."""
    rel = Path(mountpoint).relative_to(root)
    if not rel.parts:
        return False
    try:
        pid = int((root / rel.parts[0] / ".lock").read_text().strip())
    except (OSError, ValueError):
        return False
    return pid != os.getpid() and pid_alive(pid)


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") or mount_support_problem() is not None:
        return
    config = session.config
    given = config.getoption("basetemp", None)
    for root in _pytest_temp_roots(config):
        for info in mounts_under(root):
            if not given and _owner_is_alive(info.mountpoint, root):
                continue
            try:
                lazy_unmount(info.mountpoint)
            except MountError as exc:
                sys.stderr.write(f"conftest: could not unmount leftover {info.mountpoint}: {exc}\n")
            else:
                sys.stderr.write(f"conftest: unmounted leftover {info.mountpoint}\n")


@pytest.fixture(scope="session", autouse=True)
def _no_mounts_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    if mount_support_problem() is not None:
        return
    base = tmp_path_factory.getbasetemp()
    left = [info.mountpoint for info in mounts_under(base)]
    for mountpoint in left:
        with contextlib.suppress(MountError):
            lazy_unmount(mountpoint)
    if left:
        pytest.fail("tests left mounts behind (now lazily unmounted):\n" + "\n".join(left))


@pytest.fixture
def tmp_mounts(tmp_path: Path) -> Iterator[TmpMounts]:
    """Register mountpoints (``tmp_mounts.mountpoint()``, ``.register(path)``,
    ``.overlay(lowers)``); all are unmounted at teardown, pass or fail."""
    mounts = TmpMounts(tmp_path / "mnt")
    problems: list[str] = []
    try:
        yield mounts
    finally:
        problems = mounts.cleanup()
    if problems:
        pytest.fail("could not unmount:\n" + "\n".join(problems))


# --------------------------------------------------------------------------- logging


def _unexpected(records: list[logging.LogRecord], marker: pytest.Mark | None) -> list[str]:
    out = []
    for record in records:
        if record.levelno < logging.WARNING or not record.name.startswith(_LOGGER_PREFIX):
            continue
        message = record.getMessage()
        if marker is not None and (
            not marker.args or any(re.search(p, message) for p in marker.args)
        ):
            continue
        out.append(f"{record.levelname} {record.name}: {message}")
    return out


@pytest.fixture(autouse=True)
def _fail_on_unexpected_warnings(
    request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> Iterator[None]:
    """Fail a test if the code under test logged an unexpected WARNING or worse."""
    yield
    records = [
        *caplog.get_records("setup"),
        *caplog.get_records("call"),
        *caplog.records,  # teardown so far
    ]
    unexpected = _unexpected(records, request.node.get_closest_marker("allow_warnings"))
    if unexpected:
        pytest.fail(
            "unexpected warnings logged (mark the test @pytest.mark.allow_warnings if"
            " they are expected):\n" + "\n".join(unexpected),
            pytrace=False,
        )


# --------------------------------------------------------------------------- processes


def _children() -> dict[int, str]:
    """This process's child processes: pid -> command line (zombies included)."""
    me = str(os.getpid())
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            fields = stat[stat.rindex(b")") + 2 :].split()
            if fields[1].decode() != me:
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError, IndexError):
            continue
        found[int(entry.name)] = cmdline or "(exited, not waited for)"
    return found


def _kill_and_reap(pids: set[int]) -> None:
    """Kill and wait for `pids`, through their `Popen` objects where there are
    some: a Popen left with no return code warns "still running" whenever it is
    collected, maybe during another test (sys.last_traceback keeps a failed
    test's frames alive until the next failure)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for obj in gc.get_objects():
        if isinstance(obj, subprocess.Popen) and obj.pid in pids and obj.returncode is None:
            obj.wait()
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


@pytest.fixture(autouse=True)
def _no_processes_left_behind() -> Iterator[None]:
    """Fail the test that left a child process behind; kill and reap it here, so
    that nothing of it reaches a later test."""
    before = set(_children())
    yield
    left = {pid: cmd for pid, cmd in _children().items() if pid not in before}
    if not left:
        return
    _kill_and_reap(set(left))
    pytest.fail(
        "the test left child processes behind (now killed):\n"
        + "\n".join(f"  {pid}: {cmd}" for pid, cmd in sorted(left.items())),
        pytrace=False,
    )
