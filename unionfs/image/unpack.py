"""The unpacker: one image layer blob (a tar, plain, gzip or zstd) into a directory.

The blob is read once, front to back. Its raw bytes are hashed (the layer's
``digest``), the decompressed bytes are hashed (its ``diff_id``) and fed to
`tarfile` in stream mode; after the last member the rest of the stream is read
too (some writers omit the end-of-archive blocks, others pad), so both digests
cover every byte. They are compared with the expected values at the end: the
caller unpacks into a fresh directory and discards it on any error.

Paths in a tar are untrusted (names holding them are ``unsafe_*`` until they
are normalised). Nothing is ever created through a path string: every entry is
made relative to a directory file descriptor reached one component at a time
with ``O_NOFOLLOW``, so a symlink stored in the layer is never followed, and a
name with ``..`` that would leave the layer refuses the whole layer. Entries are
created by this module, never by ``tarfile.extract``.

Decisions on entries the tar format allows but a layer should not hold:

* absolute names are made relative (with a warning);
* an entry under a symlink of the same layer, a ``..`` escape, a hard link to
  a path outside the layer or not yet unpacked, a path longer than PATH_MAX:
  the layer is refused;
* device nodes when not root, unknown entry types, ``user.overlay.*``
  attributes (a layer must not forge overlay bookkeeping), attributes the
  filesystem or our privileges refuse: skipped with a warning. A file's own
  ``trusted.overlay.X`` is stored escaped as ``trusted.overlay.overlay.X``, as
  overlayfs stores it for a nested overlay; the mount shows it as it was.

Whiteouts are recognised by name only (writers give them mode 0, a linkname, even
the hard-link type) and written in one of two forms (`unionfs.whiteout` reads
both): ``overlay`` (a character device 0/0 for ``.wh.NAME``, the xattr
``trusted.overlay.opaque=y`` for ``.wh..wh..opq``; needs root; kernel overlayfs
can mount the result) or ``oci`` (the ``.wh.*`` entries kept as empty files).
A whiteout hides the lower layers' NAME; within one layer the later entry wins:

* ``NAME`` then ``.wh.NAME``: NAME is removed and the whiteout written (as
  docker and containerd do);
* ``.wh.NAME`` then ``NAME``: NAME is kept (the whiteout still applies to the
  lower layers: a non-directory hides them anyway, and a directory is made
  opaque, so no lower content shows through it).

Ownership, modes and times of directories are applied after the last entry,
deepest first: children change a directory's mtime, and a read-only directory
must stay writable while it is being filled.
"""

from __future__ import annotations

import collections
import decimal
import errno
import hashlib
import logging
import os
import re
import shutil
import stat
import tarfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

import zstandard

from unionfs.errors import UnionfsError
from unionfs.fs import whiteout
from unionfs.fs.layer import DIR_FLAGS, NAME_MAX, child_path, lstat_at

log = logging.getLogger(__name__)

WhiteoutForm = Literal["overlay", "oci"]
Compression = Literal["gzip", "zstd", "none"]

CHUNK = 1 << 20
"""Bytes per read of the blob, per write of file data, per step of decompression."""
_ZSTD_STEP = 2048
"""zstd input per decompression call: a zstd block turns 4 bytes into at most
128 KiB, so output per call stays under 64 MiB whatever the blob holds."""
_PROGRESS_INTERVAL = 0.1
_MAX_WARNINGS = 1000
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_CACHE = 64
_PATH_MAX = 4096
"""Linux's limit on a path given to one system call; no layer path may be longer."""
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_XATTR_PREFIX = "SCHILY.xattr."
_OVERLAY_OPAQUE = b"trusted.overlay.opaque"
# Attribute errors that skip one attribute: no privilege, no support on this
# filesystem or for this file type, a name or value the kernel rejects.
_SOFT_XATTR_ERRORS = frozenset(
    {errno.EPERM, errno.EACCES, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL,
     errno.ERANGE, errno.E2BIG}
)  # fmt: skip
_SOFT_CHOWN_ERRORS = frozenset({errno.EPERM, errno.EINVAL})
_NOT_A_DIR = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_UNSUPPORTED_MAGIC = {b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}

_Parts = tuple[bytes, ...]
"""A normalised path inside the layer, one component per item; () is the root."""
_T = TypeVar("_T")


class Readable(Protocol):
    """What `unpack_layer` needs of a blob: sequential reads (a file opened
    ``rb``, a pipe, a member of an archive, a reader that hashes or copies)."""

    def read(self, size: int, /) -> bytes: ...


class LayerError(UnionfsError):
    """A layer blob that cannot be unpacked: corrupt, truncated, not what its
    digests say, or holding an entry that would escape the layer directory."""


@dataclass(frozen=True)
class UnpackResult:
    """What one unpacked layer was.

    `size` is the apparent size of its regular files, each hard-link group
    counted once (what ``du -sb --apparent-size`` would roughly say).
    `warnings` has one line per entry that was neutralised or skipped.
    """

    digest: str
    diff_id: str
    compression: Compression
    size: int
    entries: int
    warnings: tuple[str, ...]


class _Refused(Exception):
    """An internal failure reason; `unpack_layer` turns it into a `LayerError`."""


class _Missing(Exception):
    """A path looked up without creating it is not a directory of the layer."""


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


def unpack_layer(
    src: Readable,
    dest: os.PathLike[str] | str,
    *,
    expected_digest: str | None = None,
    expected_diff_id: str | None = None,
    whiteouts: WhiteoutForm | None = None,
    progress: Callable[[int], object] | None = None,
) -> UnpackResult:
    """Unpack the layer blob read from `src` into the empty directory `dest`.

    `src` is read sequentially to its end, never seeked. `whiteouts` picks the
    form whiteouts are written in (default: ``overlay`` for root, else ``oci``).
    `progress` is called with the number of blob bytes read so far, at most
    about ten times a second and once at the end.

    Raises `LayerError` (one line) when the blob is corrupt or truncated, when
    a digest differs from the expected one, or when an entry would escape
    `dest`; `dest` is then partly filled and the caller removes it. Nothing is
    ever written outside `dest`.
    """
    for expected in (expected_digest, expected_diff_id):
        if expected is not None and not _DIGEST.fullmatch(expected):
            raise LayerError(f"layer: unsupported digest {expected!r} (expected sha256:<hex>)")
    known = expected_digest or expected_diff_id
    label = f"layer {known[:19]}" if known else "layer"
    form: WhiteoutForm = whiteouts or ("overlay" if os.geteuid() == 0 else "oci")
    if form not in ("overlay", "oci"):
        raise ValueError(f"unknown whiteout form {form!r}")
    try:
        result = _unpack(src, os.fspath(dest), form, progress)
    except _Refused as e:
        raise LayerError(f"{label}: {e}") from None
    for name, expected, actual in (
        ("digest", expected_digest, result.digest),
        ("diff_id", expected_diff_id, result.diff_id),
    ):
        if expected is not None and actual != expected:
            raise LayerError(f"{label}: {name} mismatch: expected {expected}, got {actual}")
    log.debug(
        "unpacked %s (%s): %d entries, %d bytes, %d warnings",
        result.diff_id, result.compression, result.entries, result.size, len(result.warnings),
    )  # fmt: skip
    return result


def _unpack(
    src: Readable, dest: str, form: WhiteoutForm, progress: Callable[[int], object] | None
) -> UnpackResult:
    root_fd = os.open(dest, DIR_FLAGS)
    try:
        with os.scandir(root_fd) as it:
            if any(True for _ in it):
                raise _Refused(f"destination {dest} is not empty")
        source = _Source(src, progress)
        head = source.peek(6)
        kind = detect_compression(head)
        for magic, name in _UNSUPPORTED_MAGIC.items():
            if kind == "none" and head.startswith(magic):
                raise _Refused(f"{name}-compressed layers are not supported")
        decoder = {"gzip": _Gunzip, "zstd": _Unzstd, "none": _Decoder}[kind](source)
        tree = _Tree(root_fd, form)
        try:
            entries = _extract(decoder, tree)
            try:
                tree.finish()
            except OSError as e:
                raise _Refused(f"setting directory metadata: {e.strerror or e}") from None
        finally:
            tree.close()
        source.report()
    finally:
        os.close(root_fd)
    return UnpackResult(
        digest="sha256:" + source.sha.hexdigest(),
        diff_id="sha256:" + decoder.sha.hexdigest(),
        compression=kind,
        size=tree.size(),
        entries=entries,
        warnings=tree.warnings(),
    )


class _StreamTar(tarfile.TarFile):
    """A stream-mode TarFile that does not keep every member it has read."""

    members: list[tarfile.TarInfo]  # set by TarFile.__init__ (absent from the stubs)

    def next(self) -> tarfile.TarInfo | None:
        info = super().next()
        # Stream mode never looks members up again (hard links are ours to make).
        self.members.clear()
        return info


def _extract(decoder: _Decoder, tree: _Tree) -> int:
    """Create every member of the tar stream, then read (and hash) whatever
    follows the archive; the number of members read."""
    if decoder.at_end():
        return 0  # an empty blob: an empty layer, as Go's archive/tar reads it
    try:
        tar = _StreamTar.open(
            fileobj=decoder, mode="r|", encoding="utf-8", errors="surrogateescape"
        )
    except tarfile.TarError as e:
        raise _Refused(f"not a tar stream: {e}") from None
    entries = 0
    previous = ""
    with tar:
        while True:
            try:
                info = tar.next()
            except tarfile.TarError as e:
                if "unexpected end" in str(e):
                    raise _Refused(f"truncated tar member {previous}") from None
                raise _Refused(f"corrupt tar stream after {previous or 'the start'}: {e}") from None
            if info is None:
                break
            entries += 1
            previous = _show(_raw(info.name))
            try:
                tree.add(info, tar)
            except tarfile.TarError:
                raise _Refused(f"truncated tar member {previous}") from None
            except OSError as e:
                raise _Refused(f"{previous}: {e.strerror or e}") from None
            except RecursionError:  # shutil.rmtree replacing a very deep tree
                raise _Refused(f"{previous}: replaces a directory tree too deep") from None
        # The archive ends at an end-of-archive block, at garbage, or where the
        # stream ends (some writers stop after the last member); a stream that
        # ends inside a header block was cut short.
        decoder.drain()
        if 0 < decoder.produced - tar.offset < tarfile.BLOCKSIZE:
            raise _Refused(f"truncated tar header after {previous or 'the start'}")
    return entries


# --------------------------------------------------------------------------- streams


class _Source:
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
            raise _Refused(f"reading the blob: {e.strerror or e}") from None
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


class _Decoder:
    """The uncompressed tar stream, as a file object for `tarfile`'s stream mode.

    Every byte produced is hashed (the diff_id). Subclasses decompress; this
    class passes the blob through unchanged.
    """

    def __init__(self, source: _Source) -> None:
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


class _Members(_Decoder):
    """Concatenated compressed streams: gzip members (``cat a.gz b.gz`` is valid
    gzip) or zstd frames, with zero padding between and after them allowed, as
    ``gzip -d`` reads. A stream cut short inside a member is an error.

    Input goes to the decompressor in steps of `step` bytes: that bounds the
    output of one call, and the copying done where a member ends (eStargz and
    zstd:chunked layers hold a member per file).
    """

    name = ""
    step = 0

    def __init__(self, source: _Source) -> None:
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
        raise _Refused(f"truncated {self.name} stream")


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
            raise _Refused(f"corrupt gzip stream: {e}") from None
        if self._member.eof:
            return out, self._member.unused_data, False
        return out, self._member.unconsumed_tail, True

    def _finish(self) -> bytes:
        # Output may still wait inside zlib (decompress stops at CHUNK bytes).
        try:
            out = self._member.flush()
        except zlib.error as e:
            raise _Refused(f"corrupt gzip stream: {e}") from None
        if not self._member.eof:
            raise _Refused("truncated gzip stream")
        return out


class _Unzstd(_Members):
    """zstd, skippable frames included. (``zstandard``'s stream_reader would end
    quietly where a frame is cut short; a decompressobj says whether it ended.)"""

    name = "zstd"
    step = _ZSTD_STEP
    _frame: zstandard.ZstdDecompressionObj

    def __init__(self, source: _Source) -> None:
        super().__init__(source)
        self._context = zstandard.ZstdDecompressor()

    def _begin(self) -> None:
        self._frame = self._context.decompressobj()

    def _feed(self, piece: bytes | memoryview) -> tuple[bytes, bytes | memoryview, bool]:
        try:
            out = self._frame.decompress(piece)
        except zstandard.ZstdError as e:
            raise _Refused(f"corrupt zstd stream: {e}") from None
        if self._frame.eof:
            return out, self._frame.unused_data, False
        return out, b"", True


# --------------------------------------------------------------------------- entries


@dataclass
class _DirMeta:
    """Directory metadata applied after the last entry."""

    mode: int
    uid: int
    gid: int
    mtime_ns: int | None


_IMPLICIT_DIR = _DirMeta(0o755, 0, 0, None)
"""A parent directory the tar never names gets what tar tools give it."""


class _Tree:
    """The layer directory being filled, entry by entry.

    Directories are reached through `_walk`, which keeps a small cache of open
    directory descriptors keyed by path (entries of one directory come
    together in a tar); a removed directory's descriptors leave the cache with it.
    """

    def __init__(self, root_fd: int, form: WhiteoutForm) -> None:
        self.root_fd = root_fd
        self.overlay = form == "overlay"
        self.is_root = os.geteuid() == 0
        self.dirs: dict[_Parts, _DirMeta] = {}
        self._cache: collections.OrderedDict[_Parts, int] = collections.OrderedDict()
        self._previous: _Parts = ()
        self._sizes: dict[int, int] = {}
        self._warnings: list[str] = []
        self._unlisted = 0

    # -- results ------------------------------------------------------------------

    def warn(self, line: str) -> None:
        if len(self._warnings) < _MAX_WARNINGS:
            self._warnings.append(line)
        else:
            self._unlisted += 1

    def warnings(self) -> tuple[str, ...]:
        extra = [f"... and {self._unlisted} more warnings"] if self._unlisted else []
        return (*self._warnings, *extra)

    def size(self) -> int:
        return sum(self._sizes.values())

    # -- one entry ----------------------------------------------------------------

    def add(self, info: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        """Create the entry `info` describes (its data read from `tar`)."""
        unsafe_name = _raw(info.name)
        parts = self._normalise(unsafe_name, "path")
        shown = _show(b"/".join(parts))
        if not parts:
            if info.isdir():
                self._walk((), shown, entry=_dir_meta(info))
                self._set_xattrs(info, shown, fd=self.root_fd)
            else:
                self.warn(f"skipped {_show(unsafe_name)}: the layer root must be a directory")
            return
        if any(whiteout.is_reserved_name(p) for p in parts[:-1]):
            self.warn(f"skipped {shown}: inside a directory with a reserved .wh. name")
            return
        name = parts[-1]
        if whiteout.is_reserved_name(name):
            self._whiteout_entry(parts, shown, info)
        elif info.isreg():
            self._file(parts, shown, info, tar)
        elif info.isdir():
            fd = self._walk(parts, shown, entry=_dir_meta(info))
            self._set_xattrs(info, shown, fd=fd)
        elif info.issym():
            self._symlink(parts, shown, info)
        elif info.islnk():
            self._hardlink(parts, shown, info)
        elif info.isfifo():
            parent = self._walk(parts[:-1], shown)
            self._replace(parent, parts, lambda: os.mkfifo(name, 0o600, dir_fd=parent))
            self._finish_node(parent, name, shown, info)
        elif info.ischr() or info.isblk():
            self._device(parts, shown, info)
        else:
            self.warn(f"skipped {shown}: unsupported tar entry type {info.type!r}")

    def _normalise(self, unsafe: bytes, what: str) -> _Parts:
        """Components of a tar path; `..` is resolved by name and may not climb
        above the layer root, absolute paths are made relative (with a warning)."""
        if b"\0" in unsafe:
            raise _Refused(f"{what} holds a NUL byte: {_show(unsafe)}")
        if len(unsafe) >= _PATH_MAX:
            raise _Refused(f"{what} is longer than {_PATH_MAX - 1} bytes: {_show(unsafe[:80])}...")
        parts: list[bytes] = []
        for component in unsafe.split(b"/"):
            if component in (b"", b"."):
                continue
            if component == b"..":
                if not parts:
                    raise _Refused(f"{what} escapes the layer: {_show(unsafe)}")
                parts.pop()
            else:
                parts.append(component)
        if unsafe.startswith(b"/") and what == "path":
            self.warn(f"absolute path {_show(unsafe)} made relative")
        return tuple(parts)

    def _file(self, parts: _Parts, shown: str, info: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        parent = self._walk(parts[:-1], shown)
        name = parts[-1]
        fd = self._replace(parent, parts, lambda: os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent))
        try:
            data = tar.extractfile(info)
            if data is not None:
                while chunk := data.read(CHUNK):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
            st = os.fstat(fd)
            self._sizes[st.st_ino] = st.st_size
            if (st.st_uid, st.st_gid) != (info.uid, info.gid):
                self._set_owner(shown, info.uid, info.gid, fd=fd)
            os.chmod(fd, info.mode & 0o7777)
            self._set_xattrs(info, shown, fd=fd)
            self._set_times(shown, _mtime_ns(info), fd=fd)
        finally:
            os.close(fd)

    def _symlink(self, parts: _Parts, shown: str, info: tarfile.TarInfo) -> None:
        # The target is content, stored verbatim and never followed: an absolute
        # or escaping target is as harmless as any other.
        target = _raw(info.linkname)
        if not target:
            self.warn(f"skipped symlink {shown}: empty target")
            return
        parent = self._walk(parts[:-1], shown)
        name = parts[-1]
        self._replace(parent, parts, lambda: os.symlink(target, name, dir_fd=parent))
        self._set_owner(shown, info.uid, info.gid, at=(parent, name))
        self._set_xattrs(info, shown, at=(parent, name))
        self._set_times(shown, _mtime_ns(info), at=(parent, name))

    def _hardlink(self, parts: _Parts, shown: str, info: tarfile.TarInfo) -> None:
        """A second name of an inode this layer already holds. The entry's own
        metadata is not applied: the inode has its metadata from its first name."""
        unsafe_target = _raw(info.linkname)
        try:
            target = self._normalise(unsafe_target, "target")
        except _Refused as e:
            raise _Refused(f"hard link {shown}: {e}") from None
        if target == parts:
            self.warn(f"skipped hard link {shown}: it links to itself")
            return
        if not target or whiteout.is_reserved_name(target[-1]):
            self.warn(f"skipped hard link {shown}: target {_show(unsafe_target)} is not a file")
            return
        parent = self._walk(parts[:-1], shown)
        name = parts[-1]
        existing = lstat_at(parent, name)
        if existing is not None:
            self._remove(parent, parts, existing)
        missing = f"hard link {shown}: target {_show(unsafe_target)} is not in the layer"
        try:
            target_parent = self._walk(target[:-1], shown, create=False)
        except _Missing:
            raise _Refused(missing) from None
        try:
            os.link(target[-1], name, src_dir_fd=target_parent, dst_dir_fd=parent,
                    follow_symlinks=False)  # fmt: skip
        except FileNotFoundError:
            raise _Refused(missing) from None
        except PermissionError:  # what link(2) says of a directory
            raise _Refused(
                f"hard link {shown}: target {_show(unsafe_target)} is a directory"
            ) from None

    def _device(self, parts: _Parts, shown: str, info: tarfile.TarInfo) -> None:
        kind = stat.S_IFCHR if info.ischr() else stat.S_IFBLK
        if not self.is_root:
            self.warn(f"skipped device node {shown}: not root")
            return
        parent = self._walk(parts[:-1], shown)
        name = parts[-1]
        device = os.makedev(info.devmajor, info.devminor)
        try:
            self._replace(
                parent, parts, lambda: os.mknod(name, kind | 0o600, device, dir_fd=parent)
            )
        except PermissionError:
            self.warn(f"skipped device node {shown}: mknod not permitted")
            return
        self._finish_node(parent, name, shown, info)

    def _finish_node(self, parent: int, name: bytes, shown: str, info: tarfile.TarInfo) -> None:
        """Owner, mode, xattrs and times of a fifo or device node just made.

        chmod goes by name and follows: the name is the node this entry just
        created, not a symlink (Linux has no lchmod).
        """
        self._set_owner(shown, info.uid, info.gid, at=(parent, name))
        os.chmod(name, info.mode & 0o7777, dir_fd=parent)
        self._set_xattrs(info, shown, at=(parent, name))
        self._set_times(shown, _mtime_ns(info), at=(parent, name))

    # -- whiteouts ----------------------------------------------------------------

    def _whiteout_entry(self, parts: _Parts, shown: str, info: tarfile.TarInfo) -> None:
        """``.wh..wh..opq`` or ``.wh.NAME``, whatever the entry's type says."""
        name = parts[-1]
        if name == whiteout.OCI_OPAQUE:
            fd = self._walk(parts[:-1], shown)
            if self.overlay:
                os.setxattr(fd, _OVERLAY_OPAQUE, whiteout.OPAQUE_YES)
            else:
                self._empty_file(fd, parts, shown, info)
            return
        target = whiteout.oci_whiteout_target(name)
        if target is None or target in (b".", b"..") or whiteout.is_reserved_name(target):
            self.warn(f"skipped {shown}: not a whiteout of a valid name")
            return
        parent = self._walk(parts[:-1], shown)
        hidden = (*parts[:-1], target)
        if self.overlay:
            self._replace(parent, hidden, lambda: os.mknod(target, stat.S_IFCHR, 0, dir_fd=parent))
            self._set_owner(shown, info.uid, info.gid, at=(parent, target))
            self._set_times(shown, _mtime_ns(info), at=(parent, target))
            return
        existing = lstat_at(parent, target)
        if existing is not None:
            self._remove(parent, hidden, existing)
        self._empty_file(parent, parts, shown, info)

    def _empty_file(self, parent: int, parts: _Parts, shown: str, info: tarfile.TarInfo) -> None:
        """An OCI whiteout or opaque marker: an empty file with the entry's owner,
        mode and time (its data, if a writer gave it any, is not kept)."""
        name = parts[-1]
        fd = self._replace(parent, parts, lambda: os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent))
        try:
            self._set_owner(shown, info.uid, info.gid, fd=fd)
            os.chmod(fd, info.mode & 0o7777)
            self._set_times(shown, _mtime_ns(info), fd=fd)
        finally:
            os.close(fd)

    def _make_opaque(self, fd: int) -> None:
        """Mark a directory this layer made over its own whiteout as opaque."""
        if self.overlay:
            os.setxattr(fd, _OVERLAY_OPAQUE, whiteout.OPAQUE_YES)
        else:
            os.close(os.open(whiteout.OCI_OPAQUE, _FILE_FLAGS, 0o600, dir_fd=fd))

    # -- directories --------------------------------------------------------------

    def _walk(
        self, parts: _Parts, shown: str, *, create: bool = True, entry: _DirMeta | None = None
    ) -> int:
        """An open descriptor of directory `parts` (owned by the cache, valid until
        the next `_walk` but one).

        Each component is opened with ``O_NOFOLLOW``. With `create`, a missing
        component is made (mode 0755 when the tar does not name it), a
        non-directory in the way is replaced as a later tar entry replaces an
        earlier one, and a symlink refuses the layer; `entry`, when given, is
        the metadata of the tar entry naming `parts` itself, which may also
        replace a symlink. Without `create`, anything but a directory raises
        `_Missing`.
        """
        cur, start = self.root_fd, 0
        for depth in range(len(parts), 0, -1):
            fd = self._cache.get(parts[:depth])
            if fd is not None:
                self._cache.move_to_end(parts[:depth])
                cur, start = fd, depth
                break
        for depth in range(start + 1, len(parts) + 1):
            sub = parts[:depth]
            cur = self._step(cur, sub, shown, create, entry is not None and depth == len(parts))
            self._cache[sub] = cur
            self._trim_cache(sub)
        self._previous = parts
        if entry is not None:
            self.dirs[parts] = entry
        return cur

    def _step(self, parent: int, sub: _Parts, shown: str, create: bool, is_entry: bool) -> int:
        name = sub[-1]
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent)
        except OSError as e:
            if e.errno not in _NOT_A_DIR:
                raise
        if not create:
            raise _Missing
        st = lstat_at(parent, name)
        if st is not None and stat.S_ISLNK(st.st_mode) and not is_entry:
            raise _Refused(f"parent of {shown} is a symlink")
        return self._new_dir(parent, sub, st)

    def _new_dir(self, parent: int, sub: _Parts, old: os.stat_result | None) -> int:
        """Make directory `sub` in place of `old` (a non-directory, or None)."""
        name = sub[-1]
        over_whiteout = False
        if old is not None:
            over_whiteout = self.overlay and whiteout.is_chardev_whiteout(old)
            self._remove(parent, sub, old)
        os.mkdir(name, 0o700, dir_fd=parent)
        self.dirs[sub] = _IMPLICIT_DIR
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        try:
            if not self.overlay:
                marker = whiteout.OCI_PREFIX + name
                over_whiteout = len(marker) <= NAME_MAX and lstat_at(parent, marker) is not None
            if over_whiteout:
                self._make_opaque(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _replace(self, parent: int, parts: _Parts, make: Callable[[], _T]) -> _T:
        """Run `make` (which creates `parts`); when the name is taken, remove what
        is there first: a later tar entry replaces an earlier one."""
        try:
            return make()
        except FileExistsError:
            existing = lstat_at(parent, parts[-1])
            if existing is not None:
                self._remove(parent, parts, existing)
            return make()

    def _remove(self, parent: int, parts: _Parts, st: os.stat_result) -> None:
        name = parts[-1]
        if stat.S_ISDIR(st.st_mode):
            for key in [k for k in self._cache if k[: len(parts)] == parts]:
                os.close(self._cache.pop(key))
            shutil.rmtree(name, dir_fd=parent)
        else:
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                self._sizes.pop(st.st_ino, None)
            os.unlink(name, dir_fd=parent)

    def _trim_cache(self, current: _Parts) -> None:
        """Close the least recently used descriptors beyond the cache's size, but
        not the one a walk stands on nor the previous walk's result."""
        while len(self._cache) > _DIR_CACHE:
            victim = next(k for k in self._cache if k not in (current, self._previous))
            os.close(self._cache.pop(victim))

    def finish(self) -> None:
        """Owner, mode and times of every directory, deepest first."""
        for parts in sorted(self.dirs, key=len, reverse=True):
            meta = self.dirs[parts]
            shown = _show(b"/".join(parts)) or "."
            try:
                fd = self._walk(parts, shown, create=False)
            except _Missing:
                continue  # removed or replaced by a later entry
            self._set_owner(shown, meta.uid, meta.gid, fd=fd)
            os.chmod(fd, meta.mode)
            if meta.mtime_ns is not None:
                self._set_times(shown, meta.mtime_ns, fd=fd)

    def close(self) -> None:
        while self._cache:
            os.close(self._cache.popitem()[1])

    # -- metadata -----------------------------------------------------------------

    def _set_owner(
        self, shown: str, uid: int, gid: int, *, fd: int | None = None,
        at: tuple[int, bytes] | None = None,
    ) -> None:  # fmt: skip
        """Numeric owner from the header (never names), when root. Before chmod:
        chown clears setuid/setgid."""
        if not self.is_root:
            return
        try:
            if fd is not None:
                os.chown(fd, uid, gid)
            elif at is not None:
                os.chown(at[1], uid, gid, dir_fd=at[0], follow_symlinks=False)
        except OSError as e:
            if e.errno not in _SOFT_CHOWN_ERRORS:
                raise
            self.warn(f"owner {uid}:{gid} of {shown} not set: {e.strerror}")

    def _set_times(
        self, shown: str, mtime_ns: int, *, fd: int | None = None,
        at: tuple[int, bytes] | None = None,
    ) -> None:  # fmt: skip
        """atime = mtime = the header's mtime; symlinks' own times included."""
        try:
            if fd is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            elif at is not None:
                os.utime(at[1], ns=(mtime_ns, mtime_ns), dir_fd=at[0], follow_symlinks=False)
        except (OverflowError, OSError) as e:
            if isinstance(e, OSError) and e.errno != errno.EINVAL:
                raise
            self.warn(f"time of {shown} not set: {mtime_ns} ns is out of range")

    def _set_xattrs(
        self, info: tarfile.TarInfo, shown: str, *, fd: int | None = None,
        at: tuple[int, bytes] | None = None,
    ) -> None:  # fmt: skip
        """PAX ``SCHILY.xattr.NAME`` records, values as raw bytes (tarfile decoded
        them with surrogateescape). Overlay attributes are never taken from a tar."""
        for key, value in info.pax_headers.items():
            if not key.startswith(_XATTR_PREFIX):
                continue
            attr = _raw(key[len(_XATTR_PREFIX) :])
            # A file's own trusted.overlay.X is stored escaped, as overlayfs stores
            # it for a nested overlay (and the mount shows it again as
            # trusted.overlay.X): it can never act as overlay bookkeeping.
            stored = whiteout.stored_xattr(attr)
            if stored is None:
                self.warn(f"dropped xattr {_show(attr)} of {shown}: overlay attributes"
                          " come only from whiteout entries")  # fmt: skip
                continue
            attr = stored
            try:
                if fd is not None:
                    os.setxattr(fd, attr, _raw(value))
                elif at is not None:
                    os.setxattr(child_path(*at), attr, _raw(value), follow_symlinks=False)
            except OSError as e:
                if e.errno not in _SOFT_XATTR_ERRORS:
                    raise
                self.warn(f"xattr {_show(attr)} of {shown} not set: {e.strerror}")


# --------------------------------------------------------------------------- values


def _raw(text: str) -> bytes:
    """The bytes tarfile decoded with utf-8/surrogateescape."""
    return text.encode("utf-8", "surrogateescape")


def _show(name: bytes) -> str:
    """A path for a one-line message: undecodable bytes and control characters
    escaped."""
    text = name.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _mtime_ns(info: tarfile.TarInfo) -> int:
    """The entry's mtime in nanoseconds, exact for PAX fractional times."""
    text = info.pax_headers.get("mtime")
    if text is not None:
        try:
            return int(decimal.Decimal(text).scaleb(9).to_integral_value(decimal.ROUND_FLOOR))
        except (ArithmeticError, ValueError):
            pass
    return int(info.mtime) * 1_000_000_000


def _dir_meta(info: tarfile.TarInfo) -> _DirMeta:
    return _DirMeta(info.mode & 0o7777, info.uid, info.gid, _mtime_ns(info))
