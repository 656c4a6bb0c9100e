"""scripts/setup and scripts/demo on a fresh Debian bookworm machine.

A clean root filesystem (``debootstrap --variant=minbase bookworm`` plus python3,
nothing else: no venv module, no compiler, no FUSE headers) stands in for a new
machine. The repository's tracked files are copied into it as /src/unionfs and
``scripts/demo`` runs there under chroot, with /proc, /sys (and its cgroup mount)
and /dev bound in and the root bound onto itself (podman builds an image there);
it must install everything it needs itself and tell its story. Then
``scripts/setup`` runs a second time and must be quick and install nothing.

The pristine root filesystem is built once, from the Debian mirror the host's apt
uses, and cached as a tarball in /var/cache/unionfs-tests (delete it to rebuild).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kernel import MountError, TmpMounts, force_unmount, mounts_under

pytestmark = [pytest.mark.mount, pytest.mark.slow]

_REPO = Path(__file__).resolve().parents[2]
_SUITE = "bookworm"
_DEFAULT_MIRROR = "http://deb.debian.org/debian"
CACHE_DIR = Path("/var/cache/unionfs-tests")
ROOTFS_TARBALL = CACHE_DIR / f"{_SUITE}-minbase-python3.tar.gz"
_SRC = "/src/unionfs"  # where the repository goes inside the root filesystem
_CHROOT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}
# What scripts/setup installs, none of which the fresh root filesystem may have.
_NOT_PREINSTALLED = ("python3-venv", "python3-dev", "gcc", "libfuse3-dev", "fuse3", "podman")

_BUILD_TIMEOUT = 1200.0
_DEMO_TIMEOUT = 1200.0
_RERUN_LIMIT = 20.0  # seconds a second scripts/setup may take


# --------------------------------------------------------------------------- mirror


def _sources_entries() -> Iterator[tuple[str, list[str]]]:
    """(URI, suites) of every ``deb`` source in the host's apt configuration."""
    files = [Path("/etc/apt/sources.list")]
    parts = Path("/etc/apt/sources.list.d")
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.strip()
                if "deb" not in fields.get("types", "").split():
                    continue
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                suites = fields.get("suites", "").split()
                for uri in fields.get("uris", "").split():
                    yield uri, suites
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    yield words[1], [words[2]]


def host_mirror() -> str:
    """The Debian mirror the host's apt uses for bookworm itself (not security)."""
    for uri, suites in _sources_entries():
        if _SUITE in suites and "security" not in uri:
            return uri.rstrip("/")
    return _DEFAULT_MIRROR


def _apt_proxy_env() -> dict[str, str]:
    """http_proxy/https_proxy for debootstrap, from the environment or apt's config."""
    env = {k: v for k, v in os.environ.items() if k.lower().endswith("_proxy")}
    for scheme in ("http", "https"):
        if f"{scheme}_proxy" in env:
            continue
        proc = subprocess.run(
            ["apt-config", "shell", "P", f"Acquire::{scheme}::Proxy"],
            capture_output=True,
            text=True,
            check=False,
        )
        match = re.fullmatch(r"P='(.*)'", proc.stdout.strip())
        if match and match.group(1) not in ("", "DIRECT", "false"):
            env[f"{scheme}_proxy"] = match.group(1)
    return env


def _mirror_problem(mirror: str) -> str | None:
    """Why ``mirror`` cannot serve bookworm, or None if its Release file loads."""
    url = f"{mirror}/dists/{_SUITE}/Release"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310
            response.read(1)
    except (urllib.error.URLError, OSError) as exc:
        return f"cannot fetch {url}: {exc}"
    return None


# --------------------------------------------------------------------------- rootfs


def _run(cmd: list[str], *, timeout: float, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stdout[-5000:]}")
    return proc.stdout


def _remove_tree(path: Path) -> None:
    """rm -rf, refusing to if anything is mounted below ``path``."""
    if not path.exists():
        return
    left = mounts_under(path)
    if left:
        raise MountError(f"not removing {path}: still mounted: {[m.mountpoint for m in left]}")
    subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=True)


def _ensure_debootstrap() -> None:
    if shutil.which("debootstrap"):
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "debootstrap"]):
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env, check=False
        )
        if proc.returncode != 0:
            pytest.skip(f"debootstrap is missing and {' '.join(cmd)} failed: {proc.stderr[-500:]}")
    if not shutil.which("debootstrap"):
        pytest.skip("debootstrap is missing and apt-get could not install it")


def _build_rootfs_tarball(tarball: Path) -> None:
    """debootstrap minbase bookworm, add python3, pack it as ``tarball``."""
    _ensure_debootstrap()
    mirror = host_mirror()
    problem = _mirror_problem(mirror)
    if problem is not None:
        pytest.skip(f"no Debian mirror reachable for debootstrap: {problem}")
    work = tarball.with_name(tarball.name + ".build")
    _remove_tree(work)
    root = work / "root"
    root.mkdir(parents=True)
    try:
        env = {**os.environ, **_apt_proxy_env()}
        _run(
            ["debootstrap", "--variant=minbase", _SUITE, str(root), mirror],
            timeout=_BUILD_TIMEOUT,
            env=env,
        )
        shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
        apt = "apt-get update -q && apt-get install -y -q python3 && apt-get clean"
        chroot_env = {**_CHROOT_ENV, "DEBIAN_FRONTEND": "noninteractive"}
        chroot_env.update(_apt_proxy_env())
        _run(
            ["chroot", str(root), "/usr/bin/env", "-i"]
            + [f"{k}={v}" for k, v in chroot_env.items()]
            + ["/bin/sh", "-c", apt],
            timeout=_BUILD_TIMEOUT,
        )
        (root / "etc/resolv.conf").unlink()
        partial = work / tarball.name
        _run(
            ["tar", "-C", str(root), "--numeric-owner", "-czpf", str(partial), "."],
            timeout=_BUILD_TIMEOUT,
        )
        partial.replace(tarball)
    finally:
        _remove_tree(work)


def cached_rootfs_tarball() -> Path:
    """The pristine root filesystem tarball, built on first use (under a lock)."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ROOTFS_TARBALL.is_file():
            _build_rootfs_tarball(ROOTFS_TARBALL)
    return ROOTFS_TARBALL


def _unpack(tarball: Path, root: Path) -> None:
    root.mkdir(parents=True)
    _run(["tar", "-C", str(root), "--numeric-owner", "-xzpf", str(tarball)], timeout=600)


def _copy_repository(dest: Path) -> int:
    """Copy the files git tracks (their working-tree versions) to ``dest``."""
    out = subprocess.run(
        ["git", "-C", str(_REPO), "ls-files", "-z"], capture_output=True, check=True
    ).stdout
    count = 0
    for name in os.fsdecode(out).split("\0"):
        if not name:
            continue
        src = _REPO / name
        if not (src.exists() or src.is_symlink()):
            continue  # deleted in the working tree
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, target)
        count += 1
    return count


# --------------------------------------------------------------------------- chroot

_LOCAL_CA_DIR = "usr/local/share/ca-certificates"


def _copy_host_network_config(root: Path) -> None:
    """What this machine's network needs, as an admin would set it up on a new one:
    the DNS config, and the local CA certificates (e.g. of a TLS-intercepting proxy),
    added to the bundle pip uses. Without the ca-certificates package (python3
    recommends it) there is no bundle, and its postinst adds them when installed."""
    shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
    host_cas = Path("/") / _LOCAL_CA_DIR
    if not host_cas.is_dir() or not any(host_cas.iterdir()):
        return
    shutil.copytree(host_cas, root / _LOCAL_CA_DIR, dirs_exist_ok=True)
    if (root / "usr/sbin/update-ca-certificates").exists():
        proc, _ = _in_chroot(root, "update-ca-certificates", timeout=120)
        assert proc.returncode == 0, proc.stdout


@contextlib.contextmanager
def _system_mounts(root: Path, tmp_mounts: TmpMounts) -> Iterator[None]:
    """Bind ``root`` onto itself (so that / is a mount point inside, as podman's
    storage needs), then /proc, /sys and /dev into it; all unmounted on exit."""
    done: list[Path] = []
    try:
        tmp_mounts.register(root)
        _run(["mount", "--bind", str(root), str(root)], timeout=30)
        done.append(root)
        # runc needs the cgroup filesystem, a mount of its own under /sys.
        for name in ("proc", "sys", "sys/fs/cgroup", "dev"):
            target = root / name
            target.mkdir(exist_ok=True)
            tmp_mounts.register(target)
            _run(["mount", "--bind", f"/{name}", str(target)], timeout=30)
            done.append(target)
        yield
    finally:
        problems = []
        for target in reversed(done):
            try:
                force_unmount(target)
            except MountError as exc:
                problems.append(str(exc))
        if problems:
            raise MountError("\n".join(problems))


def _in_chroot(
    root: Path, script: str, *, timeout: float
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``script`` with /bin/bash in ``root``, clean environment; (result, seconds)."""
    cmd = ["chroot", str(root), "/usr/bin/env", "-i"]
    cmd += [f"{k}={v}" for k, v in _CHROOT_ENV.items()]
    cmd += ["/bin/bash", "-c", script]
    start = time.monotonic()
    proc = subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc, time.monotonic() - start


def _installed_packages(root: Path) -> str:
    proc, _ = _in_chroot(root, "dpkg-query -W -f='${Package} ${Version}\\n' | sort", timeout=60)
    assert proc.returncode == 0, proc.stdout
    return proc.stdout


# --------------------------------------------------------------------------- test


def test_setup_and_demo_on_fresh_bookworm(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    if shutil.which("chroot") is None or shutil.which("tar") is None:
        pytest.skip("needs chroot and tar")
    if not (_REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs git and a git checkout (to copy the tracked files)")
    tarball = cached_rootfs_tarball()

    root = tmp_path / "rootfs"
    _unpack(tarball, root)
    try:
        assert (root / "usr/bin/python3").exists(), "python3 is missing from the rootfs"
        # The starting point really is bare: nothing scripts/setup installs is there.
        status = subprocess.run(
            ["chroot", str(root), "dpkg-query", "-W", "-f=${Package} ${Status}\\n"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        preinstalled = [pkg for pkg in _NOT_PREINSTALLED if f"{pkg} install ok installed" in status]
        assert not preinstalled, f"the fresh root filesystem already has {preinstalled}"

        src = root / _SRC.lstrip("/")
        assert _copy_repository(src) > 0
        _copy_host_network_config(root)
        demo_dir = root / "var/tmp/unionfs-demo"

        with _system_mounts(root, tmp_mounts):
            try:
                demo, demo_secs = _in_chroot(root, f"{_SRC}/scripts/demo", timeout=_DEMO_TIMEOUT)
            finally:
                for info in mounts_under(demo_dir):  # only if the demo left mounts behind
                    force_unmount(info.mountpoint)
            print(f"scripts/demo on the fresh root filesystem: {demo_secs:.1f}s")
            out = demo.stdout
            assert demo.returncode == 0, out[-8000:]
            assert "setup: installing Debian packages:" in out, out[-8000:]
            assert f"setup: creating {_SRC}/.venv" in out, out[-8000:]
            assert f"setup: ready: {_SRC}/.venv" in out, out[-8000:]
            # The image podman built, imported: four layers, each unpacked once.
            assert out.count(": unpacked ") == 4, out[-8000:]
            assert "Loaded image: demo:1" in out
            # What the shells in the chroot printed.
            assert "Welcome to the unionfs demo, updated" in out
            assert "hello from the app layer" in out
            two_motd = out.split("/two/etc/motd\n", 1)[1].split("$ ", 1)[0]
            assert "changed in container one" not in two_motd, two_motd
            assert "changed in container one" in out
            assert "every file of the image layers is as it was before the writes" in out
            assert re.search(r"1 image, 2 containers, 4 layers", out), out[-3000:]
            assert "unmounted; the store stays in" in out
            assert mounts_under(demo_dir) == []

            # Again: everything is in place, so setup is quick and installs nothing.
            before = _installed_packages(root)
            setup, setup_secs = _in_chroot(root, f"{_SRC}/scripts/setup", timeout=300)
            print(f"second scripts/setup: {setup_secs:.1f}s")
            assert setup.returncode == 0, setup.stdout
            assert setup.stdout.strip() == f"setup: ready: {_SRC}/.venv", setup.stdout
            assert setup_secs < _RERUN_LIMIT, f"second scripts/setup took {setup_secs:.1f}s"
            assert _installed_packages(root) == before
    finally:
        tmp_mounts.cleanup()
        # The root filesystem is a few hundred MB: do not leave it to pytest's
        # rotation of temp dirs. _remove_tree refuses if anything is still mounted.
        _remove_tree(root)
