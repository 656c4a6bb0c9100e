"""The content store: blobs by digest (manifests, configs, layer tars).

A blob lives at ``blobs/sha256/<hex>`` and its name is the digest of its bytes.
It is written in a staging dir and renamed into place under the store lock; a
blob that is already there is left as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

from unionfs.store.base import StoreBase
from unionfs.store.records import OCI_CONFIG, OCI_MANIFEST, SHA256, LayerBlob


class ContentMixin(StoreBase):
    """Reading and storing blobs."""

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    @staticmethod
    def _make_manifest(config: bytes, layers: list[LayerBlob]) -> bytes:
        """An OCI manifest for a source that has none (legacy docker archives)."""
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": SHA256 + hashlib.sha256(config).hexdigest(),
                "size": len(config),
            },
            "layers": [
                {"mediaType": la.media_type, "digest": la.digest, "size": la.size} for la in layers
            ],
        }
        return json.dumps(manifest, separators=(",", ":")).encode()

    def _put_blob_bytes(self, stage: Path, data: bytes) -> str:
        digest = SHA256 + hashlib.sha256(data).hexdigest()
        target = self.blob_path(digest)
        if not target.exists():
            tmp = stage / f"blob-{secrets.token_hex(4)}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            with self.locked():
                if not target.exists():
                    os.rename(tmp, target)
        return digest
