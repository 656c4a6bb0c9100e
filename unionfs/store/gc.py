"""Garbage collection: delete the layers and blobs that nothing uses.

What a layer, image or container uses is never counted in a file: it is
computed from the records, so there are no counts to get wrong. A command in
flight that has put layers or blobs in the store before its image record names
them holds a lease on them (`unionfs.store.leases`): they are used too.
Collecting runs under the store lock, the same lock under which names are
added to a lease and records are written, so it sees each command either
before it took something or with its lease or record naming it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from unionfs.store.base import StoreBase
from unionfs.store.leases import leased
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
                used_blobs |= i.blobs
            used_blobs |= {c.image for c in containers}  # their configs (for commit)
            leased_layers, leased_blobs = leased(self.tmp)
            used_layers |= leased_layers
            used_blobs |= leased_blobs
            lines = []
            for diff_id in self.layer_ids():
                if diff_id not in used_layers:
                    self._discard(self.layers_dir / hex_of(diff_id))
                    self._remove_layer_lock(diff_id)
                    lines.append(f"Deleted layer: {diff_id}")
            if self.blobs.is_dir():
                for p in self.blobs.iterdir():
                    if SHA256 + p.name not in used_blobs:
                        p.unlink()
            return lines

    def _remove_layer_lock(self, diff_id: str) -> None:
        """Remove a collected layer's ``.lock`` unless an import holds it (that import
        puts the layer back, and the next collection removes the file)."""
        path = self.layers_dir / f"{hex_of(diff_id)}.lock"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        finally:
            os.close(fd)
