"""``pull``: an image from a registry into the store, through the store's import.

The manifest (through an index for the chosen platform) and the config are
fetched and verified; the layer blobs the store lacks are downloaded in
parallel (at most `JOBS` at a time) into a staging dir of the store, each
verified against its digest by `unionfs.image.registry.client`, while the
layers are unpacked in order as their blobs arrive (`unionfs.store.images`'
import, which checks digests and diff_ids again). A blob already in the store
is not downloaded. An interrupted pull leaves nothing visible but what a whole
layer import had finished; the staging dir goes with the process.

The image keeps the manifest bytes the registry served, so its manifest digest is
the registry's (``RepoDigests``) and a push sends the same manifest back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from unionfs.errors import UnionfsError
from unionfs.image.registry.client import RegistryClient
from unionfs.image.registry.manifests import (
    Platform,
    choose_platform,
    media_type_of,
)
from unionfs.image.registry.reference import RegistryRef
from unionfs.image.sources import INDEX_TYPES, SourceImage, SourceLayer
from unionfs.store.layers import ImportReport
from unionfs.store.leases import holding_lease
from unionfs.store.records import Imported, short_id
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
    with (
        holding_lease(store) as lease,
        store.staging("pull") as stage,
        ThreadPoolExecutor(max(1, jobs)) as pool,
    ):
        try:
            sources: dict[str, Callable[[], Path]] = {}
            for digest, size in blobs:
                if digest in sources:
                    continue
                in_store = store.blob_path(digest)
                with store.locked():  # named before it is looked for: gc keeps it
                    lease.add(blobs=[digest])
                    present = in_store.exists()
                report.blob_start(digest, size, present=present)
                if present:
                    sources[digest] = lambda p=in_store: p  # type: ignore[misc]
                    continue
                dest = stage / digest.removeprefix("sha256:")
                future = pool.submit(
                    _download, client, ref, digest, size, dest, report, cancel, downloaded
                )
                sources[digest] = future.result
            layers = tuple(
                SourceLayer(digest, media_type, size, str(diff_id), _opener(sources[digest]))
                for (digest, size), media_type, diff_id in zip(
                    blobs, media_types, diff_ids, strict=True
                )
            )
            src = SourceImage(config, config_digest, manifest, manifest_digest, layers, ())
            imported = store._import_image(src, wanted, report, lease)
            for future_result in sources.values():
                future_result()  # every download finished (a repeated layer, say)
        except BaseException:
            cancel.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return Pulled(imported, ref, manifest_digest, len(downloaded), sum(downloaded.values()))


def _size(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _download(
    client: RegistryClient,
    ref: RegistryRef,
    digest: str,
    size: int | None,
    dest: Path,
    report: PullReport,
    cancel: threading.Event,
    downloaded: dict[str, int],
) -> Path:
    def progress(done: int) -> None:
        if cancel.is_set():
            raise _Cancelled
        report.blob_progress(digest, done)

    if cancel.is_set():
        raise _Cancelled
    client.download_blob(ref.repository, digest, size, dest, progress)
    downloaded[digest] = dest.stat().st_size
    report.blob_done(digest)
    log.debug("%s: blob %s downloaded", ref, short_id(digest))
    return dest


def _opener(
    path_of: Callable[[], Path],
) -> Callable[[], contextlib.AbstractContextManager[BinaryIO]]:
    @contextlib.contextmanager
    def open_blob() -> Iterator[BinaryIO]:
        with open(path_of(), "rb") as f:  # waits for the download
            yield f

    return open_blob
