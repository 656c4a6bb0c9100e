"""Write an image of the store in a form other tools load: ``unionfs image export``.

Three forms, each what the reference tools write and read:

``oci``
    An OCI image layout directory: ``oci-layout``, ``index.json`` with one manifest
    descriptor, ``blobs/sha256/<hex>``. The blobs are the store's own: manifest and
    config byte for byte (so the manifest digest and the image ID stay the same),
    layers as they were imported (gzip, zstd or plain). They are hard-linked from the
    store where it is on the same filesystem, else copied. Sharing the inode is
    safe because blobs are content-addressed and never rewritten in place: the
    store creates a blob whole (rename) and removes it (unlink), and tools that
    add to a layout write a new file and rename it over the name, which leaves the
    store's inode alone. An export keeps its blobs if the store drops them later.
``oci-archive``
    The same layout in a tar: ``oci-layout`` and ``index.json`` first, then the
    manifest, the config and the layers in manifest order.
``docker-archive``
    What ``docker save`` wrote before docker 25 (and ``docker load`` still reads),
    which ``podman load`` and ``skopeo copy docker-archive:`` read too, in this
    order: ``manifest.json`` (``Config``, ``RepoTags``, ``Layers``),
    ``repositories``, ``<config hex>.json``, and per layer ``<v1 id>/VERSION``,
    ``<v1 id>/json`` and ``<v1 id>/layer.tar``. Layers in this form are plain
    tars, whose sha256 is the diff_id: each blob is decompressed while it is
    written, and its hash compared with the diff_id. A layer that appears twice in
    an image is written once; its second ``layer.tar`` is a symlink to the first,
    as docker writes it.

The index descriptor (``oci``) and ``RepoTags`` (``docker-archive``) name the image
by one reference, as ``docker save NAME:TAG`` does: the ``--tag`` given, else the
tag the image was asked for by, else the image's first tag; an image with no tag
goes unnamed. In the index it is named the way docker and
containerd write it: ``io.containerd.image.name`` = ``NAME:TAG`` and
``org.opencontainers.image.ref.name`` = ``TAG``.

Archives are deterministic: the same image gives the same bytes (owners 0, times
0, a fixed order). Nothing is written at the destination until the result is
complete: it is built under a temporary name next to it and then renamed into
place, so an error or an interruption leaves nothing behind. A destination that
exists is never replaced (an empty directory may receive an ``oci`` layout).

The tar writer and the copying of store blobs are `unionfs.image.tarwriter`.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import zstandard

from unionfs.errors import UnionfsError
from unionfs.image import refs
from unionfs.image.decompress import detect_compression
from unionfs.image.refs import Reference
from unionfs.image.sources import (
    ANNOTATION_CONTAINERD_NAME,
    ANNOTATION_REF_NAME,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
)
from unionfs.image.tarwriter import StoreBlob, TarWriter, copy_into
from unionfs.store.records import SHA256, ImageRecord, hex_of, short_id
from unionfs.store.store import Store

FORMATS = ("oci", "oci-archive", "docker-archive")
"""The forms :func:`export_image` writes."""

OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
_ARCHIVE_FORMATS = frozenset({"oci-archive", "docker-archive"})
# Where a hard link cannot be made, the blob is copied instead.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})


@dataclass(frozen=True)
class Exported:
    """What :func:`export_image` wrote."""

    path: Path
    format: str
    image: ImageRecord
    reference: Reference | None
    """The name the export gives the image, or None if it has none."""
    size: int
    """Bytes written: the archive, or the layout's files (hard links counted)."""
    linked: int
    """Blobs hard-linked from the store (``oci`` only); the rest were copied."""


def export_image(
    store: Store, image_text: str, fmt: str, dest: Path, *, tag: Reference | None = None
) -> Exported:
    """Write the image `image_text` names (NAME[:TAG], ID or ID prefix) as `fmt`
    (one of :data:`FORMATS`) at `dest`, named `tag` if given.

    `dest` must not exist; for ``oci`` it may also be an empty directory.
    Raises :class:`UnionfsError` for an unknown format, a destination that is in
    the way, an image or blob the store lacks, or a layer that does not match its
    diff_id; nothing is left at `dest` then.
    """
    if fmt not in FORMATS:
        raise UnionfsError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    dest = Path(os.path.abspath(dest))
    if not dest.name:
        raise UnionfsError(f"cannot export to {dest}: give a path to create")
    _check_destination(dest, fmt)
    image = store.resolve_image(image_text)
    reference = tag if tag is not None else _default_reference(store, image, image_text)
    with contextlib.ExitStack() as stack:
        source = _open_source(store, image, reference, stack)
        if fmt == "oci":
            with _staged_dir(dest) as tmp:
                size, linked = _write_layout(source, tmp)
        else:
            linked = 0
            with _staged_file(dest) as f:
                writer = TarWriter(f)
                if fmt == "oci-archive":
                    _write_oci_archive(source, writer)
                else:
                    _write_docker_archive(source, writer)
                size = writer.close()
    return Exported(dest, fmt, image, reference, size, linked)


def _default_reference(store: Store, image: ImageRecord, text: str) -> Reference | None:
    """The tag `text` names if it is one of the image's, else its first tag."""
    tags = store.tags_of(image.id)
    name, tag, digest = refs.split_reference(text)
    if digest is None and refs.is_valid_name(name):
        given = Reference(name, tag or refs.DEFAULT_TAG)
        if given in tags:
            return given
    return tags[0] if tags else None


# --------------------------------------------------------------------------- destination


def _check_destination(dest: Path, fmt: str) -> None:
    """Refuse early what the final rename would refuse late."""
    parent = dest.parent
    if not parent.is_dir():
        raise UnionfsError(f"{dest}: the directory {parent} does not exist")
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return
    if fmt in _ARCHIVE_FORMATS:
        raise UnionfsError(f"{dest} exists: give a path that does not (it is never replaced)")
    if not stat.S_ISDIR(st.st_mode):
        raise UnionfsError(f"{dest} exists and is not a directory")
    with os.scandir(dest) as entries:
        if any(entries):
            raise UnionfsError(f"{dest} is not empty: give a new or an empty directory")


def _temp_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.tmp")


@contextlib.contextmanager
def _staged_dir(dest: Path) -> Iterator[Path]:
    """A fresh directory next to `dest`, renamed onto it when the block succeeds
    (which replaces an empty directory only), removed when it fails."""
    tmp = _temp_name(dest)
    os.mkdir(tmp, 0o755)
    try:
        yield tmp
        _fsync_dir(tmp)
        try:
            os.rename(tmp, dest)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise UnionfsError(f"{dest} is not empty (it was filled meanwhile)") from None
            if e.errno == errno.ENOTDIR:
                raise UnionfsError(f"{dest} exists and is not a directory") from None
            raise
        _fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _staged_file(dest: Path) -> Iterator[BinaryIO]:
    """A fresh file next to `dest`, given the name `dest` when the block succeeds
    (never over a file that appeared meanwhile), removed when it fails."""
    tmp = _temp_name(dest)
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "w+b") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _link_into_place(tmp, dest)
        _fsync_dir(dest.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _link_into_place(tmp: Path, dest: Path) -> None:
    """Give `tmp` the name `dest` unless something has that name (link(2) refuses
    to replace; a filesystem without hard links gets a checked rename)."""
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise UnionfsError(f"{dest} exists (it appeared meanwhile); nothing written") from None
    except OSError as e:
        if e.errno not in _NO_LINK:
            raise
        if os.path.lexists(dest):
            raise UnionfsError(f"{dest} exists (it appeared meanwhile); nothing written") from None
        os.rename(tmp, dest)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- source


@dataclass(frozen=True)
class _Source:
    """Everything an export reads from the store, checked and opened."""

    image: ImageRecord
    reference: Reference | None
    manifest: bytes
    manifest_type: str
    config: bytes
    config_doc: dict[str, Any]
    blobs: dict[str, StoreBlob]
    """Manifest, config and layer blobs by digest."""
    layers: tuple[tuple[str, str], ...]
    """(diff_id, blob digest) of each layer, bottom first."""

    manifest_digest: str
    """The manifest of the tag exported (`ImageRecord.manifest_for`)."""

    def platform(self) -> dict[str, str]:
        """The index descriptor's platform, from the config."""
        keys = ("architecture", "os", "variant")
        return {k: v for k in keys if isinstance(v := self.config_doc.get(k), str) and v}


def _open_source(
    store: Store, image: ImageRecord, reference: Reference | None, stack: contextlib.ExitStack
) -> _Source:
    """Open every blob of `image` and check the manifest against the image record."""
    label = f"image {short_id(image.id)}"
    blobs: dict[str, StoreBlob] = {}

    def open_blob(digest: str, what: str) -> StoreBlob:
        if digest in blobs:
            return blobs[digest]
        path = store.blob_path(digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise UnionfsError(
                f"{label}: the {what} blob {digest} is missing from the store "
                "(import the image again to restore it)"
            ) from None
        f = stack.enter_context(os.fdopen(fd, "rb"))
        blob = StoreBlob(digest, os.fstat(fd).st_size, path, f)
        blobs[digest] = blob
        return blob

    def read_small(digest: str, what: str) -> bytes:
        data = open_blob(digest, what).file.read()
        if SHA256 + hashlib.sha256(data).hexdigest() != digest:
            raise UnionfsError(f"{label}: the store's {what} blob {digest} is damaged")
        return data

    manifest_digest = image.manifest_for(reference)
    manifest = read_small(manifest_digest, "manifest")
    config = read_small(image.id, "config")
    try:
        doc = json.loads(manifest)
        config_doc = json.loads(config)
        manifest_type = doc.get("mediaType") or OCI_MANIFEST
        config_digest = doc["config"]["digest"]
        layer_digests = [layer["digest"] for layer in doc["layers"]]
        layer_sizes = [layer.get("size") for layer in doc["layers"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UnionfsError(f"{label}: the store's manifest is not an image manifest") from None
    if (
        manifest_type not in MANIFEST_TYPES
        or config_digest != image.id
        or layer_digests != list(image.layer_blobs_for(reference))
        or len(layer_digests) != len(image.layers)
        or not isinstance(config_doc, dict)
    ):
        raise UnionfsError(f"{label}: the store's manifest does not match the image record")
    for i, (digest, size) in enumerate(zip(layer_digests, layer_sizes, strict=True)):
        blob = open_blob(digest, f"layer {i + 1}")
        if blob.size != size:
            raise UnionfsError(
                f"{label}: layer {i + 1} blob {digest} is {blob.size} bytes, "
                f"the manifest says {size}"
            )
    return _Source(
        image=image,
        reference=reference,
        manifest=manifest,
        manifest_type=manifest_type,
        config=config,
        config_doc=config_doc,
        blobs=blobs,
        layers=tuple(zip(image.diff_ids, layer_digests, strict=True)),
        manifest_digest=manifest_digest,
    )


# --------------------------------------------------------------------------- OCI


def _index_json(source: _Source) -> bytes:
    descriptor: dict[str, Any] = {
        "mediaType": source.manifest_type,
        "digest": source.manifest_digest,
        "size": len(source.manifest),
    }
    if source.reference is not None:
        descriptor["annotations"] = {
            ANNOTATION_CONTAINERD_NAME: str(source.reference),
            ANNOTATION_REF_NAME: source.reference.tag,
        }
    platform = source.platform()
    if platform:
        descriptor["platform"] = platform
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [descriptor]}
    return _compact_json(index)


def _layout_blob_order(source: _Source) -> list[StoreBlob]:
    """Manifest, config, then layers bottom first; each blob once."""
    order = [source.manifest_digest, source.image.id, *(d for _, d in source.layers)]
    return [source.blobs[d] for d in dict.fromkeys(order)]


def _write_layout(source: _Source, root: Path) -> tuple[int, int]:
    """Fill the empty dir `root` with the OCI layout; returns (bytes, blobs linked)."""
    blob_dir = root / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, mode=0o755)
    size = linked = 0
    for blob in _layout_blob_order(source):
        target = blob_dir / hex_of(blob.digest)
        if _link_or_copy(blob, target):
            linked += 1
        size += blob.size
    index = _index_json(source)
    for name, data in (("oci-layout", OCI_LAYOUT), ("index.json", index)):
        _write_small_file(root / name, data)
        size += len(data)
    _fsync_dir(blob_dir)
    return size, linked


def _link_or_copy(blob: StoreBlob, target: Path) -> bool:
    """Hard-link the store's blob to `target`, or copy it from the open file.
    Returns whether it was linked."""
    try:
        os.link(blob.path, target)
    except FileNotFoundError:
        pass  # removed from the store since it was opened: the open file still reads
    except OSError as e:
        if e.errno not in _NO_LINK:
            raise
    else:
        return True
    src = blob.rewind()
    with open(target, "xb") as out:
        copied = copy_into(src.fileno(), out.fileno(), blob.size, 0)
        out.flush()
        os.fsync(out.fileno())
    if copied != blob.size:
        raise UnionfsError(f"blob {blob.digest}: read {copied} of {blob.size} bytes")
    return False


def _write_small_file(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_oci_archive(source: _Source, tar: TarWriter) -> None:
    tar.add_bytes("oci-layout", OCI_LAYOUT)
    tar.add_bytes("index.json", _index_json(source))
    tar.add_dir("blobs")
    tar.add_dir("blobs/sha256")
    for blob in _layout_blob_order(source):
        tar.add_file(f"blobs/sha256/{hex_of(blob.digest)}", blob)


# --------------------------------------------------------------------------- docker


def chain_ids(diff_ids: tuple[str, ...] | list[str]) -> list[str]:
    """The ChainID of each layer (image-spec): the first is its diff_id, each next one
    ``sha256(previous ChainID + " " + diff_id)``."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            text = f"{out[-1]} {diff_id}".encode()
            out.append(SHA256 + hashlib.sha256(text).hexdigest())
    return out


# The config fields docker and skopeo copy into the top layer's legacy ``json``.
_V1_TOP_FIELDS = (
    "architecture",
    "config",
    "container",
    "container_config",
    "created",
    "docker_version",
    "os",
)


def _legacy_layers(source: _Source) -> list[tuple[str, bytes]]:
    """(v1 id, ``json`` bytes) of each layer, bottom first.

    The legacy format names each layer directory by a v1 image ID. Loaders give
    images new IDs and only need these to be unique and free of loops; like skopeo,
    each is the sha256 of the layer's legacy JSON with its ChainID (and its parent
    ID) in it, so the top one depends on the config too.
    """
    out: list[tuple[str, bytes]] = []
    parent = ""
    chains = chain_ids([d for d, _ in source.layers])
    for i, chain in enumerate(chains):
        legacy: dict[str, Any] = {}
        if parent:
            legacy["parent"] = parent
        if i == len(chains) - 1:
            for key in _V1_TOP_FIELDS:
                legacy[key] = source.config_doc.get(key)
        v1_id = hashlib.sha256(_compact_json({**legacy, "layer_id": chain})).hexdigest()
        legacy["id"] = v1_id
        out.append((v1_id, _compact_json(legacy)))
        parent = v1_id
    return out


def _write_docker_archive(source: _Source, tar: TarWriter) -> None:
    legacy = _legacy_layers(source)
    config_name = f"{hex_of(source.image.id)}.json"
    layer_paths = [f"{v1_id}/layer.tar" for v1_id, _ in legacy]
    ref = source.reference
    manifest = [
        {"Config": config_name, "RepoTags": [str(ref)] if ref else [], "Layers": layer_paths}
    ]
    tar.add_bytes("manifest.json", _compact_json(manifest))
    if ref is not None and legacy:
        repositories = {ref.name: {ref.tag: legacy[-1][0]}}
        tar.add_bytes("repositories", _compact_json(repositories))
    tar.add_bytes(config_name, source.config)
    written: dict[str, str] = {}  # diff_id -> the layer.tar that holds it
    for i, ((v1_id, legacy_json), (diff_id, digest)) in enumerate(
        zip(legacy, source.layers, strict=True)
    ):
        tar.add_dir(v1_id)
        tar.add_bytes(f"{v1_id}/VERSION", b"1.0")
        tar.add_bytes(f"{v1_id}/json", legacy_json)
        if diff_id in written:
            tar.add_symlink(f"{v1_id}/layer.tar", f"../{written[diff_id]}")
            continue
        blob = source.blobs[digest]
        what = f"image {short_id(source.image.id)}: layer {i + 1} ({blob.digest})"
        with _uncompressed(blob) as stream:
            sha = tar.add_stream(f"{v1_id}/layer.tar", stream, what)
        if sha != diff_id:
            raise UnionfsError(
                f"{what} uncompresses to {sha}, not its diff_id {diff_id}: "
                "the store's blob is damaged"
            )
        written[diff_id] = f"{v1_id}/layer.tar"


@contextlib.contextmanager
def _uncompressed(blob: StoreBlob) -> Iterator[BinaryIO]:
    """The layer tar inside `blob`, decompressed by what its magic bytes say."""
    f = blob.rewind()
    kind = detect_compression(f.read(8))
    f.seek(0)
    if kind == "gzip":
        with gzip.GzipFile(fileobj=f, mode="rb") as g:
            yield cast(BinaryIO, g)  # a binary reader
    elif kind == "zstd":
        dctx = zstandard.ZstdDecompressor()
        with dctx.stream_reader(f, read_across_frames=True, closefd=False) as z:
            yield z
    else:
        yield f


def _compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
