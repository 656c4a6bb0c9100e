"""Writes through the filesystem semantics, with no FUSE mount: what lands in
the upper layer, byte by byte."""

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import Dir, File, Layer, Symlink, Whiteout, build_stack
from tests.support.tree import snapshot
from unionfs.fs.inodes import ROOT_INO, Node
from unionfs.fs.layer import Layer as FsLayer
from unionfs.fs.upper import ORIGIN_XATTR, WORK_SUBDIR, Upper, copy_data
from unionfs.fs.vfs import UnionFS

LOWER: list[Layer] = [
    [File("etc/motd", b"mid\n", mode=0o640, uid=7, gid=8, xattrs={"user.tag": b"m"})],
    [
        File("etc/motd", b"low\n"),
        File("etc/hosts", b"hosts\n"),
        Dir("var/lib", mode=0o750),
        File("var/lib/db", b"db"),
        Symlink("link", "etc/motd"),
        File("gone", b"x"),
    ],
]


class Env:
    def __init__(self, root: Path, *, oci: bool = False) -> None:
        self.lowers = build_stack(LOWER, root / "lower", "chardev")
        self.upper_dir = root / "upper"
        self.work_dir = root / "work"
        self.upper_dir.mkdir()
        self.work_dir.mkdir()
        self.oci = oci
        self.fs = self.open()

    def open(self) -> UnionFS:
        paths = [self.upper_dir, *self.lowers]
        layers = [FsLayer.open(i, p) for i, p in enumerate(paths)]
        upper = Upper.open(layers[0], self.work_dir, oci_whiteouts=self.oci)
        return UnionFS(layers, upper=upper)

    def close(self, fs: UnionFS | None = None) -> None:
        fs = fs or self.fs
        fs.close()
        if fs.upper is not None:
            fs.upper.close()
        for la in fs.layers:
            la.close()

    def walk(self, path: str, fs: UnionFS | None = None) -> Node:
        fs = fs or self.fs
        node = fs.inodes.root
        for part in path.split("/"):
            node = fs.lookup(node.ino, part.encode())
        return node

    def ino(self, path: str) -> int:
        return self.walk(path).ino


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.close()


def test_write_copies_up_with_metadata_and_keeps_the_inode(env: Env) -> None:
    motd = env.walk("etc/motd")
    ino, before = motd.ino, motd.st
    etc_mtime = os.stat(env.lowers[0] / "etc").st_mtime_ns
    fh = env.fs.open(motd.ino, os.O_WRONLY)
    env.fs.write(fh, 4, b"more\n")
    env.fs.release(fh)
    up = env.upper_dir / "etc/motd"
    assert up.read_bytes() == b"mid\nmore\n"
    st = up.lstat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 7, 8)
    assert os.getxattr(up, "user.tag") == b"m"
    assert os.getxattr(up, ORIGIN_XATTR)  # where it came from, for the inode number
    assert motd.ino == ino
    # the copied-up parent keeps the lower directory's times (copy-up is invisible)
    assert os.stat(env.upper_dir / "etc").st_mtime_ns == etc_mtime
    assert (env.lowers[0] / "etc/motd").read_bytes() == b"mid\n"
    assert before.st_size == 4
    # a fresh mount of the same layers gives the same number
    env.close()
    again = env.open()
    try:
        assert env.walk("etc/motd", again).ino == ino
    finally:
        env.close(again)


def test_reader_opened_before_copy_up_sees_new_data(env: Env) -> None:
    hosts = env.walk("etc/hosts")
    reader = env.fs.open(hosts.ino, os.O_RDONLY)
    writer = env.fs.open(hosts.ino, os.O_RDWR)
    env.fs.write(writer, 0, b"HOSTS")
    assert env.fs.read(reader, 0, 100) == b"HOSTS\n"
    env.fs.release(reader)
    env.fs.release(writer)


def test_unlink_of_a_lower_file_writes_a_chardev_whiteout(env: Env) -> None:
    env.fs.unlink(ROOT_INO, b"gone")
    st = (env.upper_dir / "gone").lstat()
    assert stat.S_ISCHR(st.st_mode)
    assert st.st_rdev == 0
    with pytest.raises(FileNotFoundError):
        env.fs.lookup(ROOT_INO, b"gone")
    # creating it again replaces the whiteout
    fh, node = env.fs.create(ROOT_INO, b"gone", 0o600, os.O_WRONLY, 1000, 1000)
    env.fs.release(fh)
    st = (env.upper_dir / "gone").lstat()
    assert stat.S_ISREG(st.st_mode)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o600)
    assert node.lookups == 1


def test_oci_whiteout_format(tmp_path: Path) -> None:
    e = Env(tmp_path, oci=True)
    try:
        e.fs.unlink(ROOT_INO, b"gone")
        assert (e.upper_dir / ".wh.gone").is_file()
        assert not (e.upper_dir / "gone").exists()
        etc = e.walk("etc")
        e.fs.unlink(etc.ino, b"hosts")
        assert (e.upper_dir / "etc/.wh.hosts").is_file()
        fh, _ = e.fs.create(ROOT_INO, b"gone", 0o644, os.O_WRONLY, 0, 0)
        e.fs.release(fh)
        assert not (e.upper_dir / ".wh.gone").exists()
    finally:
        e.close()


def test_mkdir_over_a_removed_lower_dir_is_opaque(env: Env) -> None:
    lib = env.walk("var/lib")
    env.fs.unlink(lib.ino, b"db")
    var = env.walk("var")
    env.fs.rmdir(var.ino, b"lib")
    assert stat.S_ISCHR((env.upper_dir / "var/lib").lstat().st_mode)
    node = env.fs.mkdir(var.ino, b"lib", 0o755, 0, 0)
    assert os.getxattr(env.upper_dir / "var/lib", "trusted.overlay.opaque") == b"y"
    # The xattr alone: kernel overlayfs would list an OCI marker beside it.
    assert not (env.upper_dir / "var/lib/.wh..wh..opq").exists()
    fh = env.fs.opendir(node.ino)
    assert [n for n, _, _ in env.fs.readdir(fh, 0)] == [b".", b".."]
    env.fs.releasedir(fh)


def test_opaque_marker_only_in_oci_mode(tmp_path: Path) -> None:
    """With OCI whiteouts an opaque directory also gets ``.wh..wh..opq`` (and the
    xattr); the directory keeps its times."""
    e = Env(tmp_path, oci=True)
    try:
        lib = e.walk("var/lib")
        e.fs.unlink(lib.ino, b"db")
        var = e.walk("var")
        e.fs.rmdir(var.ino, b"lib")
        e.fs.mkdir(var.ino, b"lib", 0o755, 0, 0)
        made = e.upper_dir / "var/lib"
        assert (made / ".wh..wh..opq").is_file()
        assert os.getxattr(made, "trusted.overlay.opaque") == b"y"
        assert list(e.fs.listxattr(e.walk("var/lib").ino)) == []
    finally:
        e.close()


def test_mknod_of_a_whiteout_device_is_refused(env: Env) -> None:
    """As overlayfs: a character device 0/0 is what a whiteout is made of."""
    with pytest.raises(OSError) as e:
        env.fs.mknod(ROOT_INO, b"wh", stat.S_IFCHR | 0o600, 0, 0, 0)
    assert e.value.errno == errno.EPERM
    assert not (env.upper_dir / "wh").exists()
    env.fs.mknod(ROOT_INO, b"null", stat.S_IFCHR | 0o666, os.makedev(1, 3), 0, 0)
    assert (env.upper_dir / "null").lstat().st_rdev == os.makedev(1, 3)


def test_rmdir_of_a_merged_non_empty_dir(env: Env) -> None:
    with pytest.raises(OSError) as e:
        env.fs.rmdir(ROOT_INO, b"etc")
    assert e.value.errno == errno.ENOTEMPTY


def test_rename_of_a_lower_file_leaves_a_whiteout(env: Env) -> None:
    etc = env.walk("etc")
    ino = env.ino("etc/hosts")
    env.fs.rename(etc.ino, b"hosts", ROOT_INO, b"hosts2", 0)
    assert stat.S_ISCHR((env.upper_dir / "etc/hosts").lstat().st_mode)
    assert (env.upper_dir / "hosts2").read_bytes() == b"hosts\n"
    assert env.walk("hosts2").ino == ino


def test_rename_of_a_dir_with_lower_content_is_exdev_without_redirects(env: Env) -> None:
    env.fs.redirect_dir = False  # the mount option redirect_dir=off
    with pytest.raises(OSError) as e:
        env.fs.rename(ROOT_INO, b"var", ROOT_INO, b"var2", 0)
    assert e.value.errno == errno.EXDEV


def test_reserved_and_long_names(env: Env) -> None:
    for name, code in ((b".wh.x", errno.EINVAL), (b"n" * 256, errno.ENAMETOOLONG)):
        with pytest.raises(OSError) as e:
            env.fs.mkdir(ROOT_INO, name, 0o755, 0, 0)
        assert e.value.errno == code
    env.fs.mkdir(ROOT_INO, b"n" * 255, 0o755, 0, 0)


def test_setattr_copies_up_metadata_only_change(env: Env) -> None:
    link = env.walk("link")
    env.fs.setattr(link.ino, None, uid=5, gid=6, mtime_ns=1_000_000_123)
    st = (env.upper_dir / "link").lstat()
    assert stat.S_ISLNK(st.st_mode)
    assert os.readlink(env.upper_dir / "link") == "etc/motd"
    assert (st.st_uid, st.st_gid, st.st_mtime_ns) == (5, 6, 1_000_000_123)


def test_a_second_mount_of_the_same_upper_is_refused(env: Env) -> None:
    with pytest.raises(OSError) as e:
        env.open()
    assert e.value.errno == errno.EBUSY


def test_interrupted_copy_up_leftovers_are_cleared(env: Env) -> None:
    leftover = env.work_dir / WORK_SUBDIR / "#1.0"
    leftover.write_bytes(b"partial")
    env.close()
    again = env.open()
    env.close(again)
    assert list((env.work_dir / WORK_SUBDIR).iterdir()) == []


def test_copy_data_keeps_holes(tmp_path: Path) -> None:
    src = tmp_path / "sparse"
    with open(src, "wb") as f:
        f.seek(64 << 20)
        f.write(b"end")
        f.seek(0)
        f.write(b"start")
    dst = tmp_path / "copy"
    with open(src, "rb") as s, open(dst, "wb") as d:
        copy_data(s.fileno(), d.fileno(), src.stat().st_size)
    assert dst.read_bytes() == src.read_bytes()
    assert dst.stat().st_blocks * 512 < 4 << 20  # not 64 MiB of zeros


def test_lowers_never_change(tmp_path: Path) -> None:
    e = Env(tmp_path)
    before = [snapshot(p) for p in e.lowers]
    try:
        etc = e.walk("etc")
        e.fs.setxattr(etc.ino, b"user.x", b"1")
        e.fs.unlink(etc.ino, b"hosts")
        fh = e.fs.open(e.ino("etc/motd"), os.O_WRONLY | os.O_TRUNC)
        e.fs.release(fh)
        e.fs.setattr(e.ino("var/lib/db"), None, mode=0o600, size=0)
        e.fs.symlink(ROOT_INO, b"s", b"/x", 0, 0)
    finally:
        e.close()
    assert [snapshot(p) for p in e.lowers] == before


def test_whiteout_in_a_lower_layer_hides_until_recreated(tmp_path: Path) -> None:
    stack: list[Layer] = [[Whiteout("a/f")], [File("a/f", b"old"), File("a/g")]]
    lowers = build_stack(stack, tmp_path / "l", "chardev")
    (tmp_path / "u").mkdir()
    (tmp_path / "w").mkdir()
    layers = [FsLayer.open(i, p) for i, p in enumerate([tmp_path / "u", *lowers])]
    fs = UnionFS(layers, upper=Upper.open(layers[0], tmp_path / "w", oci_whiteouts=False))
    try:
        a = fs.lookup(ROOT_INO, b"a")
        with pytest.raises(FileNotFoundError):
            fs.lookup(a.ino, b"f")
        fh, _ = fs.create(a.ino, b"f", 0o644, os.O_WRONLY, 0, 0)
        fs.write(fh, 0, b"new")
        fs.release(fh)
        f = fs.lookup(a.ino, b"f")
        fh = fs.open(f.ino, os.O_RDONLY)
        assert fs.read(fh, 0, 10) == b"new"
        fs.release(fh)
    finally:
        fs.close()
        for la in layers:
            la.close()


FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


def test_fallocate_modes_on_a_copied_up_file(env: Env) -> None:
    """fallocate on a file open for writing (so copied up): mode 0 extends it,
    KEEP_SIZE allocates without changing the size, PUNCH_HOLE zeroes a range."""
    motd = env.walk("etc/motd")
    fh = env.fs.open(motd.ino, os.O_RDWR)
    try:
        env.fs.fallocate(fh, 0, 0, 8192)
        assert os.fstat(fh).st_size == 8192
        env.fs.fallocate(fh, FALLOC_FL_KEEP_SIZE, 8192, 65536)
        st = os.fstat(fh)
        assert st.st_size == 8192 and st.st_blocks * 512 >= 8192 + 65536
        env.fs.fallocate(fh, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 2)
        assert env.fs.read(fh, 0, 5) == b"\0\0d\n\0"
        with pytest.raises(OSError) as e:
            env.fs.fallocate(fh, FALLOC_FL_PUNCH_HOLE, 0, 2)  # needs KEEP_SIZE
        assert e.value.errno == errno.EOPNOTSUPP
    finally:
        env.fs.release(fh)
    assert (env.upper_dir / "etc/motd").stat().st_size == 8192
    assert (env.lowers[0] / "etc/motd").read_bytes() == b"mid\n"
