"""unionfs in fuse-overlayfs's place: its command line, containers/storage's
layout, owner mapping, and ``mount -t fuse.unionfs``.

* Lower dirs given as containers/storage's short links ``l/XXXX -> ../ID/diff``
  are followed, as kernel overlayfs follows them (the merged tree is compared);
  a symlink inside a layer stays a symlink.
* The option string podman passes (an empty option, ``volatile``, a trailing
  comma) mounts, and every fuse-overlayfs option is accepted.
* ``uidmapping=``/``gidmapping=`` show disk owners as container ids and store
  container ids as disk owners, both ways; ``squash_to_*`` report one owner.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.kernel import TmpMounts, escape_option_path, overlay_options
from tests.support.stack import Dir, File, Layer, Symlink, build_stack
from tests.support.tree import compare, render, snapshot

pytestmark = pytest.mark.mount

STACK: list[Layer] = [
    [File("etc/motd", b"top\n"), Symlink("etc/link", "../bin")],
    [Dir("bin"), File("bin/sh", b"#!\n", mode=0o755), File("etc/motd", b"low\n")],
]


def _storage_layout(root: Path) -> list[Path]:
    """Layers as containers/storage lays them out: ``ID/diff`` dirs, named
    through ``l/SHORT -> ../ID/diff`` links; returns the links, top first."""
    built = build_stack(STACK, root / "built", "chardev")
    links: list[Path] = []
    (root / "l").mkdir()
    for i, layer in enumerate(built):
        diff = root / f"id{i}" / "diff"
        diff.parent.mkdir()
        layer.rename(diff)
        link = root / "l" / f"SHORT{i}"
        link.symlink_to(f"../id{i}/diff")
        links.append(link)
    return links


def test_symlinked_layer_roots_are_followed_like_overlayfs(
    tmp_mounts: TmpMounts, tmp_path: Path
) -> None:
    snaps = {}
    for side in ("kernel", "unionfs"):
        links = _storage_layout(tmp_path / side)
        upper, work = tmp_path / side / "upper", tmp_path / side / "work"
        upper.mkdir()
        work.mkdir()
        opts = overlay_options(links, upper, work)
        if side == "kernel":
            mnt = tmp_mounts.overlay(links, name=side, upper=upper, work=work)
        else:
            mnt = tmp_mounts.unionfs([], name=side, args=["-o", opts])
        try:
            assert os.readlink(mnt / "etc/link") == "../bin"
            (mnt / "new").write_text("x")
            os.utime(mnt / "new", ns=(1, 1))
            snaps[side] = snapshot(mnt)
        finally:
            tmp_mounts.unmount(mnt)
    diffs = compare(snaps["kernel"], snaps["unionfs"], ignore=["mtime_ns@dir"])
    assert not diffs, "\n".join(diffs) + "\n" + render(snaps["unionfs"])


def test_podman_option_string_mounts(tmp_mounts: TmpMounts, tmp_path: Path) -> None:
    """What containers/storage passes for a ``--rm`` container, and the rest of
    fuse-overlayfs's options, in one mount; fsync still answers."""
    links = _storage_layout(tmp_path)
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    lowers = ":".join(escape_option_path(p) for p in links)
    opts = (
        f"lowerdir={lowers},upperdir={escape_option_path(upper)},"
        f"workdir={escape_option_path(work)},,volatile,"
    )
    extra = (
        "fsync=0,noacl,static_nlink,xattr_permissions=0,userxattr,index=off,"
        "redirect_dir=on,metacopy=off,timeout=5,threaded=1,debug,"
    )
    mnt = tmp_mounts.unionfs([], args=["-o", opts, "-o", extra])
    fd = os.open(mnt / "f", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"data")
        os.fsync(fd)
    finally:
        os.close(fd)
    assert (upper / "f").read_bytes() == b"data"


def test_unknown_option_fails_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "l").mkdir()
    (tmp_path / "m").mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "unionfs",
            "mount",
            "-o",
            f"lowerdir={tmp_path / 'l'},bogus=1",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("unionfs: error: unknown mount option 'bogus=1'")


def _mapped_mount(tmp_mounts: TmpMounts, tmp_path: Path, opts: str) -> tuple[Path, Path]:
    lower, upper, work = (tmp_path / n for n in ("lower", "upper", "work"))
    for d in (lower, upper, work):
        d.mkdir()
    (lower / "host1000").write_text("a")
    os.chown(lower / "host1000", 1000, 1000)
    (lower / "host110005").write_text("b")
    os.chown(lower / "host110005", 110005, 110007)
    (lower / "unmapped").write_text("c")
    os.chown(lower / "unmapped", 5, 5)
    os.chmod(upper, 0o777)
    mnt = tmp_mounts.unionfs([], args=["-o", overlay_options([lower], upper, work) + "," + opts])
    return mnt, upper


def test_uid_gid_mapping_both_ways(tmp_mounts: TmpMounts, tmp_path: Path) -> None:
    mnt, upper = _mapped_mount(
        tmp_mounts,
        tmp_path,
        "uidmapping=0:1000:1:1:110000:65536,gidmapping=0:1000:1:1:110000:65536",
    )

    def owner(p: Path) -> tuple[int, int]:
        st = os.lstat(p)
        return st.st_uid, st.st_gid

    assert owner(mnt / "host1000") == (0, 0)
    assert owner(mnt / "host110005") == (6, 8)
    assert owner(mnt / "unmapped") == (65534, 65534)
    (mnt / "made-by-root").write_text("x")  # root (container 0) creates
    assert owner(mnt / "made-by-root") == (0, 0)
    assert owner(upper / "made-by-root") == (1000, 1000)
    os.chown(mnt / "host1000", 33, 34)  # chown to container ids
    assert owner(mnt / "host1000") == (33, 34)
    assert owner(upper / "host1000") == (110032, 110033)
    with pytest.raises(OSError) as exc:
        os.chown(mnt / "host1000", 70000, -1)  # outside every range
    assert exc.value.errno == 22


def test_squash_reports_one_owner(tmp_mounts: TmpMounts, tmp_path: Path) -> None:
    mnt, upper = _mapped_mount(tmp_mounts, tmp_path, "squash_to_uid=7,squash_to_gid=8")
    assert {(os.lstat(p).st_uid, os.lstat(p).st_gid) for p in mnt.iterdir()} == {(7, 8)}
    (mnt / "new").write_text("x")
    assert os.lstat(upper / "new").st_uid == 0  # stored as created


@pytest.mark.skipif(shutil.which("mount") is None, reason="needs mount(8)")
def test_mount_t_fuse_unionfs_and_fstab_line(tmp_mounts: TmpMounts, tmp_path: Path) -> None:
    """``mount -t fuse.unionfs`` finds this unionfs through the
    ``mount.fuse.unionfs`` helper scripts/setup installs, whatever PATH holds
    (Debian's unionfs-fuse owns /usr/bin/unionfs and mount.unionfs)."""
    helper = next(
        (p for p in (Path("/usr/local/sbin/mount.fuse.unionfs"), Path("/sbin/mount.fuse.unionfs"))
         if p.exists()),
        None,
    )  # fmt: skip
    if helper is None:
        pytest.fail("mount.fuse.unionfs is not installed: run scripts/setup")
    links = _storage_layout(tmp_path / "layers")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    opts = overlay_options(links, upper, work)
    mnt = tmp_mounts.mountpoint("mount-t")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    subprocess.run(
        ["mount", "-t", "fuse.unionfs", "-o", opts, "unionfs-test", str(mnt)],
        env=env, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    assert (mnt / "etc/motd").read_text() == "top\n"
    assert _fstype(mnt) == "fuse.unionfs"
    tmp_mounts.unmount(mnt)

    # An fstab line, read by mount(8) through --fstab.
    fstab = tmp_path / "fstab"
    mnt2 = tmp_mounts.mountpoint("fstab")
    fstab.write_text(f"unionfs-test {mnt2} fuse.unionfs {opts},noauto 0 0\n")
    subprocess.run(
        ["mount", "--fstab", str(fstab), str(mnt2)],
        env=env, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    assert (mnt2 / "bin/sh").read_bytes() == b"#!\n"
    assert _fstype(mnt2) == "fuse.unionfs"


def _fstype(mnt: Path) -> str:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(mnt):
            return line.split(" - ")[1].split()[0]
    return ""
