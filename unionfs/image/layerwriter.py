"""The layer writer: an upper directory into one OCI layer blob (the reverse of `unionfs.unpack`).

The upper is walked once, depth first, and the tar is written as it is read:
each byte goes through one hash for the ``diff_id`` (the uncompressed tar),
then the compressor, then a second hash for the blob ``digest``. Nothing is
read twice and nothing is kept but the names of hard-link groups.

The tar is canonical, so the same upper always gives the same bytes:

* PAX format, headers written here (not by `tarfile`, which can neither write
  a non-UTF-8 attribute name nor an attribute value without also declaring
  ``hdrcharset=BINARY``): ``path``/``linkpath`` records for names longer than
  100 bytes or not ASCII, ``mtime`` for sub-second times (nanoseconds, as Go's
  archive/tar writes them), ``uid``/``gid``/``size`` when they overflow,
  ``SCHILY.xattr.NAME`` with the attribute's raw bytes;
* entries in path order, component by component (a directory's subtree
  right after it, so parents come before children; within a directory,
  names in byte order); relative names without ``./``, directories with a
  trailing ``/``; the root directory itself is not an entry;
* numeric owners, empty user and group names, ``mode & 0o7777``, mtime from
  the file; no atime or ctime (reading a file changes its atime);
* gzip with header mtime 0 and no file name; zstd frames with checksums.

Every file type a layer can hold is written: regular files, directories,
symlinks, hard links (the second and later names of an inode, in path order,
are link entries to the first), fifos and device nodes. Sockets cannot be
stored in a layer: they are skipped with a warning.

The upper's bookkeeping is translated into the OCI forms, as the mount reads
it (`unionfs.whiteout`):

* a whiteout (a character device 0/0, a zero-size file with an overlay
  ``whiteout`` attribute, or a ``.wh.NAME`` entry) becomes the empty
  regular file ``.wh.NAME`` with mode 0, never also ``NAME``; where the upper
  holds both ``NAME`` and a whiteout of it, ``NAME`` wins (as the mount
  shows it) and no whiteout is written;
* an opaque directory (the ``trusted.overlay.opaque``/``user.overlay.opaque``
  attribute set to ``y``, or a ``.wh..wh..opq`` entry) becomes the directory
  entry followed at once by ``DIR/.wh..wh..opq`` (as docker and containerd
  place it);
* a renamed directory (one with an overlayfs ``redirect`` attribute, whose
  lower content lives under its old name) is written whole, as the mount shows
  it: OCI layers have no redirects, so the new name carries the merged content
  of every layer (read through a read-only `UnionFS` over the upper and the
  `lowers`), and is opaque; the old name is a whiteout like any other;
* a rootless layer's ``user.containers.override_stat`` gives the entry's
  owner, mode and type (`unionfs.fs.overridestat`) and is not written;
* overlay attributes (``trusted.overlay.*``, ``user.overlay.*``) are dropped,
  except the escaped ``trusted.overlay.overlay.X``, which is what the mount
  showed as ``trusted.overlay.X`` and is written under that name.

The walk never follows a symlink: every entry is opened relative to its
directory's descriptor with ``O_NOFOLLOW``, and attributes are read through
``/proc/self/fd/DIRFD/NAME`` without following the final name.

The upper must not change while it is written (its container is not mounted);
a regular file that is shorter than its ``lstat`` said is an error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import zstandard

from unionfs.errors import UnionfsError
from unionfs.fs import overridestat, whiteout
from unionfs.fs.inodes import Node, StatLike
from unionfs.fs.layer import (
    DIR_FLAGS,
    Layer,
    getxattr_at,
    is_opaque_dir,
    is_xattr_whiteout,
    listxattr_at,
    lstat_at,
    redirect_at,
)
from unionfs.fs.vfs import UnionFS
from unionfs.image.decompress import Compression

log = logging.getLogger(__name__)

BLOCK = tarfile.BLOCKSIZE
CHUNK = 1 << 20
"""Bytes per read of file data."""
GZIP_LEVEL = 6
"""gzip's and Go's default: docker and podman compress layers at this level."""
ZSTD_LEVEL = 3
"""zstd's default level, the one containers/storage uses."""

_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_PAX_NAME = b"././@PaxHeader"
_XATTR_KEY = b"SCHILY.xattr."
_MAX_ID = 8**7  # uid, gid: 7 octal digits in a ustar field
_MAX_BIG = 8**11  # size, mtime: 11 octal digits
_NS = 1_000_000_000
_TYPES = {
    stat.S_IFREG: tarfile.REGTYPE,
    stat.S_IFDIR: tarfile.DIRTYPE,
    stat.S_IFLNK: tarfile.SYMTYPE,
    stat.S_IFIFO: tarfile.FIFOTYPE,
    stat.S_IFCHR: tarfile.CHRTYPE,
    stat.S_IFBLK: tarfile.BLKTYPE,
}


class LayerWriteError(UnionfsError):
    """The upper directory cannot be written as a layer (it changed while being read)."""


@dataclass(frozen=True)
class WrittenLayer:
    """What one written layer blob is.

    `digest` is the sha256 of the bytes written (the blob), `diff_id` that of
    the uncompressed tar; `size` and `uncompressed_size` are their lengths.
    `entries` counts tar members (PAX extended headers are not members).
    `warnings` has one line per entry left out.
    """

    digest: str
    diff_id: str
    compression: Compression
    size: int
    uncompressed_size: int
    entries: int
    warnings: tuple[str, ...] = ()


def write_layer(
    upper: Path,
    out: BinaryIO,
    *,
    compression: Compression = "gzip",
    lowers: Sequence[Path] = (),
) -> WrittenLayer:
    """Write the upper directory `upper` as a layer blob to `out`. `lowers`
    (top first) are the layers below it, read for renamed directories.

    `out` is written sequentially, never seeked or closed. Raises
    `LayerWriteError` when a file shrinks while it is read, `OSError` when
    the upper cannot be read.
    """
    if compression not in ("gzip", "zstd", "none"):
        raise ValueError(f"unknown compression {compression!r}")
    sink = _Sink(out, compression)
    walker = _Walker(sink, [upper, *lowers] if lowers else [])
    root_fd = os.open(upper, DIR_FLAGS)
    try:
        walker.walk(root_fd)
    finally:
        os.close(root_fd)
        walker.close()
    sink.write(bytes(2 * BLOCK))  # end of archive
    sink.finish()
    result = WrittenLayer(
        digest="sha256:" + sink.blob_sha.hexdigest(),
        diff_id="sha256:" + sink.tar_sha.hexdigest(),
        compression=compression,
        size=sink.blob_size,
        uncompressed_size=sink.tar_size,
        entries=walker.entries,
        warnings=tuple(walker.warnings),
    )
    log.debug(
        "wrote layer %s (%s): %d entries, %d bytes, %d warnings",
        result.diff_id, compression, result.entries, result.size, len(result.warnings),
    )  # fmt: skip
    return result


# --------------------------------------------------------------------------- output


class _Sink:
    """The tar stream: hashed (diff_id), compressed, hashed again (digest), written."""

    def __init__(self, out: BinaryIO, compression: Compression) -> None:
        self._out = out
        self.tar_sha = hashlib.sha256()
        self.blob_sha = hashlib.sha256()
        self.tar_size = 0
        self.blob_size = 0
        self._gzip: zlib._Compress | None = None
        self._zstd: zstandard.ZstdCompressionObj | None = None
        if compression == "gzip":
            # wbits 16+: a gzip header with mtime 0, no name, OS "Unix".
            self._gzip = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        elif compression == "zstd":
            self._zstd = zstandard.ZstdCompressor(
                level=ZSTD_LEVEL, write_checksum=True
            ).compressobj()

    def write(self, data: bytes | memoryview) -> None:
        self.tar_sha.update(data)
        self.tar_size += len(data)
        if self._gzip is not None:
            self._emit(self._gzip.compress(data))
        elif self._zstd is not None:
            self._emit(self._zstd.compress(data))
        else:
            self._emit(data)

    def finish(self) -> None:
        if self._gzip is not None:
            self._emit(self._gzip.flush())
        elif self._zstd is not None:
            self._emit(self._zstd.flush())

    def _emit(self, data: bytes | memoryview) -> None:
        if data:
            self.blob_sha.update(data)
            self.blob_size += len(data)
            self._out.write(data)


# --------------------------------------------------------------------------- headers


@dataclass
class _Header:
    """One tar member's header fields."""

    name: bytes
    type: bytes
    mode: int = 0
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime_ns: int = 0
    linkname: bytes = b""
    devmajor: int = 0
    devminor: int = 0
    xattrs: list[tuple[bytes, bytes]] = field(default_factory=list)

    def encode(self) -> bytes:
        """The PAX extended header (if one is needed) and the ustar header."""
        pax: list[tuple[bytes, bytes]] = []
        if len(self.name) > 100 or not self.name.isascii():
            pax.append((b"path", self.name))
        if len(self.linkname) > 100 or not self.linkname.isascii():
            pax.append((b"linkpath", self.linkname))
        secs = self.mtime_ns // _NS
        if self.mtime_ns % _NS or not 0 <= secs < _MAX_BIG:
            pax.append((b"mtime", _pax_time(self.mtime_ns)))
        if not 0 <= secs < _MAX_BIG:
            secs = 0
        size = self.size
        if size >= _MAX_BIG:
            pax.append((b"size", b"%d" % size))
            size = 0
        uid, gid = self.uid, self.gid
        if uid >= _MAX_ID:
            pax.append((b"uid", b"%d" % uid))
            uid = 0
        if gid >= _MAX_ID:
            pax.append((b"gid", b"%d" % gid))
            gid = 0
        pax += [(_XATTR_KEY + k, v) for k, v in self.xattrs]
        ustar = _ustar(
            self.name[:100], self.type, self.mode, uid, gid, size, secs,
            self.linkname[:100], self.devmajor, self.devminor,
        )  # fmt: skip
        if not pax:
            return ustar
        records = b"".join(_pax_record(k, v) for k, v in pax)
        head = _ustar(_PAX_NAME, tarfile.XHDTYPE, 0o644, 0, 0, len(records), 0, b"", 0, 0)
        return head + records + _padding(len(records)) + ustar


def _ustar(
    name: bytes, kind: bytes, mode: int, uid: int, gid: int, size: int, mtime: int,
    linkname: bytes, devmajor: int, devminor: int,
) -> bytes:  # fmt: skip
    """One 512-byte POSIX ustar header block."""
    block = b"".join(
        [
            name.ljust(100, b"\0"),
            _octal(mode, 8),
            _octal(uid, 8),
            _octal(gid, 8),
            _octal(size, 12),
            _octal(mtime, 12),
            b" " * 8,  # the checksum, counted as spaces
            kind,
            linkname.ljust(100, b"\0"),
            tarfile.POSIX_MAGIC,  # "ustar\0" "00"
            bytes(32),  # uname
            bytes(32),  # gname
            _octal(devmajor, 8),
            _octal(devminor, 8),
            bytes(155),  # prefix
        ]
    ).ljust(BLOCK, b"\0")
    checksum = b"%06o\0 " % sum(block)
    return block[:148] + checksum + block[156:]


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _pax_record(key: bytes, value: bytes) -> bytes:
    """``LEN KEY=VALUE\\n``, where LEN counts the whole record, itself included."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(b"%d" % length) + len(body) != length:
        length = len(b"%d" % length) + len(body)
    return b"%d" % length + body


def _pax_time(ns: int) -> bytes:
    """Seconds with up to nine decimals, trailing zeros dropped (Go's form)."""
    sign = b"-" if ns < 0 else b""
    secs, frac = divmod(abs(ns), _NS)
    if not frac:
        return sign + b"%d" % secs
    return sign + (b"%d.%09d" % (secs, frac)).rstrip(b"0")


def _padding(size: int) -> bytes:
    return bytes(-size % BLOCK)


def _show(path: bytes) -> str:
    """A path for a one-line message."""
    text = path.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


# --------------------------------------------------------------------------- the walk


@dataclass
class _Child:
    """One entry a directory contributes to the tar, before it is written."""

    name: bytes  # the name in the tar: NAME, or .wh.NAME for a whiteout
    st: os.stat_result
    source: bytes  # its name in the upper directory
    is_whiteout: bool = False
    # Inside a renamed directory: the directory holding the entry's top copy
    # (a descriptor the union view owns) and the entry in that view.
    dirfd: int | None = None
    node: Node | None = None


@dataclass
class _Frame:
    """A directory being written: its descriptor, its path in the tar, what is left."""

    fd: int
    path: bytes  # b"" for the root, else b"dir/sub/"
    children: list[_Child]
    next: int = 0


class _Walker:
    """Writes the entries of an upper directory tree, depth first, in path order."""

    def __init__(self, sink: _Sink, union_dirs: list[Path]) -> None:
        self.sink = sink
        self.entries = 0
        self.warnings: list[str] = []
        self._links: dict[tuple[int, int], bytes] = {}  # (dev, ino) -> first name
        self._union_dirs = union_dirs
        self._union: UnionFS | None = None

    def close(self) -> None:
        if self._union is not None:
            self._union.close()
            for la in self._union.layers:
                la.close()
            self._union = None

    def _merged_node(self, path: bytes) -> Node | None:
        """The union view's node for the directory at tar path `path`, or None
        without lower layers to read."""
        if not self._union_dirs:
            return None
        if self._union is None:
            layers = [Layer.open(i, d) for i, d in enumerate(self._union_dirs)]
            self._union = UnionFS(layers)
        node = self._union.inodes.root
        for part in path.rstrip(b"/").split(b"/"):
            node = self._union.lookup(node.ino, part)
        return node

    def _merged_children(self, node: Node) -> list[_Child]:
        """A renamed directory's entries as the mount shows them."""
        fs = self._union
        assert fs is not None
        out = []
        for name, child in fs.list_dir(node)[2:]:
            dirfd = fs.dir_fd(node, child.top_layer)
            st = lstat_at(dirfd, name)
            if st is not None:
                out.append(_Child(name, st, name, dirfd=dirfd, node=child))
        out.sort(key=lambda c: c.name)
        return out

    def walk(self, root_fd: int) -> None:
        if is_opaque_dir(root_fd):
            self._marker(whiteout.OCI_OPAQUE, os.fstat(root_fd))
        stack = [_Frame(root_fd, b"", self._children(root_fd, b""))]  # the caller closes root_fd
        try:
            while stack:
                frame = stack[-1]
                if frame.next == len(frame.children):
                    stack.pop()
                    if stack:
                        os.close(frame.fd)
                    continue
                child = frame.children[frame.next]
                frame.next += 1
                sub = self._entry(frame, child)
                if sub is not None:
                    stack.append(sub)
        finally:
            for frame in stack[1:]:
                os.close(frame.fd)

    def _children(self, fd: int, path: bytes) -> list[_Child]:
        """The entries of a directory in tar order, whiteouts in their OCI form."""
        real: dict[bytes, _Child] = {}
        whiteouts: dict[bytes, _Child] = {}  # by the name they hide
        for text in os.listdir(fd):
            name = os.fsencode(text)
            st = lstat_at(fd, name)
            if st is None or name == whiteout.OCI_OPAQUE:
                continue  # vanished; the opaque marker is written with its directory
            if whiteout.is_reserved_name(name):
                target = whiteout.oci_whiteout_target(name)
                if target is None or target in (b".", b"..") or whiteout.is_reserved_name(target):
                    self.warnings.append(f"skipped {_show(path + name)}: not a whiteout of a name")
                    continue
                # The OCI form beats an overlayfs form of the same whiteout: the
                # result does not depend on the order the directory lists them.
                whiteouts[target] = _Child(name, st, name, is_whiteout=True)
            elif whiteout.is_chardev_whiteout(st) or is_xattr_whiteout(fd, name, st):
                marker = whiteout.OCI_PREFIX + name
                whiteouts.setdefault(name, _Child(marker, st, name, is_whiteout=True))
            else:
                real[name] = _Child(name, st, name)
        found = list(real.values())
        # A real entry beats a whiteout of itself in the same layer, as the mount reads it.
        found += [w for target, w in whiteouts.items() if target not in real]
        found.sort(key=lambda c: c.name)
        return found

    def _entry(self, frame: _Frame, child: _Child) -> _Frame | None:
        """Write one entry; a directory's frame to descend into, else None."""
        path = frame.path + child.name
        if child.is_whiteout:
            self._marker(path, child.st)
            return None
        st: StatLike = child.st
        parent = child.dirfd if child.dirfd is not None else frame.fd
        if overridestat.may_carry(st):  # a rootless layer's recorded owner and mode
            st = overridestat.shown(st, getxattr_at(parent, child.source, overridestat.XATTR))
        kind = stat.S_IFMT(st.st_mode)
        if kind == stat.S_IFSOCK:
            self.warnings.append(f"skipped socket {_show(path)}: a layer cannot hold sockets")
            return None
        if kind not in _TYPES:
            self.warnings.append(f"skipped {_show(path)}: unknown file type {kind:o}")
            return None
        header = _Header(
            path, _TYPES[kind], stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
            mtime_ns=st.st_mtime_ns,
        )  # fmt: skip
        if kind == stat.S_IFDIR:
            return self._directory(parent, child, header)
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            first = self._links.get(key)
            if first is not None:
                header.type, header.linkname = tarfile.LNKTYPE, first
                self._write(header)
                return None
            self._links[key] = path
        header.xattrs = self._xattrs(parent, child.source)
        if kind == stat.S_IFREG:
            self._file(parent, child, header)
        elif kind == stat.S_IFLNK:
            header.linkname = os.readlink(child.source, dir_fd=parent)
            self._write(header)
        else:
            if kind in (stat.S_IFCHR, stat.S_IFBLK):
                header.devmajor, header.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
            self._write(header)
        return None

    def _directory(self, parent: int, child: _Child, header: _Header) -> _Frame:
        fd = os.open(child.source, DIR_FLAGS, dir_fd=parent)
        try:
            header.name += b"/"
            header.xattrs = self._xattrs(parent, child.source)
            self._write(header)
            node = child.node
            if node is None and redirect_at(fd, b".") is not None:
                node = self._merged_node(header.name)
                if node is not None:
                    # Renamed: the whole merged content, hiding what lower
                    # layers have under the new name.
                    self._marker(header.name + whiteout.OCI_OPAQUE, child.st)
            elif node is None and is_opaque_dir(fd):
                self._marker(header.name + whiteout.OCI_OPAQUE, child.st)
            if node is not None:
                return _Frame(fd, header.name, self._merged_children(node))
            return _Frame(fd, header.name, self._children(fd, header.name))
        except BaseException:
            os.close(fd)
            raise

    def _file(self, parent: int, child: _Child, header: _Header) -> None:
        fd = os.open(child.source, _FILE_FLAGS, dir_fd=parent)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (child.st.st_dev, child.st.st_ino):
                raise LayerWriteError(f"{_show(header.name)}: replaced while being written")
            header.size = child.st.st_size
            self._write(header)
            left = header.size
            while left:
                data = os.read(fd, min(CHUNK, left))
                if not data:
                    raise LayerWriteError(f"{_show(header.name)}: shrank while being written")
                self.sink.write(data)
                left -= len(data)
            self.sink.write(_padding(header.size))
        finally:
            os.close(fd)

    def _marker(self, path: bytes, st: os.stat_result) -> None:
        """An OCI whiteout or opaque marker: an empty file, mode 0."""
        self._write(_Header(path, tarfile.REGTYPE, 0, st.st_uid, st.st_gid,
                            mtime_ns=st.st_mtime_ns))  # fmt: skip

    def _xattrs(self, dirfd: int, name: bytes) -> list[tuple[bytes, bytes]]:
        """Attributes as the mount shows them, sorted by name."""
        out = []
        for stored in listxattr_at(dirfd, name):
            visible = whiteout.visible_xattr(stored)
            if visible is None:
                continue
            value = getxattr_at(dirfd, name, stored)
            if value is not None:
                out.append((visible, value))
        return sorted(out)

    def _write(self, header: _Header) -> None:
        self.sink.write(header.encode())
        self.entries += 1
