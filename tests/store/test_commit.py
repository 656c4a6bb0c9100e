"""Committing a container: the layer writer on its own, the store's commit, and
round trips through real mounts (the new image shows what the container showed,
to unionfs and to umoci)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import socket
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from tests.store.test_store_mount import mount, unionfs
from tests.support import oci
from tests.support.images import umoci_unpack
from tests.support.kernel import TmpMounts
from tests.support.oci import Layer, directory, file, hardlink, symlink, whiteout
from tests.support.tree import Node, compare, snapshot
from unionfs.errors import UnionfsError
from unionfs.image.layerwriter import WrittenLayer, write_layer
from unionfs.image.refs import Reference
from unionfs.image.unpack import unpack_layer
from unionfs.store.store import Store

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (mknod, chown, trusted.* xattrs)")
EMPTY_LAYER = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
"""The diff_id of a tar of no entries (two zero blocks), as docker writes it."""
INODE_FIELDS = {"ino", "d_ino", "dev"}
T0 = 1_700_000_000_000_000_000


def write(upper: Path, compression: str = "none") -> tuple[WrittenLayer, bytes]:
    out = io.BytesIO()
    assert compression in ("gzip", "zstd", "none")
    result = write_layer(upper, out, compression=compression)  # type: ignore[arg-type]
    return result, out.getvalue()


def members(tar: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(
        fileobj=io.BytesIO(tar), mode="r:", encoding="utf-8", errors="surrogateescape"
    ) as tf:
        return tf.getmembers()


def kinds(tar: bytes) -> list[tuple[str, str]]:
    """(name, type letter) of every member, in order; links with their target."""
    names = {tarfile.REGTYPE: "f", tarfile.DIRTYPE: "d", tarfile.SYMTYPE: "l",
             tarfile.LNKTYPE: "h", tarfile.FIFOTYPE: "p", tarfile.CHRTYPE: "c"}  # fmt: skip
    out = []
    for m in members(tar):
        kind = names[m.type]
        out.append((m.name + (f" -> {m.linkname}" if m.linkname else ""), kind))
    return out


def xattrs_of(m: tarfile.TarInfo) -> dict[str, bytes]:
    prefix = "SCHILY.xattr."
    return {
        k[len(prefix) :]: v.encode("utf-8", "surrogateescape")
        for k, v in m.pax_headers.items()
        if k.startswith(prefix)
    }


def set_times(top: Path, ns: int = T0) -> None:
    """Every entry's mtime (symlinks' own), deepest first, so dirs keep theirs."""
    paths = sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True)
    for p in paths:
        os.utime(p, ns=(ns, ns), follow_symlinks=False)


# --------------------------------------------------------------------------- write_layer


def make_upper(top: Path, form: str) -> Path:
    """An upper layer holding every kind of entry, its whiteouts and opaque dir in
    `form`: ``overlay`` (char devices 0/0, an xattr whiteout, the opaque xattr)
    or ``oci`` (``.wh.`` entries)."""
    up = top / f"upper-{form}"
    up.mkdir()
    (up / "a").write_bytes(b"hello\n")
    os.chmod(up / "a", 0o640)
    os.setxattr(up / "a", "user.bin", b"\xff\xfe\x00raw")
    os.setxattr(up / "a", "user.overlay.bookkeeping", b"x")  # never in a layer
    (up / "d" / "sub").mkdir(parents=True)
    os.link(up / "a", up / "d" / "sub" / "a-link")
    os.symlink("../a", up / "d" / "sym")
    os.mkfifo(up / "d" / "fifo")
    (up / "opq").mkdir()
    (up / "opq" / "kept").write_text("kept\n")
    if form == "overlay":
        os.mknod(up / "gone", stat.S_IFCHR | 0o600, os.makedev(0, 0))
        os.mknod(up / "d" / "gone-dir", stat.S_IFCHR | 0o600, os.makedev(0, 0))
        (up / "xw").touch()
        os.setxattr(up / "xw", "trusted.overlay.whiteout", b"y")
        os.setxattr(up / "opq", "trusted.overlay.opaque", b"y")
    else:
        for name in (".wh.gone", "d/.wh.gone-dir", ".wh.xw", "opq/.wh..wh..opq"):
            (up / name).touch(mode=0)
            os.chmod(up / name, 0)
    for p in up.rglob("*"):
        os.lchown(p, 0, 0)
    set_times(up)
    return up


UPPER_ENTRIES = [
    (".wh.gone", "f"),
    (".wh.xw", "f"),
    ("a", "f"),
    ("d", "d"),
    ("d/.wh.gone-dir", "f"),
    ("d/fifo", "p"),
    ("d/sub", "d"),
    ("d/sub/a-link -> a", "h"),
    ("d/sym -> ../a", "l"),
    ("opq", "d"),
    ("opq/.wh..wh..opq", "f"),
    ("opq/kept", "f"),
]


@needs_root
def test_both_whiteout_forms_give_the_same_layer(tmp_path: Path) -> None:
    overlay, overlay_tar = write(make_upper(tmp_path, "overlay"))
    oci_result, oci_tar = write(make_upper(tmp_path, "oci"))
    assert kinds(overlay_tar) == UPPER_ENTRIES
    assert overlay_tar == oci_tar
    assert overlay == oci_result
    assert overlay.entries == len(UPPER_ENTRIES)
    assert overlay.warnings == ()


@pytest.mark.parametrize("form", [pytest.param("overlay", marks=needs_root), "oci"])
def test_layer_entries(tmp_path: Path, form: str) -> None:
    result, tar = write(make_upper(tmp_path, form))
    assert result.diff_id == result.digest == oci.sha256(tar)
    assert result.size == result.uncompressed_size == len(tar)
    assert kinds(tar) == UPPER_ENTRIES
    by_name = {m.name: m for m in members(tar)}
    for m in by_name.values():
        assert (m.uname, m.gname, m.uid, m.gid) == ("", "", 0, 0), m.name
        assert m.mtime == T0 // 10**9, m.name
        assert not m.name.startswith(("./", "/")), m.name
        if ".wh." in m.name:
            assert (m.mode, m.size, m.type) == (0, 0, tarfile.REGTYPE), m.name
        assert all("overlay" not in k for k in m.pax_headers), (m.name, m.pax_headers)
    assert by_name["a"].mode == 0o640
    assert by_name["a"].size == 6
    assert xattrs_of(by_name["a"]) == {"user.bin": b"\xff\xfe\x00raw"}
    assert by_name["d/sub/a-link"].size == 0
    assert by_name["d/sub/a-link"].mode == 0o640
    assert by_name["d"].mode == 0o755
    # directories are written as "d/", as docker and tar do
    assert b"d/\0" in tar and b"opq/.wh..wh..opq\0" in tar


def test_layer_round_trips_through_the_unpacker(tmp_path: Path) -> None:
    """Writing, unpacking and writing again gives the same tar; the unpacked
    tree is the upper less its overlay bookkeeping."""
    up = make_upper(tmp_path, "oci")
    first, blob = write(up, "gzip")
    dest = tmp_path / "unpacked"
    dest.mkdir()
    unpacked = unpack_layer(
        io.BytesIO(blob), dest, whiteouts="oci", expected_digest=first.digest,
        expected_diff_id=first.diff_id,
    )  # fmt: skip
    assert unpacked.warnings == ()
    assert unpacked.entries == first.entries
    again, _ = write(dest, "gzip")
    assert again == first
    os.removexattr(up / "a", "user.overlay.bookkeeping")
    ours, theirs = snapshot(up), snapshot(dest)
    del ours["."], theirs["."]
    assert compare(ours, theirs, ignore=INODE_FIELDS) == []


@needs_root
def test_overlay_form_round_trips_through_the_unpacker(tmp_path: Path) -> None:
    first, blob = write(make_upper(tmp_path, "overlay"), "zstd")
    dest = tmp_path / "unpacked"
    dest.mkdir()
    unpack_layer(io.BytesIO(blob), dest, whiteouts="overlay", expected_diff_id=first.diff_id)
    assert stat.S_ISCHR(os.lstat(dest / "xw").st_mode)  # the xattr whiteout, as a char device
    assert os.getxattr(dest / "opq", "trusted.overlay.opaque") == b"y"
    assert write(dest, "zstd")[0] == first


def test_compressions_share_the_diff_id(tmp_path: Path) -> None:
    up = make_upper(tmp_path, "oci")
    plain, tar = write(up, "none")
    gz, gz_blob = write(up, "gzip")
    zs, zs_blob = write(up, "zstd")
    assert gz.diff_id == zs.diff_id == plain.diff_id
    assert gzip.decompress(gz_blob) == tar
    assert zstandard.ZstdDecompressor().decompressobj().decompress(zs_blob) == tar
    assert (gz.digest, gz.size) == (oci.sha256(gz_blob), len(gz_blob))
    assert (zs.digest, zs.size) == (oci.sha256(zs_blob), len(zs_blob))
    # gzip header: no mtime, no name (deterministic)
    assert gz_blob[3] == 0 and gz_blob[4:8] == b"\0\0\0\0"
    assert write(up, "gzip")[1] == gz_blob


def test_empty_upper_is_the_empty_layer(tmp_path: Path) -> None:
    (tmp_path / "up").mkdir()
    result, tar = write(tmp_path / "up")
    assert tar == bytes(1024)
    assert result.diff_id == EMPTY_LAYER
    assert result.entries == 0


def test_names_times_and_owners_that_need_pax(tmp_path: Path) -> None:
    up = tmp_path / "up"
    up.mkdir()
    odd = b"caf\xe9 \xff"  # not UTF-8
    long_dir = "L" * 90
    long_name = "n" * 60
    target = "t/" * 120
    (up / os.fsdecode(odd)).write_text("latin-1\n")
    (up / long_dir).mkdir()
    (up / long_dir / long_name).write_text("deep\n")
    os.symlink(target, up / "far")
    (up / "precise").write_text("p\n")
    os.symlink("T" * 100, up / ("e" * 100))  # both fit the ustar fields exactly
    if ROOT:
        os.chown(up / "precise", 3_000_000, 4_000_000)  # beyond 7 octal digits
    set_times(up)
    os.utime(up / "precise", ns=(0, 1_600_000_000_123_456_789))
    os.utime(up / "far", ns=(0, -1_500_000_000), follow_symlinks=False)
    result, tar = write(up)
    by_name = {m.name.encode("utf-8", "surrogateescape"): m for m in members(tar)}
    assert sorted(by_name) == [
        long_dir.encode(),
        f"{long_dir}/{long_name}".encode(),
        odd,
        b"e" * 100,
        b"far",
        b"precise",
    ]
    assert by_name[b"e" * 100].linkname == "T" * 100
    assert by_name[b"e" * 100].pax_headers == {}
    assert by_name[odd].pax_headers["path"].encode("utf-8", "surrogateescape") == odd
    assert by_name[f"{long_dir}/{long_name}".encode()].pax_headers["path"]
    assert by_name[b"far"].linkname == target
    assert by_name[b"far"].pax_headers["mtime"] == "-1.5"
    assert by_name[b"precise"].pax_headers["mtime"] == "1600000000.123456789"
    if ROOT:
        assert (by_name[b"precise"].uid, by_name[b"precise"].gid) == (3_000_000, 4_000_000)
    dest = tmp_path / "unpacked"
    dest.mkdir()
    unpack_layer(io.BytesIO(tar), dest, whiteouts="oci")
    assert os.stat(dest / "precise").st_mtime_ns == 1_600_000_000_123_456_789
    assert os.lstat(dest / "far").st_mtime_ns == -1_500_000_000
    assert write(dest)[0] == result


def test_hard_links_point_at_the_first_name_in_path_order(tmp_path: Path) -> None:
    up = tmp_path / "up"
    (up / "b").mkdir(parents=True)
    (up / "z").write_text("shared\n")
    os.link(up / "z", up / "b" / "y")
    os.link(up / "z", up / "a")
    os.mkfifo(up / "p1")
    os.link(up / "p1", up / "p2")
    _, tar = write(up)
    assert kinds(tar) == [
        ("a", "f"), ("b", "d"), ("b/y -> a", "h"), ("p1", "p"), ("p2 -> p1", "h"), ("z -> a", "h"),
    ]  # fmt: skip
    assert members(tar)[0].size == 7


def test_a_real_name_beats_a_whiteout_of_it_and_sockets_are_skipped(tmp_path: Path) -> None:
    up = tmp_path / "up"
    up.mkdir()
    (up / "back").mkdir()
    (up / ".wh.back").touch()  # the mount shows back/ (and merges it with lower ones)
    (up / ".wh.").touch()  # names nothing
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(os.fspath(up / "sock"))
        result, tar = write(up)
    assert kinds(tar) == [("back", "d")]
    assert result.warnings == (
        "skipped .wh.: not a whiteout of a name",
        "skipped socket sock: a layer cannot hold sockets",
    )


@needs_root
def test_escaped_overlay_xattrs_are_written_as_the_mount_shows_them(tmp_path: Path) -> None:
    up = tmp_path / "up"
    up.mkdir()
    (up / "f").touch()
    os.setxattr(up / "f", "trusted.overlay.overlay.nested", b"v")
    os.setxattr(up / "f", "trusted.overlay.unionfs.origin", b"0" * 24)
    os.setxattr(up / "f", "trusted.other", b"t")
    _, tar = write(up)
    assert xattrs_of(members(tar)[0]) == {"trusted.overlay.nested": b"v", "trusted.other": b"t"}


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "secret").mkdir(parents=True)
    (outside / "secret" / "key").write_text("k\n")
    up = tmp_path / "up"
    up.mkdir()
    os.symlink(outside / "secret", up / "link")
    _, tar = write(up)
    assert kinds(tar) == [(f"link -> {outside / 'secret'}", "l")]


# --------------------------------------------------------------------------- the store

BASE = Layer(
    oci.tar_bytes(
        [
            directory("bin"),
            file("bin/tool", "#!/bin/sh\necho tool\n", 0o4755),
            symlink("bin/alias", "tool"),
            directory("etc"),
            directory("etc/conf.d"),
            file("etc/conf.d/a.conf", "a\n"),
            file("etc/conf.d/b.conf", "b\n"),
            file("etc/hosts", "127.0.0.1 localhost\n"),
            file("etc/motd", "base motd\n"),
            directory("data"),
            file("data/x", "x\n"),
            directory("data/sub"),
            file("data/sub/y", "y\n"),
            directory("opt"),
            file("opt/old1", "1\n"),
            file("opt/old2", "2\n"),
            directory("home", uid=1000, gid=1000),
            file("home/notes", "notes\n", uid=1000, gid=1000),
            directory("srv"),
            file("srv/one", "1\n"),
            hardlink("srv/one-again", "srv/one"),
            directory("usr"),
            directory("usr/share"),
            directory("usr/share/doc"),
            file("usr/share/doc/readme", "read me\n", xattrs={"user.origin": "base"}),
            directory("var"),
            file("var/log", "a file, later a directory\n"),
        ]
    )
)
UPDATE = Layer(
    oci.tar_bytes(
        [
            directory("etc"),
            file("etc/extra", "extra\n"),
            file("etc/motd", "updated motd\n"),
            whiteout("etc/.wh.hosts"),
        ]
    ),
    compression="none",  # umoci reads gzip and plain layers, not zstd
)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store")
    s.import_path(oci.oci_layout(tmp_path / "layout", [([BASE, UPDATE], None)]),
                  Reference("base", "1"))  # fmt: skip
    return s


def upper_of(store: Store, name: str) -> Path:
    return store.container_upper(store.resolve_container(name))


def test_commit_makes_an_image_on_top_of_the_old_one(store: Store) -> None:
    old = store.resolve_image("base:1")
    c = store.create_container("base:1", "c")
    up = store.container_upper(c)
    (up / "etc").mkdir()
    (up / "etc" / "motd").write_text("mine\n")
    (up / "etc" / ".wh.extra").touch()
    done = store.commit_container(
        "c", Reference("mine", "2"), message="my change", author="Me <me@example.com>"
    )
    image = done.image
    assert store.resolve_image("mine:2") == image
    assert done.tag == Reference("mine", "2")
    assert image.repo_digest is False
    assert image.layers[:-1] == old.layers  # the old blobs, shared
    top = image.layers[-1]
    assert top.diff_id == done.layer.diff_id
    assert top.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    blob = store.read_blob(top.digest)
    assert (oci.sha256(blob), len(blob)) == (top.digest, top.size)
    assert kinds(gzip.decompress(blob)) == [("etc", "d"), ("etc/.wh.extra", "f"), ("etc/motd", "f")]

    manifest = json.loads(store.read_blob(image.manifest_digest))
    assert manifest["config"]["digest"] == image.id
    assert [la["digest"] for la in manifest["layers"]] == [la.digest for la in image.layers]
    assert [la["mediaType"] for la in manifest["layers"]] == [la.media_type for la in image.layers]
    config = store.config(image)
    old_config = store.config(old)
    assert config["rootfs"]["diff_ids"] == [*old_config["rootfs"]["diff_ids"], top.diff_id]
    assert config["config"] == old_config["config"]
    assert config["author"] == "Me <me@example.com>"
    assert config["history"][:-1] == old_config["history"]
    assert config["history"][-1] == {
        "created": config["created"],
        "created_by": "unionfs commit",
        "comment": "my change",
        "author": "Me <me@example.com>",
    }
    assert config["created"] == image.imported
    # the layer is unpacked and the image mountable: its layers are all in the store
    assert len(store.lowers(image.diff_ids)) == 3
    assert (store.layer_path(top.diff_id) / "etc" / "motd").read_text() == "mine\n"
    assert store.layer_info(top.diff_id).entries == 3
    # the container is left as it was
    assert store.resolve_container("c") == c
    assert (up / "etc" / "motd").read_text() == "mine\n"
    assert list(store.tmp.iterdir()) == []


def test_commit_again_gives_the_same_layer(store: Store) -> None:
    store.create_container("base:1", "c")
    (upper_of(store, "c") / "new").write_text("new\n")
    first = store.commit_container("c")
    layers = store.layer_ids()
    second = store.commit_container("c", compression="zstd")
    assert second.layer.diff_id == first.layer.diff_id
    assert second.layer.digest != first.layer.digest
    assert second.image.id != first.image.id  # created differs
    assert store.layer_ids() == layers  # unpacked once
    assert store.blob_path(second.layer.digest).exists()
    assert second.image.layers[-1].media_type.endswith("+zstd")
    history = store.config(first.image)["history"][-1]
    assert set(history) == {"created", "created_by"}  # no empty comment or author
    assert store.tags_of(first.image.id) == []


def test_commit_of_an_empty_upper_adds_an_empty_layer(store: Store) -> None:
    store.create_container("base:1", "c")
    done = store.commit_container("c", Reference("same", "1"))
    assert done.layer.diff_id == EMPTY_LAYER
    assert len(done.image.layers) == 3


def test_commit_needs_the_old_layer_blobs(store: Store) -> None:
    store.create_container("base:1", "c")
    store.remove_image("base:1", force=True)
    with pytest.raises(UnionfsError, match=r"the blob of its layer \w+ left the store"):
        store.commit_container("c")
    assert store.images() == []


def test_commit_command(store: Store) -> None:
    store.create_container("base:1", "c")
    (upper_of(store, "c") / "new").write_text("new\n")
    proc = unionfs("commit", "c", "made:1", "-m", "hello", root=store.root)
    image_id = proc.stdout.strip()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", image_id), proc.stdout
    assert store.resolve_image("made:1").id == image_id
    proc = unionfs("commit", "nope", root=store.root, check=False)
    assert (proc.returncode, proc.stdout.strip()) == (1, "unionfs: error: no such container: nope")


# --------------------------------------------------------------------------- real mounts


def change_everything(mnt: Path) -> None:
    """Every kind of change, made through the mount."""
    (mnt / "new.txt").write_text("new\n")
    os.setxattr(mnt / "new.txt", "user.note", b"\x80\xff not utf-8")
    os.utime(mnt / "new.txt", ns=(0, 1_600_000_000_123_456_789))
    (mnt / "newdir" / "inner").mkdir(parents=True)
    (mnt / "newdir" / "inner" / "file").write_text("inner\n")
    with open(mnt / "etc" / "motd", "a") as f:  # modify
        f.write("and mine\n")
    os.chmod(mnt / "bin" / "tool", 0o755)  # metadata only
    os.chown(mnt / "home" / "notes", 1234, 5678)
    os.unlink(mnt / "etc" / "conf.d" / "b.conf")  # delete a file
    shutil.rmtree(mnt / "data")  # delete a directory
    shutil.rmtree(mnt / "opt")  # replace a directory: opaque
    (mnt / "opt").mkdir()
    (mnt / "opt" / "fresh").write_text("fresh\n")
    os.unlink(mnt / "var" / "log")  # a file becomes a directory
    (mnt / "var" / "log").mkdir()
    (mnt / "var" / "log" / "app.log").write_text("log\n")
    os.rename(mnt / "etc" / "conf.d" / "a.conf", mnt / "etc" / "conf.d" / "renamed.conf")
    (mnt / "links").mkdir()
    (mnt / "links" / "first").write_text("linked\n")
    os.link(mnt / "links" / "first", mnt / "links" / "second")
    os.link(mnt / "srv" / "one", mnt / "srv" / "third")  # a link to a lower file
    os.setxattr(mnt / "usr" / "share" / "doc" / "readme", "user.origin", b"\xff\xfechanged")
    os.symlink("new.txt", mnt / "link")
    os.mkfifo(mnt / "pipe")


COMMITTED = [
    (".wh.data", "f"),
    ("bin", "d"),
    ("bin/tool", "f"),
    ("etc", "d"),
    ("etc/conf.d", "d"),
    ("etc/conf.d/.wh.a.conf", "f"),
    ("etc/conf.d/.wh.b.conf", "f"),
    ("etc/conf.d/renamed.conf", "f"),
    ("etc/motd", "f"),
    ("home", "d"),
    ("home/notes", "f"),
    ("link -> new.txt", "l"),
    ("links", "d"),
    ("links/first", "f"),
    ("links/second -> links/first", "h"),
    ("new.txt", "f"),
    ("newdir", "d"),
    ("newdir/inner", "d"),
    ("newdir/inner/file", "f"),
    ("opt", "d"),
    ("opt/.wh..wh..opq", "f"),
    ("opt/fresh", "f"),
    ("pipe", "p"),
    ("srv", "d"),
    ("srv/one", "f"),
    ("srv/third -> srv/one", "h"),
    ("usr", "d"),
    ("usr/share", "d"),
    ("usr/share/doc", "d"),
    ("usr/share/doc/readme", "f"),
    ("var", "d"),
    ("var/log", "d"),
    ("var/log/.wh..wh..opq", "f"),
    ("var/log/app.log", "f"),
]


def without_root(snap: dict[str, Node]) -> dict[str, Node]:
    """A snapshot less its root: a layer tar does not describe the root directory."""
    return {k: v for k, v in snap.items() if k != "."}


def commit(root: Path, *args: str) -> str:
    """``unionfs commit``; the new image ID (the only output: no warnings)."""
    out = unionfs("commit", *args, root=root).stdout
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", out), out
    return out.strip()


def umoci_view(store: Store, image_id: str, tmp_path: Path) -> dict[str, Node]:
    """What ``umoci unpack`` makes of the image as ``unionfs image export`` writes
    it (compare it without ``nlink@dir``: a union reports a merged directory
    with one link)."""
    layout = tmp_path / "oci"
    if layout.exists():
        shutil.rmtree(layout)
        shutil.rmtree(tmp_path / "umoci", ignore_errors=True)
    unionfs("image", "export", image_id, str(layout), "--format", "oci", "--tag", "x:img",
            root=store.root)  # fmt: skip
    return without_root(snapshot(umoci_unpack(layout, "img", tmp_path / "umoci")))


@pytest.mark.mount
@pytest.mark.parametrize("form", ["overlay", "oci"])
def test_commit_round_trips_every_kind_of_change(
    store: Store, tmp_mounts: TmpMounts, tmp_path: Path, form: str
) -> None:
    store_root = store.root
    store.create_container("base:1", "c")
    mnt = mount(store_root, tmp_mounts, "c", "--whiteout-format", form)
    change_everything(mnt)
    seen = without_root(snapshot(mnt))

    # (f) refused while mounted, and nothing stored
    blobs = sorted(os.listdir(store.blobs))
    proc = unionfs("commit", "c", "new:1", root=store_root, check=False)
    assert proc.returncode == 1
    assert proc.stdout == (
        f"unionfs: error: container c is mounted on {mnt}: unmount it "
        f"(unionfs umount {mnt}) and commit again\n"
    )
    assert sorted(os.listdir(store.blobs)) == blobs
    assert len(store.images()) == 1
    assert list(store.tmp.iterdir()) == []

    unionfs("umount", str(mnt), root=store_root)
    image_id = commit(store_root, "c", "new:1", "-m", "every change")

    # (a) the layer's entries
    image = store.resolve_image("new:1")
    assert image.id == image_id
    tar = gzip.decompress(store.read_blob(image.layers[-1].digest))
    assert kinds(tar) == COMMITTED
    by_name = {m.name: m for m in members(tar)}
    for m in by_name.values():
        assert (m.uname, m.gname) == ("", ""), m.name
        assert all("overlay" not in k for k in m.pax_headers), (m.name, m.pax_headers)
        if ".wh." in m.name:
            assert (m.mode, m.size) == (0, 0), m.name
    assert by_name["bin/tool"].mode == 0o755
    assert (by_name["home/notes"].uid, by_name["home/notes"].gid) == (1234, 5678)
    assert by_name["etc/motd"].size == len("updated motd\nand mine\n")
    assert xattrs_of(by_name["usr/share/doc/readme"]) == {"user.origin": b"\xff\xfechanged"}
    assert xattrs_of(by_name["new.txt"]) == {"user.note": b"\x80\xff not utf-8"}
    assert by_name["new.txt"].pax_headers["mtime"] == "1600000000.123456789"

    # (b) a container of the new image shows what the old one showed
    store.create_container("new:1", "c2")
    mnt2 = mount(store_root, tmp_mounts, "c2")
    assert compare(seen, without_root(snapshot(mnt2)), ignore=INODE_FIELDS) == []

    # (c) so does umoci's unpack of it
    flat = umoci_view(store, image_id, tmp_path)
    diffs = compare(seen, flat, ignore={*INODE_FIELDS, "nlink@dir"})
    # The one difference a flat tree cannot avoid: the union still counts the
    # lower link srv/one whose copy-up made it a new file (as overlayfs does).
    assert diffs == ["srv/one-again: nlink 2 != 1"], "\n".join(diffs)
    assert flat["links/second"].nlink == flat["srv/third"].nlink == 2

    # (e) the same upper gives the same layer
    assert store.commit_container("c").image.layers[-1] == image.layers[-1]


@pytest.mark.mount
def test_commit_of_renamed_dirs(store: Store, tmp_mounts: TmpMounts, tmp_path: Path) -> None:
    """OCI layers have no redirects: a renamed dir is written whole under its new
    name (opaque), its old name a whiteout; a container of the new image and
    umoci's unpack of its export show what the container showed."""
    store.create_container("base:1", "r")
    mnt = mount(store.root, tmp_mounts, "r")
    os.rename(mnt / "usr" / "share", mnt / "usr" / "shared")  # within its dir
    os.rename(mnt / "etc" / "conf.d", mnt / "confs")  # across dirs, a merged parent
    os.rename(mnt / "data", mnt / "data2")
    os.rename(mnt / "data2" / "sub", mnt / "data2" / "sub2")  # inside a renamed dir
    (mnt / "data2" / "sub2" / "new").write_text("new\n")
    os.unlink(mnt / "data2" / "x")
    seen = without_root(snapshot(mnt))
    unionfs("umount", str(mnt), root=store.root)
    image_id = commit(store.root, "r", "renamed:1")

    tar = gzip.decompress(store.read_blob(store.resolve_image("renamed:1").layers[-1].digest))
    assert kinds(tar) == [
        (".wh.data", "f"),
        ("confs", "d"),
        ("confs/.wh..wh..opq", "f"),
        ("confs/a.conf", "f"),
        ("confs/b.conf", "f"),
        ("data2", "d"),
        ("data2/.wh..wh..opq", "f"),
        ("data2/sub2", "d"),
        ("data2/sub2/new", "f"),
        ("data2/sub2/y", "f"),
        ("etc", "d"),
        ("etc/.wh.conf.d", "f"),
        ("usr", "d"),
        ("usr/.wh.share", "f"),
        ("usr/shared", "d"),
        ("usr/shared/.wh..wh..opq", "f"),
        ("usr/shared/doc", "d"),
        ("usr/shared/doc/readme", "f"),
    ]
    store.create_container("renamed:1", "r2")
    mnt2 = mount(store.root, tmp_mounts, "r2")
    # A merged dir reports one link; the same dir from one layer its own count.
    assert compare(seen, without_root(snapshot(mnt2)), ignore={*INODE_FIELDS, "nlink@dir"}) == []
    flat = umoci_view(store, image_id, tmp_path)
    diffs = compare(seen, flat, ignore={*INODE_FIELDS, "nlink@dir"})
    assert diffs == [], diffs


@pytest.mark.mount
def test_three_generations(store: Store, tmp_mounts: TmpMounts, tmp_path: Path) -> None:
    """A container of a committed image, committed, and again: each image shows
    what its container showed."""

    def gen1(m: Path) -> None:
        (m / "gen1").write_text("1\n")

    def gen2(m: Path) -> None:  # delete what gen1 added; replace a dir of the base
        os.unlink(m / "gen1")
        shutil.rmtree(m / "etc")
        (m / "etc").mkdir()
        (m / "etc" / "motd").write_text("gen2\n")

    def gen3(m: Path) -> None:  # a dir where gen1 had a file; link to gen2's file
        (m / "gen1").mkdir()
        os.link(m / "etc" / "motd", m / "gen1" / "motd")
        os.chmod(m / "etc", 0o700)

    changes: list[Callable[[Path], None]] = [gen1, gen2, gen3]
    image, seen = "base:1", None
    for gen, change in enumerate(changes, start=1):
        store.create_container(image, f"g{gen}")
        mnt = mount(store.root, tmp_mounts, f"g{gen}")
        if seen is not None:
            shown = without_root(snapshot(mnt))
            assert compare(seen, shown, ignore=INODE_FIELDS) == [], f"generation {gen}"
        change(mnt)
        seen = without_root(snapshot(mnt))
        unionfs("umount", str(mnt), root=store.root)
        image = store.commit_container(f"g{gen}", Reference("gen", str(gen))).image.id
    assert seen is not None
    assert len(store.resolve_image("gen:3").layers) == 5
    assert seen["gen1/motd"].nlink == seen["etc/motd"].nlink == 2
    diffs = compare(seen, umoci_view(store, image, tmp_path), ignore={*INODE_FIELDS, "nlink@dir"})
    assert diffs == [], "\n".join(diffs)
    history = [h["created_by"] for h in store.config(store.resolve_image("gen:3"))["history"]]
    assert history[-3:] == ["unionfs commit"] * 3
    assert hashlib.sha256(store.read_blob(image)).hexdigest() == image.removeprefix("sha256:")


@pytest.mark.mount
def test_no_mount_starts_while_a_commit_holds_the_container(
    store: Store, tmp_mounts: TmpMounts
) -> None:
    c = store.create_container("base:1", "c")
    with store.keep_unmounted(c, "commit"):
        mnt = tmp_mounts.mountpoint("c")
        proc = unionfs("mount", "c", str(mnt), root=store.root, check=False)
        assert proc.returncode == 1
        assert "work dir is in use" in proc.stdout
        with pytest.raises(UnionfsError) as caught:
            store.commit_container("c")
    assert caught.value.message == (
        "container c is in use (mounted, or another commit is running): unmount it and commit again"
    )
    assert store.commit_container("c").layer.diff_id == EMPTY_LAYER
