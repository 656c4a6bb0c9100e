"""The bytes of an export: its archives' tar writer, and copies of the store's blobs.

Archives are deterministic: `TarWriter` writes ustar headers with owner 0 and
time 0, in the order it is given members, and pads the end to a whole record
as tar(1) does. A member whose size is known only at its end (a layer
decompressed while it is written) gets its header written afterwards, in the
512 bytes kept for it, so the file it writes into must be seekable.

Blobs are copied in the kernel where it can (``copy_file_range``, a reflink on
some filesystems), else read and written. A blob is read from the file opened
when the export began (`StoreBlob`), so it stays readable whatever the store
does meanwhile.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from unionfs.errors import UnionfsError

_CHUNK = 1 << 20
_RECORD = tarfile.RECORDSIZE  # tar pads its end to a whole record, as tar(1) does
_BLOCK = tarfile.BLOCKSIZE
_USTAR_SIZE_MAX = 0o77777777777  # larger sizes take base-256 (GNU) in the header

# Errors a damaged compressed blob raises while it is read.
_DECOMPRESS_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError)


@dataclass(frozen=True)
class StoreBlob:
    """A blob of the store, opened: it stays readable whatever the store does next."""

    digest: str
    size: int
    path: Path
    file: BinaryIO

    def rewind(self) -> BinaryIO:
        self.file.seek(0)
        return self.file


class TarWriter:
    """A tar archive written in order into a seekable file: ustar headers, owner 0,
    time 0. A member whose size is known only at its end (a decompressed layer) gets
    its header written afterwards, in the 512 bytes kept for it."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._offset = 0

    def _header(self, name: str, kind: bytes, size: int = 0, link: str = "") -> bytes:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
        if kind == tarfile.SYMTYPE:
            info.mode = 0o777
        info.size = size
        info.linkname = link
        info.mtime = 0
        info.uname = info.gname = ""
        if size <= _USTAR_SIZE_MAX:
            header = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")
        else:
            header = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")
        if len(header) != _BLOCK:  # names here are short: one block each
            raise ValueError(f"tar header of {name} is not one block")
        return header

    def _write(self, data: bytes | memoryview) -> None:
        self._f.write(data)
        self._offset += len(data)

    def _pad(self, size: int) -> None:
        self._write(b"\0" * (-size % _BLOCK))

    def add_dir(self, name: str) -> None:
        self._write(self._header(name + "/", tarfile.DIRTYPE))

    def add_symlink(self, name: str, target: str) -> None:
        self._write(self._header(name, tarfile.SYMTYPE, link=target))

    def add_bytes(self, name: str, data: bytes) -> None:
        self._write(self._header(name, tarfile.REGTYPE, len(data)))
        self._write(data)
        self._pad(len(data))

    def add_file(self, name: str, blob: StoreBlob) -> None:
        """A store blob of known size; its size is checked, not its digest."""
        self._write(self._header(name, tarfile.REGTYPE, blob.size))
        self._f.flush()
        out = self._f.fileno()
        copied = copy_into(blob.rewind().fileno(), out, blob.size, self._offset)
        if copied != blob.size:
            raise UnionfsError(f"blob {blob.digest}: read {copied} of {blob.size} bytes")
        self._f.seek(self._offset + copied)
        self._offset += copied
        self._pad(copied)

    def add_stream(self, name: str, stream: BinaryIO, what: str) -> str:
        """A member of unknown size read from `stream`; returns ``sha256:`` of its bytes."""
        start = self._offset
        self._write(b"\0" * _BLOCK)  # its header, once the size is known
        sha = hashlib.sha256()
        size = 0
        while True:
            try:
                data = stream.read(_CHUNK)
            except _DECOMPRESS_ERRORS as e:
                raise UnionfsError(f"{what}: the store's blob is damaged ({e})") from None
            if not data:
                break
            sha.update(data)
            size += len(data)
            self._write(data)
        self._pad(size)
        self._f.seek(start)
        self._f.write(self._header(name, tarfile.REGTYPE, size))
        self._f.seek(self._offset)
        return "sha256:" + sha.hexdigest()

    def close(self) -> int:
        """End the archive (two zero blocks, padded to a record); returns its size."""
        end = self._offset + 2 * _BLOCK
        self._write(b"\0" * (2 * _BLOCK + (-end % _RECORD)))
        self._f.flush()
        return self._offset


def copy_into(src: int, dst: int, size: int, at: int) -> int:
    """Copy `size` bytes from the start of `src` to offset `at` of `dst`: in the
    kernel where it can (``copy_file_range``, a reflink on some filesystems)."""
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src, dst, min(size - done, 1 << 30), done, at + done)
            if n == 0:
                return done
            done += n
        return done
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while done < size:
        data = os.pread(src, min(_CHUNK, size - done), done)
        if not data:
            break
        os.pwrite(dst, data, at + done)
        done += len(data)
    return done
