"""Blob downloads: a blob of a registry as a sequential reader, resumed and verified.

A pull reads a layer blob once, front to back, as it arrives: the store writes
it to its staging file, hashes it and unpacks it in the same pass
(`unionfs.store.layers`), so no blob is written to disk or read twice.

Invariants of `BlobStream`:

* Every byte is hashed as it is read; the read that would return the end of
  the blob first checks its size (against the manifest's) and its digest, and
  raises `RegistryError` if either differs. A reader that reads to the end has
  therefore seen only verified bytes when it sees the end; it must still keep
  what it made of them out of sight until then (the store unpacks in a staging
  dir and renames it into place only after its own checks).
* More bytes than the manifest's size are refused as soon as they arrive.
* A broken connection (or a timeout) is resumed with a ``Range`` request from
  the first byte not yet read, with backoff, up to the client's retries; a
  registry that ignores the range answers from the start, and the bytes
  already read are skipped (and hashed again).
* 429 and 5xx answers are retried and 401 answered by `RegistryClient`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from types import TracebackType

import httpx

from unionfs.image.registry.client import RegistryClient, RegistryError

log = logging.getLogger(__name__)

_BACKOFF_START = 0.25
_BACKOFF_CAP = 8.0
_BROKEN = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)


class BlobStream:
    """One blob of `repository` as a read-only, sequential file object.

    `progress`, if given, is called with the number of blob bytes read after
    each piece that arrives; an exception it raises (a cancelled pull) ends
    the read. Use as a context manager: the connection is closed on exit.
    """

    def __init__(
        self,
        client: RegistryClient,
        repository: str,
        digest: str,
        size: int | None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self._client = client
        self._repository = repository
        self.digest = digest
        self.size = size
        self._progress = progress
        self.what = f"{client.host}/{repository}: blob {digest[:19]}"
        self._sha = hashlib.sha256()
        self.received = 0
        """Bytes of the blob received (and hashed) so far."""
        self._skip = 0
        self._response: httpx.Response | None = None
        self._chunks: Iterator[bytes] | None = None
        self._buf = b""
        self._pos = 0
        self._attempt = 0
        self._delay = _BACKOFF_START
        self.complete = False
        """The whole blob was read and verified."""

    def __enter__(self) -> BlobStream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
        self._response, self._chunks = None, None

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        """Up to `size` bytes (all of the piece at hand if negative); b"" at the
        verified end."""
        while self._pos >= len(self._buf):
            if self.complete:
                return b""
            chunk = self._next()
            if chunk is None:
                self._verify()
                return b""
            self._buf, self._pos = chunk, 0
        if self._pos == 0 and (size < 0 or size >= len(self._buf)):
            out = self._buf  # the common case: the whole piece, not copied
        else:
            end = len(self._buf) if size < 0 else self._pos + size
            out = self._buf[self._pos : end]
        self._pos += len(out)
        return out

    def _next(self) -> bytes | None:
        """The next piece of new bytes, or None at the end of the blob."""
        while True:
            try:
                if self._chunks is None:
                    self._open()
                assert self._chunks is not None
                chunk = next(self._chunks, None)
                if chunk is None:
                    self.close()
                    return None
            except _BROKEN as e:
                self._broken(e)
                continue
            self._sha.update(chunk)
            self.received += len(chunk)
            if self.size is not None and self.received > self.size:
                raise RegistryError(f"{self.what}: more than its {self.size} bytes")
            if self._skip:  # already read before the registry started over
                drop = min(self._skip, len(chunk))
                self._skip -= drop
                chunk = chunk[drop:]
            if self._progress is not None:
                self._progress(self.received)
            if chunk:
                return chunk

    def _open(self) -> None:
        headers = {"Range": f"bytes={self.received}-"} if self.received else {}
        r = self._client.get_blob_stream(self._repository, self.digest, headers, self.what)
        self._response = r
        if self.received and r.status_code == 200:
            log.info("%s: the registry ignored the range; reading from the start", self.what)
            self._skip, self.received, self._sha = self.received, 0, hashlib.sha256()
        elif r.status_code not in (200, 206):
            r.read()
            self.close()
            RegistryClient.check(r, self.what)
        self._chunks = r.iter_bytes()  # as the pieces arrive (64 KiB), not joined

    def _broken(self, e: Exception) -> None:
        self.close()
        self._attempt += 1
        if self._attempt > self._client.retries:
            raise RegistryError(
                f"{self.what}: {_reason(e)} (after {self._attempt} tries)"
            ) from None
        log.info(
            "%s: %s at byte %d; resuming in %.2fs",
            self.what,
            _reason(e),
            self.received,
            self._delay,
        )
        time.sleep(self._delay)
        self._delay = min(self._delay * 2, _BACKOFF_CAP)

    def _verify(self) -> None:
        if self.size is not None and self.received != self.size:
            raise RegistryError(
                f"{self.what}: {self.received} bytes received, the manifest says {self.size}"
            )
        actual = "sha256:" + self._sha.hexdigest()
        if actual != self.digest:
            raise RegistryError(f"{self.what}: the bytes received hash to {actual}")
        self.complete = True


def _reason(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return text.splitlines()[0][:200]
