"""Read the image sources that ``unionfs image import PATH`` accepts.

Four forms, told apart by their content, never by the file name:

* a docker save archive of the legacy generation: ``manifest.json`` (``Config``,
  ``RepoTags``, ``Layers``), with ``<id>/layer.tar``, ``<id>/json``, ``repositories``;
  podman and skopeo write a variant whose layers are ``<sha256>.tar``;
* a docker save archive of the current generation (docker 25 and later): an OCI
  image layout plus a ``manifest.json`` whose paths are ``blobs/sha256/<hex>``;
* an OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/``);
* an oci-archive: a tar of an OCI image layout.

How the files of a directory or a (possibly compressed) tar are reached, read in
place and kept from leaving the source is `unionfs.image.sourcefiles`; this
module reads the documents in them and finds the images.

What is verified here: every JSON document's shape, the digests of index-named
manifests and of configs, that each layer blob is present (and of its declared
size), that the number of layers matches the config's ``rootfs.diff_ids``, and that
no path named by the source leaves it. What is not: the layer bytes themselves. A
reader of :attr:`SourceLayer.open` hashes what it reads and compares with
:attr:`SourceLayer.digest` and :attr:`SourceLayer.diff_id`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from unionfs.errors import UnionfsError
from unionfs.image.sourcefiles import (
    NOT_RECOGNISED,
    SourceBlob,
    SourceFiles,
    archive_name,
    open_files,
)

log = logging.getLogger(__name__)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})

ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
# BuildKit marks the attestation manifests it adds to an index with this annotation;
# they describe an image, they are not one.
ANNOTATION_REFERENCE_TYPE = "vnd.docker.reference.type"

_NESTING_LIMIT = 4  # index -> index -> ... -> manifest
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_BLOB_PATH_RE = re.compile(r"blobs/sha256/([0-9a-f]{64})")
_CONFIG_PATH_RE = re.compile(r"([0-9a-f]{64})\.json")
# A ref name with no repository: a tag, as skopeo's oci:DIR:TAG writes it.
_BARE_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

# Go's GOARCH names, as image platforms use them.
_ARCHITECTURES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "i386": "386",
    "i686": "386",
    "armv7l": "arm",
    "armv6l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


@dataclass(frozen=True)
class SourceLayer:
    """One layer of a source image, bottom first in :attr:`SourceImage.layers`."""

    digest: str | None
    """``sha256:…`` of the blob as the manifest names it; None when the source does
    not say (legacy docker archives name layer files, not digests)."""
    media_type: str
    """As declared ("" if none); never trusted for compression: read the magic."""
    size: int | None
    """The declared size of the blob, if any (it was checked against the blob)."""
    diff_id: str
    """``sha256:…`` of the uncompressed tar, from the config's ``rootfs.diff_ids``."""
    open: Callable[[], contextlib.AbstractContextManager[BinaryIO]]
    """A fresh sequential reader of the blob bytes, valid while the source is open.
    Each call gives an independent reader; a reader may be used from any thread."""


@dataclass(frozen=True)
class SourceImage:
    """One image found in a source."""

    config: bytes
    """The config JSON bytes exactly as stored (their sha256 is the image ID)."""
    config_digest: str
    """``sha256:`` + sha256(config); equal to the manifest's config descriptor."""
    manifest: bytes | None
    """The OCI or docker schema 2 manifest bytes as stored; None when the source has
    none (legacy docker archives)."""
    manifest_digest: str | None
    """sha256 of :attr:`manifest`, equal to the index descriptor that named it."""
    layers: tuple[SourceLayer, ...]
    """Bottom layer first; one per config ``rootfs.diff_ids`` entry."""
    names: tuple[str, ...]
    """References the source gives the image, as found, without repeats: RepoTags of
    ``manifest.json`` first, then the index annotations ``io.containerd.image.name``
    and ``org.opencontainers.image.ref.name``; a ref name that is a bare tag
    (``1.0``, as skopeo writes) becomes ``localhost/<source name>:1.0``."""
    ref_names: tuple[str, ...] = ()
    """The ``org.opencontainers.image.ref.name`` annotations of its index entries."""


def host_architecture() -> str:
    """The host's architecture as image platforms name it (``amd64``, ``arm64``)."""
    machine = platform.machine().lower()
    return _ARCHITECTURES.get(machine, machine)


@contextlib.contextmanager
def open_image_source(path: Path) -> Iterator[list[SourceImage]]:
    """Open the docker save archive, OCI layout or oci-archive at `path`.

    Yields every image it holds, de-duplicated by config digest (names merged),
    except that one config reached through several complete OCI manifests is one
    image per manifest, each with its own names; the layers' readers work until
    the context ends. Raises :class:`UnionfsError` with
    one line for anything that makes the source unusable.
    """
    path, ref = split_source_ref(path)
    with open_files(path) as files:
        images = _read_images(files, _local_name(path))
        yield images if ref is None else _select(files, images, ref)


def split_source_ref(path: Path) -> tuple[Path, str | None]:
    """``DIR:REF`` (skopeo's ``oci:DIR:REF``) -> (DIR, REF) when PATH itself does
    not exist but DIR does; else (PATH, None)."""
    text = str(path)
    head, colon, ref = text.rpartition(":")
    if not colon or not head or not ref or "/" in ref or os.path.lexists(text):
        return path, None
    return (Path(head), ref) if os.path.exists(head) else (path, None)


def _select(files: SourceFiles, images: list[SourceImage], ref: str) -> list[SourceImage]:
    """The image whose index entry is named `ref` (``org.opencontainers.image.ref.name``,
    as skopeo's ``oci:`` transport matches it), or a full name it was given."""
    chosen = [i for i in images if ref in i.ref_names or ref in i.names]
    if not chosen:
        have = ", ".join(dict.fromkeys(n for i in images for n in i.ref_names)) or "none"
        raise UnionfsError(f"{files.label} has no image named {ref!r}; its ref names: {have}")
    return chosen[:1]


def _local_name(path: Path) -> str:
    """The repository an image named only by a tag gets: ``localhost/`` and the
    source's name (``localhost/demo`` for a layout dir or ``demo.tar``), as podman
    names an image from an OCI layout."""
    stem = path.resolve().name.lower()
    for suffix in (".tar", ".tgz", ".gz", ".zst", ".tar"):
        stem = stem.removesuffix(suffix)
    stem = re.sub(r"[^a-z0-9._-]+", "-", stem).strip("._-") or "image"
    return f"localhost/{stem}"


# --------------------------------------------------------------------------- JSON


def _parse_json(files: SourceFiles, data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise UnionfsError(f"{files.label}: {what} is not valid JSON: {e}") from None
    except RecursionError:
        raise UnionfsError(f"{files.label}: {what} nests too deeply to be read") from None


def _malformed(files: SourceFiles, what: str, problem: str) -> UnionfsError:
    return UnionfsError(f"{files.label}: malformed {what}: {problem}")


@dataclass(frozen=True)
class _Descriptor:
    media_type: str
    digest: str
    size: int | None
    annotations: dict[str, str]
    platform: dict[str, Any] | None

    @property
    def blob_name(self) -> str:
        return "blobs/sha256/" + self.digest.removeprefix("sha256:")

    @property
    def is_attestation(self) -> bool:
        return ANNOTATION_REFERENCE_TYPE in self.annotations

    def platform_text(self) -> str:
        p = self.platform or {}
        parts = [str(p.get("os", "?")), str(p.get("architecture", "?"))]
        if p.get("variant"):
            parts.append(str(p["variant"]))
        return "/".join(parts)


def _descriptor(files: SourceFiles, value: Any, what: str) -> _Descriptor:
    if not isinstance(value, dict):
        raise _malformed(files, what, "a descriptor is not an object")
    digest = value.get("digest")
    if not isinstance(digest, str):
        raise _malformed(files, what, "a descriptor has no digest")
    if not _DIGEST_RE.fullmatch(digest):
        raise _malformed(files, what, f"unsupported digest {digest!r} (sha256 only)")
    media_type = value.get("mediaType", "")
    size = value.get("size")
    annotations = value.get("annotations") or {}
    plat = value.get("platform")
    if not isinstance(media_type, str):
        raise _malformed(files, what, f"mediaType of {digest} is not a string")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
        raise _malformed(files, what, f"size of {digest} is not a byte count")
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise _malformed(files, what, f"annotations of {digest} are not strings")
    if plat is not None and not isinstance(plat, dict):
        raise _malformed(files, what, f"platform of {digest} is not an object")
    return _Descriptor(media_type, digest, size, annotations, plat)


def _read_blob(files: SourceFiles, desc: _Descriptor, what: str) -> bytes:
    """A small blob named by a descriptor, verified against its digest."""
    data = files.read(desc.blob_name, f"{what} blob {desc.digest}")
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != desc.digest:
        raise UnionfsError(
            f"{files.label}: {what} digest mismatch: {desc.digest} is named, "
            f"the blob hashes to {actual}"
        )
    if desc.size is not None and desc.size != len(data):
        raise UnionfsError(
            f"{files.label}: {what} {desc.digest} is {len(data)} bytes, "
            f"its descriptor says {desc.size}"
        )
    return data


def _diff_ids(files: SourceFiles, config: bytes, what: str) -> list[str]:
    doc = _parse_json(files, config, what)
    rootfs = doc.get("rootfs") if isinstance(doc, dict) else None
    diff_ids = rootfs.get("diff_ids", []) if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise _malformed(files, what, "no rootfs.diff_ids list")
    for d in diff_ids:
        if not isinstance(d, str) or not _DIGEST_RE.fullmatch(d):
            raise _malformed(files, what, f"rootfs.diff_ids holds {d!r}")
    return diff_ids


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class _LayerRef:
    digest: str | None
    media_type: str
    size: int | None
    blob: SourceBlob


@dataclass
class _Candidate:
    """An image as one part of the source (index.json or manifest.json) describes it."""

    from_docker_manifest: bool
    config: bytes
    config_digest: str
    diff_ids: list[str]
    manifest: bytes | None
    manifest_digest: str | None
    layers: list[_LayerRef]
    names: list[str] = field(default_factory=list)
    ref_names: list[str] = field(default_factory=list)


def _read_images(files: SourceFiles, local_name: str) -> list[SourceImage]:
    has_index = files.find("index.json") is not None
    has_docker_manifest = files.find("manifest.json") is not None
    if not has_index and not has_docker_manifest:
        raise UnionfsError(f"{files.label} {NOT_RECOGNISED}")
    candidates: list[_Candidate] = []
    if has_index:
        candidates += _oci_candidates(files, local_name)
    if has_docker_manifest:
        candidates += _docker_candidates(files)
    groups: dict[str, list[_Candidate]] = {}
    for c in candidates:
        groups.setdefault(c.config_digest, []).append(c)
    images = [image for group in groups.values() for image in _per_manifest(files, group)]
    if not images:
        raise UnionfsError(f"{files.label} holds no image")
    return images


def _per_manifest(files: SourceFiles, group: list[_Candidate]) -> list[SourceImage]:
    """The images of one config: one per distinct complete OCI manifest, each with
    the names of its own index entries (one config saved gzip and zstd keeps both
    manifests); manifest.json's names go with the manifest whose index entries name
    them too, else with the first."""
    by_manifest: dict[str, list[_Candidate]] = {}
    for c in group:
        if c.manifest_digest is not None and len(c.layers) == len(c.diff_ids):
            by_manifest.setdefault(c.manifest_digest, []).append(c)
    if len(by_manifest) <= 1:
        return [_assemble(files, group)]
    docker = [c for c in group if c.from_docker_manifest]
    subgroups = list(by_manifest.values())
    for d in docker:
        owner = next((g for g in subgroups if set(d.names) & {n for c in g for n in c.names}),
                     subgroups[0])  # fmt: skip
        owner.append(d)
    return [_assemble(files, g) for g in subgroups]


def _assemble(files: SourceFiles, group: list[_Candidate]) -> SourceImage:
    """One image from every description of it: the OCI manifest if it lists all
    layers, else manifest.json (docker 25.0.0 wrote OCI manifests without layers)."""
    names = [n for c in group if c.from_docker_manifest for n in c.names]
    names += [n for c in group if not c.from_docker_manifest for n in c.names]
    ordered = sorted(group, key=lambda c: c.from_docker_manifest)
    chosen = next((c for c in ordered if len(c.layers) == len(c.diff_ids)), None)
    if chosen is None:
        first = ordered[0]
        raise UnionfsError(
            f"{files.label}: image {first.config_digest} has {len(first.layers)} layers "
            f"but its config lists {len(first.diff_ids)} diff_ids"
        )
    layers = tuple(
        SourceLayer(ref.digest, ref.media_type, ref.size, diff_id, ref.blob.open)
        for ref, diff_id in zip(chosen.layers, chosen.diff_ids, strict=True)
    )
    return SourceImage(
        config=chosen.config,
        config_digest=chosen.config_digest,
        manifest=chosen.manifest,
        manifest_digest=chosen.manifest_digest,
        layers=layers,
        names=tuple(dict.fromkeys(names)),
        ref_names=tuple(dict.fromkeys(n for c in group for n in c.ref_names)),
    )


def _oci_candidates(files: SourceFiles, local_name: str) -> list[_Candidate]:
    index = _parse_json(files, files.read("index.json", "index.json"), "index.json")
    if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
        raise _malformed(files, "index.json", "no manifests list")
    out = []
    for value in index["manifests"]:
        desc = _descriptor(files, value, "index.json")
        if desc.is_attestation:
            continue
        names = [
            desc.annotations[key]
            for key in (ANNOTATION_CONTAINERD_NAME, ANNOTATION_REF_NAME)
            if desc.annotations.get(key)
        ]
        ref_name = desc.annotations.get(ANNOTATION_REF_NAME)
        # A bare tag names the image only where nothing else does (docker 25 writes
        # its tag beside the full name in io.containerd.image.name).
        if ref_name and _BARE_TAG_RE.fullmatch(ref_name) and len(names) == 1:
            names = [f"{local_name}:{ref_name}" if n == ref_name else n for n in names]
        manifest_desc = _image_manifest(files, desc, 0)
        if manifest_desc is None:
            continue
        candidate = _oci_candidate(files, manifest_desc)
        if candidate is not None:
            candidate.names = names
            candidate.ref_names = [ref_name] if ref_name else []
            out.append(candidate)
    return out


def _image_manifest(files: SourceFiles, desc: _Descriptor, depth: int) -> _Descriptor | None:
    """The image manifest `desc` leads to: itself, or the host platform's entry of
    the index it names. None for things that are not images."""
    kind = desc.media_type
    if not kind:  # optional in old layouts: ask the document itself
        doc = _parse_json(files, _read_blob(files, desc, "manifest"), f"blob {desc.digest}")
        kind = doc.get("mediaType", "") if isinstance(doc, dict) else ""
        if not kind and isinstance(doc, dict):
            kind = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if kind in MANIFEST_TYPES:
        return desc
    if kind not in INDEX_TYPES:
        log.debug("%s: skipping %s of media type %s", files.label, desc.digest, kind)
        return None
    if depth >= _NESTING_LIMIT:
        raise _malformed(files, "index", f"indexes nested deeper than {_NESTING_LIMIT}")
    what = f"index {desc.digest}"
    nested = _parse_json(files, _read_blob(files, desc, "index"), what)
    if not isinstance(nested, dict) or not isinstance(nested.get("manifests"), list):
        raise _malformed(files, what, "no manifests list")
    entries = [_descriptor(files, v, what) for v in nested["manifests"]]
    entries = [e for e in entries if not e.is_attestation]
    arch = host_architecture()
    matching = [
        e
        for e in entries
        if e.platform is not None
        and e.platform.get("os") == "linux"
        and e.platform.get("architecture") == arch
    ]
    if not matching:
        matching = [e for e in entries if e.platform is None]
    if not matching:
        available = ", ".join(dict.fromkeys(e.platform_text() for e in entries)) or "none"
        raise UnionfsError(
            f"{files.label}: the multi-platform image {desc.digest} has no linux/{arch} "
            f"image; it has: {available}"
        )
    # A saved multi-platform image often holds the blobs of one platform only.
    present = [e for e in matching if files.find(e.blob_name) is not None]
    return _image_manifest(files, (present or matching)[0], depth + 1)


def _oci_candidate(files: SourceFiles, desc: _Descriptor) -> _Candidate | None:
    manifest = _read_blob(files, desc, "manifest")
    what = f"manifest {desc.digest}"
    doc = _parse_json(files, manifest, what)
    if not isinstance(doc, dict):
        raise _malformed(files, what, "not an object")
    if doc.get("schemaVersion") != 2:
        raise _malformed(files, what, f"schemaVersion {doc.get('schemaVersion')!r} (2 expected)")
    declared = doc.get("mediaType")
    if declared is not None and declared not in MANIFEST_TYPES:
        raise _malformed(files, what, f"media type {declared!r} is not an image manifest")
    config_desc = _descriptor(files, doc.get("config"), what)
    if config_desc.media_type and config_desc.media_type not in CONFIG_TYPES:
        log.debug("%s: %s is not an image (config %s)", files.label, desc.digest, config_desc)
        return None
    config = _read_blob(files, config_desc, "config")
    layer_values = doc.get("layers", [])
    if not isinstance(layer_values, list):
        raise _malformed(files, what, "layers is not a list")
    layers = []
    for value in layer_values:
        layer = _descriptor(files, value, what)
        blob = files.find(layer.blob_name)
        if blob is None:
            foreign = "foreign" in layer.media_type or "nondistributable" in layer.media_type
            hint = " (a non-distributable layer: it is not fetched from elsewhere)"
            raise UnionfsError(
                f"{files.label}: layer blob {layer.digest} is missing{hint if foreign else ''}"
            )
        if layer.size is not None and layer.size != blob.size:
            raise UnionfsError(
                f"{files.label}: layer blob {layer.digest} is {blob.size} bytes, "
                f"the manifest says {layer.size}"
            )
        layers.append(_LayerRef(layer.digest, layer.media_type, layer.size, blob))
    return _Candidate(
        from_docker_manifest=False,
        config=config,
        config_digest=config_desc.digest,
        diff_ids=_diff_ids(files, config, f"config {config_desc.digest}"),
        manifest=manifest,
        manifest_digest=desc.digest,
        layers=layers,
    )


def _source_path(files: SourceFiles, value: Any, what: str) -> str:
    """A path named in manifest.json, in canonical form; never one that leaves."""
    if not isinstance(value, str) or not value:
        raise _malformed(files, "manifest.json", f"{what} is not a path")
    name = archive_name(value)
    if name is None:
        raise UnionfsError(f"{files.label}: manifest.json names a path outside it: {value!r}")
    return name


def _docker_candidates(files: SourceFiles) -> list[_Candidate]:
    items = _parse_json(files, files.read("manifest.json", "manifest.json"), "manifest.json")
    if not isinstance(items, list):
        raise _malformed(files, "manifest.json", "not a list")
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise _malformed(files, "manifest.json", "an entry is not an object")
        config_name = _source_path(files, item.get("Config"), "Config")
        config = files.read(config_name, f"config {config_name}")
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        match = _CONFIG_PATH_RE.fullmatch(config_name) or _BLOB_PATH_RE.fullmatch(config_name)
        if match and f"sha256:{match.group(1)}" != config_digest:
            raise UnionfsError(
                f"{files.label}: config digest mismatch: {config_name} hashes to {config_digest}"
            )
        tags = item.get("RepoTags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise _malformed(files, "manifest.json", "RepoTags is not a list of names")
        layer_paths = item.get("Layers")
        if not isinstance(layer_paths, list):
            raise _malformed(files, "manifest.json", "Layers is not a list")
        layers = []
        for value in layer_paths:
            name = _source_path(files, value, "a layer")
            # Only the OCI layout's content-addressed names say what the digest is.
            blob_match = _BLOB_PATH_RE.fullmatch(name)
            digest = f"sha256:{blob_match.group(1)}" if blob_match else None
            blob = files.find(name)
            if blob is None:
                shown = f"{name} ({digest})" if digest else name
                raise UnionfsError(f"{files.label}: layer {shown} is missing")
            layers.append(_LayerRef(digest, "", None, blob))
        out.append(
            _Candidate(
                from_docker_manifest=True,
                config=config,
                config_digest=config_digest,
                diff_ids=_diff_ids(files, config, f"config {config_name}"),
                manifest=None,
                manifest_digest=None,
                layers=layers,
                names=list(tags),
            )
        )
    return out
