"""Committing a container: a new image, its image's layers plus one of its upper.

The new layer is written from the upper (`unionfs.image.layerwriter`), then
imported like any layer (`unionfs.store.layers`), so what a mount of the new
image shows is what its blob holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from unionfs.errors import UnionfsError
from unionfs.image.decompress import Compression
from unionfs.image.layerwriter import write_layer
from unionfs.image.refs import Reference
from unionfs.image.sources import SourceLayer
from unionfs.store.base import StoreBase
from unionfs.store.files import write_json_atomic
from unionfs.store.layers import QuietReport
from unionfs.store.leases import holding_lease
from unionfs.store.records import (
    LAYER_SUFFIX,
    OCI_LAYER,
    SHA256,
    Committed,
    ContainerRecord,
    ImageRecord,
    LayerBlob,
    hex_of,
    now_rfc3339,
    short_id,
)


def sha256_of(data: bytes) -> str:
    return SHA256 + hashlib.sha256(data).hexdigest()


class _CollectWarnings(QuietReport):
    """An import report that keeps the warnings and says nothing."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, text: str) -> None:
        self.lines.append(text)


class CommitMixin(StoreBase):
    """``commit``: a container's changes as a new image."""

    if TYPE_CHECKING:
        # `LayersMixin` (unionfs.store.layers) has it: a container's layer dirs.
        def lowers(self, diff_ids: tuple[str, ...]) -> list[Path]: ...

    def commit_container(
        self,
        text: str,
        name: Reference | None = None,
        *,
        message: str = "",
        author: str = "",
        compression: Compression = "gzip",
    ) -> Committed:
        """``commit``: a new image, the container's image plus one layer made of its
        upper layer (`unionfs.image.layerwriter`), tagged `name` if given.

        The new layer's blob is stored, and unpacked from that blob (not copied
        from the upper) into ``layers/<diff_id>``, so the image is mountable at
        once and what a mount of it shows is what the blob holds. The old
        layers' blobs are shared with the image they came from. The container
        is left as it is. It must not be mounted writable; while its layer is
        written, its work dir stays locked, so no mount can start. An empty upper
        gives an empty layer, as ``docker commit`` does.
        """
        with contextlib.ExitStack() as hold:
            lease = hold.enter_context(holding_lease(self))
            with self.locked():
                c = self.resolve_container(text)
                hold.enter_context(self.keep_unmounted(c, "commit"))
                config = self._commit_base_config(c)
                base = self._commit_base_layers(c)
                # kept by the lease until the new image's record names them
                lease.add(layers=c.diff_ids, blobs=[c.image, *(la.digest for la in base)])
            with self.staging("commit") as stage:
                blob = stage / "blob"
                with open(blob, "wb") as f:
                    written = write_layer(
                        self.container_upper(c),
                        f,
                        compression=compression,
                        lowers=self.lowers(c.diff_ids),  # renamed dirs are written whole
                    )
                    f.flush()
                    os.fsync(f.fileno())
                report = _CollectWarnings()

                def reopen() -> BinaryIO:
                    return blob.open("rb")

                source = SourceLayer(
                    digest=written.digest,
                    media_type=OCI_LAYER + LAYER_SUFFIX[compression],
                    size=written.size,
                    diff_id=written.diff_id,
                    open=reopen,
                )
                top = self._import_layer(source, report, lease)
            now = now_rfc3339()
            config["created"] = now
            if author:
                config["author"] = author
            config["rootfs"] = {"type": "layers", "diff_ids": [*c.diff_ids, top.diff_id]}
            step = {"created": now, "created_by": "unionfs commit", "author": author,
                    "comment": message}  # fmt: skip
            config["history"] = [
                *(config.get("history") or []),
                {k: v for k, v in step.items() if v},
            ]
            config_bytes = json.dumps(config, separators=(",", ":")).encode()
            layers = [*base, top]
            manifest_bytes = self._make_manifest(config_bytes, layers)
            with self.locked():
                lease.add(blobs=[sha256_of(config_bytes), sha256_of(manifest_bytes)])
            with self.staging("image") as stage:
                config_digest = self._put_blob_bytes(stage, config_bytes)
                manifest_digest = self._put_blob_bytes(stage, manifest_bytes)
                record = ImageRecord(config_digest, manifest_digest, tuple(layers), now, False)
                with self.locked():
                    # The lease kept all of it; a store changed by hand may still lack it.
                    gone = [la for la in layers if not self.blob_path(la.digest).exists()]
                    if gone or not (self.layers_dir / hex_of(top.diff_id) / "layer.json").exists():
                        raise UnionfsError(
                            f"container {c.name}: layers were removed from the store while it "
                            "was committed: commit again"
                        )
                    if self.image(config_digest) is None:
                        write_json_atomic(self.images_dir / f"{hex_of(config_digest)}.json",
                                           record.to_json())  # fmt: skip
                    moved = self._set_tags([name], config_digest) if name is not None else ()
            return Committed(record, c, written, name, moved, (*written.warnings, *report.lines))

    def _commit_base_config(self, c: ContainerRecord) -> dict[str, Any]:
        """The config of the container's image (kept for commit even after ``rmi``)."""
        try:
            config = json.loads(self.blob_path(c.image).read_bytes())
        except FileNotFoundError:
            raise UnionfsError(
                f"container {c.name}: the config of its image {short_id(c.image)} is missing "
                "from the store"
            ) from None
        if not isinstance(config, dict):
            raise UnionfsError(f"image {short_id(c.image)}: its config is not a JSON object")
        return config

    def _commit_base_layers(self, c: ContainerRecord) -> list[LayerBlob]:
        """The blobs of the container's layers, from its image's record, else from any
        image that has the same layer."""
        image = self.image(c.image)
        found: dict[str, LayerBlob] = {}
        for record in [*([image] if image is not None else []), *self.images()]:
            for la in record.layers:
                if la.diff_id not in found and self.blob_path(la.digest).exists():
                    found[la.diff_id] = la
        missing = [d for d in c.diff_ids if d not in found]
        if missing:
            raise UnionfsError(
                f"container {c.name}: the blob of its layer {short_id(missing[0])} left the "
                "store with its image, and a committed image must list it: import the image "
                "again, then commit"
            )
        return [found[d] for d in c.diff_ids]
