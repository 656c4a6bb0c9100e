"""Garbage collection: delete the layers and blobs that nothing uses.

What a layer, image or container uses is never counted in a file: it is
computed from the records, so there are no counts to get wrong.
"""

from __future__ import annotations

import contextlib

from unionfs.store.base import StoreBase
from unionfs.store.records import SHA256, hex_of


class GcMixin(StoreBase):
    """Deleting what no image or container uses."""

    def collect_garbage(self) -> list[str]:
        """Delete layers and blobs that no image or container uses."""
        with self.locked():
            images = self.images()
            containers = self.containers()
            used_layers = {d for i in images for d in i.diff_ids}
            used_layers |= {d for c in containers for d in c.diff_ids}
            used_blobs = set()
            for i in images:
                used_blobs |= {i.id, i.manifest_digest, *(la.digest for la in i.layers)}
            used_blobs |= {c.image for c in containers}  # their configs (for commit)
            lines = []
            for diff_id in self.layer_ids():
                if diff_id not in used_layers:
                    self._discard(self.layers_dir / hex_of(diff_id))
                    with contextlib.suppress(FileNotFoundError):
                        (self.layers_dir / f"{hex_of(diff_id)}.lock").unlink()
                    lines.append(f"Deleted layer: {diff_id}")
            if self.blobs.is_dir():
                for p in self.blobs.iterdir():
                    if SHA256 + p.name not in used_blobs:
                        p.unlink()
            return lines
