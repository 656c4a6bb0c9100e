"""Containers and images of the store, mounted for real."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.store.test_store import APP, BASE, UPDATE
from tests.support import oci
from tests.support.cli import run_unionfs
from tests.support.kernel import TmpMounts, is_mountpoint
from tests.support.tree import compare, snapshot

pytestmark = pytest.mark.mount

REPO = Path(__file__).resolve().parents[2]


def unionfs(*args: str, root: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """stdout and stderr together (the error lines are checked in stdout)."""
    return run_unionfs(*args, root=root, check=check, merge_stderr=True)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    layout = oci.oci_layout(tmp_path / "layout", [([BASE, UPDATE, APP], None)])
    store_root = tmp_path / "store"
    unionfs("image", "import", str(layout), "app:1", root=store_root)
    return store_root


def mount(root: Path, tmp_mounts: TmpMounts, what: str, *args: str) -> Path:
    mnt = tmp_mounts.mountpoint(what)
    unionfs("mount", what, str(mnt), *args, root=root)
    assert is_mountpoint(mnt)
    return mnt


def test_two_containers_one_image(root: Path, tmp_mounts: TmpMounts, tmp_path: Path) -> None:
    unionfs("create", "app:1", "--name", "one", root=root)
    unionfs("create", "app:1", "--name", "two", root=root)
    one = mount(root, tmp_mounts, "one")
    two = mount(root, tmp_mounts, "two")
    before = snapshot(two)
    assert (one / "etc/motd").read_text() == "updated motd\n"
    assert not (one / "etc/old.conf").exists()
    assert (one / "app/main").read_text() == "print('hi')\n"

    with open(one / "etc/motd", "a") as f:
        f.write("changed in one\n")
    (one / "new").write_text("new\n")
    os.unlink(one / "bin/alias")

    assert (two / "etc/motd").read_text() == "updated motd\n"
    assert compare(before, snapshot(two)) == []
    upper = root / "containers"
    [one_upper] = [
        p / "upper"
        for p in upper.iterdir()
        if json.loads((p / "container.json").read_text())["name"] == "one"
    ]
    assert (one_upper / "etc/motd").read_text() == "updated motd\nchanged in one\n"
    # the image's layer is untouched
    update_dir = root / "layers" / oci.sha256(UPDATE.tar)[7:] / "diff"
    assert (update_dir / "etc/motd").read_text() == "updated motd\n"

    ps = json.loads(unionfs("ps", "--json", root=root).stdout)
    where = {r["name"]: r["mountpoints"] for r in ps}
    assert where == {"one": [str(one)], "two": [str(two)]}
    sizes = {r["name"]: r["upper_size"] for r in ps}
    assert sizes["one"] > 0 and sizes["two"] == 0

    proc = unionfs("rm", "one", root=root, check=False)
    assert proc.returncode == 1
    assert (
        proc.stdout.strip()
        == f"unionfs: error: container one is mounted on {one}: unmount it first"
    )
    proc = unionfs("rmi", "--force", "app:1", root=root)
    unionfs("umount", str(one), root=root)
    unionfs("rm", "one", root=root)
    assert not one_upper.exists()


def test_image_mounts_read_only(root: Path, tmp_mounts: TmpMounts, tmp_path: Path) -> None:
    mnt = tmp_mounts.mountpoint("img")
    proc = unionfs("mount", "app:1", str(mnt), root=root, check=False)
    assert proc.returncode == 1
    assert "is an image: mount it with --read-only" in proc.stdout
    mnt = mount(root, tmp_mounts, "app:1", "--read-only")
    assert (mnt / "etc/motd").read_text() == "updated motd\n"
    with pytest.raises(OSError, match="Read-only file system"):
        (mnt / "x").write_text("x")
    proc = unionfs("rmi", "app:1", root=root, check=False)
    assert proc.returncode == 1 and f"is mounted on {mnt}" in proc.stdout


def test_container_mount_matches_manual_stack(
    root: Path, tmp_mounts: TmpMounts, tmp_path: Path
) -> None:
    """A store mount shows what a mount of the same layers unpacked by tar shows."""
    unionfs("create", "app:1", "--name", "c", root=root)
    mnt = mount(root, tmp_mounts, "c")
    lowers: list[Path] = []
    for la in (APP, UPDATE, BASE):
        d = tmp_path / f"tar-{len(lowers)}"
        d.mkdir()
        blob = tmp_path / "blob.tar"
        blob.write_bytes(la.tar)
        subprocess.run(["tar", "-xf", str(blob), "-C", str(d), "--numeric-owner", "-p"], check=True)
        lowers.append(d)
    reference = tmp_mounts.unionfs(lowers)
    ref_snap, our_snap = snapshot(reference), snapshot(mnt)
    # the layers' tars do not list the root dir: both roots are just "made now"
    del ref_snap["."], our_snap["."]
    diffs = compare(ref_snap, our_snap, ignore={"ino", "dev"})
    assert diffs == [], "\n".join(diffs)
