"""The layer blob as a byte stream: read once, front to back, hashed, decompressed.

A blob comes from the caller as a sequential reader (`Readable`): it is never
seeked. Its raw bytes are hashed (the layer's ``digest``) as they are read; the
decompressed bytes are hashed (its ``diff_id``) as they are produced, and handed
to `tarfile`'s stream mode by a `Decoder`, a read-only file object.

The compression is told by magic bytes only, never by media type
(`detect_compression`): gzip, zstd or none; bzip2 and xz are refused.
Concatenated gzip members and zstd frames are read as one stream, with zero
padding between and after them, as ``gzip -d`` reads; a stream cut short inside
a member is an error. Decompression goes in bounded steps, so a small blob cannot
make one call produce an unbounded amount of output.

Failures are raised as `Refused`, which `unionfs.image.unpack` turns into a
`LayerError` naming the layer.
"""

from __future__ import annotations

import errno
import hashlib
import time
import zlib
from collections.abc import Callable
from typing import Literal, Protocol

import zstandard

Compression = Literal["gzip", "zstd", "none"]

CHUNK = 1 << 20
"""Bytes per read of the blob, per write of file data, per step of decompression."""
_ZSTD_STEP = 2048
"""zstd input per decompression call: a zstd block turns 4 bytes into at most
128 KiB, so output per call stays under 64 MiB whatever the blob holds."""
_PROGRESS_INTERVAL = 0.1

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_UNSUPPORTED_MAGIC = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}


class Readable(Protocol):
    """What `unpack_layer` needs of a blob: sequential reads (a file opened
    ``rb``, a pipe, a member of an archive, a reader that hashes or copies)."""

    def read(self, size: int, /) -> bytes: ...


class Refused(Exception):
    """An internal failure reason of the unpacker; `unionfs.image.unpack.unpack_layer`
    turns it into a `LayerError`."""


def detect_compression(head: bytes) -> Compression:
    """The compression of a blob, from its first bytes (4 are enough).

    By magic bytes only, never by media type: some writers label plain tars as
    gzip. A zstd stream may start with a skippable frame (``pzstd`` writes one).
    """
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC) or (
        len(head) >= 4 and head[0] & 0xF0 == 0x50 and head[1:4] == b"\x2a\x4d\x18"
    ):
        return "zstd"
    return "none"


def open_decoder(source: Source) -> tuple[Compression, Decoder]:
    """The compression of the blob `source` reads (from its first bytes, read
    ahead without seeking) and the decoder of the tar stream it holds."""
    head = source.peek(6)
    kind = detect_compression(head)
    for magic, name in _UNSUPPORTED_MAGIC.items():
        if kind == "none" and head.startswith(magic):
            raise Refused(f"{name}-compressed layers are not supported")
    decoder = {"gzip": _Gunzip, "zstd": _Unzstd, "none": Decoder}[kind](source)
    return kind, decoder


class Source:
    """The blob as read from the caller: hashed, counted, progress reported.

    `peek` reads ahead for compression detection without seeking `src`.
    """

    def __init__(self, src: Readable, progress: Callable[[int], object] | None) -> None:
        self._src = src
        self._progress = progress
        self._last_report = time.monotonic()
        self._head = b""
        self.sha = hashlib.sha256()
        self.count = 0

    def peek(self, size: int) -> bytes:
        while len(self._head) < size:
            data = self._read_src(size - len(self._head))
            if not data:
                break
            self._head += data
        return self._head[:size]

    def read(self, size: int) -> bytes:
        if self._head:
            out, self._head = self._head[:size], self._head[size:]
            return out
        return self._read_src(size)

    def _read_src(self, size: int) -> bytes:
        try:
            data = self._src.read(size)
        except OSError as e:
            raise Refused(f"reading the blob: {e.strerror or e}") from None
        if data:
            self.sha.update(data)
            self.count += len(data)
            if self._progress is not None:
                now = time.monotonic()
                if now - self._last_report >= _PROGRESS_INTERVAL:
                    self._last_report = now
                    self._progress(self.count)
        return data

    def report(self) -> None:
        """The final progress call, with the whole blob's size."""
        if self._progress is not None:
            self._progress(self.count)


class Decoder:
    """The uncompressed tar stream, as a file object for `tarfile`'s stream mode.

    Every byte produced is hashed (the diff_id). Subclasses decompress; this
    class passes the blob through unchanged.
    """

    def __init__(self, source: Source) -> None:
        self.source = source
        self.sha = hashlib.sha256()
        self.produced = 0
        self._buf = b""
        self._pos = 0
        self._returned = 0
        self._eof = False

    def _produce(self) -> bytes | None:
        """More uncompressed bytes (possibly none yet), or None at the end."""
        return self.source.read(CHUNK) or None

    def _fill(self) -> bool:
        while self._pos >= len(self._buf):
            if self._eof:
                return False
            out = self._produce()
            if out is None:
                self._eof = True
                return False
            self.sha.update(out)
            self.produced += len(out)
            self._buf, self._pos = out, 0
        return True

    def read(self, size: int = -1, /) -> bytes:
        if not self._fill():
            return b""
        end = len(self._buf) if size < 0 else self._pos + size
        out = self._buf[self._pos : end]
        self._pos += len(out)
        self._returned += len(out)
        return out

    def at_end(self) -> bool:
        return not self._fill()

    def drain(self) -> None:
        """Read (and hash) whatever follows the end of the tar archive."""
        while self._fill():
            self._pos = len(self._buf)

    def tell(self) -> int:
        return self._returned

    def seek(self, pos: int, /) -> int:
        raise OSError(errno.ESPIPE, "the layer stream cannot seek")

    def write(self, b: bytes, /) -> int:
        raise OSError(errno.EBADF, "the layer stream is read-only")

    def close(self) -> None:
        """Nothing to release: the caller owns the blob's file object."""


class _Members(Decoder):
    """Concatenated compressed streams: gzip members (``cat a.gz b.gz`` is valid
    gzip) or zstd frames, with zero padding between and after them allowed, as
    ``gzip -d`` reads. A stream cut short inside a member is an error.

    Input goes to the decompressor in steps of `step` bytes: that bounds the
    output of one call, and the copying done where a member ends (eStargz and
    zstd:chunked layers hold a member per file).
    """

    name = ""
    step = 0

    def __init__(self, source: Source) -> None:
        super().__init__(source)
        self._input = memoryview(b"")
        self._piece: bytes | memoryview = b""
        self._in_member = False

    def _produce(self) -> bytes | None:
        while True:
            if not self._piece:
                if not self._input:
                    data = self.source.read(CHUNK)
                    if not data:
                        return self._end_of_blob()
                    self._input = memoryview(data)
                self._piece, self._input = self._input[: self.step], self._input[self.step :]
            if not self._in_member:
                if self._piece[0] == 0:
                    self._piece = bytes(self._piece).lstrip(b"\0")
                    continue
                self._begin()
                self._in_member = True
            out, self._piece, self._in_member = self._feed(self._piece)
            return out

    def _end_of_blob(self) -> bytes | None:
        if not self._in_member:
            return None
        self._in_member = False
        return self._finish()

    def _begin(self) -> None:
        """Start decompressing a new member."""
        raise NotImplementedError

    def _feed(self, piece: bytes | memoryview) -> tuple[bytes, bytes | memoryview, bool]:
        """Decompress some input: (output, input left over, member still open)."""
        raise NotImplementedError

    def _finish(self) -> bytes:
        """The blob ended inside a member: its last output, if it is complete."""
        raise Refused(f"truncated {self.name} stream")


class _Gunzip(_Members):
    """gzip; zlib checks each member's CRC and length."""

    name = "gzip"
    step = 64 << 10
    _member: zlib._Decompress

    def _begin(self) -> None:
        self._member = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def _feed(self, piece: bytes | memoryview) -> tuple[bytes, bytes | memoryview, bool]:
        try:
            out = self._member.decompress(piece, CHUNK)
        except zlib.error as e:
            raise Refused(f"corrupt gzip stream: {e}") from None
        if self._member.eof:
            return out, self._member.unused_data, False
        return out, self._member.unconsumed_tail, True

    def _finish(self) -> bytes:
        # Output may still wait inside zlib (decompress stops at CHUNK bytes).
        try:
            out = self._member.flush()
        except zlib.error as e:
            raise Refused(f"corrupt gzip stream: {e}") from None
        if not self._member.eof:
            raise Refused("truncated gzip stream")
        return out


class _Unzstd(_Members):
    """zstd, skippable frames included. (``zstandard``'s stream_reader would end
    quietly where a frame is cut short; a decompressobj says whether it ended.)"""

    name = "zstd"
    step = _ZSTD_STEP
    _frame: zstandard.ZstdDecompressionObj

    def __init__(self, source: Source) -> None:
        super().__init__(source)
        self._context = zstandard.ZstdDecompressor()

    def _begin(self) -> None:
        self._frame = self._context.decompressobj()

    def _feed(self, piece: bytes | memoryview) -> tuple[bytes, bytes | memoryview, bool]:
        try:
            out = self._frame.decompress(piece)
        except zstandard.ZstdError as e:
            raise Refused(f"corrupt zstd stream: {e}") from None
        if self._frame.eof:
            return out, self._frame.unused_data, False
        return out, b"", True
