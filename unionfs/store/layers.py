"""Layers: each unpacked once into ``layers/<hex>/diff/``, keyed by its diff_id.

A layer is unpacked from its blob (`unionfs.image.unpack`) in a staging dir,
checked against its digest and diff_id, and renamed into place with its
``layer.json``; its blob is kept in the content store for export and commit.
The blob is read once: copied to its staging file in the pass that hashes and
unpacks it, so a blob that streams from a registry is never read twice.
``layers/<hex>.lock`` lets one process unpack a layer while another importing
the same layer waits, then finds it in place. What an import reports as it
goes is an `ImportReport`.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol

from unionfs.errors import UnionfsError
from unionfs.image.decompress import detect_compression
from unionfs.image.sources import SourceLayer
from unionfs.image.unpack import unpack_layer
from unionfs.store.base import StoreBase
from unionfs.store.files import HashingReader, read_json, write_json_atomic
from unionfs.store.leases import Lease
from unionfs.store.records import (
    LAYER_SUFFIX,
    OCI_LAYER,
    SHA256,
    LayerBlob,
    LayerInfo,
    hex_of,
    now_rfc3339,
    short_id,
)

# -- import progress ----------------------------------------------------------


class ImportReport(Protocol):
    """What an import tells the person running it."""

    def layer_start(self, index: int, count: int, diff_id: str, size: int | None) -> None: ...
    def layer_progress(self, done: int) -> None: ...
    def layer_done(self, diff_id: str, *, reused: bool, info: LayerInfo) -> None: ...
    def warning(self, text: str) -> None: ...


class QuietReport:
    def layer_start(self, index: int, count: int, diff_id: str, size: int | None) -> None:
        pass

    def layer_progress(self, done: int) -> None:
        pass

    def layer_done(self, diff_id: str, *, reused: bool, info: LayerInfo) -> None:
        pass

    def warning(self, text: str) -> None:
        pass


class LayersMixin(StoreBase):
    """Unpacked layers: reading, importing, and stacking them for a mount."""

    def layer_info(self, diff_id: str) -> LayerInfo:
        d = read_json(self.layers_dir / hex_of(diff_id) / "layer.json")
        return LayerInfo(d["diff_id"], d["size"], d["entries"], d["compression"], d["unpacked"])

    def layer_ids(self) -> list[str]:
        if not self.layers_dir.is_dir():
            return []
        return [
            SHA256 + p.name
            for p in sorted(self.layers_dir.iterdir())
            if p.is_dir() and (p / "layer.json").exists()
        ]

    def lowers(self, diff_ids: tuple[str, ...]) -> list[Path]:
        """Layer dirs, top first, as a mount takes them."""
        paths = [self.layer_path(d) for d in reversed(diff_ids)]
        for p in paths:
            if not p.is_dir():
                raise UnionfsError(f"layer {p.parent.name[:12]} is missing from the store")
        return paths

    def _import_layer(self, layer: SourceLayer, report: ImportReport, lease: Lease) -> LayerBlob:
        """Unpack one layer unless the store has it; keep its blob for export.

        The layer and its blob are named in `lease` before they are looked for or
        put in place, so no garbage collection takes them before the caller's
        image record names them (`unionfs.store.leases`)."""
        layer_dir = self.layers_dir / hex_of(layer.diff_id)
        with self.locked():
            pass  # creates the store and clears leftovers before the first layer
        # One unpacker per layer: a concurrent import of the same layer waits here
        # and then finds it in place.
        lock_path = self.layers_dir / f"{hex_of(layer.diff_id)}.lock"
        lock_fd = _lock_file(lock_path)
        try:
            with self.locked():
                lease.add(layers=[layer.diff_id], blobs=[layer.digest])
                have_layer = (layer_dir / "layer.json").exists()
                have_blob = layer.digest is not None and self.blob_path(layer.digest).exists()
            if have_layer and have_blob and layer.digest is not None:
                info = self.layer_info(layer.diff_id)
                report.layer_done(layer.diff_id, reused=True, info=info)
                blob = self.blob_path(layer.digest)
                return LayerBlob(
                    layer.diff_id,
                    layer.digest,
                    self._layer_media_type(blob, detect_compression),
                    blob.stat().st_size,
                )
            with self.staging("layer") as stage:
                blob_tmp = stage / "blob"
                with layer.open() as raw, open(blob_tmp, "wb") as copy:
                    if have_layer:
                        reader = HashingReader(raw, copy)
                        reader.drain()  # only the blob is missing (another compression)
                        digest = reader.digest
                        diff_id_ok = True
                        info = self.layer_info(layer.diff_id)
                    else:
                        (stage / "layer" / "diff").mkdir(parents=True)
                        result = unpack_layer(
                            _Copying(raw, copy),  # it hashes what it reads
                            stage / "layer" / "diff",
                            expected_digest=layer.digest,
                            expected_diff_id=layer.diff_id,
                            progress=report.layer_progress,
                            reserve=self.free_space_reserve(),
                        )
                        for w in result.warnings:
                            report.warning(w)
                        digest = result.digest
                        diff_id_ok = result.diff_id == layer.diff_id
                        info = LayerInfo(
                            layer.diff_id,
                            result.size,
                            result.entries,
                            result.compression,
                            now_rfc3339(),
                        )
                        write_json_atomic(
                            stage / "layer" / "layer.json",
                            {
                                "diff_id": info.diff_id,
                                "size": info.size,
                                "entries": info.entries,
                                "compression": info.compression,
                                "unpacked": info.unpacked,
                            },
                        )
                if layer.digest is not None and digest != layer.digest:
                    raise UnionfsError(
                        f"layer {short_id(layer.diff_id)}: blob digest mismatch: expected "
                        f"{layer.digest}, got {digest}"
                    )
                if not diff_id_ok:
                    raise UnionfsError(f"layer {short_id(layer.diff_id)}: diff_id mismatch")
                media_type = self._layer_media_type(blob_tmp, detect_compression)
                size = blob_tmp.stat().st_size
                with self.locked():
                    lease.add(blobs=[digest])
                    if not self.blob_path(digest).exists():
                        os.rename(blob_tmp, self.blob_path(digest))
                    # (another import of this layer may have put it in place meanwhile)
                    if not have_layer and not (layer_dir / "layer.json").exists():
                        os.rename(stage / "layer", layer_dir)
            report.layer_done(layer.diff_id, reused=have_layer, info=info)
            return LayerBlob(layer.diff_id, digest, media_type, size)
        finally:
            _unlock_file(lock_path, lock_fd)

    @staticmethod
    def _layer_media_type(blob: Path, detect: Callable[[bytes], str]) -> str:
        with open(blob, "rb") as f:
            head = f.read(8)
        return OCI_LAYER + LAYER_SUFFIX[detect(head)]


class _Copying:
    """A read-only stream that copies what is read through it to `copy`: the
    blob is written to its staging file in the pass that unpacks it."""

    def __init__(self, src: BinaryIO, copy: BinaryIO) -> None:
        self._src = src
        self._copy = copy

    def read(self, n: int = -1, /) -> bytes:
        data = self._src.read(n)
        if data:
            self._copy.write(data)
        return data


def _lock_file(path: Path) -> int:
    """Create `path` (if need be) and hold an exclusive flock on it. The file is
    removed by its holder when done (`_unlock_file`), so none stays behind; a
    waiter that then holds a removed file's lock tries again with the new one."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _unlock_file(path: Path, fd: int) -> None:
    """Remove the lock file `path` while holding its lock, then release it."""
    try:
        path.unlink(missing_ok=True)
    finally:
        os.close(fd)
