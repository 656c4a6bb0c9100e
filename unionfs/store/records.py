"""The store's records and identifiers: what its JSON files hold.

Records are frozen dataclasses that convert to and from the JSON the store
writes (``images/<hex>.json``, ``containers/<id>/container.json``,
``layers/<hex>/layer.json``); the field names there are the on-disk format.
IDs are ``sha256:<hex>`` digests; `hex_of` and `short_id` are how the store
names them in paths and in messages. Also the OCI media types the store writes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from unionfs.image.layerwriter import WrittenLayer
from unionfs.image.refs import Reference

SHA256 = "sha256:"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
LAYER_SUFFIX = {"gzip": "+gzip", "zstd": "+zstd", "none": ""}


def hex_of(digest: str) -> str:
    return digest.removeprefix(SHA256)


def short_id(digest: str) -> str:
    return hex_of(digest)[:12]


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> dt.datetime | None:
    """RFC 3339 as image configs write it (nanoseconds allowed)."""
    if not text:
        return None
    t = text.strip()
    if t.endswith(("Z", "z")):
        t = t[:-1] + "+00:00"
    head, dot, rest = t.partition(".")
    if dot:
        frac = "".join(ch for ch in rest if ch.isdigit())
        tz = rest[len(frac) :]
        t = f"{head}.{frac[:6].ljust(6, '0')}{tz}"
    try:
        when = dt.datetime.fromisoformat(t)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


# -- records ------------------------------------------------------------------


@dataclass(frozen=True)
class LayerBlob:
    """One layer of an image: its diff_id and the blob it came from."""

    diff_id: str
    digest: str
    media_type: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "diff_id": self.diff_id,
            "digest": self.digest,
            "media_type": self.media_type,
            "size": self.size,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LayerBlob:
        return cls(d["diff_id"], d["digest"], d["media_type"], int(d["size"]))


@dataclass(frozen=True)
class ImageRecord:
    """An image: its ID is the digest of its config."""

    id: str
    manifest_digest: str
    layers: tuple[LayerBlob, ...]  # bottom first
    imported: str
    repo_digest: bool  # the manifest came from the source (a registry digest), not made here
    tag_manifests: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    """(NAME:TAG, manifest digest, layer blob digests) of the tags that came with a
    manifest of their own (one config saved gzip and zstd, say); the other tags'
    are `manifest_digest` and the blobs of `layers`."""

    def to_json(self) -> dict[str, Any]:
        d = {
            "id": self.id,
            "manifest_digest": self.manifest_digest,
            "layers": [la.to_json() for la in self.layers],
            "imported": self.imported,
            "repo_digest": self.repo_digest,
        }
        if self.tag_manifests:
            d["tag_manifests"] = {
                ref: {"manifest_digest": m, "layer_digests": list(blobs)}
                for ref, m, blobs in self.tag_manifests
            }
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImageRecord:
        tags = d.get("tag_manifests") or {}
        return cls(
            d["id"],
            d["manifest_digest"],
            tuple(LayerBlob.from_json(x) for x in d["layers"]),
            d["imported"],
            bool(d.get("repo_digest", False)),
            tuple(
                (ref, v["manifest_digest"], tuple(v["layer_digests"]))
                for ref, v in sorted(tags.items())
            ),
        )

    def _tag(self, ref: Reference | str | None) -> tuple[str, str, tuple[str, ...]] | None:
        return next((t for t in self.tag_manifests if ref and t[0] == str(ref)), None)

    def manifest_for(self, ref: Reference | str | None) -> str:
        """The manifest digest the tag `ref` came with (the image's, by default)."""
        tag = self._tag(ref)
        return tag[1] if tag else self.manifest_digest

    def layer_blobs_for(self, ref: Reference | str | None) -> tuple[str, ...]:
        """The layer blob digests of `manifest_for(ref)`, bottom first."""
        tag = self._tag(ref)
        return tag[2] if tag else tuple(la.digest for la in self.layers)

    @property
    def manifest_digests(self) -> tuple[str, ...]:
        """Every manifest this image is known by, its own first."""
        return tuple(dict.fromkeys([self.manifest_digest, *(t[1] for t in self.tag_manifests)]))

    @property
    def blobs(self) -> set[str]:
        """Every blob the image uses: config, manifests, layer blobs of every tag."""
        out = {self.id, *self.manifest_digests, *(la.digest for la in self.layers)}
        for _, _, layer_blobs in self.tag_manifests:
            out.update(layer_blobs)
        return out

    @property
    def diff_ids(self) -> tuple[str, ...]:
        return tuple(la.diff_id for la in self.layers)


@dataclass(frozen=True)
class ContainerRecord:
    """A container: an upper and a work dir over an image's layers."""

    id: str
    name: str
    image: str  # image ID
    image_ref: str  # what it was created from, as given
    diff_ids: tuple[str, ...]  # the image's layers, bottom first (kept if the image goes)
    created: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "image": self.image,
            "image_ref": self.image_ref,
            "diff_ids": list(self.diff_ids),
            "created": self.created,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ContainerRecord:
        return cls(
            d["id"], d["name"], d["image"], d["image_ref"], tuple(d["diff_ids"]), d["created"]
        )


@dataclass(frozen=True)
class LayerInfo:
    diff_id: str
    size: int  # apparent bytes of its files, hard links counted once
    entries: int
    compression: str
    unpacked: str


# -- what an import and a commit made -----------------------------------------


@dataclass(frozen=True)
class Imported:
    image: ImageRecord
    tags: tuple[Reference, ...]
    untagged_from: tuple[tuple[Reference, str], ...] = ()  # tags moved away from other images


@dataclass(frozen=True)
class Committed:
    """What a commit made: a new image whose top layer holds the container's changes."""

    image: ImageRecord
    container: ContainerRecord
    layer: WrittenLayer
    tag: Reference | None
    untagged_from: tuple[tuple[Reference, str], ...]  # the tag, moved away from another image
    warnings: tuple[str, ...]  # entries left out of the layer or of its unpacked copy
