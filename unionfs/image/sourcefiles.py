"""The files of an image source, named by relative POSIX paths: a directory or a tar.

A source is an unpacked OCI layout (a directory) or a tar archive (a docker save
archive or an oci-archive), which may itself be gzip- or zstd-compressed
(``docker save | gzip``): the outer compression is found by its magic bytes. Tar
archives are read in place: the member table is read once, and each blob is then
read straight out of the archive (``pread`` on the one descriptor, so readers are
independent of each other and of the thread that made them); nothing is extracted
to disk. In a compressed archive a reader decompresses from the start up to its
member, so reading N layers costs up to N passes over the archive: the price of
not writing a decompressed copy.

No path leaves the source: a name that is absolute or climbs out, or a link
(in the directory or in the archive) that leads outside, is refused. What the
files hold is `unionfs.image.sources`' business.
"""

from __future__ import annotations

import abc
import contextlib
import gzip
import io
import os
import posixpath
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

import zstandard

from unionfs.errors import UnionfsError

NOT_RECOGNISED = "is not a docker save archive, an OCI layout or an oci-archive"

_JSON_LIMIT = 64 << 20  # manifests, indexes and configs are small; refuse memory bombs
_LINK_LIMIT = 32  # links followed inside an archive before calling it a loop
_MEMBER_LIMIT = 250_000
"""Files and links an archive may hold: the member table's memory is bounded
(an image archive holds a few per layer and image)."""
_READ_BUFFER = 256 << 10
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class SourceBlob:
    """A regular file inside a source: its size and how to read it."""

    name: str
    size: int
    open: Callable[[], contextlib.AbstractContextManager[BinaryIO]]


class SourceFiles(abc.ABC):
    """The files of a source (a directory or a tar), named by relative POSIX paths."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.closed = False

    @abc.abstractmethod
    def find(self, name: str) -> SourceBlob | None:
        """The regular file called `name` (links followed, inside the source only)."""

    def close(self) -> None:
        self.closed = True

    def check_open(self) -> None:
        if self.closed:
            raise ValueError(f"image source {self.label} is closed")

    def read(self, name: str, what: str) -> bytes:
        """All bytes of a small file; `what` names it in errors."""
        blob = self.find(name)
        if blob is None:
            raise UnionfsError(f"{self.label}: {what} is missing")
        if blob.size > _JSON_LIMIT:
            raise UnionfsError(f"{self.label}: {what} is too large ({blob.size} bytes)")
        with blob.open() as f:
            return f.read()


class _DirFiles(SourceFiles):
    """An unpacked layout: files are read from the directory, never outside it."""

    def __init__(self, root: Path) -> None:
        super().__init__(str(root))
        self.root = root
        self.real_root = os.path.realpath(root)

    def find(self, name: str) -> SourceBlob | None:
        self.check_open()
        path = os.path.join(self.root, name)
        real = os.path.realpath(path)
        if os.path.commonpath([real, self.real_root]) != self.real_root:
            raise UnionfsError(f"{self.label}: {name} is a link that leads outside the layout")
        try:
            st = os.stat(real)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise UnionfsError(f"{self.label}: cannot read {name}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            return None

        @contextlib.contextmanager
        def opener() -> Iterator[BinaryIO]:
            self.check_open()
            with open(real, "rb") as f:
                yield f

        return SourceBlob(name, st.st_size, opener)


class _TarFiles(SourceFiles):
    """A tar archive, plain or with gzip/zstd outer compression, read in place."""

    def __init__(self, path: Path, fd: int) -> None:
        super().__init__(str(path))
        self.fd = fd
        self.file_size = os.fstat(fd).st_size
        self.compression = _outer_compression(os.pread(fd, 4, 0))
        self.members: dict[str, _Member] = {}
        seen = 0
        with self._stream() as stream:
            try:
                archive = tarfile.TarFile(fileobj=stream)
                read: list[tarfile.TarInfo] = archive.members  # type: ignore[attr-defined]
                while (info := archive.next()) is not None:
                    read.clear()  # the table here is all that is kept
                    seen += 1
                    name = archive_name(info.name)
                    if name is None:
                        continue
                    member = _Member.of(info)
                    if member is None:
                        self.members.pop(name, None)  # the last entry of a name wins
                        continue
                    self.members[name] = member
                    if len(self.members) > _MEMBER_LIMIT:
                        raise UnionfsError(
                            f"{self.label}: more than {_MEMBER_LIMIT} files: not an image "
                            "archive (docker and skopeo write a few per layer)"
                        )
            except (tarfile.TarError, EOFError, OSError, zlib.error, zstandard.ZstdError) as e:
                if not seen:
                    raise UnionfsError(f"{self.label} {NOT_RECOGNISED}") from None
                raise UnionfsError(f"{self.label}: damaged archive: {e}") from None

    @contextlib.contextmanager
    def _stream(self) -> Iterator[BinaryIO]:
        """The archive's tar bytes from the start: decompressed if need be."""
        raw = io.BufferedReader(_PreadRaw(self, 0, self.file_size), _READ_BUFFER)
        if self.compression == "gzip":
            with gzip.GzipFile(fileobj=raw, mode="rb") as g:
                yield cast(BinaryIO, g)  # a seekable binary reader
        elif self.compression == "zstd":
            dctx = zstandard.ZstdDecompressor()
            with dctx.stream_reader(raw, read_across_frames=True, closefd=False) as z:
                yield z  # a binary reader that seeks forward
        else:
            yield raw

    def find(self, name: str) -> SourceBlob | None:
        self.check_open()
        info = self._resolve(name)
        if info is None:
            return None
        size = info.size
        offset = info.offset
        if self.compression is None and offset + size > self.file_size:
            raise UnionfsError(f"{self.label}: {name} is cut short (the archive is truncated)")

        @contextlib.contextmanager
        def opener() -> Iterator[BinaryIO]:
            self.check_open()
            if self.compression is None:
                yield io.BufferedReader(_PreadRaw(self, offset, size), _READ_BUFFER)
                return
            with self._stream() as stream:
                try:
                    stream.seek(offset)
                except (EOFError, OSError, zlib.error, zstandard.ZstdError) as e:
                    raise UnionfsError(f"{self.label}: damaged archive: {e}") from None
                yield io.BufferedReader(_SectionRaw(self, stream, size, name), _READ_BUFFER)

        return SourceBlob(name, size, opener)

    def _resolve(self, name: str) -> _Member | None:
        """The regular-file member `name` stands for, following symlinks and hard
        links inside the archive only (docker writes repeated layers as symlinks)."""
        for _ in range(_LINK_LIMIT):
            info = self.members.get(name)
            if info is None:
                return None
            if info.kind == "symlink":
                target = posixpath.join(posixpath.dirname(name), info.linkname)
            elif info.kind == "hardlink":
                target = info.linkname
            else:
                return info
            resolved = archive_name(target)
            if resolved is None:
                raise UnionfsError(
                    f"{self.label}: {name} links to {info.linkname!r}, outside the archive"
                )
            name = resolved
        raise UnionfsError(f"{self.label}: {name} is part of a link loop")

    def close(self) -> None:
        if not self.closed:
            super().close()
            os.close(self.fd)


@dataclass(frozen=True, slots=True)
class _Member:
    """What the member table keeps of a tar member that a name may resolve to
    (a TarInfo is several times larger)."""

    kind: Literal["file", "symlink", "hardlink"]
    offset: int
    size: int
    linkname: str

    @classmethod
    def of(cls, info: tarfile.TarInfo) -> _Member | None:
        """None for what no name may resolve to (directories, devices, sparse files)."""
        if info.issym():
            return cls("symlink", 0, 0, info.linkname)
        if info.islnk():
            return cls("hardlink", 0, 0, info.linkname)
        if info.isreg() and not info.issparse():
            return cls("file", info.offset_data, info.size, "")
        return None


class _PreadRaw(io.RawIOBase):
    """Bytes ``[start, start + size)`` of the archive, read with ``pread`` at this
    reader's own position: readers never disturb one another."""

    def __init__(self, files: _TarFiles, start: int, size: int) -> None:
        super().__init__()
        self.files = files
        self.start = start
        self.size = size
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer: Any) -> int:
        self.files.check_open()
        view = memoryview(buffer).cast("B")
        want = min(len(view), self.size - self.pos)
        if want <= 0:
            return 0
        n = os.preadv(self.files.fd, [view[:want]], self.start + self.pos)
        if n == 0:
            raise UnionfsError(f"{self.files.label}: unexpected end of the archive")
        self.pos += n
        return n


class _SectionRaw(io.RawIOBase):
    """The next `size` bytes of a decompressing stream (a member of a compressed
    archive); a stream that ends early is a damaged archive."""

    def __init__(self, files: _TarFiles, stream: BinaryIO, size: int, name: str) -> None:
        super().__init__()
        self.files = files
        self.stream = stream
        self.left = size
        self.name = name

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.files.check_open()
        view = memoryview(buffer).cast("B")
        want = min(len(view), self.left)
        if want <= 0:
            return 0
        try:
            data = self.stream.read(want)
        except (EOFError, OSError, zlib.error, zstandard.ZstdError) as e:
            raise UnionfsError(f"{self.files.label}: damaged archive: {e}") from None
        if not data:
            raise UnionfsError(f"{self.files.label}: {self.name} is cut short")
        view[: len(data)] = data
        self.left -= len(data)
        return len(data)


def _outer_compression(head: bytes) -> str | None:
    if head.startswith(_GZIP_MAGIC):
        return "gzip"
    if head.startswith(_ZSTD_MAGIC):
        return "zstd"
    return None


def archive_name(name: str) -> str | None:
    """A member path in canonical form (``./a//b/`` -> ``a/b``); None for paths that
    are absolute or climb out of the archive, which nothing may refer to."""
    if not name or name.startswith("/") or "\0" in name:
        return None
    norm = posixpath.normpath(name)
    if norm in (".", "..") or norm.startswith("../"):
        return None
    return norm


@contextlib.contextmanager
def open_files(path: Path) -> Iterator[SourceFiles]:
    """The files of the directory or tar archive at `path`, until the context ends."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UnionfsError(f"{path}: no such file or directory") from None
    except OSError as e:
        raise UnionfsError(f"cannot read {path}: {e.strerror}") from None
    files: SourceFiles
    if stat.S_ISDIR(st.st_mode):
        files = _DirFiles(path)
    elif stat.S_ISREG(st.st_mode):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise UnionfsError(f"cannot read {path}: {e.strerror}") from None
        try:
            files = _TarFiles(path, fd)
        except BaseException:
            os.close(fd)
            raise
    else:
        raise UnionfsError(f"{path} {NOT_RECOGNISED}")
    try:
        yield files
    finally:
        files.close()
