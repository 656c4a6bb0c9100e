"""``user.containers.override_stat``: the value format, the stat a mount shows
for it, chown/chmod recorded in it, copy-up carrying it, and a committed layer's
tar headers taken from it. FUSE-free (the daemon's semantics called directly)."""

import errno
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from unionfs.fs import overridestat
from unionfs.fs.inodes import Node
from unionfs.fs.layer import Layer
from unionfs.fs.upper import Upper
from unionfs.fs.vfs import UnionFS
from unionfs.image.layerwriter import write_layer

XATTR = overridestat.XATTR


def test_values_parse_and_format_as_containers_storage_writes_them() -> None:
    assert overridestat.format_value(123, 456, stat.S_IFREG | 0o4755) == b"123:456:04755:file"
    assert overridestat.format_value(0, 0, stat.S_IFDIR | 0o755) == b"0:0:0755:dir"
    dev = os.makedev(1, 3)
    assert overridestat.format_value(0, 5, stat.S_IFCHR | 0o666, dev) == b"0:5:0666:char-1-3"
    assert overridestat.parse(b"123:456:04755:file") == overridestat.Override(
        123, 456, 0o4755, stat.S_IFREG
    )
    # fuse-overlayfs's own writer: no leading 0, no type.
    assert overridestat.parse(b"1:2:755") == overridestat.Override(1, 2, 0o755)
    assert overridestat.parse(b"0:0:0600:block-8-1") == overridestat.Override(
        0, 0, 0o600, stat.S_IFBLK, os.makedev(8, 1)
    )
    for bad in (b"", b"1:2", b"a:2:0755", b"1:2:0999", b"1:2:010000", b"1:2:0755:tape",
                b"-1:2:0755", b"1:2:3:4:5", b"0:0:0600:char-4096-0"):  # fmt: skip
        assert overridestat.parse(bad) is None, bad


def test_the_shown_stat_takes_owner_and_bits_and_keeps_the_type(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"data")
    st = os.lstat(f)
    shown = overridestat.shown(st, b"123:456:04755:file")
    assert (shown.st_uid, shown.st_gid, shown.st_mode) == (123, 456, stat.S_IFREG | 0o4755)
    assert shown.st_size == 4
    # A directory stays a directory whatever the value says.
    d = os.lstat(tmp_path)
    assert stat.S_ISDIR(overridestat.shown(d, b"1:1:0700:file").st_mode)
    # A regular file that stands for a device node shows as the device.
    dev = overridestat.shown(st, b"0:0:0620:char-4-1")
    assert stat.S_ISCHR(dev.st_mode) and dev.st_rdev == os.makedev(4, 1) and dev.st_size == 0
    # Nothing to apply: the lstat itself; a symlink never takes one.
    assert overridestat.shown(st, None) is st
    assert overridestat.shown(st, b"garbage") is st
    (tmp_path / "s").symlink_to("f")
    sl = os.lstat(tmp_path / "s")
    assert overridestat.shown(sl, b"1:1:0700") is sl


class Env:
    """A rootless-style lower layer (root marked, entries recorded) under an upper."""

    def __init__(self, root: Path, *, mark: bool = True) -> None:
        self.lower = root / "lower"
        (self.lower / "bin").mkdir(parents=True)
        (self.lower / "bin/su").write_bytes(b"su")
        (self.lower / "secret").write_bytes(b"s")
        (self.lower / "plain").write_bytes(b"p")
        (self.lower / "tty0").write_bytes(b"")
        (self.lower / "link").symlink_to("plain")
        os.setxattr(self.lower / "bin", XATTR, b"0:0:0755:dir")
        os.setxattr(self.lower / "bin/su", XATTR, b"123:456:04755:file")
        os.setxattr(self.lower / "secret", XATTR, b"123:456:0600:file")
        os.setxattr(self.lower / "tty0", XATTR, b"0:5:0620:char-4-0")
        if mark:
            os.setxattr(self.lower, XATTR, overridestat.value_of(os.lstat(self.lower)))
        self.upper = root / "upper"
        self.work = root / "work"
        self.upper.mkdir()
        self.work.mkdir()
        self.fs = self.open()

    def open(self, *, override_stat: bool = False) -> UnionFS:
        layers = [Layer.open(0, self.upper), Layer.open(1, self.lower)]
        upper = Upper.open(layers[0], self.work, oci_whiteouts=False)
        return UnionFS(layers, upper=upper, override_stat=override_stat)

    def close(self, fs: UnionFS) -> None:
        fs.close()
        assert fs.upper is not None
        fs.upper.close()
        for la in fs.layers:
            la.close()

    def walk(self, path: str) -> Node:
        node = self.fs.inodes.root
        for part in path.split("/"):
            node = self.fs.lookup(node.ino, part.encode())
        return node


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    try:
        yield e
    finally:
        e.close(e.fs)


def test_a_marked_layer_shows_the_recorded_owners(env: Env) -> None:
    su = env.walk("bin/su").st
    assert (su.st_uid, su.st_gid, su.st_mode) == (123, 456, stat.S_IFREG | 0o4755)
    assert env.walk("bin").st.st_mode == stat.S_IFDIR | 0o755
    tty = env.walk("tty0").st
    assert stat.S_ISCHR(tty.st_mode) and tty.st_rdev == os.makedev(4, 0) and tty.st_gid == 5
    plain = env.walk("plain").st
    assert (plain.st_uid, plain.st_gid) == (os.getuid(), os.getgid())  # nothing recorded
    # Listing (readdirplus) shows the same nodes.
    listed = dict(env.fs.list_dir(env.walk("bin")))
    assert listed[b"su"].st.st_uid == 123


def test_the_record_is_hidden_and_cannot_be_set_through_the_mount(env: Env) -> None:
    su = env.walk("bin/su")
    assert XATTR not in env.fs.listxattr(su.ino)
    with pytest.raises(OSError) as e:
        env.fs.getxattr(su.ino, XATTR)
    assert e.value.errno == errno.ENODATA
    with pytest.raises(OSError) as e:
        env.fs.setxattr(su.ino, XATTR, b"0:0:04777:file")
    assert e.value.errno == errno.EPERM


def test_an_unmarked_layer_is_read_only_when_asked(tmp_path: Path) -> None:
    e = Env(tmp_path, mark=False)
    try:
        assert e.walk("bin/su").st.st_uid == os.getuid()
        e.close(e.fs)
        e.fs = e.open(override_stat=True)  # xattr_permissions=2
        assert e.walk("bin/su").st.st_uid == 123
        # chown and chmod go to a record even of a file without one, even as root.
        plain = e.walk("plain")
        e.fs.setattr(plain.ino, None, uid=9, gid=10, mode=0o4700)
        assert os.lstat(e.upper / "plain").st_uid == os.getuid()
        assert os.getxattr(e.upper / "plain", XATTR) == b"9:10:04700:file"
        assert e.fs.getattr(plain.ino).st.st_mode == stat.S_IFREG | 0o4700
    finally:
        e.close(e.fs)


def test_chown_and_chmod_go_to_the_record_and_copy_up_carries_it(env: Env) -> None:
    su = env.walk("bin/su")
    env.fs.setattr(su.ino, None, uid=7)
    st = env.walk("bin/su").st
    # chown clears the set-id bits, as chown(2).
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (7, 456, 0o755)
    disk = os.lstat(env.upper / "bin/su")
    assert disk.st_uid == os.getuid()  # the file itself keeps the writer's owner
    assert os.getxattr(env.upper / "bin/su", XATTR) == b"7:456:0755:file"
    # A write copies up with the record: the owner stays.
    secret = env.walk("secret")
    fh = env.fs.open(secret.ino, os.O_WRONLY)
    env.fs.write(fh, 0, b"S")
    env.fs.release(fh)
    assert os.getxattr(env.upper / "secret", XATTR) == b"123:456:0600:file"
    st = env.fs.getattr(secret.ino).st
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (123, 0o600)
    env.fs.setattr(secret.ino, None, mode=0o640)
    assert os.getxattr(env.upper / "secret", XATTR) == b"123:456:0640:file"
    # The upper is marked as a layer with records (for fuse-overlayfs).
    assert os.getxattr(env.upper, XATTR) == overridestat.value_of(os.lstat(env.upper))
    # The copied-up parent directory carried its record too.
    assert os.getxattr(env.upper / "bin", XATTR) == b"0:0:0755:dir"
    # A remount reads the records back.
    env.close(env.fs)
    env.fs = env.open()
    assert env.walk("secret").st.st_mode == stat.S_IFREG | 0o640
    assert env.walk("bin/su").st.st_uid == 7


def _members(layer_dir: Path) -> dict[str, tarfile.TarInfo]:
    buf = io.BytesIO()
    write_layer(layer_dir, buf, compression="none")
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        return {m.name.rstrip("/"): m for m in tar.getmembers()}


def test_a_written_layer_has_the_recorded_owners_and_devices(env: Env) -> None:
    env.fs.setattr(env.walk("bin/su").ino, None, mode=0o4750)
    members = _members(env.upper)
    su = members["bin/su"]
    assert (su.uid, su.gid, su.mode) == (123, 456, 0o4750)
    assert members["bin"].isdir() and (members["bin"].uid, members["bin"].mode) == (0, 0o755)
    assert not any("override_stat" in k for m in members.values() for k in m.pax_headers)
    lower = _members(env.lower)
    tty = lower["tty0"]
    assert tty.ischr() and (tty.devmajor, tty.devminor, tty.gid, tty.mode) == (4, 0, 5, 0o620)
    assert lower["secret"].mode == 0o600 and lower["plain"].uid == os.getuid()
