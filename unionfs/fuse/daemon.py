"""Mount lifecycle: check the inputs, mount, serve requests, unmount.

`mount` returns once the kernel mount is live. In the background form the
process forks first; the child mounts, reports ``ok`` or one error line through
a pipe, then detaches from the terminal and serves until the filesystem is
unmounted or it gets SIGINT/SIGTERM/SIGHUP (which unmount cleanly).
"""

import contextlib
import faulthandler
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
from unionfs.fuse.options import MountConfig

log = logging.getLogger(__name__)

SUBTYPE = "unionfs"


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
        up, wk = config.upper.resolve(), config.work.resolve()
        if up == wk or up in wk.parents or wk in up.parents:
            raise UnionfsError("the upper dir and the work dir must not contain each other")
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
    if os.geteuid() == 0:
        # A container root filesystem: other users, setuid programs and
        # device nodes must work inside it.
        opts |= {"allow_other", "suid", "dev"}
    opts |= config.fuse_options
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


def serve(config: MountConfig, *, debug: bool, ready: Callable[[], None]) -> None:
    """Mount `config`, call `ready()` once the mount is live, serve until unmounted."""
    layers = _open_layers(config)
    upper = None
    if config.work is not None:
        try:
            upper = Upper.open(layers[0], config.work, oci_whiteouts=config.oci_whiteouts)
        except OSError as e:
            for la in layers:
                la.close()
            raise UnionfsError(
                f"cannot use {config.upper} and {config.work}: {e.strerror}"
            ) from None
        os.umask(0)  # modes arrive with the caller's umask already applied
    fs = UnionFS(layers, upper=upper)
    try:
        ops = Operations(fs, debug=debug, cache_timeout=config.cache_timeout)
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
        )
        control = None
        try:
            try:
                runstate.publish(state)
            except OSError as e:
                log.warning("cannot publish the mount's state in %s: %s", runstate.run_dir(), e)
            else:
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


def _setup_daemon_logging(log_file: Path | None, debug: bool) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if log_file is not None:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        handler.setFormatter(logging.Formatter("unionfs[%(process)d]: %(levelname)s %(message)s"))
    else:
        handler = logging.NullHandler()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def _detach_stdio() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def mount(config: MountConfig, *, foreground: bool, debug: bool, log_file: Path | None) -> None:
    """Mount in the foreground (serving until unmounted) or in a background daemon."""
    check_inputs(config)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if foreground:
        serve(config, debug=debug, ready=lambda: None)
        return

    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(read_end)
        os.setsid()
        status = 0

        def ready() -> None:
            os.write(write_end, b"ok\n")
            os.close(write_end)
            _detach_stdio()

        try:
            _setup_daemon_logging(log_file, debug)
            serve(config, debug=debug, ready=ready)
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

    os.close(write_end)
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
