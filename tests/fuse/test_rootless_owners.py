"""A rootless store keeps each file's owner and mode: a normal user imports an
image whose files belong to others (123:456, a setuid file, a device node),
and the store records what it cannot give in ``user.containers.override_stat``.

* The mount shows the recorded owners and modes, the kernel checks permissions
  against them (a 0600 file of 123 is not readable by the user), and the
  record itself never shows.
* fuse-overlayfs (the reference reader of the convention) mounting the same
  layer shows the same owners and modes for every entry.
* A change, a commit and an export keep them: the new layer's tar headers
  carry 123:456 and the setuid mode.

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
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.kernel import force_unmount, mounts_under
from tests.support.oci import Entry, Layer, directory, file, oci_layout, tar_bytes, tar_dir
from tests.support.users import temporary_user

FUSE_OVERLAYFS = shutil.which("fuse-overlayfs")

pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a user"),
    pytest.mark.skipif(shutil.which("fusermount3") is None, reason="needs fusermount3"),
    pytest.mark.skipif(FUSE_OVERLAYFS is None, reason="needs fuse-overlayfs"),
]

REPO = Path(__file__).resolve().parents[2]

ENTRIES = [
    directory("etc", uid=0, gid=0),
    file("etc/shared", b"shared\n", mode=0o666, uid=123, gid=456),
    file("etc/secret", b"secret\n", mode=0o600, uid=123, gid=456),
    Entry("etc/shared2", "hardlink", link="etc/shared"),
    directory("work", mode=0o777, uid=123, gid=456),
    file("work/su", b"su\n", mode=0o4755, uid=123, gid=456),
    file("work/sg", b"sg\n", mode=0o2711, uid=0, gid=456),
    directory("private", mode=0o750, uid=2000, gid=2000),
    file("private/f", b"p\n", mode=0o640, uid=2000, gid=2000),
    Entry("lnk", "symlink", link="etc/shared", uid=123, gid=456),
    Entry("fifo", "fifo", mode=0o640, uid=123, gid=456),
    directory("dev", uid=0, gid=0),
    Entry("dev/null", "chardev", mode=0o666, devmajor=1, devminor=3),
]

#: Run as the user: import, look at the layer through both filesystems,
#: change the container, commit and export it.
SCRIPT = r"""
import json, os, subprocess, sys
base, fuse_overlayfs = sys.argv[1], sys.argv[2]
store = base + "/store"
def unionfs(*args):
    return subprocess.run([sys.executable, "-m", "unionfs", "--root", store, *args],
                          check=True, capture_output=True, text=True).stdout
def stats(mnt):
    out = {}
    for d, ds, fs in os.walk(mnt):
        for n in [".", *ds, *fs] if d == mnt else [*ds, *fs]:
            p = os.path.normpath(os.path.join(d, n))
            st = os.lstat(p)
            out[os.path.relpath(p, mnt)] = [st.st_mode, st.st_uid, st.st_gid, st.st_size,
                                            st.st_rdev]
    return out
out = {}
unionfs("image", "import", base + "/image.tar", "img:1")
layer = next(p for p in os.scandir(store + "/layers") if p.is_dir()).path + "/diff"
out["layer"] = layer
for name in ("ours", "theirs"):
    os.mkdir(base + "/" + name)
unionfs("mount", "--lower", layer, base + "/ours")
subprocess.run([fuse_overlayfs, "-o", "lowerdir=" + layer + ",xattr_permissions=2",
                base + "/theirs"], check=True)
try:
    out["ours"] = stats(base + "/ours")
    out["theirs"] = stats(base + "/theirs")
    out["listed"] = os.listxattr(base + "/ours/work/su")
finally:
    unionfs("umount", base + "/ours")
    subprocess.run(["fusermount3", "-u", base + "/theirs"], check=True)
unionfs("create", "--name", "c", "img:1")
mnt = base + "/mnt"
os.mkdir(mnt)
unionfs("mount", "c", mnt)
try:
    try:
        open(mnt + "/etc/secret").read()
        out["private_read"] = "done"
    except PermissionError:
        out["private_read"] = "EACCES"
    with open(mnt + "/etc/shared", "a") as f:
        f.write("more\n")
    os.rename(mnt + "/work/su", mnt + "/work/su2")
    open(mnt + "/work/mine", "w").close()
    os.chmod(mnt + "/work/mine", 0o4710)  # the daemon cannot chmod: a record
    try:
        os.chmod(mnt + "/etc/shared", 0o777)
        out["chmod_other"] = "done"
    except PermissionError:
        out["chmod_other"] = "EPERM"
    out["mounted"] = stats(mnt)
finally:
    unionfs("umount", mnt)
out["diff"] = unionfs("diff", "c").split("\n")
unionfs("commit", "c", "img:2")
unionfs("image", "export", "img:2", base + "/out.tar", "--format", "oci-archive")
print(json.dumps(out))
"""


@pytest.fixture
def user() -> Iterator[str]:
    with temporary_user() as pw:
        yield pw.pw_name


@pytest.fixture
def base(user: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="unionfs-owners-"))
    path.chmod(0o755)
    try:
        layout = oci_layout(path / "layout", [([Layer(tar_bytes(ENTRIES))], "img")])
        tar_dir(layout, path / "image.tar")
        (path / "script.py").write_text(SCRIPT)
        subprocess.run(["chown", "-R", f"{user}:{user}", str(path)], check=True)
        yield path
    finally:
        for m in reversed(mounts_under(path)):
            force_unmount(m.mountpoint)
        shutil.rmtree(path)


def _as_user(user: str, base: Path) -> dict[str, Any]:
    assert FUSE_OVERLAYFS is not None
    proc = subprocess.run(
        ["setpriv", "--reuid", user, "--regid", user, "--clear-groups", "--",
         sys.executable, str(base / "script.py"), str(base), FUSE_OVERLAYFS],
        cwd=REPO, capture_output=True, text=True, check=False, timeout=180,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _owner(entry: list[int]) -> tuple[int, int, int]:
    mode, uid, gid = entry[:3]
    return mode, uid, gid


def _layers(archive: Path) -> list[dict[str, tarfile.TarInfo]]:
    """Each layer of a one-image oci-archive, bottom first: its members by name."""
    with tarfile.open(archive) as outer:
        index = json.load(outer.extractfile("index.json"))  # type: ignore[arg-type]
        digest = index["manifests"][0]["digest"].split(":")[1]
        manifest = json.load(outer.extractfile(f"blobs/sha256/{digest}"))  # type: ignore[arg-type]
        out = []
        for layer in manifest["layers"]:
            blob = outer.extractfile(f"blobs/sha256/{layer['digest'].split(':')[1]}")
            with tarfile.open(fileobj=blob) as tar:
                out.append({m.name.rstrip("/"): m for m in tar.getmembers()})
        return out


def test_a_rootless_store_keeps_owners_and_modes(user: str, base: Path, open_fuse: None) -> None:
    result = _as_user(user, base)
    uid, gid = os.stat(base).st_uid, os.stat(base).st_gid  # the user's own ids
    ours, theirs = result["ours"], result["theirs"]

    # What the layer holds on disk: the user's files, owners in the record.
    layer = Path(result["layer"])
    disk = os.lstat(layer / "work/su")
    assert disk.st_uid == uid and not disk.st_mode & stat.S_ISUID
    assert os.getxattr(layer / "work/su", "user.containers.override_stat") == (
        b"123:456:04755:file"
    )
    assert os.getxattr(layer, "user.containers.override_stat")  # the layer's mark
    assert stat.S_ISREG(os.lstat(layer / "dev/null").st_mode)  # no mknod without root

    # The mount shows the recorded owners and modes.
    assert _owner(ours["work/su"]) == (stat.S_IFREG | 0o4755, 123, 456)
    assert _owner(ours["work/sg"]) == (stat.S_IFREG | 0o2711, 0, 456)
    assert _owner(ours["etc/secret"]) == (stat.S_IFREG | 0o600, 123, 456)
    assert _owner(ours["private"]) == (stat.S_IFDIR | 0o750, 2000, 2000)
    assert _owner(ours["etc"]) == (stat.S_IFDIR | 0o755, 0, 0)
    null = ours["dev/null"]
    assert _owner(null) == (stat.S_IFCHR | 0o666, 0, 0) and null[4] == os.makedev(1, 3)
    # Symlinks and fifos cannot carry a user.* attribute: the user's own.
    assert ours["lnk"][1:3] == [uid, gid] and ours["fifo"][1:3] == [uid, gid]
    assert "user.containers.override_stat" not in result["listed"]

    # fuse-overlayfs shows the same; it reads no type field, so it shows the
    # device's record as the regular file it is on disk.
    assert set(ours) == set(theirs)
    for path in sorted(ours):
        if path == "dev/null":
            assert _owner(theirs[path]) == (stat.S_IFREG | 0o666, 0, 0)
            continue
        fields = 3 if stat.S_ISDIR(ours[path][0]) else 4  # a directory's size is its own
        assert ours[path][:fields] == theirs[path][:fields], path

    # The kernel checks permissions against the shown mode.
    assert result["private_read"] == "EACCES"
    mounted = result["mounted"]
    assert _owner(mounted["work/su2"]) == (stat.S_IFREG | 0o4755, 123, 456)
    assert _owner(mounted["etc/shared"])[1:] == (123, 456)
    assert _owner(mounted["work/mine"]) == (stat.S_IFREG | 0o4710, uid, gid)
    assert result["chmod_other"] == "EPERM"
    assert {"C /etc/shared", "D /work/su", "A /work/su2", "A /work/mine"} <= set(result["diff"])

    # The committed layer carries the owners and modes in its headers.
    base_layer, top = _layers(base / "out.tar")
    assert (base_layer["work/su"].uid, base_layer["work/su"].mode) == (123, 0o4755)
    su2 = top["work/su2"]
    assert (su2.uid, su2.gid, su2.mode) == (123, 456, 0o4755)
    shared = top["etc/shared"]
    assert (shared.uid, shared.gid, shared.mode) == (123, 456, 0o666)
    assert (top["work"].uid, top["work"].gid, top["work"].mode) == (123, 456, 0o777)
    assert (top["etc"].uid, top["etc"].mode) == (0, 0o755)
    assert (top["work/mine"].uid, top["work/mine"].mode) == (uid, 0o4710)
    assert not any("override_stat" in k for m in top.values() for k in m.pax_headers)
