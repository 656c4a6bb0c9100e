"""Mount lifecycle: check the inputs, mount, serve requests, unmount.

`mount` returns once the kernel mount is live. In the background form the
process forks first; the child makes every path absolute, leaves the caller's
working directory for ``/`` (a daemon must not keep a directory, or the
filesystem under it, busy), mounts, reports ``ok`` or one error line through a
pipe, then detaches from the terminal and serves until the filesystem is
unmounted or it gets SIGINT/SIGTERM/SIGHUP (which unmount cleanly).

The background daemon logs to ``--log-file`` if given, else to syslog
(``/dev/log``), else to the journal's syslog socket, else to a file beside its
state file (`runstate.log_file_path`); the state file says which. That last
file is removed at a clean end when it holds nothing at WARNING or above, and
kept otherwise (a killed daemon's, too).
"""

import contextlib
import dataclasses
import faulthandler
import json
import logging
import logging.handlers
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pyfuse3
import trio

from unionfs.errors import UnionfsError
from unionfs.fs.layer import Layer
from unionfs.fs.upper import Upper
from unionfs.fs.vfs import UnionFS
from unionfs.fuse import runstate
from unionfs.fuse.control import ControlServer
from unionfs.fuse.mounttab import FSTYPE, find_mount
from unionfs.fuse.ops import Operations
from unionfs.fuse.options import (
    MountConfig,
    check_overlaps,
    config_from_json,
    config_to_json,
    exec_flags,
)

log = logging.getLogger(__name__)

SUBTYPE = "unionfs"
#: journald's syslog socket (``/dev/log`` links to it where journald runs).
JOURNAL_SYSLOG = "/run/systemd/journal/dev-log"


# -- checks -------------------------------------------------------------------


def _check_dir(path: Path, what: str) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UnionfsError(f"{what} {path}: no such directory") from None
    except PermissionError:
        raise UnionfsError(f"{what} {path}: permission denied") from None
    except OSError as e:
        raise UnionfsError(f"{what} {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UnionfsError(f"{what} {path}: not a directory")


def check_inputs(config: MountConfig) -> None:
    """Refuse bad input with one clear line before anything is mounted."""
    for lower in config.lowers:
        _check_dir(lower, "lower layer")
    if config.upper is not None and config.work is not None:
        _check_dir(config.upper, "upper dir")
        _check_dir(config.work, "work dir")
        if config.upper.stat().st_dev != config.work.stat().st_dev:
            raise UnionfsError(
                f"work dir {config.work} is not on the filesystem of upper dir {config.upper}"
            )
    check_overlaps(config)
    _check_dir(config.mountpoint, "mount point")
    existing = find_mount(config.mountpoint)
    if existing is not None:
        raise UnionfsError(
            f"mount point {config.mountpoint} is already mounted ({existing.fstype} from "
            f"{existing.source}); unmount it first"
        )
    if not os.path.exists("/dev/fuse"):
        raise UnionfsError("/dev/fuse is missing: load the fuse module (modprobe fuse)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise UnionfsError("permission denied on /dev/fuse")
    if os.geteuid() != 0:
        if shutil.which("fusermount3") is None:
            raise UnionfsError("fusermount3 is needed to mount as a normal user (package fuse3)")
        if not os.access(config.mountpoint, os.W_OK):
            raise UnionfsError(f"mount point {config.mountpoint}: permission denied")


def fuse_options(config: MountConfig) -> set[str]:
    """The libfuse options for a mount of `config`."""
    opts = {f"subtype={SUBTYPE}", "default_permissions"}
    if not any(o.startswith("fsname=") for o in config.fuse_options):
        opts.add("fsname=unionfs")
    opts |= config.fuse_options
    if os.geteuid() == 0:
        # Other users must reach a container's root filesystem; setuid programs and
        # device nodes work in writable mounts only, unless -o asks (`exec_flags`).
        # (fusermount3 makes a normal user's mounts nosuid,nodev whatever is asked.)
        opts |= {"allow_other", *exec_flags(config)}
    if config.writable:
        opts.discard("ro")
    else:
        opts.discard("rw")
        opts.add("ro")
    return opts


# -- serving ------------------------------------------------------------------


@contextlib.contextmanager
def _capture_stderr() -> Iterator[Callable[[], str]]:
    """Collect what libfuse prints on fd 2 (to fold it into one error line)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)

        def text() -> str:
            tmp.seek(0)
            lines = tmp.read().decode(errors="replace").strip().splitlines()
            return lines[-1].strip() if lines else ""

        try:
            yield text
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _open_layers(config: MountConfig) -> list[Layer]:
    """The stack, top first: the upper dir (if any), then the lower layers."""
    layers: list[Layer] = []
    paths = [("upper dir", config.upper)] if config.upper is not None else []
    paths += [("lower layer", p) for p in config.lowers]
    try:
        for i, (what, path) in enumerate(paths):
            try:
                layers.append(Layer.open(i, path))
            except OSError as e:
                raise UnionfsError(f"{what} {path}: {e.strerror}") from None
    except BaseException:
        for la in layers:
            la.close()
        raise
    return layers


async def _serve(control: ControlServer | None) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_unmount_on_signal)
        if control is not None:
            nursery.start_soon(control.serve)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _unmount_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("%s received: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


def _open_control(state: runstate.MountState, fs: UnionFS) -> ControlServer | None:
    """The control socket (`unionfs events`, `unionfs stats`); None, with a
    warning, if it cannot be made: the mount works without it."""
    try:
        return ControlServer.bind(
            state.control, fs.events, mountpoint=state.mountpoint, layer_paths=state.layer_paths
        )
    except OSError as e:
        log.warning("cannot create the control socket %s: %s", state.control, e.strerror)
        return None


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(
    config: MountConfig, *, debug: bool, ready: Callable[[], None], log_target: str | None = None
) -> None:
    """Mount `config`, call `ready()` once the mount is live, serve until unmounted.
    `log_target` (where the logs go) is published in the mount's state."""
    layers = _open_layers(config)
    upper = None
    if config.work is not None:
        try:
            upper = Upper.open(
                layers[0],
                config.work,
                oci_whiteouts=config.oci_whiteouts,
                userxattr=config.userxattr,
            )
        except OSError as e:
            for la in layers:
                la.close()
            raise UnionfsError(
                f"cannot use {config.upper} and {config.work}: {e.strerror}"
            ) from None
        os.umask(0)  # modes arrive with the caller's umask applied (or UnionFS applies it)
    fs = UnionFS(
        layers,
        upper=upper,
        redirect_dir=config.redirect_dir,
        sync=config.fsync,
        uids=config.uids,
        gids=config.gids,
        override_stat=config.override_stat,
    )
    try:
        ops = Operations(
            fs,
            debug=debug,
            cache_timeout=config.cache_timeout,
            acl=config.acl,
            writeback=config.writeback,
        )
        mountpoint = os.path.realpath(config.mountpoint)
        with _capture_stderr() as libfuse_said:
            try:
                pyfuse3.init(ops, mountpoint, fuse_options(config))
            except RuntimeError:
                detail = libfuse_said() or "the FUSE mount failed"
                raise UnionfsError(f"cannot mount on {config.mountpoint}: {detail}") from None
        _raise_fd_limit()
        log.info("mounted %s (%d layers)", mountpoint, len(layers))
        state = runstate.MountState(
            mountpoint=mountpoint,
            pid=os.getpid(),
            lowers=[os.path.abspath(p) for p in config.lowers],
            upper=os.path.abspath(config.upper) if config.upper is not None else None,
            work=os.path.abspath(config.work) if config.work is not None else None,
            control=runstate.control_socket_path(mountpoint),
            log=log_target,
        )
        control = None
        try:
            try:
                runstate.publish(state)
            except OSError as e:
                log.warning("cannot publish the mount's state in %s: %s", runstate.run_dir(), e)
            else:
                log.info("the mount's state is in %s", state.state_path)
                control = _open_control(state, fs)
            ready()
            trio.run(_serve, control)
        finally:
            if control is not None:
                control.close()
            runstate.withdraw(state)
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", mountpoint)
    finally:
        fs.close()
        if upper is not None:
            upper.close()
        for la in layers:
            la.close()


def _private_log_file(path: Path) -> logging.Handler:
    """A handler appending to `path`, made mode 0600 if new."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    handler = logging.FileHandler(path)
    handler.setFormatter(
        logging.Formatter("%(asctime)s unionfs[%(process)d] %(name)s %(levelname)s %(message)s")
    )
    return handler


def _syslog(address: str) -> logging.Handler | None:
    """A handler for the syslog socket at `address`, or None if nobody listens."""
    if not os.path.exists(address):
        return None
    try:
        handler = logging.handlers.SysLogHandler(address=address)
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("unionfs[%(process)d]: %(levelname)s %(message)s"))
    return handler


class _Worrying(logging.Handler):
    """Remembers whether anything at WARNING or above was logged; `end` removes
    the log file `path` (if any) when nothing was."""

    def __init__(self, path: Path | None = None) -> None:
        super().__init__(logging.WARNING)
        self.path = path
        self.seen = False

    def emit(self, record: logging.LogRecord) -> None:
        self.seen = True

    def end(self) -> None:
        if self.path is not None and not self.seen:
            with contextlib.suppress(OSError):
                self.path.unlink()


def _setup_daemon_logging(
    log_file: Path | None, mountpoint: str, debug: bool
) -> tuple[str, Callable[[], None]]:
    """Send the daemon's logs where they can be read; returns where (for the
    state file: `log_file`, syslog, the journal, or a file beside the state
    file; never nowhere, a daemon whose logs vanish cannot be diagnosed), and
    what to call after a clean end: it removes the file beside the state file
    unless something worth reading (a warning or worse) went into it."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler | None = None
    target = ""
    if log_file is not None:
        handler, target = _private_log_file(log_file), str(log_file)
    else:
        for address, name in (("/dev/log", "syslog"), (JOURNAL_SYSLOG, "journal")):
            handler = _syslog(address)
            if handler is not None:
                target = f"{name} ({address})"
                break
    if handler is None:
        handler, target, discard = _beside_the_state(mountpoint)
        root.addHandler(discard)
    else:
        discard = _Worrying()  # nothing to discard
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    return target, discard.end


def _beside_the_state(mountpoint: str) -> tuple[logging.Handler, str, _Worrying]:
    """The log file beside the mount's state file, where it is, and the watch
    that removes it at a clean end if nothing worth reading went in. Where the
    run dir cannot hold it, a new file in the temporary dir does (kept: its
    first line says why it is there)."""
    try:
        runstate.make_state_dir()
        path = runstate.log_file_path(mountpoint)
        handler = _private_log_file(path)
    except OSError as e:
        why = f"no log file possible in {runstate.run_dir()}: {e.strerror or e}"
    else:
        return handler, str(path), _Worrying(path)
    try:
        fd, name = tempfile.mkstemp(prefix="unionfs-", suffix=".log")
        os.close(fd)
        handler = _private_log_file(Path(name))
    except OSError as e:
        raise UnionfsError(
            f"no syslog (/dev/log) and {why}, nor in {tempfile.gettempdir()}: "
            f"{e.strerror or e}; give --log-file FILE"
        ) from None
    handler.emit(logging.makeLogRecord({"name": __name__, "levelname": "WARNING", "msg": why}))
    return handler, name, _Worrying()


def _absolute(config: MountConfig) -> MountConfig:
    """`config` with every path absolute, to survive leaving the working directory."""
    return dataclasses.replace(
        config,
        lowers=tuple(Path(os.path.abspath(p)) for p in config.lowers),
        mountpoint=Path(os.path.abspath(config.mountpoint)),
        upper=Path(os.path.abspath(config.upper)) if config.upper is not None else None,
        work=Path(os.path.abspath(config.work)) if config.work is not None else None,
    )


def _detach_stdio() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def mount(config: MountConfig, *, foreground: bool, debug: bool, log_file: Path | None) -> None:
    """Mount in the foreground (serving until unmounted) or in a background daemon.
    ``-o debug`` is `debug`.

    The background daemon is a fresh interpreter (`python -m unionfs.fuse`,
    `run_spawned`), not a fork of this process: it imports only what serving
    needs (pyfuse3, trio, `unionfs.fs`), not the command line's modules, which
    saves about 6 MiB of memory it would hold as long as the mount lives. The
    checked and absolute config reaches it as JSON on a pipe; its answer
    (``ok`` or one error line) comes back on another."""
    check_inputs(config)
    debug = debug or config.debug
    if debug and foreground:
        logging.getLogger().setLevel(logging.DEBUG)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if foreground:
        serve(config, debug=debug, ready=lambda: None, log_target="stderr")
        return

    # The daemon's arguments name the mount point as the caller spelled it
    # (what `ps` and `pgrep -f` users look for); the config has it absolute.
    argv = [sys.executable, "-m", "unionfs.fuse", "mount", str(config.mountpoint)]
    config = _absolute(config)
    if log_file is not None:
        log_file = Path(os.path.abspath(log_file))
    handover = json.dumps(
        {
            "config": config_to_json(config),
            "debug": debug,
            "log_file": None if log_file is None else str(log_file),
        }
    ).encode()
    read_end, write_end = os.pipe()
    config_read, config_write = os.pipe()
    argv += [str(config_read), str(write_end)]
    env = _daemon_environment()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the daemon, until it execs
        try:
            os.close(read_end)
            os.close(config_write)
            os.setsid()
            os.chdir("/")
            os.set_inheritable(config_read, True)
            os.set_inheritable(write_end, True)
            os.execve(sys.executable, argv, env)  # noqa: S606 (argv, no shell)
        except BaseException as e:
            with contextlib.suppress(BaseException):
                os.write(
                    write_end, f"error cannot start the daemon ({sys.executable}): {e}".encode()
                )
        finally:
            os._exit(1)

    os.close(write_end)
    os.close(config_read)
    try:
        view = memoryview(handover)
        while view:
            view = view[os.write(config_write, view) :]
    except OSError:
        pass  # the daemon is gone: its answer (or none) says why
    finally:
        os.close(config_write)
    chunks = []
    while chunk := os.read(read_end, 4096):
        chunks.append(chunk)
    os.close(read_end)
    reply = b"".join(chunks).decode(errors="replace")
    if reply.startswith("ok"):
        return
    os.waitpid(pid, 0)
    if reply.startswith("error "):
        raise UnionfsError(reply[len("error ") :].strip())
    raise UnionfsError("the daemon exited before the mount was ready")


def _daemon_environment() -> dict[str, str]:
    """This process's environment, with the source tree this `unionfs` package
    was imported from first on PYTHONPATH, so that the daemon runs the same
    code (an installed package is found by the interpreter as it is)."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if os.path.basename(here) not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_spawned(args: list[str]) -> int:
    """The background daemon's side of `mount`: `args` are ``mount MOUNTPOINT
    CONFIG_FD READY_FD`` (the mount point names the process to ``ps`` and
    ``pgrep``). Reads the config, then mounts and serves as `serve`, answering
    ``ok`` or one error line on READY_FD; never returns once that fd is known."""
    if len(args) != 4 or args[0] != "mount" or not (args[2].isdigit() and args[3].isdigit()):
        print(
            "unionfs: error: this is the mount daemon, started by `unionfs mount`", file=sys.stderr
        )
        return 2
    config_read, write_end = int(args[2]), int(args[3])
    status = 1
    try:
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        with os.fdopen(config_read, "rb") as f:
            handover = json.loads(f.read())
        config = config_from_json(handover["config"])
        debug = bool(handover["debug"])
        log_file = None if handover["log_file"] is None else Path(handover["log_file"])
        status = 0

        def ready() -> None:
            os.write(write_end, b"ok\n")
            os.close(write_end)
            _detach_stdio()

        # Resolved before the mount: the daemon cannot look into its own
        # mount point before it serves requests.
        target, discard = _setup_daemon_logging(
            log_file, os.path.realpath(config.mountpoint), debug
        )
        serve(config, debug=debug, ready=ready, log_target=target)
        logging.shutdown()
        discard()
    except UnionfsError as e:
        os.write(write_end, b"error " + e.message.encode(errors="replace"))
        status = 1
    except BaseException as e:
        log.exception("daemon failed")
        with contextlib.suppress(OSError):
            os.write(write_end, b"error the daemon failed: " + repr(e).encode())
        status = 1
    finally:
        logging.shutdown()
        os._exit(status)


def umount(mountpoint: Path, *, lazy: bool = False) -> None:
    """Unmount a unionfs mount; the daemon then exits by itself."""
    entry = find_mount(mountpoint)
    if entry is None:
        raise UnionfsError(f"{mountpoint} is not mounted")
    if entry.fstype != FSTYPE:
        raise UnionfsError(f"{mountpoint} is not a unionfs mount (it is {entry.fstype})")
    if os.geteuid() == 0:
        cmd = ["umount", *(["-l"] if lazy else []), entry.mountpoint]
    else:
        cmd = ["fusermount3", "-u", *(["-z"] if lazy else []), entry.mountpoint]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        detail = lines[-1] if lines else f"{cmd[0]} exited with {proc.returncode}"
        raise UnionfsError(f"cannot unmount {mountpoint}: {detail}")
    if runstate.withdraw_stale(entry.mountpoint):
        log.info("removed the state left by the killed daemon of %s", entry.mountpoint)
