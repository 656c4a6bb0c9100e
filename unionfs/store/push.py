"""``push``: an image of the store to a registry, its manifest byte for byte.

The store's manifest, config and layer blobs are opened and checked against the
image record (as an export does); then each blob the registry lacks (HEAD) is
sent, at most `JOBS` at a time: mounted from another repository of the same
registry that the image was pulled from or pushed to when there is one
(``?mount=&from=``), else uploaded in one request or, above `CHUNKED_ABOVE`
bytes, in chunks. The config goes after the layers, the manifest last, so a
tag never names a manifest whose blobs are missing. Since the manifest bytes are
the store's, an image pulled and pushed back keeps its manifest digest.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from unionfs.image import refs
from unionfs.image.refs import Reference
from unionfs.image.registry.client import RegistryClient
from unionfs.image.registry.reference import RegistryRef
from unionfs.store.export import _open_source
from unionfs.store.store import Store

log = logging.getLogger(__name__)

JOBS = 4
CHUNKED_ABOVE = 64 << 20
CHUNK_SIZE = 16 << 20


class PushReport(Protocol):
    def blob_start(self, digest: str, size: int) -> None: ...
    def blob_progress(self, digest: str, done: int) -> None: ...
    def blob_done(self, digest: str, how: str) -> None: ...


@dataclass(frozen=True)
class Pushed:
    reference: RegistryRef
    image_id: str
    manifest_digest: str
    how: dict[str, str]
    """Each blob digest and what happened to it: exists, mounted or uploaded."""


def mount_source(store: Store, image_id: str, target: RegistryRef) -> str | None:
    """Another repository of the target registry that holds the image's blobs."""
    for tag in store.tags_of(image_id):
        host, _, repository = tag.name.partition("/")
        if host == target.host and repository and repository != target.repository:
            return repository
    return None


def push_image(
    store: Store,
    client: RegistryClient,
    image_text: str,
    target: RegistryRef,
    report: PushReport,
    *,
    jobs: int = JOBS,
    chunk_size: int | None = None,
) -> Pushed:
    """Push the image `image_text` names to `target` (a tag), with the manifest the
    tag `image_text` names came with (`ImageRecord.manifest_for`)."""
    image = store.resolve_image(image_text)
    name, tag, digest = refs.split_reference(image_text)
    named = Reference(name, tag or refs.DEFAULT_TAG) if digest is None else None
    if named not in store.tags_of(image.id):
        named = None  # an ID: the image's own manifest
    mount_from = mount_source(store, image.id, target)
    client.need_scope(target.repository, "pull,push")
    if mount_from:
        client.need_scope(mount_from, "pull")
    with contextlib.ExitStack() as stack:
        source = _open_source(store, image, named, stack)
        layer_blobs = list(dict.fromkeys(d for _, d in source.layers))
        how: dict[str, str] = {}

        def send(digest: str) -> None:
            blob = source.blobs[digest]
            report.blob_start(digest, blob.size)
            chunked = (
                chunk_size
                if chunk_size is not None
                else (CHUNK_SIZE if blob.size > CHUNKED_ABOVE else None)
            )

            def open_blob() -> contextlib.AbstractContextManager[BinaryIO]:
                # A reader of its own of the blob opened above (the store may drop it).
                return open(f"/proc/self/fd/{blob.file.fileno()}", "rb")

            how[digest] = client.upload_blob(
                target.repository,
                digest,
                blob.size,
                open_blob,
                mount_from=mount_from,
                chunk_size=chunked,
                progress=lambda done: report.blob_progress(digest, done),
            )
            report.blob_done(digest, how[digest])

        with ThreadPoolExecutor(max(1, jobs)) as pool:
            for future in [pool.submit(send, d) for d in layer_blobs]:
                future.result()
        send(image.id)
        digest = client.put_manifest(
            target.repository, target.tag or "latest", source.manifest, source.manifest_type
        )
    return Pushed(target, image.id, digest, how)
