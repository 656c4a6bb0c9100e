"""Layers and archives built to hurt: sparse files, full disks, numbers out of
range, deep trees, archives of very many members. Each is built here, small
(holes and thresholds stand in for gigabytes), and must end in one clear error
or in the right tree, never in a traceback, a full disk or unbounded memory."""

from __future__ import annotations

import gc
import io
import os
import shutil
import subprocess
import tarfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.image.test_unpack import entry as member
from tests.image.test_unpack import file as tar_file
from tests.image.test_unpack import folder, make_tar, needs_root, unpack
from unionfs.errors import UnionfsError
from unionfs.fs.treewalk import remove_tree_at
from unionfs.image import sourcefiles
from unionfs.image.unpack import LayerError

DEPTH = 1200
"""More nested directories than Python's default recursion limit."""


@pytest.fixture
def dest(tmp_path: Path) -> Iterator[Path]:
    """An empty layer dir; removed after the test by our own iterative removal
    (pytest's recursive one fails on the deep trees made here)."""
    d = tmp_path / "box" / "layer"
    d.mkdir(parents=True)
    yield d
    fd = os.open(d.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        remove_tree_at(fd, d.name)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- sparse files

SPARSE_FORMATS = [
    pytest.param(["--format=gnu"], id="gnu"),
    pytest.param(["--format=posix", "--sparse-version=0.0"], id="pax-0.0"),
    pytest.param(["--format=posix", "--sparse-version=0.1"], id="pax-0.1"),
    pytest.param(["--format=posix", "--sparse-version=1.0"], id="pax-1.0"),
]


def _sparse_tar(tmp_path: Path, options: list[str], hole: int) -> bytes:
    """A tar (written by GNU tar, as docker and buildah layers carry them) of
    one sparse file: 4 KiB of data, a hole of `hole` bytes, 4 bytes of data."""
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "big", "wb") as f:
        f.write(b"h" * 4096)
        f.seek(4096 + hole)
        f.write(b"tail")
    out = tmp_path / "sparse.tar"
    subprocess.run(["tar", "-C", str(src), "-S", *options, "-cf", str(out), "big"], check=True)
    return out.read_bytes()


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs GNU tar")
@pytest.mark.parametrize("options", SPARSE_FORMATS)
def test_sparse_members_stay_sparse(tmp_path: Path, dest: Path, options: list[str]) -> None:
    hole = 256 << 20  # as zeros, 256 MiB; a layer could as well claim terabytes
    blob = _sparse_tar(tmp_path, options, hole)
    assert len(blob) < 64 << 10
    result = unpack(dest, blob)
    st = os.stat(dest / "big")
    assert st.st_size == 4096 + hole + 4
    assert st.st_blocks * 512 < 1 << 20  # the hole is a hole
    assert result.size == st.st_size  # the layer's apparent size
    with open(dest / "big", "rb") as f:
        assert f.read(4096) == b"h" * 4096
        f.seek(128 << 20)
        assert f.read(4096) == bytes(4096)
        f.seek(4096 + hole)
        assert f.read() == b"tail"


# --------------------------------------------------------------------------- free space


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_a_layer_is_refused_before_it_takes_the_reserve(dest: Path) -> None:
    size = 64 << 20
    blob = make_tar([tar_file("zeros", bytes(size))])
    reserve = _free(dest) - (4 << 20)  # 4 MiB to spare: the file cannot fit
    with pytest.raises(LayerError, match=r"free on the store's filesystem") as e:
        unpack(dest, blob, reserve=reserve)
    assert "\n" not in str(e.value)
    written = os.stat(dest / "zeros").st_blocks * 512 if (dest / "zeros").exists() else 0
    assert written < size // 2  # refused as it unpacked, not after


def test_no_reserve_check_without_a_reserve(dest: Path) -> None:
    unpack(dest, make_tar([tar_file("f", b"x" * 100_000)]), reserve=None)
    assert (dest / "f").stat().st_size == 100_000


# --------------------------------------------------------------------------- numbers


def _pax_ids(uid: int, gid: int) -> bytes:
    info = tarfile.TarInfo("f")
    info.uid, info.gid = uid, gid
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("uid", "gid", "shown"),
    [(2**32, 0, "uid 4294967296"), (0, 2**40, "gid 1099511627776"), (-1, 0, "uid -1"),
     (0, -5, "gid -5"), (2**32 - 1, 0, "uid 4294967295")],
)  # fmt: skip
def test_ids_out_of_range_refuse_the_layer(dest: Path, uid: int, gid: int, shown: str) -> None:
    with pytest.raises(LayerError, match=rf"f: {shown} is out of range"):
        unpack(dest, _pax_ids(uid, gid))


@needs_root
def test_device_numbers_out_of_range_refuse_the_layer(dest: Path) -> None:
    info = tarfile.TarInfo("dev/huge")
    info.type = tarfile.CHRTYPE
    info.devmajor, info.devminor = 2**40, 1
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info)  # GNU base-256 numbers hold 2^40
    with pytest.raises(LayerError, match=r"dev/huge: device 1099511627776,1 is out of range"):
        unpack(dest, buf.getvalue())


# --------------------------------------------------------------------------- deep trees


def test_a_deep_tree_replaced_by_a_file(dest: Path) -> None:
    deep = [folder("/".join(["a"] * i)) for i in range(1, DEPTH + 1)]
    blob = make_tar([*deep, member("a", data=b"now a file")])
    unpack(dest, blob)
    assert (dest / "a").read_bytes() == b"now a file"


def test_a_deep_tree_unpacks_with_its_metadata(dest: Path) -> None:
    deep = [folder("/".join(["d"] * i), mode=0o750) for i in range(1, DEPTH + 1)]
    result = unpack(dest, make_tar([*deep, tar_file("/".join(["d"] * DEPTH) + "/f", b"x")]))
    assert result.entries == DEPTH + 1
    fd = os.open(dest, os.O_RDONLY)
    try:
        for _ in range(DEPTH):
            assert os.stat("d", dir_fd=fd, follow_symlinks=False).st_mode & 0o7777 == 0o750
            nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        assert os.stat("f", dir_fd=fd).st_size == 1
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- many members


def _peak_while(fn: object) -> int:
    assert callable(fn)
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_layer_memory_does_not_grow_with_its_member_count(tmp_path: Path) -> None:
    """Unpacking keeps nothing per member (tarfile's member list, sizes by inode)."""

    def layer(n: int) -> bytes:
        return make_tar([tar_file(f"f{i}", b"x") for i in range(n)])

    small, large = layer(500), layer(20_500)

    def run(blob: bytes, name: str) -> None:
        d = tmp_path / name
        d.mkdir()
        unpack(d, blob)

    grown = _peak_while(lambda: run(large, "large")) - _peak_while(lambda: run(small, "small"))
    # (what remains is garbage awaiting the cycle collector: the same for any count)
    assert grown < 1_000_000, f"{grown} bytes more for 20,000 more members"


def test_archive_member_table_keeps_only_what_names_resolve_to(tmp_path: Path) -> None:
    """An image archive full of directories costs no memory per directory, and
    its table of files is bounded."""
    path = tmp_path / "many.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(20_000):
            info = tarfile.TarInfo(f"junk/{i}")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        info = tarfile.TarInfo("manifest.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"[]"))
    table: list[int] = []

    def open_it() -> None:
        with sourcefiles.open_files(path) as files:
            table.append(len(getattr(files, "members", {})))
            assert files.find("manifest.json") is not None
            assert files.find("junk/1") is None

    peak = _peak_while(open_it)
    assert table == [1]
    assert peak < 4 << 20, f"{peak} bytes for 20,000 directories"


def test_archive_with_too_many_files_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sourcefiles, "_MEMBER_LIMIT", 50)
    path = tmp_path / "many.tar"
    with tarfile.open(path, "w") as tar:
        for i in range(60):
            tar.addfile(tarfile.TarInfo(f"junk/{i}"), io.BytesIO())
    with (
        pytest.raises(UnionfsError, match="more than 50 files: not an image archive"),
        sourcefiles.open_files(path),
    ):
        pass
