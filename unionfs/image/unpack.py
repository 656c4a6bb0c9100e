"""The unpacker: one image layer blob (a tar, plain, gzip or zstd) into a directory.

The blob is read once, front to back. Its raw bytes are hashed (the layer's
``digest``), the decompressed bytes are hashed (its ``diff_id``) and fed to
`tarfile` in stream mode; after the last member the rest of the stream is read
too (some writers omit the end-of-archive blocks, others pad), so both digests
cover every byte. They are compared with the expected values at the end: the
caller unpacks into a fresh directory and discards it on any error.

This module owns the entry point (`unpack_layer`, its result and its error) and
the walk over the tar stream's members. The byte stream, its hashes and its
decompression are `unionfs.image.decompress`; the entries themselves are created
by `unionfs.image.extract`, through directory descriptors and never by
``tarfile.extract``: paths in a tar are untrusted. That module also says what
becomes of entries a layer should not hold, of whiteouts, and of directory
metadata.
"""

from __future__ import annotations

import logging
import os
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass

from unionfs.errors import UnionfsError
from unionfs.fs.layer import DIR_FLAGS
from unionfs.image.decompress import (
    Compression,
    Decoder,
    Readable,
    Refused,
    Source,
    open_decoder,
)
from unionfs.image.extract import Tree, WhiteoutForm, raw, show

log = logging.getLogger(__name__)

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


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


def unpack_layer(
    src: Readable,
    dest: os.PathLike[str] | str,
    *,
    expected_digest: str | None = None,
    expected_diff_id: str | None = None,
    whiteouts: WhiteoutForm | None = None,
    progress: Callable[[int], object] | None = None,
    reserve: int | None = None,
) -> UnpackResult:
    """Unpack the layer blob read from `src` into the empty directory `dest`.

    `src` is read sequentially to its end, never seeked. `whiteouts` picks the
    form whiteouts are written in (default: ``overlay`` for root, else ``oci``).
    `progress` is called with the number of blob bytes read so far, at most
    about ten times a second and once at the end. `reserve`, when given, is
    the free space in bytes the layer must leave on `dest`'s filesystem: it is
    refused as it unpacks, before it takes that space. Sparse members stay
    sparse (their holes are not written).

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
        result = _unpack(src, os.fspath(dest), form, progress, reserve)
    except Refused as e:
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
    src: Readable,
    dest: str,
    form: WhiteoutForm,
    progress: Callable[[int], object] | None,
    reserve: int | None,
) -> UnpackResult:
    root_fd = os.open(dest, DIR_FLAGS)
    try:
        with os.scandir(root_fd) as it:
            if any(True for _ in it):
                raise Refused(f"destination {dest} is not empty")
        source = Source(src, progress)
        kind, decoder = open_decoder(source)
        tree = Tree(root_fd, form, reserve)
        try:
            entries = _extract(decoder, tree)
            try:
                tree.finish()
            except OSError as e:
                raise Refused(f"setting directory metadata: {e.strerror or e}") from None
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
    offset: int  # where the next header starts (absent from the stubs)
    firstmember: tarfile.TarInfo | None
    _last: tarfile.TarInfo | None = None

    def next(self) -> tarfile.TarInfo | None:
        # (TarFile.__init__ reads the first member ahead: `firstmember`.)
        if self.firstmember is None and self._last is not None and self._past_last() is None:
            return None
        info = super().next()
        # Stream mode never looks members up again (hard links are ours to make).
        self.members.clear()
        self._last = info
        return info

    def _past_last(self) -> int | None:
        """Read to the end of the last member's data and padding. The stream may end
        in the padding of the last member (umoci writes such layers; Go's
        archive/tar, so podman, skopeo and umoci, read them): the archive ends
        there, None. A stream that ends inside a member's data is refused."""
        last = self._last
        assert last is not None
        f = self.fileobj
        assert f is not None
        if self.offset == f.tell():
            return self.offset
        if last.issparse():  # `size` is the file's length; its data is what is stored
            data_end = self.offset
        else:
            data_end = last.offset_data + last.size if last.isreg() else f.tell()
        if f.tell() < data_end:
            f.seek(data_end - 1)  # a stream reads forward
            if not f.read(1):
                raise Refused(
                    f"truncated tar member {show(raw(last.name))}: the layer ends inside "
                    f"its data ({last.size} bytes declared)"
                )
        padding = self.offset - f.tell()
        got = f.read(padding)
        if len(got) < padding:
            if got.strip(b"\0"):
                raise Refused(f"corrupt tar stream after {show(raw(last.name))}: "
                              "the padding after its data is not zeros")  # fmt: skip
            return None
        return self.offset


def _extract(decoder: Decoder, tree: Tree) -> int:
    """Create every member of the tar stream, then read (and hash) whatever
    follows the archive; the number of members read."""
    if decoder.at_end():
        return 0  # an empty blob: an empty layer, as Go's archive/tar reads it
    try:
        tar = _StreamTar.open(
            fileobj=decoder, mode="r|", encoding="utf-8", errors="surrogateescape"
        )
    except tarfile.TarError as e:
        raise Refused(f"not a tar stream: {e}") from None
    entries = 0
    previous = ""
    with tar:
        while True:
            try:
                info = tar.next()
            except tarfile.TarError as e:
                if "unexpected end" in str(e):
                    raise Refused(f"truncated tar member {previous}") from None
                raise Refused(f"corrupt tar stream after {previous or 'the start'}: {e}") from None
            if info is None:
                break
            entries += 1
            previous = show(raw(info.name))
            try:
                tree.add(info, tar)
            except tarfile.TarError:
                raise Refused(
                    f"truncated tar member {previous}: the layer ends inside its data "
                    f"({info.size} bytes declared)"
                ) from None
            except OSError as e:
                raise Refused(f"{previous}: {e.strerror or e}") from None
            except (OverflowError, ValueError) as e:  # a number no system call takes
                raise Refused(f"{previous}: {e}") from None
        # The archive ends at an end-of-archive block, at garbage, or where the
        # stream ends (some writers stop after the last member); a stream that
        # ends inside a header block was cut short.
        decoder.drain()
        if 0 < decoder.produced - tar.offset < tarfile.BLOCKSIZE:
            raise Refused(f"truncated tar header after {previous or 'the start'}")
    return entries
