"""The filesystem semantics called directly, with no FUSE mount."""

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.support.stack import FORMATS, Dir, File, Format, Layer, Symlink, Whiteout, build_stack
from unionfs.fs.inodes import ROOT_INO, Node
from unionfs.fs.layer import Layer as FsLayer
from unionfs.fs.vfs import UnionFS

STACK: list[Layer] = [
    [  # top
        File("etc/motd", b"top motd\n"),
        Whiteout("etc/old.conf"),
        Dir("srv", opaque=True),
        File("srv/new", b"new"),
        Whiteout("var"),
    ],
    [  # middle
        File("etc/extra.conf", b"extra"),
        Dir("etc/sub"),
        File("srv/middle-only"),
    ],
    [  # bottom
        File("etc/motd", b"bottom motd\n"),
        File("etc/old.conf", b"old"),
        File("etc/sub/deep", b"deep"),
        File("srv/old"),
        Dir("var/lib"),
        Symlink("link", "etc/motd"),
        Symlink("escape", "/etc"),
    ],
]


def open_fs(dirs: Sequence[Path], fd_cache_size: int = 1024) -> UnionFS:
    return UnionFS([FsLayer.open(i, d) for i, d in enumerate(dirs)], fd_cache_size=fd_cache_size)


@pytest.fixture(params=FORMATS)
def fmt(request: pytest.FixtureRequest) -> Format:
    value: Format = request.param
    return value


@pytest.fixture
def fs(tmp_path: Path, fmt: Format) -> Iterator[UnionFS]:
    u = open_fs(build_stack(STACK, tmp_path / "layers", fmt))
    yield u
    u.close()
    for layer in u.layers:
        layer.close()


def walk(fs: UnionFS, path: str) -> Node:
    node = fs.inodes.root
    for part in path.split("/"):
        node = fs.lookup(node.ino, part.encode())
    return node


def names(fs: UnionFS, node: Node) -> set[bytes]:
    fh = fs.opendir(node.ino)
    try:
        return {name for name, _, _ in fs.readdir(fh, 0)} - {b".", b".."}
    finally:
        fs.releasedir(fh)


def test_root_listing_applies_whiteouts(fs: UnionFS) -> None:
    assert names(fs, fs.inodes.root) == {b"etc", b"srv", b"link", b"escape"}


def test_upper_file_wins_and_reads(fs: UnionFS) -> None:
    node = walk(fs, "etc/motd")
    fh = fs.open(node.ino, os.O_RDONLY)
    try:
        assert fs.read(fh, 0, 100) == b"top motd\n"
    finally:
        fs.release(fh)


def test_merged_dir(fs: UnionFS) -> None:
    etc = walk(fs, "etc")
    assert names(fs, etc) == {b"motd", b"extra.conf", b"sub"}
    assert [c.layer for c in etc.copies] == [0, 1, 2]
    assert fs.link_count(etc) == 1  # as overlayfs reports merged directories
    assert walk(fs, "etc/sub/deep").copies[0].layer == 2


def test_whiteouts_hide_and_are_never_shown(fs: UnionFS) -> None:
    for path in ("etc/old.conf", "var", "var/lib"):
        with pytest.raises(FileNotFoundError):
            walk(fs, path)
    root = fs.inodes.root
    for reserved in (b".wh.var", b".wh..wh..opq", b".wh.etc"):
        with pytest.raises(FileNotFoundError):
            fs.lookup(root.ino, reserved)


def test_opaque_dir_cuts_off_lower_layers(fs: UnionFS) -> None:
    srv = walk(fs, "srv")
    assert names(fs, srv) == {b"new"}
    assert [c.layer for c in srv.copies] == [0]
    with pytest.raises(FileNotFoundError):
        walk(fs, "srv/old")


def test_symlinks_are_content_not_paths(fs: UnionFS) -> None:
    node = walk(fs, "escape")
    assert stat.S_ISLNK(node.st.st_mode)
    assert fs.readlink(node.ino) == b"/etc"
    with pytest.raises(NotADirectoryError):
        fs.lookup(node.ino, b"passwd")
    with pytest.raises(OSError) as e:
        fs.open(node.ino, os.O_RDONLY)
    assert e.value.errno == errno.ELOOP  # O_NOFOLLOW: never opens the target


def test_ino_is_stable_across_instances_and_unique(tmp_path: Path) -> None:
    dirs = build_stack(STACK, tmp_path / "layers", "chardev")
    paths = ["etc", "etc/motd", "etc/extra.conf", "etc/sub", "etc/sub/deep", "srv", "link"]
    first = open_fs(dirs)
    inos = [walk(first, p).ino for p in paths]
    second = open_fs(dirs)
    assert [walk(second, p).ino for p in paths] == inos
    assert len(set(inos)) == len(inos)
    assert ROOT_INO not in inos


def test_readdir_offsets_resume_without_repeats(fs: UnionFS) -> None:
    etc = walk(fs, "etc")
    fh = fs.opendir(etc.ino)
    try:
        seen: list[bytes] = []
        offset = 0
        while True:
            batch = list(fs.readdir(fh, offset))[:2]
            if not batch:
                break
            for name, _node, next_id in batch:
                seen.append(name)
                offset = next_id
        assert sorted(seen) == sorted([b".", b"..", b"motd", b"extra.conf", b"sub"])
    finally:
        fs.releasedir(fh)


@pytest.mark.allow_warnings
def test_lookup_counts_and_forget(fs: UnionFS) -> None:
    etc = walk(fs, "etc")
    motd = fs.lookup(etc.ino, b"motd")
    again = fs.lookup(etc.ino, b"motd")
    assert motd is again
    assert motd.lookups == 2
    fs.forget([(motd.ino, 1)])
    assert fs.inodes.find(motd.ino) is motd
    fs.forget([(motd.ino, 1)])
    assert fs.inodes.find(motd.ino) is None
    with pytest.raises(OSError) as e:
        fs.node(motd.ino)
    assert e.value.errno == errno.ESTALE


def test_readdir_counts_only_returned_entries(fs: UnionFS) -> None:
    etc = walk(fs, "etc")
    before = len(fs.inodes)
    fh = fs.opendir(etc.ino)
    entries = list(fs.readdir(fh, 0))
    returned = entries[:3]  # ".", "..", and one real name
    for name, node, _ in returned:
        fs.entry_returned(name, node)
    fs.entry_not_returned(entries[3][1])
    fs.releasedir(fh)
    assert len(fs.inodes) == before + 1
    assert returned[2][1].lookups == 1


def test_memory_stays_bounded_over_repeated_walks(tmp_path: Path) -> None:
    layer: Layer = [File(f"d{i % 20}/f{i}", b"x") for i in range(2000)]
    dirs = build_stack([layer, [Dir("d0")]], tmp_path / "layers", "chardev")
    fs = open_fs(dirs, fd_cache_size=8)
    for _ in range(3):
        held: list[tuple[int, int]] = []
        for d in range(20):
            dnode = fs.lookup(ROOT_INO, f"d{d}".encode())
            held.append((dnode.ino, 1))
            fh = fs.opendir(dnode.ino)
            for name, node, _ in fs.readdir(fh, 0):
                fs.entry_returned(name, node)
                if name not in (b".", b".."):
                    held.append((node.ino, 1))
            fs.releasedir(fh)
        assert len(fs.inodes) == 1 + 20 + 2000
        fs.forget(held)
        assert len(fs.inodes) == 1
        assert len(fs._fds) <= 8


def test_xattrs_hide_overlay_private_names(tmp_path: Path) -> None:
    stack: list[Layer] = [
        [File("f", xattrs={"user.app": b"v\xff", "trusted.overlay.origin": b"x"})],
        [Dir("d", opaque=True)],
    ]
    fs = open_fs(build_stack(stack, tmp_path / "layers", "xattr"))
    f = walk(fs, "f")
    assert fs.listxattr(f.ino) == (b"user.app",)
    assert fs.getxattr(f.ino, b"user.app") == b"v\xff"
    for hidden in (b"trusted.overlay.origin", b"user.missing"):
        with pytest.raises(OSError) as e:
            fs.getxattr(f.ino, hidden)
        assert e.value.errno == errno.ENODATA
    d = walk(fs, "d")
    assert fs.listxattr(d.ino) == ()


def test_long_names(fs: UnionFS) -> None:
    with pytest.raises(OSError) as e:
        fs.lookup(ROOT_INO, b"x" * 256)
    assert e.value.errno == errno.ENAMETOOLONG
    with pytest.raises(FileNotFoundError):
        fs.lookup(ROOT_INO, b"x" * 255)


def test_writes_are_refused(fs: UnionFS) -> None:
    node = walk(fs, "etc/motd")
    for flags in (os.O_WRONLY, os.O_RDWR, os.O_RDONLY | os.O_TRUNC):
        with pytest.raises(OSError) as e:
            fs.open(node.ino, flags)
        assert e.value.errno == errno.EROFS
