"""Rootless podman with unionfs as containers/storage's ``mount_program``, and
the same steps with fuse-overlayfs as the reference.

A user made for the test (removed after it) gets a subordinate uid/gid range
(/etc/subuid, /etc/subgid: podman's user namespace maps the container's uids
1.. onto it through newuidmap/newgidmap) and /dev/fuse is set to Debian's 0666
for the length of the test (restored after it). Each side gets its own
storage.conf named by ``CONTAINERS_STORAGE_CONF`` (a rootless podman takes its
graph root from ``rootless_storage_path`` there, its run root from
``$XDG_RUNTIME_DIR``, which each side has its own of) and a containers.conf
(``CONTAINERS_CONF``: runc, cgroupfs and a file for events, as podman needs
without systemd). podman as the user then builds a busybox image from scratch
whose RUN step chowns a file to 123:456, runs ``--rm`` containers that write
and read files, runs one it commits and runs the commit, and ``podman mount``s
a container inside ``podman unshare``. No ``--ulimit``: rootless podman gives
the container the user's own limits.

The mount program runs inside podman's user namespace, as its root: unionfs
must keep its state beside ``$XDG_RUNTIME_DIR`` there (not /run, which is not
that root's), where ``unionfs mounts`` and ``unionfs umount`` in ``podman
unshare`` find it, and log nothing worse than INFO (a daemon's log file that
has a warning is kept; none may be left).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.images import BUSYBOX
from tests.support.kernel import mounts_under
from tests.support.podman import container_steps
from tests.support.users import fuse_open_to_users, subordinate_ids, temporary_user

pytestmark = [pytest.mark.mount, pytest.mark.slow]

UNIONFS = Path(sys.executable).parent / "unionfs"
UNIONFS_HELPER = Path("/sbin/mount.fuse.unionfs")
PROGRAMS = {"unionfs": UNIONFS_HELPER, "fuse-overlayfs": Path("/usr/bin/fuse-overlayfs")}
NET = ("--network", "none")
CONTAINERFILE = """\
FROM scratch
COPY rootfs/ /
RUN /bin/busybox --install -s /bin && mkdir -p /tmp /data /etc \\
 && echo built > /data/built && echo keep > /data/keep \\
 && chown 123:456 /data/keep && chmod 640 /data/keep
"""
NO_DATES = "sed 's/ [A-Z][a-z][a-z] .*:.. / /'"
SHOW = f"cat /data/*; ls -ln /data | {NO_DATES}; ls -ld / | cut -c1-10"
#: In ``podman unshare``: mount a container, show it, unmount it.
MOUNT = f"""set -e
m=$(podman mount c1)
ls -ln "$m/data" | {NO_DATES}
cat "$m/data/saved"
grep " $m " /proc/self/mounts | cut -d' ' -f3
podman umount c1 >/dev/null
"""
#: In ``podman unshare`` (unionfs only): `unionfs mounts` and `umount` find podman's mount.
UNIONFS_MOUNTS = f"""set -e
m=$(podman mount c1)
echo "$m"; echo ---
{UNIONFS} mounts --json; echo ---
{UNIONFS} explain "$m/data/keep" | head -1
{UNIONFS} stats "$m" >/dev/null
{UNIONFS} tree "$m" /data >/dev/null
{UNIONFS} umount "$m"
grep -c " $m " /proc/self/mounts || true
podman umount c1 >/dev/null
"""


def _problem() -> str | None:
    if os.geteuid() != 0:
        return "needs root to make a user"
    for tool in ("podman", "runc", "fuse-overlayfs", "newuidmap", "newgidmap", "usermod"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not BUSYBOX.is_file():
        return f"{BUSYBOX} is missing"
    if not UNIONFS_HELPER.exists():
        return f"{UNIONFS_HELPER} is missing: run scripts/setup"
    return None


def _end_processes(name: str) -> None:
    """Kill every process of user `name` (podman's pause process holds its user
    and mount namespaces, and the mounts in them) and wait until none is left."""
    subprocess.run(["pkill", "-KILL", "-u", name], check=False)
    for _ in range(600):
        if subprocess.run(["pgrep", "-u", name], capture_output=True, check=False).returncode:
            return
        subprocess.run(["sleep", "0.05"], check=True)
    raise AssertionError(f"processes of {name} outlived SIGKILL")


@pytest.fixture
def subids() -> Iterator[tuple[pwd.struct_passwd, int]]:
    """A user and the start of its subordinate ids; its processes are ended
    before it is removed."""
    with temporary_user("ufsrl") as pw, subordinate_ids(pw.pw_name) as start:
        try:
            yield pw, start
        finally:
            _end_processes(pw.pw_name)


@pytest.fixture
def user(subids: tuple[pwd.struct_passwd, int]) -> pwd.struct_passwd:
    return subids[0]


@pytest.fixture
def base(user: pwd.struct_passwd) -> Iterator[Path]:
    """A dir the user can reach (pytest's tmp dirs are 0700): home and build context."""
    path = Path(tempfile.mkdtemp(prefix="ufs-rl-"))  # short: podman limits the run root's length
    path.chmod(0o755)
    try:
        rootfs = path / "context/rootfs/bin"
        rootfs.mkdir(parents=True)
        shutil.copyfile(BUSYBOX, rootfs / "busybox")
        (rootfs / "busybox").chmod(0o755)
        (rootfs / "sh").symlink_to("busybox")
        (path / "context/Containerfile").write_text(CONTAINERFILE)
        (path / "home").mkdir()
        (path / "containers.conf").write_text(
            '[engine]\nevents_logger = "file"\ncgroup_manager = "cgroupfs"\nruntime = "runc"\n'
        )
        for p in (path / "context", path / "home"):
            shutil.chown(p, user.pw_uid, user.pw_gid)
            for d, dirs, files in os.walk(p):
                for n in dirs + files:
                    os.chown(os.path.join(d, n), user.pw_uid, user.pw_gid, follow_symlinks=False)
        yield path
    finally:
        _end_processes(user.pw_name)
        shutil.rmtree(path)


class RootlessPodman:
    """podman run by `user` on a private storage whose overlay driver uses `program`."""

    def __init__(self, base: Path, name: str, program: Path, user: pwd.struct_passwd) -> None:
        self.user = user
        self.root = base / name
        self.xdg = self.root / "xdg"
        self.xdg.mkdir(parents=True, mode=0o700)
        (self.root / "tmp").mkdir()
        conf = self.root / "storage.conf"
        conf.write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{self.root / "graph"}"\n'
            f'rootless_storage_path = "{self.root / "graph"}"\n'
            f'runroot = "{self.xdg / "containers"}"\n'
            "[storage.options.overlay]\n"
            f'mount_program = "{program}"\n'
        )
        for p in (self.root, self.xdg, self.root / "tmp", conf):
            os.chown(p, user.pw_uid, user.pw_gid)
        self.home = base / "home"
        self.env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(self.xdg),
            "CONTAINERS_STORAGE_CONF": str(conf),
            "CONTAINERS_CONF": str(base / "containers.conf"),
            "TMPDIR": str(self.root / "tmp"),
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", *args], env=self.env, cwd=self.home, user=self.user.pw_uid,
            group=self.user.pw_gid, extra_groups=[], stdin=subprocess.DEVNULL,
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip

    def __call__(self, *args: str) -> str:
        proc = self.run(*args)
        assert proc.returncode == 0, (
            f"podman {' '.join(args)}: exit {proc.returncode}\n{proc.stderr}"
        )
        return proc.stdout

    def kept_logs(self) -> dict[str, str]:
        """The daemon logs left in the run dir: each holds a warning or worse."""
        return {p.name: p.read_text() for p in self.xdg.glob("unionfs/mounts/*.log")}


def _scenario(pm: RootlessPodman, context: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    pm("build", "-t", "localhost/bb:1", str(context))
    out["image"] = pm("run", "--rm", *NET, "localhost/bb:1", "sh", "-c", SHOW)
    out.update(container_steps(pm, NET, SHOW))
    out["mount"] = pm("unshare", "sh", "-c", MOUNT)
    return out


@pytest.mark.skipif(_problem() is not None, reason=str(_problem()))
def test_rootless_podman_with_unionfs_as_mount_program(
    subids: tuple[pwd.struct_passwd, int], base: Path
) -> None:
    user, start = subids
    results: dict[str, dict[str, str]] = {}
    found = ""
    owners: dict[str, set[tuple[int, int]]] = {}
    with fuse_open_to_users():
        for name, program in PROGRAMS.items():
            pm = RootlessPodman(base, name, program, user)
            try:
                results[name] = _scenario(pm, base / "context")
                owners[name] = {
                    (st.st_uid, st.st_gid)
                    for st in map(os.lstat, pm.root.glob("graph/overlay/*/diff/data/keep"))
                }
                if name == "unionfs":
                    found = pm("unshare", "sh", "-c", UNIONFS_MOUNTS)
                    assert not pm.kept_logs(), pm.kept_logs()
                pm("rm", "-af")
            finally:
                pm.run("rm", "-af")
                _end_processes(user.pw_name)
    assert not mounts_under(base)
    ours, ref = results["unionfs"], results["fuse-overlayfs"]
    assert ref["root fs"] == "fuse.fuse-overlayfs\nok\n"
    assert ours["root fs"] == "fuse.unionfs\nok\n"
    assert ref["mount"].endswith("saved\nfuse.fuse-overlayfs\n")
    assert ours["mount"] == ref["mount"].replace("fuse.fuse-overlayfs", "fuse.unionfs")
    for r in (ours, ref):
        del r["root fs"], r["mount"]
    assert ours == ref
    # The image's owner survives the user namespace: uid 1.. maps onto the subuids.
    assert "-rw-r----- 1 123 456 5 keep" in " ".join(ours["image"].split())
    assert "new\n" in ours["run --rm"] and "built" not in ours["run --rm"]
    # On disk, 123:456 is the subordinate id the namespace maps it to.
    assert owners["unionfs"] == owners["fuse-overlayfs"] == {(start + 122, start + 455)}
    # `unionfs mounts` in podman's namespace finds the daemon's state under
    # $XDG_RUNTIME_DIR, and `unionfs umount` unmounts podman's mount.
    merged, listing, rest = found.split("---\n")
    explained, count = rest.splitlines()
    assert explained == "/data/keep: file, mode 0640 (-rw-r-----), owner 123:456, 5 bytes"
    entry = next(m for m in json.loads(listing) if m["mountpoint"] == merged.strip())
    assert entry["state"] == "live"
    assert entry["state_file"].startswith(f"{base / 'unionfs/xdg/unionfs/mounts'}/")
    assert count.strip() == "0"
