"""Layers written by a real image tool (umoci), mounted by unionfs, against
umoci's own unpack of the same image as the reference merged view."""

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.kernel import TmpMounts
from tests.support.tree import check_ino_consistency, compare, snapshot

pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed"),
]


def umoci(*args: str, cwd: Path) -> None:
    subprocess.run(["umoci", *args], cwd=cwd, check=True, capture_output=True)


def commit_layer(work: Path, change: Callable[[Path], None]) -> None:
    """Unpack the image, apply `change` to its rootfs, repack: one new layer."""
    bundle = work / "bundle"
    if bundle.exists():
        shutil.rmtree(bundle)
    umoci("unpack", "--image", "img:t", "bundle", cwd=work)
    change(bundle / "rootfs")
    umoci("repack", "--image", "img:t", "bundle", cwd=work)


def base(root: Path) -> None:
    for d in ("bin", "etc/conf.d", "usr/share/doc", "var/cache/pkg", "srv/data"):
        (root / d).mkdir(parents=True)
    (root / "bin/tool").write_bytes(b"#!/bin/sh\necho tool\n")
    (root / "bin/tool").chmod(0o4755)
    (root / "bin/alias").symlink_to("tool")
    (root / "etc/motd").write_text("base motd\n")
    (root / "etc/conf.d/a.conf").write_text("a=1\n")
    (root / "etc/conf.d/b.conf").write_text("b=1\n")
    (root / "usr/share/doc/README").write_text("read me\n")
    (root / "var/cache/pkg/index").write_bytes(os.urandom(3000))
    (root / "srv/data/one").write_text("1\n")
    os.link(root / "srv/data/one", root / "srv/data/one-again")
    (root / "tmp").mkdir(mode=0o1777)
    (root / "tmp").chmod(0o1777)
    os.chown(root / "srv/data", 1000, 1000)
    os.setxattr(root / "etc/motd", "user.origin", b"base\xff")


def update(root: Path) -> None:
    (root / "etc/motd").write_text("updated motd\n")
    (root / "etc/conf.d/b.conf").unlink()
    shutil.rmtree(root / "var/cache/pkg")
    shutil.rmtree(root / "usr/share/doc")
    (root / "usr/share/doc").mkdir()
    (root / "usr/share/doc/NEWS").write_text("news\n")
    (root / "bin/alias").unlink()
    (root / "bin/alias").write_text("now a file\n")


def app(root: Path) -> None:
    (root / "app").mkdir()
    (root / "app/main").write_text("print('hi')\n")
    (root / "etc/conf.d/c.conf").write_text("c=1\n")
    (root / "srv/data/one").unlink()


def layer_blobs(layout: Path) -> list[Path]:
    """The image's layer blobs, bottom first."""
    index = json.loads((layout / "index.json").read_text())
    digest = index["manifests"][0]["digest"].split(":", 1)[1]
    manifest = json.loads((layout / "blobs/sha256" / digest).read_text())
    return [layout / "blobs/sha256" / la["digest"].split(":", 1)[1] for la in manifest["layers"]]


def inherit_implicit_dirs(layer: Path, blob: Path, below: list[Path]) -> None:
    """Give directories that tar created implicitly (parents the layer does not
    list) the attributes they have in the layers below, as an applier that
    extracts onto the lower layers' view would see them."""
    listed = subprocess.run(
        ["tar", "-tzf", str(blob)], check=True, capture_output=True, text=True
    ).stdout.split("\n")
    members = {m.strip("/").removeprefix("./") for m in listed}
    for d in sorted(p for p in layer.rglob("*") if p.is_dir() and not p.is_symlink()):
        rel = str(d.relative_to(layer))
        if rel in members:
            continue
        for lower in below:
            src = lower / rel
            if src.is_dir():
                st = src.lstat()
                os.chown(d, st.st_uid, st.st_gid)
                os.chmod(d, st.st_mode & 0o7777)
                os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
                break


def test_umoci_image_matches_umoci_unpack(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    work = tmp_path / "work"
    work.mkdir()
    umoci("init", "--layout", "img", cwd=work)
    umoci("new", "--image", "img:t", cwd=work)
    for change in (base, update, app):
        commit_layer(work, change)

    # Each layer extracted as it is stored (OCI whiteouts included), bottom first.
    lowers: list[Path] = []
    for i, blob in enumerate(layer_blobs(work / "img")):
        d = tmp_path / f"layer{i}"
        d.mkdir()
        subprocess.run(
            ["tar", "-xzf", str(blob), "-C", str(d), "--numeric-owner", "-p",
             "--xattrs", "--xattrs-include=*"],
            check=True,
        )  # fmt: skip
        inherit_implicit_dirs(d, blob, lowers)
        lowers.insert(0, d)
    assert any(p.name.startswith(".wh.") for d in lowers for p in d.rglob("*")), (
        "umoci wrote no whiteouts: the image does not exercise them"
    )

    umoci("unpack", "--image", "img:t", "reference", cwd=work)
    reference = snapshot(work / "reference/rootfs")

    mnt = tmp_mounts.unionfs(lowers)
    merged = snapshot(mnt)
    # umoci unpacks into one plain tree, so its directories have their own link
    # counts and sizes; a union reports nlink 1 for merged directories (as
    # overlayfs does), and a hard link keeps the count of its layer.
    diffs = compare(reference, merged, ignore={"nlink", "size@dir"}, names=("umoci", "unionfs"))
    assert diffs == [], "\n".join(diffs)
    assert check_ino_consistency(merged) == []
    assert "var/cache/pkg" not in merged
    assert merged["etc/motd"].sha256 == reference["etc/motd"].sha256
