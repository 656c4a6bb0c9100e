"""``pull``: an image from a registry into the store, through the store's import.

The manifest (through an index for the chosen platform) and the config are
fetched and verified. Then each layer the store lacks is imported by a worker
(at most `JOBS` at a time, so one layer unpacks while others download): its
blob streams from the registry (`unionfs.image.registry.blobs`) into the
store's layer import, which writes it to its staging file, hashes it,
decompresses it and unpacks it in one pass, in a staging dir of its own. The
layer and blob are renamed into place only once the blob's digest and size
(checked by the stream at its end) and the layer's digest and diff_id (checked
by the import) are right; a broken connection resumes with a ``Range`` request.
A blob already in the store is not downloaded: its layer is unpacked from it
if need be. An interrupted pull leaves nothing visible but whole layers (each
with its blob), which the next pull finds in place; staging dirs go with the
process. Layers are reported in order as they finish, then the import proper
(`unionfs.store.images`) finds every layer in place, checks the config and
diff_ids again and writes the image record and tag.

The image keeps the manifest bytes the registry served, so its manifest digest is
the registry's (``RepoDigests``) and a push sends the same manifest back.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from unionfs.errors import UnionfsError
from unionfs.image.registry.blobs import BlobStream
from unionfs.image.registry.client import RegistryClient
from unionfs.image.registry.manifests import (
    Platform,
    choose_platform,
    media_type_of,
)
from unionfs.image.registry.reference import RegistryRef
from unionfs.image.sources import INDEX_TYPES, SourceImage, SourceLayer
from unionfs.store.layers import ImportReport, QuietReport
from unionfs.store.leases import Lease, holding_lease
from unionfs.store.records import Imported, LayerInfo, short_id
from unionfs.store.store import Store

log = logging.getLogger(__name__)

JOBS = 4
_NESTING_LIMIT = 4
_LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
)


class PullReport(ImportReport, Protocol):
    """What a pull tells the person running it, besides the import's report."""

    def resolved(self, ref: RegistryRef, digest: str, blobs: list[tuple[str, int | None]]) -> None:
        """The manifest is known: its digest and the layer blobs (digest, size)."""

    def blob_start(self, digest: str, size: int | None, *, present: bool) -> None: ...
    def blob_progress(self, digest: str, done: int) -> None: ...
    def blob_done(self, digest: str) -> None: ...


@dataclass(frozen=True)
class Pulled:
    imported: Imported
    reference: RegistryRef
    manifest_digest: str
    downloaded: int
    """Layer blobs fetched from the registry (the others were in the store)."""
    downloaded_bytes: int


class _Cancelled(Exception):
    """Raised in a download thread once the pull has failed elsewhere."""


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError:
        raise UnionfsError(f"{what} is not valid JSON") from None
    if not isinstance(doc, dict):
        raise UnionfsError(f"{what} is not a JSON object")
    return doc


def resolve_manifest(
    client: RegistryClient, ref: RegistryRef, platform: Platform
) -> tuple[bytes, str, dict[str, Any]]:
    """The image manifest `ref` leads to for `platform`: (bytes, digest, document)."""
    reference = ref.reference
    for _ in range(_NESTING_LIMIT):
        body, content_type, digest = client.get_manifest(ref.repository, reference)
        kind = media_type_of(body, content_type)
        doc = _json(body, f"{ref}: manifest {digest}")
        if kind not in INDEX_TYPES:
            return body, digest, doc
        reference = str(choose_platform(doc, platform).get("digest", ""))
        if not reference.startswith("sha256:"):
            raise UnionfsError(f"{ref}: the index names a manifest without a sha256 digest")
    raise UnionfsError(f"{ref}: indexes nested deeper than {_NESTING_LIMIT}")


def pull_image(
    store: Store,
    client: RegistryClient,
    ref: RegistryRef,
    report: PullReport,
    *,
    platform: Platform,
    jobs: int = JOBS,
) -> Pulled:
    """Pull `ref` into the store and tag it as podman names it."""
    client.need_scope(ref.repository, "pull")
    manifest, manifest_digest, doc = resolve_manifest(client, ref, platform)
    try:
        config_desc = doc["config"]
        config_digest = str(config_desc["digest"])
        layer_descs = list(doc.get("layers") or [])
        blobs = [(str(d["digest"]), _size(d.get("size"))) for d in layer_descs]
        media_types = [str(d.get("mediaType", "")) for d in layer_descs]
    except (KeyError, TypeError, AttributeError):
        raise UnionfsError(f"{ref}: malformed manifest {manifest_digest}") from None
    for digest, media_type in zip((b[0] for b in blobs), media_types, strict=True):
        if not media_type.startswith(_LAYER_TYPES):
            raise UnionfsError(
                f"{ref}: layer {digest} has media type {media_type!r}, not a layer tar "
                "(an artifact, or a non-distributable layer)"
            )
    config = client.blob_bytes(ref.repository, config_digest)
    config_doc = _json(config, f"{ref}: config {config_digest}")
    diff_ids = (config_doc.get("rootfs") or {}).get("diff_ids")
    if not isinstance(diff_ids, list) or len(diff_ids) != len(blobs):
        raise UnionfsError(
            f"{ref}: the manifest lists {len(blobs)} layers, the config "
            f"{len(diff_ids) if isinstance(diff_ids, list) else 'no'} diff_ids"
        )
    report.resolved(ref, manifest_digest, blobs)
    wanted = [r] if (r := ref.store_reference()) is not None else []
    cancel = threading.Event()
    downloaded: dict[str, int] = {}
    with holding_lease(store) as lease, ThreadPoolExecutor(max(1, jobs)) as pool:
        futures: dict[str, Future[_Unpacked]] = {}
        try:
            for (digest, size), media_type, diff_id in zip(
                blobs, media_types, diff_ids, strict=True
            ):
                if digest in futures:
                    continue  # a repeated layer: unpacked once, found in place after
                in_store = store.blob_path(digest)
                with store.locked():  # named before it is looked for: gc keeps it
                    lease.add(blobs=[digest])
                    present = in_store.exists()
                report.blob_start(digest, size, present=present)
                opener = (
                    _local(in_store)
                    if present
                    else _remote(client, ref, digest, size, report, cancel, downloaded)
                )
                layer = SourceLayer(digest, media_type, size, str(diff_id), opener)
                futures[digest] = pool.submit(_unpack, store, layer, report, cancel, lease)
                futures[digest].add_done_callback(functools.partial(_cancel_on_failure, cancel))
            seen: set[str] = set()
            for index, (digest, size) in enumerate(blobs):  # in order, as they finish
                unpacked = _result(futures[digest], futures.values())
                report.layer_start(index, len(blobs), unpacked.diff_id, size)
                reused = unpacked.reused or digest in seen
                report.layer_done(unpacked.diff_id, reused=reused, info=unpacked.info)
                seen.add(digest)
            # Every layer and blob is in place now: the import finds them there
            # (it checks the config and diff_ids) and writes the image record.
            layers = tuple(
                SourceLayer(digest, media_type, size, str(diff_id), _local(store.blob_path(digest)))
                for (digest, size), media_type, diff_id in zip(
                    blobs, media_types, diff_ids, strict=True
                )
            )
            src = SourceImage(config, config_digest, manifest, manifest_digest, layers, ())
            imported = store._import_image(src, wanted, _Warnings(report), lease)
        except BaseException:
            cancel.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return Pulled(imported, ref, manifest_digest, len(downloaded), sum(downloaded.values()))


@dataclass(frozen=True)
class _Unpacked:
    diff_id: str
    reused: bool
    info: LayerInfo


class _Warnings(QuietReport):
    """An import report that passes on warnings only."""

    def __init__(self, report: ImportReport) -> None:
        self._report = report

    def warning(self, text: str) -> None:
        self._report.warning(text)


class _LayerReport(_Warnings):
    """The report of one layer unpacked beside others: what it was, kept for
    the report in order; the pull stops at the next step once cancelled."""

    def __init__(self, report: ImportReport, cancel: threading.Event) -> None:
        super().__init__(report)
        self._cancel = cancel
        self.done: _Unpacked | None = None

    def layer_progress(self, done: int) -> None:
        if self._cancel.is_set():
            raise _Cancelled

    def layer_done(self, diff_id: str, *, reused: bool, info: LayerInfo) -> None:
        self.done = _Unpacked(diff_id, reused, info)


def _unpack(
    store: Store, layer: SourceLayer, report: ImportReport, cancel: threading.Event, lease: Lease
) -> _Unpacked:
    """Import one layer (its blob streamed from the registry or read from the store).

    A `Store` object is not shared between threads (its lock is re-entrant per
    object): the worker opens its own on the same root, and the store lock, an
    flock of its own open file, keeps the workers apart as it does processes."""
    if cancel.is_set():
        raise _Cancelled
    layer_report = _LayerReport(report, cancel)
    Store(store.root)._import_layer(layer, layer_report, lease)
    assert layer_report.done is not None
    return layer_report.done


def _cancel_on_failure(cancel: threading.Event, future: Future[_Unpacked]) -> None:
    if not future.cancelled() and future.exception() is not None:
        cancel.set()


def _result(future: Future[_Unpacked], futures: Iterable[Future[_Unpacked]]) -> _Unpacked:
    """The future's result; when it was cancelled, the failure that cancelled it."""
    try:
        return future.result()
    except _Cancelled:
        for f in futures:
            if f.done() and not f.cancelled():
                e = f.exception()
                if e is not None and not isinstance(e, _Cancelled):
                    raise e from None
        raise


def _size(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _remote(
    client: RegistryClient,
    ref: RegistryRef,
    digest: str,
    size: int | None,
    report: PullReport,
    cancel: threading.Event,
    downloaded: dict[str, int],
) -> Callable[[], contextlib.AbstractContextManager[BinaryIO]]:
    """An opener of the blob as it downloads (`unionfs.image.registry.blobs`)."""

    def progress(done: int) -> None:
        if cancel.is_set():
            raise _Cancelled
        report.blob_progress(digest, done)

    @contextlib.contextmanager
    def open_blob() -> Iterator[BinaryIO]:
        with BlobStream(client, ref.repository, digest, size, progress) as stream:
            yield cast(BinaryIO, stream)
            if stream.complete:
                downloaded[digest] = stream.received
                report.blob_done(digest)
                log.debug("%s: blob %s downloaded", ref, short_id(digest))

    return open_blob


def _local(path: Path) -> Callable[[], contextlib.AbstractContextManager[BinaryIO]]:
    """An opener of a blob in the store."""

    @contextlib.contextmanager
    def open_blob() -> Iterator[BinaryIO]:
        with open(path, "rb") as f:
            yield f

    return open_blob
