"""Reading image sources: what real tools write, and what broken or hostile sources
must be refused with.

The real cases export the test images of tests/images.py with skopeo and podman in
every format and layer compression those tools write, and check each image found
against what podman says of it: the config digest is podman's image ID, every
digest named is that of the bytes, and every layer unpacks to its diff_id. The
refusals are made by hand, mostly by breaking a real export in one place.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import posixpath
import shutil
import tarfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import zstandard

from tests.support.images import (
    APP_TAG,
    BASE_TAG,
    BuiltImage,
    ImageSet,
    built_images,
    docker_current_archive,
    export,
    gzip_file,
    podman_save,
    requires_image_tools,
    umoci_unpack,
)
from unionfs.errors import UnionfsError
from unionfs.image.sourcefiles import NOT_RECOGNISED
from unionfs.image.sources import (
    OCI_INDEX,
    OCI_MANIFEST,
    SourceImage,
    SourceLayer,
    host_architecture,
    open_image_source,
)

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    return built_images(tmp_path_factory)


# --------------------------------------------------------------------------- checks


def read_layer(layer: SourceLayer) -> bytes:
    with layer.open() as f:
        return f.read()


def compression_of(blob: bytes) -> str:
    if blob.startswith(b"\x1f\x8b"):
        return "gzip"
    if blob.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return "none"


def decompress(blob: bytes) -> bytes:
    kind = compression_of(blob)
    if kind == "gzip":
        return gzip.decompress(blob)
    if kind == "zstd":
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(blob)) as z:
            return z.read()
    return blob


def check_image(
    found: SourceImage, built: BuiltImage, *, compression: str, has_manifest: bool
) -> None:
    """`found` is `built`, every digest it names is right, every layer unpacks to
    its diff_id, and its layers are compressed as `compression` says."""
    assert found.config_digest == built.config_digest
    assert sha256(found.config) == found.config_digest
    config = json.loads(found.config)
    assert [la.diff_id for la in found.layers] == config["rootfs"]["diff_ids"]
    assert len(found.layers) == built.layers
    if has_manifest:
        assert found.manifest is not None
        assert sha256(found.manifest) == found.manifest_digest
        manifest = json.loads(found.manifest)
        assert manifest["config"]["digest"] == found.config_digest
        assert [d["digest"] for d in manifest["layers"]] == [la.digest for la in found.layers]
    else:
        assert found.manifest is None
        assert found.manifest_digest is None
    for layer in found.layers:
        blob = read_layer(layer)
        assert compression_of(blob) == compression
        if layer.digest is not None:
            assert sha256(blob) == layer.digest
        if layer.size is not None:
            assert len(blob) == layer.size
        assert sha256(decompress(blob)) == layer.diff_id
        assert read_layer(layer) == blob  # each open() is a fresh reader


OCI_MEDIA_TYPES = {"gzip": OCI_LAYER + "+gzip", "zstd": OCI_LAYER + "+zstd", "none": OCI_LAYER}


# --------------------------------------------------------------------------- real


@requires_image_tools
@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
@pytest.mark.parametrize("fmt", ["oci", "oci-archive"])
def test_oci_exports(images: ImageSet, tmp_path: Path, fmt: str, compression: str) -> None:
    path = export(images.app, fmt, tmp_path / "out", compression)
    with open_image_source(path) as found:
        assert len(found) == 1
        (image,) = found
        assert image.names == (APP_TAG,)
        check_image(image, images.app, compression=compression, has_manifest=True)
        assert {la.media_type for la in image.layers} == {OCI_MEDIA_TYPES[compression]}


@requires_image_tools
@pytest.mark.parametrize("outer", ["none", "gzip"])
def test_docker_archive_export(images: ImageSet, tmp_path: Path, outer: str) -> None:
    """skopeo's docker-archive: manifest.json with ``<sha256>.tar`` layers, plain or
    inside a gzip-compressed archive (``docker save | gzip``)."""
    path = export(images.app, "docker-archive", tmp_path / "app.tar", outer)
    with open_image_source(path) as found:
        assert len(found) == 1
        (image,) = found
        assert image.names == (APP_TAG,)
        check_image(image, images.app, compression="none", has_manifest=False)
        assert all(la.digest is None and la.media_type == "" for la in image.layers)


@requires_image_tools
def test_zstd_compressed_archive(images: ImageSet, tmp_path: Path) -> None:
    plain = export(images.base, "docker-archive", tmp_path / "base.tar", "none")
    packed = tmp_path / "base.tar.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    with open_image_source(packed) as found:
        (image,) = found
        check_image(image, images.base, compression="none", has_manifest=False)


@requires_image_tools
def test_podman_save_of_two_images(images: ImageSet, tmp_path: Path) -> None:
    """``podman save -m``: two images in one archive, their shared layers once."""
    path = podman_save([images.base, images.app], tmp_path / "both.tar")
    with open_image_source(path) as found:
        assert [i.config_digest for i in found] == [
            images.base.config_digest,
            images.app.config_digest,
        ]
        base, app = found
        assert base.names == (BASE_TAG,)
        assert app.names == (APP_TAG,)
        check_image(base, images.base, compression="none", has_manifest=False)
        check_image(app, images.app, compression="none", has_manifest=False)
        assert [la.diff_id for la in app.layers[:3]] == [la.diff_id for la in base.layers]


@requires_image_tools
def test_oci_layout_with_two_images_and_an_alias(images: ImageSet, tmp_path: Path) -> None:
    """Images added one by one to one layout; the same image under a second name
    (with differently compressed layers) is the same config through a second
    manifest: each name keeps its own manifest, as podman's RepoDigests do."""
    layout = tmp_path / "layout"
    export(images.base, "oci", layout, "gzip")
    export(images.app, "oci", layout, "gzip")
    export(images.app, "oci", layout, "zstd", name="example.org/app:stable")
    with open_image_source(layout) as found:
        assert [i.names for i in found] == [(BASE_TAG,), (APP_TAG,), ("example.org/app:stable",)]
        base, app, alias = found
        check_image(base, images.base, compression="gzip", has_manifest=True)
        check_image(app, images.app, compression="gzip", has_manifest=True)
        check_image(alias, images.app, compression="zstd", has_manifest=True)
        assert alias.config_digest == app.config_digest
        assert alias.manifest_digest != app.manifest_digest
        assert [la.digest for la in app.layers[:3]] == [la.digest for la in base.layers]


@requires_image_tools
@pytest.mark.parametrize("outer", ["none", "gzip"])
def test_docker_current_generation(images: ImageSet, tmp_path: Path, outer: str) -> None:
    """docker >= 25: an OCI layout plus manifest.json, layers uncompressed."""
    layout = tmp_path / "layout"
    export(images.base, "oci", layout, "zstd")
    export(images.app, "oci", layout, "gzip")
    path = docker_current_archive(layout, tmp_path / "saved.tar")
    if outer == "gzip":
        gzip_file(path, tmp_path / "saved.tar.gz")
        path = tmp_path / "saved.tar.gz"
    with open_image_source(path) as found:
        assert [i.names for i in found] == [(BASE_TAG, "1"), (APP_TAG, "1")]
        base, app = found
        check_image(base, images.base, compression="none", has_manifest=True)
        check_image(app, images.app, compression="none", has_manifest=True)
        assert all(la.digest == la.diff_id for la in app.layers)


@requires_image_tools
def test_docker_25_0_0_manifest_without_layers(images: ImageSet, tmp_path: Path) -> None:
    """docker 25.0.0 wrote OCI manifests with no layers; manifest.json has them."""
    layout = export(images.app, "oci", tmp_path / "layout", "none")
    saved = docker_current_archive(layout, tmp_path / "saved.tar")
    members = tar_members(saved)
    index = json.loads(members["index.json"])
    desc = index["manifests"][0]
    manifest = json.loads(members["blobs/sha256/" + desc["digest"][7:]])
    manifest["layers"] = []
    empty = json.dumps(manifest).encode()
    desc["digest"], desc["size"] = sha256(empty), len(empty)
    members["blobs/sha256/" + sha256(empty)[7:]] = empty
    members["index.json"] = json.dumps(index).encode()
    path = write_tar(tmp_path / "bad-save.tar", members)
    with open_image_source(path) as found:
        (image,) = found
        check_image(image, images.app, compression="none", has_manifest=False)
        assert all(la.digest == la.diff_id for la in image.layers)


@requires_image_tools
def test_docker_legacy_layout_with_symlinked_layers(images: ImageSet, tmp_path: Path) -> None:
    """Legacy docker save names ``<id>/layer.tar`` files, which are symlinks to the
    layer a directory shares with another; they are followed inside the archive."""
    path = export(images.app, "docker-archive", tmp_path / "app.tar", "none")
    members = tar_members(path)
    links = tar_links(path)
    by_target = {posix_join_dir(name, target): name for name, target in links.items()}
    manifest = json.loads(members["manifest.json"])
    manifest[0]["Layers"] = [by_target[layer] for layer in manifest[0]["Layers"]]
    assert all(layer.endswith("/layer.tar") for layer in manifest[0]["Layers"])
    members["manifest.json"] = json.dumps(manifest).encode()
    legacy = write_tar(tmp_path / "legacy.tar", members, symlinks=links)
    with open_image_source(legacy) as found:
        (image,) = found
        check_image(image, images.app, compression="none", has_manifest=False)


@requires_image_tools
def test_unpacked_docker_archive_directory(images: ImageSet, tmp_path: Path) -> None:
    """A docker save archive unpacked into a directory reads as the archive does;
    its layer.tar symlinks lead inside the directory."""
    path = export(images.base, "docker-archive", tmp_path / "base.tar", "none")
    unpacked = tmp_path / "unpacked"
    with tarfile.open(path) as tar:
        for info in tar:
            target = unpacked / info.name
            target.parent.mkdir(parents=True, exist_ok=True)
            if info.issym():
                target.symlink_to(info.linkname)
            elif info.isreg():
                f = tar.extractfile(info)
                assert f is not None
                target.write_bytes(f.read())
    with open_image_source(unpacked) as found:
        (image,) = found
        assert image.names == (BASE_TAG,)
        check_image(image, images.base, compression="none", has_manifest=False)


@requires_image_tools
def test_readers_are_independent(images: ImageSet, tmp_path: Path) -> None:
    """Readers interleave, and work from another thread; none outlives the source."""
    path = export(images.app, "docker-archive", tmp_path / "app.tar.gz", "gzip")
    with open_image_source(path) as found:
        (image,) = found
        wanted = [read_layer(la) for la in image.layers]
        with image.layers[0].open() as a, image.layers[1].open() as b:
            got_a, got_b = bytearray(), bytearray()
            while True:
                chunk_a, chunk_b = a.read(4096), b.read(4096)
                if not chunk_a and not chunk_b:
                    break
                got_a += chunk_a
                got_b += chunk_b
        assert [bytes(got_a), bytes(got_b)] == wanted[:2]
        results: list[bytes] = []
        worker = threading.Thread(target=lambda: results.append(read_layer(image.layers[3])))
        worker.start()
        worker.join()
        assert results == [wanted[3]]
        layer = image.layers[0]
    with pytest.raises(ValueError, match="closed"):
        read_layer(layer)


@requires_image_tools
def test_images_are_as_documented(images: ImageSet, tmp_path: Path) -> None:
    """What tests/images.py promises of the test images, seen through umoci's
    unpack (the reference merged view)."""
    layout = export(images.app, "oci", tmp_path / "layout", "gzip")
    rootfs = umoci_unpack(layout, APP_TAG, tmp_path / "bundle")
    assert (rootfs / "usr/bin/tool").stat().st_mode & 0o7777 == 0o4755
    assert (rootfs / "usr/bin/tool-alias").readlink() == Path("tool")
    assert (rootfs / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert (rootfs / "srv/shared").stat().st_mode & 0o7777 == 0o2775
    data = (rootfs / "srv/data").stat()
    assert (data.st_uid, data.st_gid) == (1000, 1000)
    assert not (rootfs / "srv/data/one").exists()
    assert (rootfs / "srv/data/one-again").read_text() == "one\n"
    assert not (rootfs / "etc/gone").exists()
    assert not (rootfs / "etc/conf.d/b.conf").exists()
    assert sorted(p.name for p in (rootfs / "d").iterdir()) == ["new"]
    assert (rootfs / "app/main").exists()
    assert (rootfs / "bin/ls").readlink() == Path("/bin/busybox")
    if images.xattr_in_context:
        assert os.getxattr(rootfs / "etc/motd", "user.origin") == b"base"
    config = json.loads(open_config_bytes(layout))
    assert any(h.get("empty_layer") for h in config["history"])
    assert config["config"]["WorkingDir"] == "/srv"


def open_config_bytes(layout: Path) -> bytes:
    with open_image_source(layout) as found:
        return found[0].config


# --------------------------------------------------------------------------- tar tools


def tar_members(path: Path) -> dict[str, bytes]:
    """Regular files of a tar, by name."""
    out = {}
    with tarfile.open(path) as tar:
        for info in tar:
            if info.isreg():
                f = tar.extractfile(info)
                assert f is not None
                out[info.name] = f.read()
    return out


def tar_links(path: Path) -> dict[str, str]:
    with tarfile.open(path) as tar:
        return {info.name: info.linkname for info in tar if info.issym()}


def posix_join_dir(name: str, target: str) -> str:
    return posixpath.normpath(posixpath.join(posixpath.dirname(name), target))


def write_tar(
    path: Path,
    files: dict[str, bytes],
    symlinks: dict[str, str] | None = None,
    hardlinks: dict[str, str] | None = None,
) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for kind, links in ((tarfile.SYMTYPE, symlinks), (tarfile.LNKTYPE, hardlinks)):
            for name, target in (links or {}).items():
                info = tarfile.TarInfo(name)
                info.type, info.linkname = kind, target
                tar.addfile(info)
    return path


# --------------------------------------------------------------------------- hand-made


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def config_for(layers: Iterable[bytes]) -> bytes:
    return json.dumps(
        {
            "architecture": host_architecture(),
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256(la) for la in layers]},
        }
    ).encode()


@dataclass
class DockerArchive:
    """A small legacy docker save archive: config ``<hex>.json``, layers
    ``<n>/layer.tar``, to be changed before writing."""

    files: dict[str, bytes]
    manifest: list[dict[str, Any]]
    symlinks: dict[str, str]
    hardlinks: dict[str, str]

    @classmethod
    def make(cls) -> DockerArchive:
        layers = [layer_tar({"a": b"1"}), layer_tar({"b": b"2"})]
        config = config_for(layers)
        files = {f"{sha256(config)[7:]}.json": config}
        for n, data in enumerate(layers):
            files[f"{n}/layer.tar"] = data
        manifest = [
            {
                "Config": f"{sha256(config)[7:]}.json",
                "RepoTags": ["hand/made:1"],
                "Layers": [f"{n}/layer.tar" for n in range(len(layers))],
            }
        ]
        return cls(files, manifest, {}, {})

    def write(self, path: Path) -> Path:
        files = {"manifest.json": json.dumps(self.manifest).encode(), **self.files}
        return write_tar(path, files, self.symlinks, self.hardlinks)


def refused(path: Path, match: str) -> None:
    with pytest.raises(UnionfsError, match=match) as info, open_image_source(path):
        pass
    assert "\n" not in info.value.message


def test_hand_made_docker_archive_is_read(tmp_path: Path) -> None:
    archive = DockerArchive.make()
    with open_image_source(archive.write(tmp_path / "a.tar")) as found:
        (image,) = found
        assert image.names == ("hand/made:1",)
        assert [read_layer(la) for la in image.layers] == [
            archive.files["0/layer.tar"],
            archive.files["1/layer.tar"],
        ]


def test_hard_linked_layer_is_followed(tmp_path: Path) -> None:
    archive = DockerArchive.make()
    archive.hardlinks["2/layer.tar"] = "1/layer.tar"
    archive.manifest[0]["Layers"][1] = "2/layer.tar"
    with open_image_source(archive.write(tmp_path / "a.tar")) as found:
        assert read_layer(found[0].layers[1]) == archive.files["1/layer.tar"]


def test_missing_path(tmp_path: Path) -> None:
    refused(tmp_path / "nothing.tar", "no such file or directory")


@pytest.mark.parametrize(
    "content",
    [b"", b"just some text\n" * 100, gzip.compress(b"not a tar" * 100)],
    ids=["empty", "text", "gzipped-text"],
)
def test_not_an_archive(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "file.tar"
    path.write_bytes(content)
    refused(path, NOT_RECOGNISED)


def test_a_tar_of_something_else(tmp_path: Path) -> None:
    refused(write_tar(tmp_path / "x.tar", {"etc/passwd": b"root:x:0:0\n"}), NOT_RECOGNISED)


def test_an_empty_directory(tmp_path: Path) -> None:
    refused(tmp_path, NOT_RECOGNISED)


@pytest.mark.parametrize(
    ("manifest", "match"),
    [
        (b"{not json", "manifest.json is not valid JSON"),
        (b'{"Config": "x"}', "malformed manifest.json: not a list"),
        (b'[{"Config": "c.json", "Layers": "0/layer.tar"}]', "Layers is not a list"),
        (b'[{"Config": 7, "Layers": []}]', "Config is not a path"),
    ],
)
def test_malformed_manifest_json(tmp_path: Path, manifest: bytes, match: str) -> None:
    path = write_tar(tmp_path / "a.tar", {"manifest.json": manifest, "c.json": b"{}"})
    refused(path, match)


@pytest.mark.parametrize(
    ("index", "match"),
    [
        (b"[", "index.json is not valid JSON"),
        (b'{"schemaVersion": 2}', "malformed index.json: no manifests list"),
        (b'{"manifests": [{"mediaType": "x"}]}', "descriptor has no digest"),
        (b'{"manifests": [{"digest": "md5:00"}]}', "unsupported digest"),
    ],
)
def test_malformed_index_json(tmp_path: Path, index: bytes, match: str) -> None:
    path = write_tar(tmp_path / "a.tar", {"oci-layout": b"{}", "index.json": index})
    refused(path, match)


@pytest.mark.parametrize("where", ["Config", "Layers"])
def test_escaping_path_in_manifest_json(tmp_path: Path, where: str) -> None:
    archive = DockerArchive.make()
    if where == "Config":
        archive.manifest[0]["Config"] = "../../etc/passwd"
    else:
        archive.manifest[0]["Layers"][0] = "0/../../secret.tar"
    refused(archive.write(tmp_path / "a.tar"), "names a path outside it")


def test_symlink_out_of_the_archive(tmp_path: Path) -> None:
    archive = DockerArchive.make()
    del archive.files["1/layer.tar"]
    archive.symlinks["1/layer.tar"] = "../../../etc/passwd"
    refused(archive.write(tmp_path / "a.tar"), "outside the archive")


def test_symlink_loop(tmp_path: Path) -> None:
    archive = DockerArchive.make()
    del archive.files["1/layer.tar"]
    archive.symlinks["1/layer.tar"] = "../2/layer.tar"
    archive.symlinks["2/layer.tar"] = "../1/layer.tar"
    refused(archive.write(tmp_path / "a.tar"), "link loop")


def test_missing_layer_in_docker_archive(tmp_path: Path) -> None:
    archive = DockerArchive.make()
    del archive.files["1/layer.tar"]
    refused(archive.write(tmp_path / "a.tar"), r"layer 1/layer\.tar is missing")


def test_config_digest_mismatch_in_docker_archive(tmp_path: Path) -> None:
    archive = DockerArchive.make()
    name = archive.manifest[0]["Config"]
    archive.files[name] = archive.files[name].replace(b'"os"', b'"os" ')
    refused(archive.write(tmp_path / "a.tar"), "config digest mismatch")


def test_layer_count_differs_from_diff_ids(tmp_path: Path) -> None:
    archive = DockerArchive.make()
    archive.manifest[0]["Layers"].pop()
    refused(archive.write(tmp_path / "a.tar"), "has 1 layers but its config lists 2 diff_ids")


def test_truncated_archive(tmp_path: Path) -> None:
    path = DockerArchive.make().write(tmp_path / "a.tar")
    data = path.read_bytes()
    cut = data.index(layer_tar({"b": b"2"})[:100]) + 600
    path.write_bytes(data[:cut])
    with pytest.raises(UnionfsError), open_image_source(path) as found:
        for image in found:
            for layer in image.layers:
                read_layer(layer)


# --------------------------------------------------------------------------- broken OCI


@dataclass
class Layout:
    """An OCI layout dir to break, and its one image's documents."""

    root: Path
    index: dict[str, Any]
    manifest_digest: str
    manifest: dict[str, Any]

    @classmethod
    def of(cls, root: Path) -> Layout:
        index = json.loads((root / "index.json").read_bytes())
        digest = index["manifests"][0]["digest"]
        return cls(root, index, digest, json.loads(cls.blob_at(root, digest).read_bytes()))

    @staticmethod
    def blob_at(root: Path, digest: str) -> Path:
        return root / "blobs" / "sha256" / digest.removeprefix("sha256:")

    def blob(self, digest: str) -> Path:
        return self.blob_at(self.root, digest)

    def add_blob(self, data: bytes) -> str:
        self.blob(sha256(data)).write_bytes(data)
        return sha256(data)

    def write_index(self, manifests: list[dict[str, Any]]) -> None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        (self.root / "index.json").write_text(json.dumps(index))


@pytest.fixture
def layout(images: ImageSet, tmp_path: Path) -> Layout:
    return Layout.of(export(images.app, "oci", tmp_path / "layout", "gzip"))


@requires_image_tools
def test_missing_layer_blob(layout: Layout) -> None:
    digest = layout.manifest["layers"][2]["digest"]
    layout.blob(digest).unlink()
    refused(layout.root, f"layer blob {digest} is missing")


@requires_image_tools
def test_missing_manifest_blob(layout: Layout) -> None:
    layout.blob(layout.manifest_digest).unlink()
    refused(layout.root, f"manifest blob {layout.manifest_digest} is missing")


@requires_image_tools
def test_config_digest_mismatch(layout: Layout) -> None:
    config = layout.blob(layout.manifest["config"]["digest"])
    config.write_bytes(config.read_bytes().replace(b'"os"', b' "os"'))
    refused(layout.root, "config digest mismatch")


@requires_image_tools
def test_manifest_digest_mismatch(layout: Layout) -> None:
    blob = layout.blob(layout.manifest_digest)
    blob.write_bytes(blob.read_bytes() + b"\n")
    refused(layout.root, "manifest digest mismatch")


@requires_image_tools
def test_layer_size_differs_from_manifest(layout: Layout) -> None:
    blob = layout.blob(layout.manifest["layers"][0]["digest"])
    with open(blob, "ab") as f:
        f.write(b"\0")
    refused(layout.root, "bytes, the manifest says")


@requires_image_tools
def test_blob_linked_out_of_the_layout(layout: Layout, tmp_path: Path) -> None:
    blob = layout.blob(layout.manifest["layers"][0]["digest"])
    outside = tmp_path / "elsewhere"
    shutil.move(blob, outside)
    blob.symlink_to(outside)
    refused(layout.root, "leads outside the layout")


def platform_entry(digest: str, size: int, arch: str, variant: str = "") -> dict[str, Any]:
    plat = {"architecture": arch, "os": "linux"} | ({"variant": variant} if variant else {})
    return {"mediaType": OCI_MANIFEST, "digest": digest, "size": size, "platform": plat}


def other_architectures() -> list[tuple[str, str]]:
    return [
        (a, v)
        for a, v in (("s390x", ""), ("arm", "v7"), ("riscv64", ""))
        if a != host_architecture()
    ]


def attestation_entry(layout: Layout) -> dict[str, Any]:
    digest = layout.add_blob(b'{"schemaVersion": 2, "layers": []}')
    return {
        "mediaType": OCI_MANIFEST,
        "digest": digest,
        "size": 34,
        "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
        "platform": {"architecture": "unknown", "os": "unknown"},
    }


@requires_image_tools
@pytest.mark.parametrize(
    "index_type", [OCI_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json"]
)
def test_multi_platform_index_gives_the_host_image(
    layout: Layout, images: ImageSet, index_type: str
) -> None:
    """An index of platforms (other platforms' blobs absent, as ``docker save``
    leaves them) with an attestation manifest: the host's image is chosen."""
    size = layout.blob(layout.manifest_digest).stat().st_size
    entries = [
        platform_entry(sha256(arch.encode()), 500, arch, v) for arch, v in other_architectures()
    ]
    entries.insert(1, platform_entry(layout.manifest_digest, size, host_architecture(), "v8"))
    entries.append(attestation_entry(layout))
    nested = json.dumps({"schemaVersion": 2, "mediaType": index_type, "manifests": entries})
    digest = layout.add_blob(nested.encode())
    layout.write_index(
        [
            {
                "mediaType": index_type,
                "digest": digest,
                "size": len(nested),
                "annotations": {"org.opencontainers.image.ref.name": "example.org/multi:1"},
            }
        ]
    )
    with open_image_source(layout.root) as found:
        (image,) = found
        assert image.names == ("example.org/multi:1",)
        check_image(image, images.app, compression="gzip", has_manifest=True)


@requires_image_tools
def test_multi_platform_index_without_the_host(layout: Layout) -> None:
    entries = [
        platform_entry(sha256(arch.encode()), 500, arch, v) for arch, v in other_architectures()
    ]
    entries.append(attestation_entry(layout))
    nested = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})
    digest = layout.add_blob(nested.encode())
    layout.write_index([{"mediaType": OCI_INDEX, "digest": digest, "size": len(nested)}])
    listed = ", ".join(
        f"linux/{arch}/{v}" if v else f"linux/{arch}" for arch, v in other_architectures()
    )
    refused(layout.root, f"has no linux/{host_architecture()} image; it has: {listed}$")


@requires_image_tools
def test_index_of_attestations_only(layout: Layout) -> None:
    layout.write_index([attestation_entry(layout)])
    refused(layout.root, "holds no image")
