"""Images: records keyed by config digest, tags, import, resolving names, ``rmi``.

An image record (``images/<hex>.json``) lists its layers' diff_ids and blobs;
``tags.json`` maps NAME:TAG to image IDs. Importing an image unpacks its layers
(`unionfs.store.layers`), stores its config and manifest as blobs
(`unionfs.store.content`), then writes the record and moves the tags under the
store lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from unionfs.errors import UnionfsError
from unionfs.image import refs
from unionfs.image.refs import Reference
from unionfs.image.sources import SourceImage, open_image_source
from unionfs.store.base import StoreBase
from unionfs.store.files import read_json, write_json_atomic
from unionfs.store.layers import ImportReport, QuietReport
from unionfs.store.leases import Lease, holding_lease
from unionfs.store.mounted import mounts_of_image
from unionfs.store.records import (
    SHA256,
    ImageRecord,
    Imported,
    LayerBlob,
    hex_of,
    now_rfc3339,
    short_id,
)


class ImagesMixin(StoreBase):
    """Image records and tags."""

    # -- reading records ---------------------------------------------------------

    def images(self) -> list[ImageRecord]:
        if not self.images_dir.is_dir():
            return []
        out = []
        for p in sorted(self.images_dir.glob("*.json")):
            with contextlib.suppress(FileNotFoundError):
                out.append(ImageRecord.from_json(read_json(p)))
        return out

    def image(self, image_id: str) -> ImageRecord | None:
        p = self.images_dir / f"{hex_of(image_id)}.json"
        try:
            return ImageRecord.from_json(read_json(p))
        except FileNotFoundError:
            return None

    def tags(self) -> dict[Reference, str]:
        try:
            raw = read_json(self.tags_file)
        except FileNotFoundError:
            return {}
        out = {}
        for text, image_id in raw.items():
            name, _, tag = text.rpartition(":")
            out[Reference(name, tag)] = image_id
        return out

    def _write_tags(self, tags: dict[Reference, str]) -> None:
        write_json_atomic(self.tags_file, {str(r): i for r, i in sorted(tags.items(), key=str)})

    def tags_of(self, image_id: str) -> list[Reference]:
        return sorted((r for r, i in self.tags().items() if i == image_id), key=str)

    def config(self, image: ImageRecord) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.blob_path(image.id).read_bytes())
        return data

    # -- resolving names ------------------------------------------------------------

    def resolve_image(self, text: str) -> ImageRecord:
        """An image by NAME[:TAG], NAME@DIGEST, full or short ID."""
        image = self._find_image(text)
        if image is None:
            raise UnionfsError(f"no such image: {text}")
        return image

    def _find_image(self, text: str) -> ImageRecord | None:
        name, tag, digest = refs.split_reference(text)
        tags = self.tags()
        if digest is None and refs.is_valid_name(name):
            image_id = tags.get(Reference(name, tag or refs.DEFAULT_TAG))
            if image_id is not None:
                return self.image(image_id)
        if digest is not None:
            for image in self.images():
                if digest in image.manifest_digests and (
                    name in {r.name for r, i in tags.items() if i == image.id}
                ):
                    return image
            return None
        prefix = text.removeprefix(SHA256)
        if len(prefix) >= 3 and all(c in "0123456789abcdef" for c in prefix):
            found = [i for i in self.images() if hex_of(i.id).startswith(prefix)]
            if len(found) > 1:
                raise UnionfsError(f"image ID prefix {text} is ambiguous: give more digits")
            if found:
                return found[0]
        return None

    # -- importing ------------------------------------------------------------------

    def import_path(
        self, path: Path, name: Reference | None = None, report: ImportReport | None = None
    ) -> list[Imported]:
        """Import every image of a docker save archive, OCI layout or oci-archive."""
        report = report or QuietReport()
        with open_image_source(path) as images, holding_lease(self) as lease:
            if not images:
                raise UnionfsError(f"{path} holds no image")
            if name is not None and len({i.config_digest for i in images}) > 1:
                raise UnionfsError(
                    f"{path} holds {len(images)} images: import it without a name "
                    "(their own names are used), then tag them"
                )
            results = []
            for src in images:
                wanted: list[Reference]
                if name is not None:
                    wanted = [name]
                else:
                    found = (refs.source_reference(n) for n in src.names)
                    wanted = list(dict.fromkeys(r for r in found if r is not None))
                results.append(self._import_image(src, wanted, report, lease))
            return results

    def _import_image(
        self, src: SourceImage, wanted: list[Reference], report: ImportReport, lease: Lease
    ) -> Imported:
        """Unpack the layers, store config and manifest, then write the record and tags.
        Everything put in the store before the record names it is named in `lease`."""
        config_digest = SHA256 + hashlib.sha256(src.config).hexdigest()
        if config_digest != src.config_digest:
            raise UnionfsError(f"image config digest mismatch: {src.config_digest}")
        try:
            config = json.loads(src.config)
            diff_ids = list(config["rootfs"]["diff_ids"])
        except (ValueError, KeyError, TypeError, RecursionError):
            raise UnionfsError(
                f"image {short_id(config_digest)}: config has no rootfs.diff_ids"
            ) from None
        if len(diff_ids) != len(src.layers):
            raise UnionfsError(
                f"image {short_id(config_digest)}: {len(src.layers)} layers but "
                f"{len(diff_ids)} diff_ids in its config"
            )
        layers: list[LayerBlob] = []
        for i, layer in enumerate(src.layers):
            if layer.diff_id != diff_ids[i]:
                raise UnionfsError(f"layer {i + 1}: diff_id differs from the config's")
            report.layer_start(i, len(src.layers), layer.diff_id, layer.size)
            layers.append(self._import_layer(layer, report, lease))
        if src.manifest is not None and src.manifest_digest is not None:
            manifest_bytes, repo_digest = src.manifest, True
        else:
            manifest_bytes, repo_digest = self._make_manifest(src.config, layers), False
        with self.locked():
            lease.add(blobs=[config_digest, SHA256 + hashlib.sha256(manifest_bytes).hexdigest()])
        with self.staging("image") as stage:
            self._put_blob_bytes(stage, src.config)
            manifest_digest = self._put_blob_bytes(stage, manifest_bytes)
            record = ImageRecord(
                config_digest, manifest_digest, tuple(layers), now_rfc3339(), repo_digest
            )
            with self.locked():
                existing = self.image(config_digest)
                if existing is not None:
                    record = _with_tag_manifests(
                        existing, wanted, manifest_digest, repo_digest, layers
                    )
                    if record != existing:
                        write_json_atomic(self.images_dir / f"{hex_of(config_digest)}.json",
                                          record.to_json())  # fmt: skip
                else:
                    write_json_atomic(self.images_dir / f"{hex_of(config_digest)}.json",
                                       record.to_json())  # fmt: skip
                moved = self._set_tags(wanted, config_digest)
        return Imported(record, tuple(wanted), moved)

    # -- tags -------------------------------------------------------------------------

    def _set_tags(
        self, wanted: list[Reference], image_id: str
    ) -> tuple[tuple[Reference, str], ...]:
        """Point tags at `image_id`; return the (tag, old image) pairs moved away."""
        with self.locked():
            tags = self.tags()
            moved = []
            for ref in wanted:
                old = tags.get(ref)
                if old is not None and old != image_id:
                    moved.append((ref, old))
                tags[ref] = image_id
            if wanted:
                self._write_tags(tags)
            return tuple(moved)

    def tag(self, source: str, target: Reference) -> ImageRecord:
        with self.locked():
            image = self.resolve_image(source)
            self._set_tags([target], image.id)
            return image

    # -- removing images -------------------------------------------------------------

    def remove_image(self, text: str, *, force: bool = False) -> list[str]:
        """``rmi``: untag, and delete the image once no tag is left. Lines to print."""
        with self.locked():
            image = self.resolve_image(text)
            tags = self.tags()
            name, tag, digest = refs.split_reference(text)
            by_tag = Reference(name, tag or refs.DEFAULT_TAG)
            lines = []
            names = [r for r, i in tags.items() if i == image.id]
            if digest is None and by_tag in names and len(names) > 1:
                del tags[by_tag]
                self._write_tags(tags)
                return [f"Untagged: {by_tag}"]
            users = [c for c in self.containers() if c.image == image.id]
            if users and not force:
                raise UnionfsError(
                    f"image {short_id(image.id)} is used by container"
                    f"{'s' if len(users) > 1 else ''} {', '.join(c.name for c in users)}: "
                    "remove them first, or use --force (the containers keep its layers)"
                )
            mounted = [m for m in mounts_of_image(image.id)]
            if mounted:
                raise UnionfsError(
                    f"image {short_id(image.id)} is mounted on {mounted[0]}: unmount it first"
                )
            for r in names:
                del tags[r]
                lines.append(f"Untagged: {r}")
            self._write_tags(tags)
            (self.images_dir / f"{hex_of(image.id)}.json").unlink()
            lines.append(f"Deleted: {image.id}")
            lines += self.collect_garbage()
            return lines


def _with_tag_manifests(
    image: ImageRecord, tags: list[Reference], manifest_digest: str, repo_digest: bool,
    layers: list[LayerBlob],
) -> ImageRecord:  # fmt: skip
    """`image` with `tags` keeping the manifest they came with, and its layer blobs
    (a source's own manifest only: one made here for a legacy archive names nothing
    new)."""
    names = {str(t) for t in tags}
    keep = [t for t in image.tag_manifests if t[0] not in names]
    if repo_digest and manifest_digest != image.manifest_digest:
        blobs = tuple(la.digest for la in layers)
        keep += [(name, manifest_digest, blobs) for name in names]
    return dataclasses.replace(image, tag_manifests=tuple(sorted(keep)))
