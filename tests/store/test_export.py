"""``unionfs image export``: OCI layouts, oci-archives and docker archives that the
real tools (skopeo, podman, umoci) and our own importer load unchanged.

The images are hand-made (tests/oci.py) so every kind of entry a layer can hold is
there: xattrs, whiteouts, an opaque directory, hard links, setuid and sticky modes,
a fifo, layers compressed with gzip and zstd and not at all, and a layer that an
image holds twice. They go into a store through the command line, as a person would
import them, and come out again through ``unionfs image export``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import oci
from tests.support.cli import run_unionfs
from tests.support.images import (
    APP_TAG,
    ImageSet,
    built_images,
    export,
    podman,
    requires_image_tools,
    skopeo,
    umoci_unpack,
)
from tests.support.kernel import TmpMounts, is_mountpoint
from tests.support.oci import Entry, Layer, directory, file, hardlink, symlink, whiteout
from tests.support.tree import Node, compare, render, snapshot
from unionfs.errors import UnionfsError
from unionfs.image.refs import Reference
from unionfs.image.tarwriter import TarWriter
from unionfs.store.export import FORMATS, chain_ids, export_image
from unionfs.store.records import ImageRecord
from unionfs.store.store import Store

REPO = Path(__file__).resolve().parents[2]

GZIP_TAG = "localhost/export/gzip:1"
MIXED_TAG = "localhost/export/mixed:1"
MIXED_LATEST = "localhost/export/mixed:latest"
LOOSE_CMD = ["/bin/loose"]  # the config of the untagged image


def _base_tar() -> bytes:
    return oci.tar_bytes(
        [
            directory("bin"),
            file("bin/tool", "#!/bin/sh\necho tool\n", 0o4755),
            symlink("bin/alias", "tool"),
            directory("etc"),
            file("etc/motd", "base motd\n", xattrs={"user.origin": "base"}),
            file("etc/old.conf", "old\n"),
            directory("srv", 0o2775, uid=1000, gid=1000),
            file("srv/one", "1\n", uid=1000, gid=1000),
            hardlink("srv/one-again", "srv/one"),
            Entry("srv/pipe", "fifo", mode=0o600),
            directory("d"),
            directory("d/sub"),
            file("d/sub/old", "old\n"),
            file("d/keep", "keep\n"),
            directory("tmp", 0o1777),
        ]
    )


def _update_tar() -> bytes:
    return oci.tar_bytes(
        [
            directory("etc"),
            file("etc/motd", "updated motd\n", xattrs={"user.origin": "update"}),
            whiteout("etc/.wh.old.conf"),
            directory("d"),
            whiteout("d/.wh..wh..opq"),
            file("d/new", "new\n"),
        ]
    )


def _app_tar() -> bytes:
    return oci.tar_bytes(
        [
            directory("app"),
            file("app/main", "print('hi')\n", 0o755),
            hardlink("app/main-again", "app/main"),
            directory("srv", 0o2775, uid=1000, gid=1000),
            whiteout("srv/.wh.one"),
        ]
    )


BASE, UPDATE, APP = _base_tar(), _update_tar(), _app_tar()


def gzip_layers() -> list[Layer]:
    """Layers umoci reads: gzip and plain."""
    return [Layer(BASE, "gzip"), Layer(UPDATE, "gzip"), Layer(APP, "none")]


def mixed_layers() -> list[Layer]:
    """Every compression, and one layer twice (as docker images hold empty layers)."""
    return [Layer(BASE, "gzip"), Layer(UPDATE, "zstd"), Layer(APP, "none"), Layer(UPDATE, "zstd")]


# --------------------------------------------------------------------------- driving


def unionfs(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m unionfs --root ROOT ARGS``."""
    return run_unionfs(*args, root=root, check=check)


def export_cli(root: Path, image: str, fmt: str, dest: Path, *extra: str) -> Path:
    out = unionfs(root, "image", "export", image, "--format", fmt, str(dest), *extra).stdout
    assert out.startswith("Exported "), out
    return dest


def export_api(
    images: Images, image: str, fmt: str, dest: Path, tag: Reference | None = None
) -> Path:
    """The same export in this process (what the command runs, without its start-up)."""
    return export_image(images.store, image, fmt, dest, tag=tag).path


def export_refused(
    root: Path, image: str, fmt: str, dest: Path
) -> subprocess.CompletedProcess[str]:
    """An export that must fail: its exit code and output, for the test to check."""
    proc = unionfs(root, "image", "export", image, "--format", fmt, str(dest), check=False)
    assert proc.returncode != 0, proc.stdout
    return proc


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def leftovers(directory: Path) -> list[str]:
    """Temporary names an export may have left next to its destination."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@dataclass(frozen=True)
class Images:
    """A store holding the hand-made images, and their records."""

    root: Path
    gzip: ImageRecord
    mixed: ImageRecord
    loose: ImageRecord  # untagged

    @property
    def store(self) -> Store:
        return Store(self.root)


def import_images(root: Path, work: Path) -> Images:
    oci.oci_layout(work / "gzip", [(gzip_layers(), None)])
    oci.oci_layout(work / "mixed", [(mixed_layers(), None)], config={"Cmd": ["/bin/mixed"]})
    oci.oci_layout(work / "loose", [([Layer(APP, "gzip")], None)], config={"Cmd": LOOSE_CMD})
    unionfs(root, "image", "import", str(work / "gzip"), GZIP_TAG)
    unionfs(root, "image", "import", str(work / "mixed"), MIXED_TAG)
    unionfs(root, "tag", MIXED_TAG, MIXED_LATEST)
    unionfs(root, "image", "import", str(work / "loose"))
    store = Store(root)
    (loose,) = [i for i in store.images() if not store.tags_of(i.id)]
    return Images(root, store.resolve_image(GZIP_TAG), store.resolve_image(MIXED_TAG), loose)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    """The shared store: tests must not change it."""
    work = tmp_path_factory.mktemp("export-images")
    return import_images(work / "store", work)


@dataclass(frozen=True)
class OwnImage:
    """A store of a test's own, holding the gzip image, for the test to damage."""

    root: Path
    image: ImageRecord

    @property
    def store(self) -> Store:
        return Store(self.root)


@pytest.fixture
def own_image(tmp_path: Path) -> OwnImage:
    layout = oci.oci_layout(tmp_path / "source", [(gzip_layers(), None)])
    root = tmp_path / "own-store"
    unionfs(root, "image", "import", str(layout), GZIP_TAG)
    return OwnImage(root, Store(root).resolve_image(GZIP_TAG))


def exported_tar_members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as tar:
        return tar.getmembers()


def read_member(path: Path, name: str) -> bytes:
    with tarfile.open(path) as tar:
        f = tar.extractfile(name)
        assert f is not None, name
        return f.read()


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_through_import(images: Images, fmt: str, tmp_path: Path) -> None:
    """Every form imports into a new store as the same image: same ID, layers and
    name; the OCI forms with the same manifest (digest) and layer blobs too."""
    dest = tmp_path / f"out-{fmt}"
    said = unionfs(images.root, "image", "export", MIXED_TAG, "--format", fmt, str(dest)).stdout
    linked = ", 5 blobs hard-linked" if fmt == "oci" else ""
    assert re.fullmatch(
        rf"Exported {MIXED_TAG} \({images.mixed.id[7:19]}\) to {dest} as {fmt}: "
        rf"4 layers, [0-9.]+[kM]?B{linked}\n",
        said,
    )
    second = tmp_path / "second"
    out = unionfs(second, "image", "import", str(dest)).stdout
    assert f"Loaded image: {MIXED_TAG} ({images.mixed.id[7:19]})" in out.splitlines()
    again = Store(second).resolve_image(MIXED_TAG)
    assert again.id == images.mixed.id
    assert again.diff_ids == images.mixed.diff_ids
    if fmt == "docker-archive":
        assert [la.media_type for la in again.layers] == [oci.OCI_LAYER] * 4
        assert [la.digest for la in again.layers] == list(images.mixed.diff_ids)
    else:
        assert again.manifest_digest == images.mixed.manifest_digest
        assert again.layers == images.mixed.layers


# --------------------------------------------------------------------------- oci


def test_oci_layout_is_the_store_s_blobs_hard_linked(images: Images, tmp_path: Path) -> None:
    """index.json names the store's manifest by its digest and the tag as docker
    and containerd write it; every blob is a hard link to the store's, once each."""
    dest = export_api(images, MIXED_TAG, "oci", tmp_path / "layout")
    store = images.store
    assert sorted(p.name for p in dest.iterdir()) == ["blobs", "index.json", "oci-layout"]
    assert json.loads((dest / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    manifest = store.read_blob(images.mixed.manifest_digest)
    assert json.loads((dest / "index.json").read_text()) == {
        "schemaVersion": 2,
        "mediaType": oci.OCI_INDEX,
        "manifests": [
            {
                "mediaType": oci.OCI_MANIFEST,
                "digest": images.mixed.manifest_digest,
                "size": len(manifest),
                "annotations": {
                    "io.containerd.image.name": MIXED_TAG,
                    "org.opencontainers.image.ref.name": "1",
                },
                "platform": {"architecture": "amd64", "os": "linux"},
            }
        ],
    }
    wanted = {images.mixed.manifest_digest, images.mixed.id}
    wanted |= {la.digest for la in images.mixed.layers}
    blobs = dest / "blobs" / "sha256"
    assert {"sha256:" + p.name for p in blobs.iterdir()} == wanted
    assert len(wanted) == 5  # the repeated layer is there once
    for digest in wanted:
        theirs, ours = os.stat(blobs / digest[7:]), os.stat(store.blob_path(digest))
        assert (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino), digest


def test_oci_layout_into_an_empty_directory(images: Images, tmp_path: Path) -> None:
    dest = tmp_path / "empty"
    dest.mkdir()
    export_api(images, GZIP_TAG, "oci", dest)
    assert (dest / "index.json").is_file()
    assert leftovers(tmp_path) == []


def test_oci_layout_copies_across_filesystems(images: Images, tmp_path: Path) -> None:
    """Where the store's filesystem is another one, the blobs are copied."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(images.root).st_dev:
        pytest.skip("no second filesystem (/dev/shm) to export to")
    dest = shm / f"unionfs-export-{os.getpid()}-{tmp_path.name}"
    try:
        out = unionfs(images.root, "image", "export", GZIP_TAG, "--format", "oci", str(dest))
        assert "hard-linked" not in out.stdout
        for p in (dest / "blobs" / "sha256").iterdir():
            assert p.stat().st_nlink == 1
            assert sha256_file(p) == "sha256:" + p.name
        assert Store(tmp_path / "second").import_path(dest)[0].image.id == images.gzip.id
    finally:
        subprocess.run(["rm", "-rf", str(dest)], check=True)


def test_oci_archive_layout(images: Images, tmp_path: Path) -> None:
    """oci-layout and index.json first, then manifest, config and layers (each
    blob once), all with the store's bytes."""
    dest = export_api(images, MIXED_TAG, "oci-archive", tmp_path / "image.tar")
    mixed = images.mixed
    layer_digests = list(dict.fromkeys(la.digest for la in mixed.layers))
    blob_names = [f"blobs/sha256/{d[7:]}" for d in (mixed.manifest_digest, mixed.id)]
    blob_names += [f"blobs/sha256/{d[7:]}" for d in layer_digests]
    members = exported_tar_members(dest)
    assert [m.name for m in members] == [
        "oci-layout",
        "index.json",
        "blobs",
        "blobs/sha256",
        *blob_names,
    ]
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 for m in members)
    for name in blob_names:
        assert read_member(dest, name) == images.store.read_blob("sha256:" + name[13:])
    assert read_member(dest, "index.json") == (
        (export_api(images, MIXED_TAG, "oci", tmp_path / "dir") / "index.json").read_bytes()
    )


# --------------------------------------------------------------------------- docker


def test_docker_archive_layout(images: Images, tmp_path: Path) -> None:
    """The legacy docker save form: manifest.json, repositories, the config, and a
    directory per layer with a plain layer.tar whose sha256 is the diff_id; the
    layer an image holds twice is written once and linked."""
    dest = export_api(images, MIXED_TAG, "docker-archive", tmp_path / "image.tar")
    mixed = images.mixed
    manifest = json.loads(read_member(dest, "manifest.json"))
    config_name = f"{mixed.id[7:]}.json"
    assert len(manifest) == 1
    assert manifest[0]["Config"] == config_name
    assert manifest[0]["RepoTags"] == [MIXED_TAG]
    layer_paths = manifest[0]["Layers"]
    v1_ids = [p.removesuffix("/layer.tar") for p in layer_paths]
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in v1_ids)
    assert len(set(v1_ids)) == 4
    repositories = json.loads(read_member(dest, "repositories"))
    assert repositories == {"localhost/export/mixed": {"1": v1_ids[-1]}}
    assert read_member(dest, config_name) == images.store.read_blob(mixed.id)

    members = {m.name: m for m in exported_tar_members(dest)}
    names = list(members)
    assert names[:3] == ["manifest.json", "repositories", config_name]
    for i, (v1_id, diff_id) in enumerate(zip(v1_ids, mixed.diff_ids, strict=True)):
        assert members[v1_id].isdir()
        assert read_member(dest, f"{v1_id}/VERSION") == b"1.0"
        legacy = json.loads(read_member(dest, f"{v1_id}/json"))
        assert legacy["id"] == v1_id
        assert legacy.get("parent") == (v1_ids[i - 1] if i else None)
        layer = members[f"{v1_id}/layer.tar"]
        if i == 3:  # the repeated layer
            assert layer.issym()
            assert layer.linkname == f"../{v1_ids[1]}/layer.tar"
        else:
            assert layer.isreg()
            data = read_member(dest, f"{v1_id}/layer.tar")
            assert "sha256:" + hashlib.sha256(data).hexdigest() == diff_id
    top = json.loads(read_member(dest, f"{v1_ids[-1]}/json"))
    assert top["config"]["Cmd"] == ["/bin/mixed"]
    assert top["os"] == "linux"


def test_tar_headers_of_huge_layers() -> None:
    """A layer tar of 8 GiB or more does not fit ustar's size field: its header
    takes the base-256 form (GNU), still one block, which tar readers accept."""
    writer = TarWriter(io.BytesIO())
    for size in (0, 5, (8 << 30) - 1, 9 << 30, 1 << 40):
        header = writer._header("x/layer.tar", tarfile.REGTYPE, size)
        assert len(header) == tarfile.BLOCKSIZE
        info = tarfile.TarInfo.frombuf(header, "utf-8", "strict")
        assert (info.name, info.size, info.mtime, info.uid) == ("x/layer.tar", size, 0, 0)


def test_chain_ids() -> None:
    """As image-spec defines them (and docker's layer store computes them)."""
    a, b, c = (oci.sha256(x) for x in (BASE, UPDATE, APP))
    ab = oci.sha256(f"{a} {b}".encode())
    assert chain_ids([a, b, c]) == [a, ab, oci.sha256(f"{ab} {c}".encode())]
    assert chain_ids([]) == []


@pytest.mark.parametrize("fmt", ["oci-archive", "docker-archive"])
def test_archives_are_deterministic(images: Images, fmt: str, tmp_path: Path) -> None:
    first = export_api(images, MIXED_TAG, fmt, tmp_path / "first.tar")
    second = export_api(images, MIXED_TAG, fmt, tmp_path / "second.tar")
    assert first.read_bytes() == second.read_bytes()
    assert first.stat().st_size % tarfile.RECORDSIZE == 0


# --------------------------------------------------------------------------- names


def index_names(layout: Path) -> dict[str, str] | None:
    index = json.loads((layout / "index.json").read_text())
    (descriptor,) = index["manifests"]
    names: dict[str, str] | None = descriptor.get("annotations")
    return names


def test_the_name_an_export_gives(images: Images, tmp_path: Path) -> None:
    """The tag IMAGE names, else the image's first tag; --tag overrides; an image
    with no tag goes unnamed."""
    by_tag = export_api(images, MIXED_LATEST, "oci", tmp_path / "by-tag")
    assert index_names(by_tag) == {
        "io.containerd.image.name": MIXED_LATEST,
        "org.opencontainers.image.ref.name": "latest",
    }
    by_id = export_api(images, images.mixed.id[7:19], "oci", tmp_path / "by-id")
    assert index_names(by_id) == {
        "io.containerd.image.name": MIXED_TAG,
        "org.opencontainers.image.ref.name": "1",
    }
    renamed = export_api(
        images, MIXED_TAG, "docker-archive", tmp_path / "r.tar", Reference("re/n", "2")
    )
    manifest = json.loads(read_member(renamed, "manifest.json"))
    assert manifest[0]["RepoTags"] == ["re/n:2"]
    (imported,) = Store(tmp_path / "second").import_path(renamed)
    assert (imported.image.id, imported.tags) == (images.mixed.id, (Reference("re/n", "2"),))

    loose = images.loose.id
    unnamed_dir = export_api(images, loose, "oci", tmp_path / "unnamed")
    assert index_names(unnamed_dir) is None
    unnamed_tar = export_api(images, loose, "docker-archive", tmp_path / "unnamed.tar")
    names = [m.name for m in exported_tar_members(unnamed_tar)]
    assert "repositories" not in names
    assert json.loads(read_member(unnamed_tar, "manifest.json"))[0]["RepoTags"] == []
    (imported,) = Store(tmp_path / "third").import_path(unnamed_tar)
    assert (imported.image.id, imported.tags) == (loose, ())


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("fmt", "existing"),
    [
        ("oci", "file"),
        ("oci", "non-empty dir"),
        ("oci-archive", "file"),
        ("oci-archive", "empty dir"),
        ("docker-archive", "file"),
        ("docker-archive", "symlink"),
    ],
)
def test_an_existing_destination_is_never_replaced(
    images: Images, fmt: str, existing: str, tmp_path: Path
) -> None:
    dest = tmp_path / "dest"
    if existing == "file":
        dest.write_text("precious\n")
    elif existing == "symlink":
        dest.symlink_to("nowhere")
    else:
        dest.mkdir()
        if existing == "non-empty dir":
            (dest / "precious").write_text("precious\n")
    before = snapshot(tmp_path)
    proc = export_refused(images.root, GZIP_TAG, fmt, dest)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert re.fullmatch(rf"unionfs: error: {dest} (exists|is not empty)[^\n]*\n", proc.stderr)
    assert compare(before, snapshot(tmp_path)) == []


def test_unknown_format_and_missing_parent(images: Images, tmp_path: Path) -> None:
    proc = export_refused(images.root, GZIP_TAG, "tarball", tmp_path / "x")
    assert proc.returncode == 2
    assert "tarball" in proc.stderr
    with pytest.raises(UnionfsError, match="unknown export format 'tarball'"):
        export_image(images.store, GZIP_TAG, "tarball", tmp_path / "x")
    with pytest.raises(UnionfsError, match="does not exist"):
        export_image(images.store, GZIP_TAG, "oci", tmp_path / "no" / "such" / "dir")
    with pytest.raises(UnionfsError, match="no such image: nothing:1"):
        export_image(images.store, "nothing:1", "oci", tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_missing_blob_fails_cleanly(own_image: OwnImage, fmt: str, tmp_path: Path) -> None:
    """A blob the store lacks is named; nothing is left at or next to the path."""
    store = own_image.store
    missing = own_image.image.layers[1].digest
    store.blob_path(missing).unlink()
    out = tmp_path / "out"
    out.mkdir()
    dest = out / "image"
    proc = export_refused(own_image.root, GZIP_TAG, fmt, dest)
    assert proc.returncode == 1
    assert proc.stderr == (
        f"unionfs: error: image {own_image.image.id[7:19]}: the layer 2 blob {missing} is "
        "missing from the store (import the image again to restore it)\n"
    )
    assert list(out.iterdir()) == []


def test_a_damaged_layer_fails_cleanly(own_image: OwnImage, tmp_path: Path) -> None:
    """docker-archive layers are checked against their diff_ids while they are
    written: a damaged blob is named and the archive is not left behind."""
    store = own_image.store
    plain = own_image.image.layers[2]  # APP, uncompressed
    blob = store.blob_path(plain.digest)
    data = bytearray(blob.read_bytes())
    at = data.index(b"print('hi')")
    data[at] = ord("P")
    blob.write_bytes(bytes(data))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UnionfsError, match=rf"layer 3 .* not its diff_id {plain.diff_id}"):
        export_image(store, GZIP_TAG, "docker-archive", out / "image.tar")
    assert list(out.iterdir()) == []

    gz = own_image.image.layers[0]  # BASE, gzip: its CRC catches the damage
    blob = store.blob_path(gz.digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(UnionfsError, match=rf"layer 1 \({gz.digest}\): .* damaged"):
        export_image(store, GZIP_TAG, "docker-archive", out / "image.tar")
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------- real tools


@dataclass(frozen=True)
class Exports:
    """The mixed image in every form."""

    paths: dict[str, Path]

    def transport(self, fmt: str) -> str:
        return f"{fmt}:{self.paths[fmt]}"


@pytest.fixture(scope="module")
def exports(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Exports:
    work = tmp_path_factory.mktemp("exports")
    return Exports({fmt: export_cli(images.root, MIXED_TAG, fmt, work / fmt) for fmt in FORMATS})


def raw_blob_digest(data: str) -> str:
    return "sha256:" + hashlib.sha256(data.encode()).hexdigest()


@requires_image_tools
@pytest.mark.parametrize("fmt", FORMATS)
def test_skopeo_inspects_and_copies(
    images: Images, exports: Exports, fmt: str, tmp_path: Path
) -> None:
    """skopeo reads the same config and layers from every form, and copies them."""
    spec = exports.transport(fmt)
    config = skopeo(tmp_path, "inspect", "--raw", "--config", spec)
    assert raw_blob_digest(config) == images.mixed.id
    info = json.loads(skopeo(tmp_path, "inspect", spec))
    if fmt == "docker-archive":
        assert info["Layers"] == list(images.mixed.diff_ids)
    else:
        assert info["Digest"] == images.mixed.manifest_digest
        assert info["Layers"] == [la.digest for la in images.mixed.layers]
        raw = skopeo(tmp_path, "inspect", "--raw", spec)
        assert raw_blob_digest(raw) == images.mixed.manifest_digest

    copy = tmp_path / "copy"
    skopeo(tmp_path, "copy", "-q", spec, f"oci:{copy}:copied")
    copied = skopeo(tmp_path, "inspect", "--raw", "--config", f"oci:{copy}:copied")
    if fmt == "docker-archive":
        # Turning a docker archive into an OCI image, skopeo writes the config anew
        # as Go spells JSON: the same document, but this config was written by
        # Python (with spaces), so other bytes. (A config Go wrote keeps its bytes.)
        assert json.loads(copied) == json.loads(config)
    else:
        assert raw_blob_digest(copied) == images.mixed.id


def podman_load(tmp_path: Path, archive: Path) -> dict[str, Any]:
    """``podman load`` into a private storage; what ``podman inspect`` says of it."""
    storage = tmp_path / "podman"
    out = podman(storage, "load", "-i", archive)
    (name,) = re.findall(r"Loaded image(?:\(s\))?: (\S+)", out)
    inspected: list[dict[str, Any]] = json.loads(podman(storage, "inspect", name))
    return inspected[0]


@requires_image_tools
@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_podman_loads_with_the_same_id(
    images: Images, exports: Exports, fmt: str, tmp_path: Path
) -> None:
    loaded = podman_load(tmp_path, exports.paths[fmt])
    assert loaded["Id"] == images.mixed.id[7:]
    assert loaded["RootFS"]["Layers"] == list(images.mixed.diff_ids)
    assert loaded["RepoTags"] == [MIXED_TAG]
    if fmt == "oci-archive":
        assert loaded["Digest"] == images.mixed.manifest_digest


def without_root_mtime(snap: Mapping[str, Node]) -> dict[str, Node]:
    """No layer lists the root, so its mtime says only when it was made."""
    out = dict(snap)
    out["."] = dataclasses.replace(out["."], mtime_ns=None)
    return out


@pytest.mark.mount
@requires_image_tools
def test_umoci_unpacks_what_the_store_mounts(
    images: Images, tmp_path: Path, tmp_mounts: TmpMounts
) -> None:
    """umoci's unpack of the oci export shows the tree a read-only mount of the
    image in the store shows. Link counts and directory sizes are left out: a union
    shows them as overlayfs does (see tests/test_image_import.py)."""
    layout = export_cli(images.root, GZIP_TAG, "oci", tmp_path / "layout")
    theirs = snapshot(umoci_unpack(layout, "1", tmp_path / "bundle"))
    mnt = tmp_mounts.mountpoint("image")
    unionfs(images.root, "mount", GZIP_TAG, str(mnt), "--read-only")
    assert is_mountpoint(mnt)
    ours = snapshot(mnt)
    diffs = compare(
        without_root_mtime(theirs),
        without_root_mtime(ours),
        ignore={"nlink", "size@dir"},
        names=("umoci", "unionfs"),
    )
    assert diffs == [], "\n".join(diffs) + "\n\nunionfs:\n" + render(ours)
    assert ours["etc/motd"].xattrs == {"user.origin": b"update"}
    assert "etc/old.conf" not in ours
    assert sorted(p for p in ours if p.startswith("d/")) == ["d/new"]
    unionfs(images.root, "umount", str(mnt))


@pytest.fixture(scope="module")
def real_images(tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    return built_images(tmp_path_factory)


@requires_image_tools
def test_podman_built_image_goes_back_to_podman(real_images: ImageSet, tmp_path: Path) -> None:
    """An image podman built, imported from skopeo's OCI layout and exported as a
    docker archive, loads into a fresh podman storage as the same image."""
    app = real_images.app
    layout = export(app, "oci", tmp_path / "layout", "gzip")
    root = tmp_path / "store"
    unionfs(root, "image", "import", str(layout), "app:1")
    archive = export_cli(root, "app:1", "docker-archive", tmp_path / "app.tar", "--tag", APP_TAG)
    loaded = podman_load(tmp_path, archive)
    assert loaded["Id"] == app.id
    assert loaded["RepoTags"] == [APP_TAG]
    assert loaded["RootFS"]["Layers"] == list(Store(root).resolve_image("app:1").diff_ids)
    assert len(loaded["RootFS"]["Layers"]) == app.layers


def test_exported_layers_are_the_layer_tars(images: Images, tmp_path: Path) -> None:
    """What docker-archive carries is byte for byte the tar each layer was made of."""
    dest = export_api(images, GZIP_TAG, "docker-archive", tmp_path / "image.tar")
    manifest = json.loads(read_member(dest, "manifest.json"))
    tars = [read_member(dest, p) for p in manifest[0]["Layers"]]
    assert tars == [BASE, UPDATE, APP]
    with tarfile.open(fileobj=io.BytesIO(tars[1])) as layer:
        assert "d/.wh..wh..opq" in layer.getnames()


def test_export_api(images: Images, tmp_path: Path) -> None:
    """export_image says what it wrote."""
    done = export_image(images.store, MIXED_TAG, "oci", tmp_path / "layout")
    assert done.path == tmp_path / "layout"
    assert done.format == "oci"
    assert done.image == images.mixed
    assert done.reference == Reference("localhost/export/mixed", "1")
    assert done.linked == 5
    files = [p for p in done.path.rglob("*") if p.is_file()]
    assert done.size == sum(p.stat().st_size for p in files)
    archive = export_image(images.store, MIXED_TAG, "oci-archive", tmp_path / "a.tar")
    assert archive.size == archive.path.stat().st_size
    assert archive.linked == 0
