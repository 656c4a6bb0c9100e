"""The unpacker: layer tars built here (and by umoci) unpacked into directories.

No mount is needed. Tests of what only root may do (device nodes, owners,
trusted.* attributes, overlayfs whiteouts) skip without root; one test runs the
unpacker as an unprivileged user to see what it does there.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard

from unionfs.fs import layer
from unionfs.fs.merge import Kind
from unionfs.image.decompress import detect_compression
from unionfs.image.extract import WhiteoutForm
from unionfs.image.unpack import LayerError, UnpackResult, unpack_layer

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root")
FORMS = [
    pytest.param("overlay", marks=needs_root, id="overlay"),
    pytest.param("oci", id="oci"),
]
T0 = 1_600_000_000
REPO = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- building tars


@dataclass
class Member:
    """One tar entry to write: its header and, for regular files, its data."""

    info: tarfile.TarInfo
    data: bytes = b""


def entry(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    *,
    data: bytes = b"",
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    mtime: int = T0,
    linkname: str = "",
    pax: dict[str, str] | None = None,
    devmajor: int = 0,
    devminor: int = 0,
) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.mtime = mtime
    info.linkname = linkname
    info.devmajor, info.devminor = devmajor, devminor
    info.size = len(data)
    info.pax_headers = dict(pax or {})
    return Member(info, data)


def file(name: str, data: bytes = b"", **kw: Any) -> Member:
    return entry(name, data=data, **kw)


def folder(name: str, mode: int = 0o755, **kw: Any) -> Member:
    return entry(name, tarfile.DIRTYPE, mode=mode, **kw)


def symlink(name: str, target: str, **kw: Any) -> Member:
    return entry(name, tarfile.SYMTYPE, linkname=target, mode=0o777, **kw)


def hardlink(name: str, target: str, **kw: Any) -> Member:
    return entry(name, tarfile.LNKTYPE, linkname=target, **kw)


def xattr(name: str, value: bytes) -> dict[str, str]:
    """A PAX record as tarfile wants it: str, raw bytes kept by surrogateescape."""
    return {"SCHILY.xattr." + name: value.decode("utf-8", "surrogateescape")}


def make_tar(members: list[Member], *, end_blocks: bool = True) -> bytes:
    """A PAX tar of `members`; without `end_blocks`, cut after the last member
    (as some writers do)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT,
                      encoding="utf-8", errors="surrogateescape") as tar:  # fmt: skip
        for m in members:
            tar.addfile(m.info, io.BytesIO(m.data) if m.data else None)
        end = tar.offset
    return buf.getvalue() if end_blocks else buf.getvalue()[:end]


def with_header_mode(tar: bytes, name: str, mode: int) -> bytes:
    """`tar` with the raw mode field of member `name` set to `mode`, type bits
    included (Python's tarfile masks them off when writing)."""
    out = bytearray(tar)
    for off in range(0, len(out), 512):
        if (
            out[off : off + 100].rstrip(b"\0") == name.encode()
            and out[off + 257 : off + 262] == b"ustar"
        ):
            out[off + 100 : off + 108] = b"%07o\0" % mode
            out[off + 148 : off + 156] = b" " * 8
            out[off + 148 : off + 156] = b"%06o\0 " % sum(out[off : off + 512])
            return bytes(out)
    raise AssertionError(f"no header for {name}")


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    d = tmp_path / "box" / "layer"
    d.mkdir(parents=True)
    return d


def unpack(dest: Path, blob: bytes, **kw: Any) -> UnpackResult:
    return unpack_layer(io.BytesIO(blob), dest, **kw)


# --------------------------------------------------------------------------- reading trees


def describe(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry below `root` (relative path -> type and what matters of it)."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath, name)
            st = path.lstat()
            rel = str(path.relative_to(root))
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", oct(mode))
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", path.read_bytes(), oct(mode))
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(path))
            elif stat.S_ISFIFO(st.st_mode):
                out[rel] = ("fifo", oct(mode))
            elif stat.S_ISCHR(st.st_mode):
                out[rel] = ("chr", os.major(st.st_rdev), os.minor(st.st_rdev))
            else:
                out[rel] = ("other",)
    return out


def observe(root: Path, rel: str) -> Kind:
    """How the mount's layer reader classifies `rel` in the layer dir `root`."""
    parent, _, name = rel.rpartition("/")
    fd = os.open(root / parent, layer.DIR_FLAGS)
    try:
        return layer.observe(0, fd, name.encode())[0].kind
    finally:
        os.close(fd)


def is_opaque(path: Path) -> bool:
    fd = os.open(path, layer.DIR_FLAGS)
    try:
        return layer.is_opaque_dir(fd)
    finally:
        os.close(fd)


def xattrs(path: Path) -> dict[str, bytes]:
    return {
        name: os.getxattr(path, name, follow_symlinks=False)
        for name in os.listxattr(path, follow_symlinks=False)
    }


# --------------------------------------------------------------------------- streams and digests


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x1f\x8b\x08\x00", "gzip"),
        (b"\x28\xb5\x2f\xfd", "zstd"),
        (b"\x50\x2a\x4d\x18", "zstd"),  # a skippable frame first, as pzstd writes
        (b"\x5f\x2a\x4d\x18", "zstd"),
        (b"etc/passwd\0\0", "none"),
        (b"\x1f", "none"),
        (b"", "none"),
        (b"\x28\xb5\x2f", "none"),
    ],
)
def test_detect_compression(head: bytes, expected: str) -> None:
    assert detect_compression(head) == expected


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "none": lambda b: b,
    "gzip": gz,
    "zstd": zstd,
}


@pytest.mark.parametrize("compression", COMPRESSORS)
def test_digests_and_result(dest: Path, compression: str) -> None:
    tar = make_tar([
        folder("etc"),
        file("etc/hosts", b"127.0.0.1 localhost\n"),
        file("big", os.urandom(3 << 20)),
        hardlink("big-again", "big"),
    ])  # fmt: skip
    blob = COMPRESSORS[compression](tar)
    seen: list[int] = []
    result = unpack(dest, blob, expected_digest=sha(blob), expected_diff_id=sha(tar),
                    progress=seen.append)  # fmt: skip
    assert result == UnpackResult(
        digest=sha(blob),
        diff_id=sha(tar),
        compression=compression,  # type: ignore[arg-type]
        size=20 + (3 << 20),
        entries=4,
        warnings=(),
    )
    assert seen and seen[-1] == len(blob) and seen == sorted(seen)


def test_plain_tar_is_told_by_its_bytes_not_its_label(dest: Path) -> None:
    """A layer labelled gzip that is a plain tar unpacks as one: the unpacker
    takes no media type at all, only the bytes."""
    tar = make_tar([file("a", b"x")])
    assert detect_compression(tar) == "none"
    assert unpack(dest, tar).compression == "none"
    assert (dest / "a").read_bytes() == b"x"


def test_stream_cut_between_members(dest: Path) -> None:
    """Cut where a member ends, a tar reads as one without end blocks (only the
    digests can tell); cut inside a header, it is refused."""
    tar = make_tar([file("first", b"1"), file("second", b"2")])
    assert unpack(dest, tar[:1024]).entries == 1
    assert [p.name for p in dest.iterdir()] == ["first"]
    shutil.rmtree(dest)
    dest.mkdir()
    with pytest.raises(LayerError, match=r"truncated tar header after first$"):
        unpack(dest, tar[:1124])


def test_missing_end_of_archive_blocks(dest: Path) -> None:
    tar = make_tar([folder("d"), file("d/f", b"data")], end_blocks=False)
    assert len(tar) % 10240 != 0 and tar[-1024:] != b"\0" * 1024
    result = unpack(dest, gz(tar), expected_diff_id=sha(tar))
    assert (dest / "d/f").read_bytes() == b"data"
    assert result.entries == 2


@pytest.mark.parametrize("compression", COMPRESSORS)
def test_data_after_the_archive_is_hashed(dest: Path, compression: str) -> None:
    """Padding after the end-of-archive blocks is part of the diff_id."""
    tar = make_tar([file("f", b"1")]) + b"\0" * 70000
    blob = COMPRESSORS[compression](tar)
    result = unpack(dest, blob)
    assert (result.digest, result.diff_id) == (sha(blob), sha(tar))


def test_gzip_members_and_zero_padding(dest: Path) -> None:
    """Concatenated gzip members are one stream (as gzip -d reads them); zeros
    after the last member are padding."""
    tar = make_tar([file("a", b"1" * 5000), file("b", b"2" * 5000)])
    blob = gz(tar[:3000]) + gz(tar[3000:]) + b"\0" * 100
    result = unpack(dest, blob)
    assert (dest / "b").read_bytes() == b"2" * 5000
    assert (result.digest, result.diff_id) == (sha(blob), sha(tar))


def test_zstd_frames(dest: Path) -> None:
    tar = make_tar([file("a", os.urandom(100000))])
    skippable = b"\x50\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"notes"
    blob = skippable + zstd(tar[:50000]) + skippable + zstd(tar[50000:])
    result = unpack(dest, blob)
    assert (result.compression, result.diff_id) == ("zstd", sha(tar))


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_member_per_file(dest: Path, compression: str) -> None:
    """eStargz and zstd:chunked layers compress each file as its own member."""
    tar = make_tar([file(f"d/f{i}", os.urandom(i % 3000)) for i in range(2000)])
    pieces = [tar[at : at + 1536] for at in range(0, len(tar), 1536)]
    blob = b"".join(COMPRESSORS[compression](piece) for piece in pieces)
    result = unpack(dest, blob)
    assert (result.entries, result.diff_id) == (2000, sha(tar))


@pytest.mark.parametrize("blob", [b"", make_tar([])], ids=["no-bytes", "end-blocks-only"])
def test_empty_layer(dest: Path, blob: bytes) -> None:
    result = unpack(dest, gz(blob))
    assert (result.entries, result.size, result.diff_id) == (0, 0, sha(blob))
    assert list(dest.iterdir()) == []


def test_digest_mismatch(dest: Path) -> None:
    tar = make_tar([file("a")])
    with pytest.raises(LayerError, match=r"^layer sha256:0{12}: digest mismatch: expected "
                       rf"sha256:0{{64}}, got {sha(tar)}$"):  # fmt: skip
        unpack(dest, tar, expected_digest="sha256:" + "0" * 64)


def test_diff_id_mismatch(dest: Path) -> None:
    tar = make_tar([file("a")])
    blob = gz(tar)
    with pytest.raises(LayerError, match=r"diff_id mismatch: expected sha256:1{64}"):
        unpack(dest, blob, expected_digest=sha(blob), expected_diff_id="sha256:" + "1" * 64)


def test_unsupported_digest(dest: Path) -> None:
    with pytest.raises(LayerError, match="unsupported digest 'sha512:"):
        unpack(dest, make_tar([]), expected_digest="sha512:" + "0" * 128)


def test_destination_must_be_empty(dest: Path) -> None:
    (dest / "left").touch()
    with pytest.raises(LayerError, match="is not empty"):
        unpack(dest, make_tar([file("a")]))


BIG = make_tar([file("first", b"1"), file("big", os.urandom(200000)), file("last", b"2")])


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (gz(BIG)[:-10], "truncated gzip stream"),
        (gz(BIG)[: len(gz(BIG)) // 2], "truncated gzip stream"),
        (gz(BIG)[:-4] + b"\0\0\0\0", "corrupt gzip stream"),  # wrong length in the trailer
        (gz(BIG) + b"garbage", "corrupt gzip stream"),
        (zstd(BIG)[:-3], "truncated zstd stream"),
        (zstd(BIG)[: len(zstd(BIG)) // 2], "truncated zstd stream"),
        (zstd(BIG) + b"garbage", "corrupt zstd stream"),
        (BIG[:100000], "truncated tar member big"),
        (BIG[:2000], "truncated tar member"),
        (b"this is not a tar file" * 30, "not a tar stream"),
        (b"BZh91AY&SY" + b"\0" * 600, "bzip2-compressed layers are not supported"),
    ],
    ids=["gzip-trailer", "gzip-half", "gzip-length", "gzip-garbage", "zstd-end",
         "zstd-half", "zstd-garbage", "tar-member", "tar-early", "not-tar", "bzip2"],
)  # fmt: skip
def test_broken_streams_are_refused(dest: Path, blob: bytes, message: str) -> None:
    with pytest.raises(LayerError, match=message) as caught:
        unpack(dest, blob)
    assert "\n" not in str(caught.value)


# --------------------------------------------------------------------------- entries and metadata


def test_types_and_contents(dest: Path) -> None:
    result = unpack(dest, make_tar([
        folder("./"),
        folder("bin"),
        file("bin/sh", b"#!/bin/sh\n", mode=0o755),
        hardlink("bin/bash", "bin/sh"),
        hardlink("./bin/dash", "/bin/sh"),
        symlink("bin/abs", "/etc/passwd"),
        symlink("bin/up", "../../../../outside"),
        symlink("bin/dot", "."),
        entry("run/fifo", tarfile.FIFOTYPE, mode=0o620),
        file("a/../b", b"normalised"),
        file("./c", b"dot-slash"),
        entry("weird", b"V"),  # a GNU volume header: nothing to create
    ]))  # fmt: skip
    assert describe(dest) == {
        "bin": ("dir", "0o755"),
        "bin/sh": ("file", b"#!/bin/sh\n", "0o755"),
        "bin/bash": ("file", b"#!/bin/sh\n", "0o755"),
        "bin/dash": ("file", b"#!/bin/sh\n", "0o755"),
        "bin/abs": ("symlink", "/etc/passwd"),
        "bin/up": ("symlink", "../../../../outside"),
        "bin/dot": ("symlink", "."),
        "run": ("dir", "0o755"),
        "run/fifo": ("fifo", "0o620"),
        "b": ("file", b"normalised", "0o644"),
        "c": ("file", b"dot-slash", "0o644"),
    }
    inodes = {(dest / "bin" / n).stat().st_ino for n in ("sh", "bash", "dash")}
    assert len(inodes) == 1 and (dest / "bin/sh").stat().st_nlink == 3
    assert result.size == 10 + 10 + 9  # sh (one hard-link group, counted once), b, c
    assert result.entries == 12
    assert result.warnings == ("skipped weird: unsupported tar entry type b'V'",)


def test_modes_owners_and_times(dest: Path) -> None:
    frac = {"mtime": f"{T0 + 7}.123456789"}
    tar = make_tar([
        folder(".", mode=0o751, mtime=T0 + 1),
        folder("tmp", mode=0o1777, mtime=T0 + 2),
        folder("shared", mode=0o2775, uid=1000, gid=1000, mtime=T0 + 3),
        file("shared/su", b"x", mode=0o4755, uid=1000, gid=1000, mtime=T0 + 4),
        file("shared/sg", b"y", mode=0o2711, uid=1000, gid=2000, mtime=T0 + 5),
        symlink("shared/link", "su", uid=1000, gid=1000, mtime=T0 + 6),
        file("shared/exact", pax=frac),
        folder("ro", mode=0o555, mtime=T0 + 8),
        file("ro/inside", b"written after its dir", mode=0o444),
        folder("ro/sub", mode=0o500),
        file("ro/sub/deep", b"deep", mode=0o400),
    ])  # fmt: skip
    # header modes with file-type bits, as some writers make them
    tar = with_header_mode(with_header_mode(tar, "./", 0o40751), "shared/su", 0o104755)
    unpack(dest, tar)
    want = {
        ".": (0o751, T0 + 1),
        "tmp": (0o1777, T0 + 2),
        "shared": (0o2775, T0 + 3),
        "shared/su": (0o4755, T0 + 4),
        "shared/sg": (0o2711, T0 + 5),
        "ro": (0o555, T0 + 8),
        "ro/inside": (0o444, T0),
        "ro/sub": (0o500, T0),
        "ro/sub/deep": (0o400, T0),
    }
    for rel, (mode, mtime) in want.items():
        st = (dest / rel).lstat()
        assert (rel, oct(stat.S_IMODE(st.st_mode)), st.st_mtime_ns) == (
            rel, oct(mode), mtime * 10**9)  # fmt: skip
        assert st.st_atime_ns == st.st_mtime_ns
    link = (dest / "shared/link").lstat()
    assert link.st_mtime_ns == (T0 + 6) * 10**9
    assert (dest / "shared/exact").stat().st_mtime_ns == (T0 + 7) * 10**9 + 123456789
    assert (dest / "ro/sub/deep").read_bytes() == b"deep"
    if IS_ROOT:
        owners = {rel: (p.lstat().st_uid, p.lstat().st_gid)
                  for rel in ("shared", "shared/su", "shared/sg", "shared/link", "tmp")
                  for p in [dest / rel]}  # fmt: skip
        assert owners == {
            "shared": (1000, 1000),
            "shared/su": (1000, 1000),
            "shared/sg": (1000, 2000),
            "shared/link": (1000, 1000),
            "tmp": (0, 0),
        }


def test_xattrs(dest: Path) -> None:
    result = unpack(dest, make_tar([
        folder("d", pax=xattr("user.dir", b"on a dir")),
        file("d/f", b"x",
             pax={**xattr("user.raw", b"\xff\xfe"), **xattr("user.text", b"caf\xc3\xa9")}),
        # the kernel allows user.* attributes on files and directories only
        symlink("d/l", "f", pax=xattr("user.on-link", b"1")),
    ]))  # fmt: skip
    assert xattrs(dest / "d") == {"user.dir": b"on a dir"}
    assert xattrs(dest / "d/f") == {"user.raw": b"\xff\xfe", "user.text": "café".encode()}
    assert xattrs(dest / "d/l") == {}
    assert result.warnings == ("xattr user.on-link of d/l not set: Operation not permitted",)


@needs_root
def test_privileged_xattrs_and_devices(dest: Path) -> None:
    # VFS_CAP_REVISION_2 | effective, permitted = cap_net_bind_service
    capability = b"\x01\x00\x00\x02" + b"\x00\x04\x00\x00" + b"\x00" * 12
    result = unpack(dest, make_tar([
        entry("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
        entry("dev/loop0", tarfile.BLKTYPE, mode=0o660, devmajor=7, devminor=0, gid=6),
        file("bin/ping", b"elf", mode=0o755, uid=0, gid=0,
             pax={**xattr("security.capability", capability), **xattr("trusted.note", b"t")}),
        symlink("bin/l", "ping", pax=xattr("trusted.on-link", b"\x00\x01")),
    ]))  # fmt: skip
    assert describe(dest)["dev/null"] == ("chr", 1, 3)
    loop = (dest / "dev/loop0").lstat()
    assert stat.S_ISBLK(loop.st_mode) and os.major(loop.st_rdev) == 7 and loop.st_gid == 6
    assert stat.S_IMODE(loop.st_mode) == 0o660
    assert xattrs(dest / "bin/ping") == {"security.capability": capability, "trusted.note": b"t"}
    assert xattrs(dest / "bin/l") == {"trusted.on-link": b"\x00\x01"}
    assert result.warnings == ()


def test_overlay_xattrs_in_the_tar_cannot_forge_bookkeeping(dest: Path) -> None:
    """A layer cannot forge overlay bookkeeping: opacity and whiteouts come from
    whiteout entries only. A file's own trusted.overlay.X is kept escaped (as
    overlayfs keeps it for a nested overlay); user.overlay.* is dropped."""
    result = unpack(dest, make_tar([
        folder("d", pax={**xattr("trusted.overlay.opaque", b"y"), **xattr("user.keep", b"1")}),
        file("w", pax=xattr("user.overlay.whiteout", b"y")),
    ]))  # fmt: skip
    assert xattrs(dest / "d") == {"user.keep": b"1", "trusted.overlay.overlay.opaque": b"y"}
    assert xattrs(dest / "w") == {}
    assert not is_opaque(dest / "d")
    assert observe(dest, "w") is Kind.NONDIR
    assert result.warnings == (
        "dropped xattr user.overlay.whiteout of w: overlay attributes come only from"
        " whiteout entries",
    )


def test_absolute_paths_are_made_relative(dest: Path) -> None:
    result = unpack(dest, make_tar([folder("/abs"), file("/abs/file", b"1"), file("//x", b"2")]))
    assert describe(dest) == {
        "abs": ("dir", "0o755"),
        "abs/file": ("file", b"1", "0o644"),
        "x": ("file", b"2", "0o644"),
    }
    assert result.warnings == (
        "absolute path /abs made relative",
        "absolute path /abs/file made relative",
        "absolute path //x made relative",
    )


def test_warnings_are_capped(dest: Path) -> None:
    result = unpack(dest, make_tar([file(f"/f{i}") for i in range(1003)]))
    assert len(result.warnings) == 1001
    assert result.warnings[-2:] == (
        "absolute path /f999 made relative",
        "... and 3 more warnings",
    )


# (id, entries, tree after)
DUPLICATES: list[tuple[str, list[Member], dict[str, tuple[object, ...]]]] = [
    ("file-file", [file("f", b"one"), file("f", b"two", mode=0o600)],
     {"f": ("file", b"two", "0o600")}),
    ("dir-dir-keeps-contents", [folder("d", mode=0o700), file("d/x"), folder("d", mode=0o750)],
     {"d": ("dir", "0o750"), "d/x": ("file", b"", "0o644")}),
    ("dir-file", [folder("d"), folder("d/e"), file("d/e/x"), file("d", b"now a file")],
     {"d": ("file", b"now a file", "0o644")}),
    ("file-dir", [file("d", b"a file"), folder("d", mode=0o711)], {"d": ("dir", "0o711")}),
    ("symlink-file", [symlink("s", "/etc/passwd"), file("s", b"f")],
     {"s": ("file", b"f", "0o644")}),
    ("symlink-dir", [symlink("s", "/etc"), folder("s"), file("s/x")],
     {"s": ("dir", "0o755"), "s/x": ("file", b"", "0o644")}),
    ("file-symlink", [file("s", b"f"), symlink("s", "t")], {"s": ("symlink", "t")}),
    ("file-as-parent", [file("p", b"f"), file("p/child", b"c")],
     {"p": ("dir", "0o755"), "p/child": ("file", b"c", "0o644")}),
    ("hardlink-then-new-file", [file("f", b"1"), hardlink("g", "f"), file("f", b"2")],
     {"f": ("file", b"2", "0o644"), "g": ("file", b"1", "0o644")}),
    ("relink", [file("f", b"1"), file("h", b"2"), hardlink("g", "f"), hardlink("g", "h")],
     {"f": ("file", b"1", "0o644"), "h": ("file", b"2", "0o644"), "g": ("file", b"2", "0o644")}),
]  # fmt: skip


@pytest.mark.parametrize(("entries", "tree"), [p[1:] for p in DUPLICATES],
                         ids=[p[0] for p in DUPLICATES])  # fmt: skip
def test_later_entries_replace_earlier(
    dest: Path, entries: list[Member], tree: dict[str, tuple[object, ...]]
) -> None:
    unpack(dest, make_tar(entries))
    assert describe(dest) == tree


def test_size_counts_what_is_left(dest: Path) -> None:
    result = unpack(dest, make_tar([
        file("a", b"1" * 100), file("a", b"2" * 10),  # replaced: 10 left
        file("b", b"3" * 5), hardlink("c", "b"), hardlink("d", "b"),
    ]))  # fmt: skip
    assert result.size == 15


def test_many_files(dest: Path) -> None:
    """Enough directories to cycle the cache of open directories."""
    members = [file(f"d{i % 150}/s{i % 7}/f{i}", str(i).encode()) for i in range(3000)]
    result = unpack(dest, make_tar(members))
    assert result.entries == 3000
    assert sum(len(files) for _, _, files in os.walk(dest)) == 3000
    assert (dest / "d149/s0/f749").read_bytes() == b"749"


def test_deep_paths(dest: Path) -> None:
    """Walks deeper than the cache of open directories, between the two walks a
    hard link needs."""
    deep, other = "/".join(["d"] * 300), "/".join(["e"] * 300)
    unpack(dest, make_tar([
        folder("x"),
        file(f"{deep}/f", b"deep"),
        file(f"{other}/f", b"other"),  # the deep directories leave the cache
        hardlink("x/shallow", f"{deep}/f"),
        file("x/top", b"top"),
        file(f"{other}/g", b"other"),
        hardlink(f"{deep}/g", "x/top"),
    ]))  # fmt: skip
    assert (dest / "x/shallow").read_bytes() == b"deep"
    assert (dest / deep / "g").read_bytes() == b"top"
    assert sorted(p.name for p in (dest / "x").iterdir()) == ["shallow", "top"]
    assert sorted(p.name for p in (dest / deep).iterdir()) == ["f", "g"]


def test_path_longer_than_path_max(dest: Path) -> None:
    with pytest.raises(LayerError, match=r"path is longer than 4095 bytes: a/a/a/"):
        unpack(dest, make_tar([file("a/" * 2048 + "f")]))


# --------------------------------------------------------------------------- whiteouts


@pytest.mark.parametrize("form", FORMS)
def test_whiteouts(dest: Path, form: WhiteoutForm) -> None:
    result = unpack(dest, make_tar([
        folder("etc"),
        # as writers make them: size 0, mode 0, a linkname, even the link type
        file("etc/.wh.passwd", mode=0, linkname="etc/.wh.old"),
        hardlink("etc/.wh.group", "etc/.wh.passwd", mode=0),
        file(".wh.gone-dir", mode=0),
        # the opaque marker before its directory's own entry
        file("usr/.wh..wh..opq", mode=0),
        folder("usr", mode=0o750, mtime=T0 + 9),
        file("usr/bin/tool", b"t"),
        file("var/.wh..wh..opq"),  # a directory the tar never names
    ]), whiteouts=form)  # fmt: skip
    tree = describe(dest)
    if form == "overlay":
        assert {k: v for k, v in tree.items() if v[0] == "chr"} == {
            "etc/passwd": ("chr", 0, 0),
            "etc/group": ("chr", 0, 0),
            "gone-dir": ("chr", 0, 0),
        }
        assert not [k for k in tree if ".wh." in k]
        assert xattrs(dest / "usr")["trusted.overlay.opaque"] == b"y"
        assert xattrs(dest / "var")["trusted.overlay.opaque"] == b"y"
    else:
        assert {k: v for k, v in tree.items() if ".wh." in k} == {
            "etc/.wh.passwd": ("file", b"", "0o0"),
            "etc/.wh.group": ("file", b"", "0o0"),
            ".wh.gone-dir": ("file", b"", "0o0"),
            "usr/.wh..wh..opq": ("file", b"", "0o0"),
            "var/.wh..wh..opq": ("file", b"", "0o644"),
        }
        assert "trusted.overlay.opaque" not in xattrs(dest / "usr")
    usr = (dest / "usr").stat()
    assert (stat.S_IMODE(usr.st_mode), usr.st_mtime_ns) == (0o750, (T0 + 9) * 10**9)
    assert (stat.S_IMODE((dest / "var").stat().st_mode)) == 0o755
    assert tree["usr/bin/tool"] == ("file", b"t", "0o644")
    # The mount's layer reader sees the same thing in either form.
    for name in ("etc/passwd", "etc/group", "gone-dir"):
        assert observe(dest, name) is Kind.WHITEOUT
    assert is_opaque(dest / "usr") and is_opaque(dest / "var") and not is_opaque(dest / "etc")
    assert result.warnings == ()


# (id, entries, what the reader sees at "a/x", whether a/x is opaque, a/x's tree entry)
SAME_LAYER: list[tuple[str, list[Member], Kind, bool]] = [
    ("file-then-whiteout", [file("a/x", b"1"), file("a/.wh.x")], Kind.WHITEOUT, False),
    ("tree-then-whiteout", [folder("a/x"), file("a/x/y"), file("a/.wh.x")], Kind.WHITEOUT, False),
    ("whiteout-then-file", [file("a/.wh.x"), file("a/x", b"kept")], Kind.NONDIR, False),
    ("whiteout-then-dir", [file("a/.wh.x"), folder("a/x"), file("a/x/y")], Kind.DIR, True),
    ("whiteout-then-child", [file("a/.wh.x"), file("a/x/y")], Kind.DIR, True),
    ("whiteout-twice", [file("a/.wh.x"), file("a/.wh.x", mode=0o600)], Kind.WHITEOUT, False),
]  # fmt: skip


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("entries", "kind", "opaque"), [p[1:] for p in SAME_LAYER],
                         ids=[p[0] for p in SAME_LAYER])  # fmt: skip
def test_whiteout_and_entry_of_one_name(
    dest: Path, form: WhiteoutForm, entries: list[Member], kind: Kind, opaque: bool
) -> None:
    """A whiteout hides lower layers; the later of a whiteout and a real entry of
    the same name wins, and a directory made over a whiteout is opaque (so the
    lower directory the whiteout hid stays hidden)."""
    unpack(dest, make_tar(entries), whiteouts=form)
    assert observe(dest, "a/x") is kind
    if kind is Kind.DIR:
        assert is_opaque(dest / "a/x") is opaque
        assert (dest / "a/x/y").is_file()
    if kind is Kind.NONDIR:
        assert (dest / "a/x").read_bytes() == b"kept"


@pytest.mark.parametrize("form", FORMS)
def test_names_that_are_not_whiteouts(dest: Path, form: WhiteoutForm) -> None:
    result = unpack(dest, make_tar([
        file(".wh..wh.aufs"),
        folder(".wh..wh.plnk"),
        file(".wh..wh.plnk/123.456"),
        file(".wh.."),
        file("d/.wh...", mode=0),
        file("d/.wh."),
        file("d/keep", b"k"),
    ]), whiteouts=form)  # fmt: skip
    assert describe(dest) == {"d": ("dir", "0o755"), "d/keep": ("file", b"k", "0o644")}
    assert result.warnings == (
        "skipped .wh..wh.aufs: not a whiteout of a valid name",
        "skipped .wh..wh.plnk: not a whiteout of a valid name",
        "skipped .wh..wh.plnk/123.456: inside a directory with a reserved .wh. name",
        "skipped .wh..: not a whiteout of a valid name",
        "skipped d/.wh...: not a whiteout of a valid name",
        "skipped d/.wh.: not a whiteout of a valid name",
    )


def test_default_whiteout_form(dest: Path) -> None:
    unpack(dest, make_tar([file(".wh.x")]))
    assert (dest / "x").exists() is IS_ROOT
    assert (dest / ".wh.x").exists() is not IS_ROOT


# --------------------------------------------------------------------------- hostile layers


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A directory next to the layer that no entry may reach; checked afterwards."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "f").write_bytes(b"untouched")
    before = describe(tmp_path / "outside"), (out / "f").stat().st_mtime_ns
    yield out
    assert (describe(out), (out / "f").stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box", "outside"]
    assert [p.name for p in (tmp_path / "box").iterdir()] == ["layer"]


# (id, entries given the outside dir, message)
HOSTILE: list[tuple[str, Callable[[str], list[Member]], str]] = [
    ("dotdot", lambda o: [file("../evil")], r"path escapes the layer: \.\./evil$"),
    ("dotdot-deep", lambda o: [folder("a"), file("a/../../evil")],
     r"path escapes the layer: a/\.\./\.\./evil$"),
    ("dotdot-absolute", lambda o: [file("/../evil")], r"path escapes the layer: /\.\./evil$"),
    ("dotdot-dir", lambda o: [folder("a/b/../../..")], "path escapes the layer"),
    ("symlink-parent", lambda o: [symlink("link", o), file("link/x", b"evil")],
     "parent of link/x is a symlink$"),
    ("symlink-up", lambda o: [symlink("up", ".."), file("up/x", b"evil")],
     "parent of up/x is a symlink$"),
    ("symlink-deep", lambda o: [folder("d"), symlink("d/l", o + "/.."), file("d/l/outside/f")],
     "parent of d/l/outside/f is a symlink$"),
    ("symlink-dir-entry", lambda o: [symlink("l", o), folder("l/sub")],
     "parent of l/sub is a symlink$"),
    ("symlink-whiteout", lambda o: [symlink("l", o), file("l/.wh.f")],
     r"parent of l/\.wh\.f is a symlink$"),
    ("symlink-opaque", lambda o: [symlink("l", o), file("l/.wh..wh..opq")],
     r"parent of l/\.wh\.\.wh\.\.opq is a symlink$"),
    ("symlink-fifo", lambda o: [symlink("l", o), entry("l/p", tarfile.FIFOTYPE)],
     "parent of l/p is a symlink$"),
    ("hardlink-escape", lambda o: [hardlink("h", "../../etc/passwd")],
     r"hard link h: target escapes the layer: \.\./\.\./etc/passwd$"),
    ("hardlink-absent", lambda o: [hardlink("h", "etc/passwd")],
     "hard link h: target etc/passwd is not in the layer$"),
    ("hardlink-through-symlink", lambda o: [symlink("l", o), hardlink("h", "l/f")],
     "hard link h: target l/f is not in the layer$"),
    ("hardlink-to-dir", lambda o: [folder("d"), hardlink("h", "d")],
     "hard link h: target d is a directory$"),
    ("nul", lambda o: [file("x", pax={"path": "a\0b"})], "path holds a NUL byte"),
]  # fmt: skip


@pytest.mark.parametrize(("build", "message"), [p[1:] for p in HOSTILE],
                         ids=[p[0] for p in HOSTILE])  # fmt: skip
def test_hostile_layers_are_refused(
    dest: Path, outside: Path, build: Callable[[str], list[Member]], message: str
) -> None:
    with pytest.raises(LayerError, match=message) as caught:
        unpack(dest, make_tar(build(str(outside))), expected_digest="sha256:" + "ab" * 32)
    assert str(caught.value).startswith("layer sha256:abababababab: ")
    assert "\n" not in str(caught.value)


def test_symlink_is_never_followed_when_replaced(dest: Path, outside: Path) -> None:
    """A later entry of a symlink's name replaces the symlink, it does not write
    where the symlink points."""
    unpack(dest, make_tar([
        symlink("f", str(outside / "f")),
        file("f", b"replaced"),
        symlink("d", str(outside)),
        folder("d", mode=0o700),
        hardlink("g", "f"),
    ]))  # fmt: skip
    assert describe(dest) == {
        "f": ("file", b"replaced", "0o644"),
        "g": ("file", b"replaced", "0o644"),
        "d": ("dir", "0o700"),
    }


# --------------------------------------------------------------------------- unprivileged


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory an unprivileged user can write (pytest's tmp dirs are root's)."""
    d = Path(tempfile.mkdtemp(prefix="unionfs-unpack-"))
    os.chown(d, 65534, 65534)
    try:
        yield d
    finally:
        shutil.rmtree(d)


def _others_can_reach(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o005 == 0o005 for p in [path, *path.parents])


@needs_root
@pytest.mark.skipif(not _others_can_reach(REPO), reason=f"{REPO} is private to its owner")
def test_unprivileged_unpack(nobody_dir: Path) -> None:
    """As an ordinary user: owners and modes recorded in
    user.containers.override_stat (a device node as an empty file recording
    it), whiteouts kept as OCI files, trusted.* refused with a warning,
    read-only dirs still filled."""
    (nobody_dir / "layer.tar").write_bytes(gz(make_tar([
        entry("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
        folder("ro", mode=0o555),
        file("ro/f", b"x", mode=0o4755, uid=1000, gid=1000),
        file("ro/.wh.gone", mode=0),
        file("t", pax=xattr("trusted.x", b"1")),
        file("forged", pax=xattr("user.containers.override_stat", b"0:0:04755:file")),
    ])))  # fmt: skip
    (nobody_dir / "layer").mkdir()
    os.chown(nobody_dir / "layer", 65534, 65534)
    code = (
        "import dataclasses, json, sys\n"
        "from unionfs.image.unpack import unpack_layer\n"
        "with open(sys.argv[1], 'rb') as f:\n"
        "    r = unpack_layer(f, sys.argv[2])\n"
        "print(json.dumps(dataclasses.asdict(r)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, nobody_dir / "layer.tar", nobody_dir / "layer"],
        user=65534, group=65534, extra_groups=[], cwd=REPO, env={"PYTHONPATH": str(REPO)},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    root = nobody_dir / "layer"
    # On disk: the user's own files, readable and writable by it, no set-id bits.
    assert describe(root) == {
        "dev": ("dir", "0o755"),
        "dev/null": ("file", b"", "0o666"),
        "ro": ("dir", "0o755"),
        "ro/f": ("file", b"x", "0o755"),
        "ro/.wh.gone": ("file", b"", "0o0"),
        "t": ("file", b"", "0o644"),
        "forged": ("file", b"", "0o644"),
    }
    assert (root / "ro/f").stat().st_uid == 65534
    recorded = {
        p: os.getxattr(root / p, "user.containers.override_stat")
        for p in ("dev/null", "ro", "ro/f", "t", "forged")
    }
    assert recorded == {
        "dev/null": b"0:0:0666:char-1-3",
        "ro": b"0:0:0555:dir",
        "ro/f": b"1000:1000:04755:file",
        "t": b"0:0:0644:file",
        "forged": b"0:0:0644:file",  # the header's, not the one the tar carried
    }
    # The layer root carries one too: it marks a rootless layer.
    assert os.getxattr(root, "user.containers.override_stat").startswith(b"65534:65534:0")
    assert "user.containers.override_stat" not in os.listxattr(root / "ro/.wh.gone")
    assert result["warnings"] == [
        "xattr trusted.x of t not set: Operation not permitted",
        "dropped xattr user.containers.override_stat of forged: owners are recorded only"
        " by a rootless unpack",
    ]


# --------------------------------------------------------------------------- a real writer


def umoci(*args: str | Path, cwd: Path) -> None:
    rootless = [] if IS_ROOT or args[0] != "unpack" else ["--rootless"]
    subprocess.run(["umoci", *args[:1], *rootless, *args[1:]], cwd=cwd, check=True,
                   capture_output=True)  # fmt: skip


def blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


@pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed")
@pytest.mark.parametrize("form", FORMS)
def test_umoci_layers(tmp_path: Path, form: WhiteoutForm) -> None:
    """Two layers written by umoci: the second deletes a file and a directory."""
    umoci("init", "--layout", "img", cwd=tmp_path)
    umoci("new", "--image", "img:t", cwd=tmp_path)
    umoci("unpack", "--image", "img:t", "bundle", cwd=tmp_path)
    rootfs = tmp_path / "bundle/rootfs"
    (rootfs / "etc/conf.d").mkdir(parents=True)
    (rootfs / "etc/motd").write_text("hello\n")
    (rootfs / "etc/conf.d/a.conf").write_text("a\n")
    (rootfs / "bin").mkdir()
    (rootfs / "bin/tool").write_bytes(b"tool")
    os.link(rootfs / "bin/tool", rootfs / "bin/tool2")
    (rootfs / "bin/sh").symlink_to("/bin/tool")
    umoci("repack", "--refresh-bundle", "--image", "img:t", "bundle", cwd=tmp_path)
    (rootfs / "etc/motd").unlink()
    shutil.rmtree(rootfs / "etc/conf.d")
    umoci("repack", "--image", "img:t", "bundle", cwd=tmp_path)

    layout = tmp_path / "img"
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(blob(layout, index["manifests"][0]["digest"]).read_text())
    config = json.loads(blob(layout, manifest["config"]["digest"]).read_text())
    layers = manifest["layers"]
    assert len(layers) == len(config["rootfs"]["diff_ids"]) == 2
    dirs = []
    for i, desc in enumerate(layers):
        out = tmp_path / f"layer{i}"
        out.mkdir()
        with blob(layout, desc["digest"]).open("rb") as f:
            result = unpack_layer(f, out, expected_digest=desc["digest"],
                                  expected_diff_id=config["rootfs"]["diff_ids"][i],
                                  whiteouts=form)  # fmt: skip
        assert result.compression == "gzip" and result.warnings == ()
        dirs.append(out)
    first, second = dirs
    assert (first / "etc/motd").read_text() == "hello\n"
    assert (first / "bin/tool").stat().st_ino == (first / "bin/tool2").stat().st_ino
    assert os.readlink(first / "bin/sh") == "/bin/tool"
    assert observe(second, "etc/motd") is Kind.WHITEOUT
    assert observe(second, "etc/conf.d") is Kind.WHITEOUT
    whiteouts = {k for k, v in describe(second).items() if v[0] in ("chr", "file")}
    if form == "overlay":
        assert whiteouts == {"etc/motd", "etc/conf.d"}
    else:
        assert whiteouts == {"etc/.wh.motd", "etc/.wh.conf.d"}
