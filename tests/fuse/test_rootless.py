"""A writable mount run by a normal user: every write operation works, and the
daemon's bookkeeping goes to the ``user.`` namespace (``trusted.*`` needs
CAP_SYS_ADMIN), as kernel overlayfs's ``userxattr``: the copy-up origin in
``user.overlay.unionfs.origin`` (so a file keeps its inode number through
copy-up and remounts), redirects in ``user.overlay.redirect``, deletions as
overlayfs whiteouts (character devices 0/0, which Linux lets anyone make since
5.8). Kernel overlayfs mounted with ``userxattr`` over such an upper shows the
tree unionfs showed.

The test makes a user (removed after it) and sets /dev/fuse to Debian's 0666
for the length of the test (restored after it).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.kernel import TmpMounts, force_unmount, mounts_under
from tests.support.tree import compare, snapshot
from tests.support.users import temporary_user

pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a user"),
    pytest.mark.skipif(shutil.which("fusermount3") is None, reason="needs fusermount3"),
]

REPO = Path(__file__).resolve().parents[2]

#: Run as the user: mount, change things, report, unmount.
SCRIPT = r"""
import json, os, subprocess, sys
base, phase = sys.argv[1], sys.argv[2]
mnt = base + "/mnt"
def unionfs(*args):
    subprocess.run([sys.executable, "-m", "unionfs", *args], check=True)
unionfs("mount", "--lower", base + "/lower", "--upper", base + "/upper",
        "--work", base + "/work", mnt)
out = {}
try:
    if phase == "plain":
        with open(mnt + "/d/f", "a") as f:
            f.write("more\n")
        os.mkdir(mnt + "/d2")
        os.unlink(mnt + "/d/s")
        os.rmdir(mnt + "/e")
        os.mkdir(mnt + "/e")
        open(mnt + "/e/in-new-e", "w").close()
        os.setxattr(mnt + "/d/f", "user.k", b"v")
        os.rename(mnt + "/d/f", mnt + "/d/f2")
        os.rename(mnt + "/d/f2", mnt + "/d/f3")
    elif phase == "write":
        out["ino_before"] = os.stat(mnt + "/d/f").st_ino
        with open(mnt + "/d/f", "a") as f:
            f.write("more\n")
        out["ino_after"] = os.stat(mnt + "/d/f").st_ino
        os.mkdir(mnt + "/d2")
        os.unlink(mnt + "/d/s")
        open(mnt + "/d/new", "w").close()
        os.chmod(mnt + "/d/new", 0o600)
        os.utime(mnt + "/d/new", ns=(1, 2))
        os.setxattr(mnt + "/d/new", "user.k", b"v")
        os.symlink("new", mnt + "/d/s2")
        os.rename(mnt + "/d", mnt + "/d3")
        os.rename(mnt + "/g", mnt + "/g2")
        os.rmdir(mnt + "/e")
        os.chmod(mnt, 0o750)
    if phase == "plain":
        print(json.dumps({}))
        sys.exit(0)
    out["ino"] = os.stat(mnt + "/d3/f").st_ino
    out["tree"] = sorted(
        (os.path.relpath(os.path.join(d, n), mnt),
         oct(os.lstat(os.path.join(d, n)).st_mode))
        for d, ds, fs in os.walk(mnt) for n in ds + fs
    )
    out["f"] = open(mnt + "/d3/f").read()
    out["root_mode"] = oct(os.stat(mnt).st_mode)
finally:
    unionfs("umount", mnt)
print(json.dumps(out))
"""


@pytest.fixture
def user() -> Iterator[str]:
    with temporary_user() as pw:
        yield pw.pw_name


@pytest.fixture
def base(user: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="unionfs-rootless-"))
    path.chmod(0o755)
    try:
        for d in ("lower/d", "lower/e", "lower/g/sub", "upper", "work", "mnt"):
            (path / d).mkdir(parents=True)
        (path / "lower/d/f").write_text("low\n")
        (path / "lower/d/s").symlink_to("f")
        (path / "lower/g/sub/x").write_text("x\n")
        (path / "script.py").write_text(SCRIPT)
        subprocess.run(["chown", "-R", f"{user}:{user}", str(path)], check=True)
        yield path
    finally:
        for m in reversed(mounts_under(path)):
            force_unmount(m.mountpoint)
        shutil.rmtree(path)


def _as_user(user: str, base: Path, phase: str) -> dict[str, object]:
    proc = subprocess.run(
        ["setpriv", "--reuid", user, "--regid", user, "--clear-groups", "--",
         sys.executable, str(base / "script.py"), str(base), phase],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _xattrs(path: Path) -> dict[str, bytes]:
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in os.listxattr(path)}


def test_rootless_writes_keep_bookkeeping_in_user_xattrs(
    user: str, base: Path, open_fuse: None
) -> None:
    first = _as_user(user, base, "write")
    assert first["ino_before"] == first["ino_after"] == first["ino"]
    assert first["f"] == "low\nmore\n"
    tree = dict(first["tree"])  # type: ignore[call-overload]
    assert set(tree) == {
        "d2", "d3", "d3/f", "d3/new", "d3/s2", "g2", "g2/sub", "g2/sub/x",
    }  # fmt: skip
    assert first["root_mode"] == oct(stat.S_IFDIR | 0o750)
    upper = base / "upper"
    assert set(_xattrs(upper / "d3/f")) == {"user.overlay.unionfs.origin"}
    assert _xattrs(upper / "d3")["user.overlay.redirect"] == b"d"
    assert _xattrs(upper / "d3/new") == {"user.k": b"v"}
    for wh in (upper / "e", upper / "d3/s"):
        st = os.lstat(wh)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, wh
    # A remount shows the same tree, and the copy keeps its inode number.
    again = _as_user(user, base, "read")
    assert again["tree"] == first["tree"]
    assert again["ino"] == first["ino"]


def test_kernel_overlayfs_userxattr_reads_a_rootless_upper(
    user: str, base: Path, open_fuse: None, tmp_mounts: TmpMounts
) -> None:
    _as_user(user, base, "plain")
    layers = [base / "upper", base / "lower"]
    kernel = tmp_mounts.overlay(layers, name="kernel", extra_opts=("userxattr",))
    ours = tmp_mounts.unionfs(layers, name="unionfs")
    diffs = compare(snapshot(kernel), snapshot(ours), names=("kernel", "unionfs"))
    assert not diffs, "\n".join(diffs)
    assert (ours / "d/f3").read_text() == "low\nmore\n"
    assert sorted(os.listdir(ours / "e")) == ["in-new-e"]


KERNEL_AS_USER = """\
mount -t overlay overlay -o userxattr,lowerdir={b}/lower,upperdir={b}/upper,workdir={b}/work \
{b}/mnt
echo more >> {b}/mnt/d/f
rm {b}/mnt/d/s
rm -r {b}/mnt/e && mkdir {b}/mnt/e && touch {b}/mnt/e/in-new-e
mkdir {b}/mnt/d2
rm -r {b}/mnt/g/sub
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_unionfs_reads_a_user_namespace_overlayfs_upper(
    user: str, base: Path, tmp_mounts: TmpMounts
) -> None:
    """The other way round: kernel overlayfs mounted by the user in its own
    user namespace (``unshare -Urm``, ``userxattr``) writes the upper."""
    proc = subprocess.run(
        ["setpriv", "--reuid", user, "--regid", user, "--clear-groups", "--",
         "unshare", "-Urm", "sh", "-ec", KERNEL_AS_USER.format(b=base)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    if proc.returncode != 0 and "unshare" in proc.stderr:
        pytest.skip(f"no user namespaces for a normal user here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    assert os.getxattr(base / "upper/e", "user.overlay.opaque") == b"y"
    layers = [base / "upper", base / "lower"]
    kernel = tmp_mounts.overlay(layers, name="kernel", extra_opts=("userxattr",))
    ours = tmp_mounts.unionfs(layers, name="unionfs")
    diffs = compare(snapshot(kernel), snapshot(ours), names=("kernel", "unionfs"))
    assert not diffs, "\n".join(diffs)
    assert sorted(os.listdir(ours / "e")) == ["in-new-e"]
    assert not (ours / "d/s").exists() and not (ours / "g/sub").exists()


IN_USERNS = """\
cd {repo}
{py} -m unionfs mount --log-file {b}/log \
  -o lowerdir={b}/lower,upperdir={b}/upper,workdir={b}/work,uidmapping=0:0:1,gidmapping=0:0:1 \
  {b}/mnt
trap '{py} -m unionfs umount {b}/mnt' EXIT
echo more >> {b}/mnt/d/f
rm {b}/mnt/d/s
mv {b}/mnt/g {b}/mnt/g2
stat -c '%u:%g' {b}/mnt/d/f
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1)")
def test_mount_in_a_user_namespace(user: str, base: Path, open_fuse: None) -> None:
    """As rootless podman runs its mount_program: root of a user namespace
    (``unshare -Urm``), which has no ``trusted.*`` either."""
    proc = subprocess.run(
        ["setpriv", "--reuid", user, "--regid", user, "--clear-groups", "--",
         "unshare", "-Urm", "sh", "-ec", IN_USERNS.format(b=base, repo=REPO, py=sys.executable)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    if proc.returncode != 0 and "unshare:" in proc.stderr:
        pytest.skip(f"no user namespaces for a normal user here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr + (base / "log").read_text()
    assert proc.stdout.strip() == "0:0"  # the user, root of its namespace
    upper = base / "upper"
    assert set(_xattrs(upper / "d/f")) == {"user.overlay.unionfs.origin"}
    assert _xattrs(upper / "g2")["user.overlay.redirect"] == b"g"
    for wh in (upper / "d/s", upper / "g"):
        assert stat.S_ISCHR(os.lstat(wh).st_mode) and os.lstat(wh).st_rdev == 0
    assert not mounts_under(base)
