"""podman with unionfs as containers/storage's ``mount_program``, as root, and
the same steps with fuse-overlayfs as the reference.

Each side gets its own storage (a storage.conf named by
``CONTAINERS_STORAGE_CONF`` with its graph and run roots in the test's tmp dir
and ``[storage.options.overlay] mount_program``; podman's ``--root`` would drop
those options), builds a busybox image from scratch with a RUN step (buildah
mounts the build container through the mount program), runs ``--rm``
containers that write and read files, runs one it then commits and runs the
commit, and ``podman mount``s a container. Every output must be what
fuse-overlayfs gives, and each container's root must be the mount program's
filesystem.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.images import BUSYBOX, RUN_ROOTS, release_mounts
from tests.support.kernel import mounts_under
from tests.support.podman import container_steps

pytestmark = [pytest.mark.mount, pytest.mark.slow]

UNIONFS_HELPER = Path("/sbin/mount.fuse.unionfs")
PROGRAMS = {"unionfs": UNIONFS_HELPER, "fuse-overlayfs": Path("/usr/bin/fuse-overlayfs")}
RUN_OPTIONS = (
    "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768", "--network", "none",
)  # fmt: skip
CONTAINERFILE = """\
FROM scratch
COPY rootfs/ /
RUN /bin/busybox --install -s /bin && mkdir -p /tmp /data /etc \\
 && echo built > /data/built && echo keep > /data/keep \\
 && chown 1000:1000 /data/keep && chmod 640 /data/keep
"""
SHOW = "cat /data/*; ls -ln /data | sed 's/ [A-Z][a-z][a-z] .*:.. / /'; ls -ld / | cut -c1-10"


def _problem() -> str | None:
    for tool in ("podman", "runc", "fuse-overlayfs"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not BUSYBOX.is_file():
        return f"{BUSYBOX} is missing"
    if not UNIONFS_HELPER.exists():
        return f"{UNIONFS_HELPER} is missing: run scripts/setup"
    return None


class Podman:
    """podman on a private storage whose overlay driver uses `program`."""

    def __init__(self, root: Path, program: Path) -> None:
        self.root = root
        root.mkdir(parents=True)
        run = root.resolve() / "run"
        if len(str(run)) > 50:  # podman's limit for a run root
            run = RUN_ROOTS / hashlib.sha256(os.fsencode(run)).hexdigest()[:16]
        self.run_root = run
        conf = root / "storage.conf"
        conf.write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{root / "graph"}"\n'
            f'runroot = "{run}"\n'
            "[storage.options.overlay]\n"
            f'mount_program = "{program}"\n'
        )
        (root / "tmp").mkdir()
        self.env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf), "TMPDIR": str(root / "tmp")}

    def __call__(self, *args: str) -> str:
        cmd = ["podman", "--cgroup-manager", "cgroupfs", "--events-backend", "none",
               "--runtime", "runc", *args]  # fmt: skip
        proc = subprocess.run(
            cmd, env=self.env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=300, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"{' '.join(cmd)}: exit {proc.returncode}\n{proc.stderr}"
        return proc.stdout

    def cleanup(self) -> None:
        try:
            self("rm", "-af")
        finally:
            release_mounts(self.root)
            shutil.rmtree(self.run_root, ignore_errors=True)


def _context(path: Path) -> Path:
    rootfs = path / "rootfs" / "bin"
    rootfs.mkdir(parents=True)
    shutil.copyfile(BUSYBOX, rootfs / "busybox")
    (rootfs / "busybox").chmod(0o755)
    (rootfs / "sh").symlink_to("busybox")
    (path / "Containerfile").write_text(CONTAINERFILE)
    return path


def _scenario(pm: Podman, context: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    pm("build", *RUN_OPTIONS, "-t", "localhost/bb:1", str(context))
    out.update(container_steps(pm, RUN_OPTIONS, SHOW))
    merged = Path(pm("mount", "c1").strip())
    try:
        out["mount"] = "\n".join(sorted(p.name for p in (merged / "data").iterdir()))
        out["mount saved"] = (merged / "data/saved").read_text()
    finally:
        pm("umount", "c1")
    pm("rm", "c1")
    return out


@pytest.mark.skipif(_problem() is not None, reason=str(_problem()))
def test_podman_with_unionfs_as_mount_program(tmp_path: Path) -> None:
    context = _context(tmp_path / "context")
    results: dict[str, dict[str, str]] = {}
    for name, program in PROGRAMS.items():
        pm = Podman(tmp_path / name, program)
        try:
            results[name] = _scenario(pm, context)
        finally:
            pm.cleanup()
        assert not mounts_under(tmp_path / name)
    ours, ref = results["unionfs"], results["fuse-overlayfs"]
    assert ref["root fs"] == "fuse.fuse-overlayfs\nok\n"
    assert ours["root fs"] == "fuse.unionfs\nok\n"
    del ours["root fs"], ref["root fs"]
    assert ours == ref
    assert "new\n" in ours["run --rm"] and "built" not in ours["run --rm"]
    assert ours["mount"] == "keep\nsaved"
