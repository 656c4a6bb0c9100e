"""The extraction: the entries of a layer tar created in the layer directory.

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
* unknown entry types, ``user.overlay.*``
  attributes (a layer must not forge overlay bookkeeping), attributes the
  filesystem or our privileges refuse: skipped with a warning. A file's own
  ``trusted.overlay.X`` is stored escaped as ``trusted.overlay.overlay.X``, as
  overlayfs stores it for a nested overlay; the mount shows it as it was.

Whiteouts are recognised by name only (writers give them mode 0, a linkname, even
the hard-link type) and written in one of two forms (`unionfs.fs.whiteout` reads
both): ``overlay`` (a character device 0/0 for ``.wh.NAME``, the xattr
``trusted.overlay.opaque=y`` for ``.wh..wh..opq``; needs root; kernel overlayfs
can mount the result) or ``oci`` (the ``.wh.*`` entries kept as empty files).
A whiteout hides the lower layers' NAME; within one layer the later entry wins:

* ``NAME`` then ``.wh.NAME``: NAME is removed and the whiteout written (as
  docker and containerd do);
* ``.wh.NAME`` then ``NAME``: NAME is kept (the whiteout still applies to the
  lower layers: a non-directory hides them anyway, and a directory is made
  opaque, so no lower content shows through it).

Not root, owners and modes are recorded in xattrs instead (`unionfs.fs.overridestat`).

Ownership, modes and times of directories are applied after the last entry,
deepest first: children change a directory's mtime, and a read-only directory
must stay writable while it is being filled.
"""

from __future__ import annotations

import collections
import contextlib
import decimal
import errno
import io
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar, cast

from unionfs.fs import overridestat, whiteout
from unionfs.fs.layer import DIR_FLAGS, NAME_MAX, child_path, lstat_at
from unionfs.fs.treewalk import remove_tree_at
from unionfs.image.decompress import CHUNK, Refused
from unionfs.image.space import Space

WhiteoutForm = Literal["overlay", "oci"]

_MAX_WARNINGS = 1000
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_CACHE = 64
_PATH_MAX = 4096
"""Linux's limit on a path given to one system call; no layer path may be longer."""
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
_ID_MAX = 2**32 - 2
"""The largest uid or gid: ids are 32 bits and 2^32-1 is chown's "leave as is"."""
_ENTRY_COST = 4096
"""What one entry is counted as (an inode, a directory block) against the reserve."""

_Parts = tuple[bytes, ...]
"""A normalised path inside the layer, one component per item; () is the root."""
_T = TypeVar("_T")


class _Seekable(Protocol):
    """What the sparse writer needs of a member's reader."""

    def seek(self, pos: int, whence: int, /) -> int: ...
    def read(self, size: int, /) -> bytes: ...


class _Missing(Exception):
    """A path looked up without creating it is not a directory of the layer."""


@dataclass
class _DirMeta:
    """Directory metadata applied after the last entry."""

    mode: int
    uid: int
    gid: int
    mtime_ns: int | None


_IMPLICIT_DIR = _DirMeta(0o755, 0, 0, None)
"""A parent directory the tar never names gets what tar tools give it."""


class Tree:
    """The layer directory being filled, entry by entry.

    Directories are reached through `_walk`, which keeps a small cache of open
    directory descriptors keyed by path (entries of one directory come
    together in a tar); a removed directory's descriptors leave the cache with it.
    """

    def __init__(self, root_fd: int, form: WhiteoutForm, reserve: int | None = None) -> None:
        self.root_fd = root_fd
        self.space = Space(root_fd, reserve)
        self.overlay = form == "overlay"
        self.is_root = os.geteuid() == 0
        self.dirs: dict[_Parts, _DirMeta] = {}
        self._cache: collections.OrderedDict[_Parts, int] = collections.OrderedDict()
        self._previous: _Parts = ()
        self._size = 0  # of the regular files, each inode once
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
        return self._size

    # -- one entry ----------------------------------------------------------------

    def add(self, info: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        """Create the entry `info` describes (its data read from `tar`)."""
        unsafe_name = raw(info.name)
        parts = self._normalise(unsafe_name, "path")
        shown = show(b"/".join(parts))
        for what, value in (("uid", info.uid), ("gid", info.gid)):
            if not 0 <= value <= _ID_MAX:
                raise Refused(f"{shown or '.'}: {what} {value} is out of range")
        self.space.take(_ENTRY_COST)
        if not parts:
            if info.isdir():
                self._walk((), shown, entry=_dir_meta(info))
                self._set_xattrs(info, shown, fd=self.root_fd)
            else:
                self.warn(f"skipped {show(unsafe_name)}: the layer root must be a directory")
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
            raise Refused(f"{what} holds a NUL byte: {show(unsafe)}")
        if len(unsafe) >= _PATH_MAX:
            raise Refused(f"{what} is longer than {_PATH_MAX - 1} bytes: {show(unsafe[:80])}...")
        parts: list[bytes] = []
        for component in unsafe.split(b"/"):
            if component in (b"", b"."):
                continue
            if component == b"..":
                if not parts:
                    raise Refused(f"{what} escapes the layer: {show(unsafe)}")
                parts.pop()
            else:
                parts.append(component)
        if unsafe.startswith(b"/") and what == "path":
            self.warn(f"absolute path {show(unsafe)} made relative")
        return tuple(parts)

    def _file(self, parts: _Parts, shown: str, info: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        parent = self._walk(parts[:-1], shown)
        name = parts[-1]
        fd = self._replace(parent, parts, lambda: os.open(name, _FILE_FLAGS, 0, dir_fd=parent))
        try:
            data = tar.extractfile(info)
            if data is not None and info.sparse is not None:
                self._write_sparse(fd, cast(io.BufferedReader, data).raw, info, shown)
            elif data is not None:
                while chunk := data.read(CHUNK):
                    self.space.take(len(chunk))
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
            st = os.fstat(fd)
            self._size += st.st_size
            if not self.is_root:
                self._record(fd, shown, info.uid, info.gid, stat.S_IFREG | info.mode & 0o7777)
            elif (st.st_uid, st.st_gid) != (info.uid, info.gid):
                self._set_owner(shown, info.uid, info.gid, fd=fd)
            if self.is_root:
                os.chmod(fd, info.mode & 0o7777)
            self._set_xattrs(info, shown, fd=fd)
            self._set_times(shown, _mtime_ns(info), fd=fd)
        finally:
            os.close(fd)

    def _write_sparse(self, fd: int, data: _Seekable, info: tarfile.TarInfo, shown: str) -> None:
        """A GNU or PAX sparse member: its data segments written where the map
        puts them, its holes left as holes (the file's length set last), as GNU
        tar and umoci unpack one. `data` reads the member's logical bytes
        (tarfile's own reader, which fills holes with zeros if read)."""
        sparse = cast(list[tuple[int, int]], info.sparse)  # (offset, length) pairs
        end = 0
        for offset, length in sparse:
            if length == 0:
                continue  # the end marker, or padding of the old GNU format
            if offset < end or length < 0 or offset + length > info.size:
                raise Refused(f"{shown}: sparse map out of order or past the file's end")
            end = offset + length
            data.seek(offset, os.SEEK_SET)
            pos = offset
            while pos < end:
                chunk = data.read(min(CHUNK, end - pos))
                if not chunk:
                    raise tarfile.ReadError("unexpected end of data")
                self.space.take(len(chunk))
                view = memoryview(chunk)
                while view:
                    written = os.pwrite(fd, view, pos)
                    view, pos = view[written:], pos + written
        os.ftruncate(fd, info.size)

    def _symlink(self, parts: _Parts, shown: str, info: tarfile.TarInfo) -> None:
        # The target is content, stored verbatim and never followed: an absolute
        # or escaping target is as harmless as any other.
        target = raw(info.linkname)
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
        unsafe_target = raw(info.linkname)
        try:
            target = self._normalise(unsafe_target, "target")
        except Refused as e:
            raise Refused(f"hard link {shown}: {e}") from None
        if target == parts:
            self.warn(f"skipped hard link {shown}: it links to itself")
            return
        if not target or whiteout.is_reserved_name(target[-1]):
            self.warn(f"skipped hard link {shown}: target {show(unsafe_target)} is not a file")
            return
        parent = self._walk(parts[:-1], shown)
        name = parts[-1]
        existing = lstat_at(parent, name)
        if existing is not None:
            self._remove(parent, parts, existing)
        missing = f"hard link {shown}: target {show(unsafe_target)} is not in the layer"
        try:
            target_parent = self._walk(target[:-1], shown, create=False)
        except _Missing:
            raise Refused(missing) from None
        try:
            os.link(target[-1], name, src_dir_fd=target_parent, dst_dir_fd=parent,
                    follow_symlinks=False)  # fmt: skip
        except FileNotFoundError:
            raise Refused(missing) from None
        except PermissionError:  # what link(2) says of a directory
            raise Refused(
                f"hard link {shown}: target {show(unsafe_target)} is a directory"
            ) from None

    def _device(self, parts: _Parts, shown: str, info: tarfile.TarInfo) -> None:
        kind = stat.S_IFCHR if info.ischr() else stat.S_IFBLK
        parent = self._walk(parts[:-1], shown)
        name = parts[-1]
        try:
            device = os.makedev(info.devmajor, info.devminor)
        except (OverflowError, ValueError):
            raise Refused(
                f"device node {shown}: device {info.devmajor},{info.devminor} is out of range"
            ) from None
        if not self.is_root:  # no mknod: an empty file recording the device
            name = parts[-1]
            fd = self._replace(parent, parts, lambda: os.open(name, _FILE_FLAGS, 0, dir_fd=parent))
            try:
                self._record(fd, shown, info.uid, info.gid, kind | info.mode & 0o7777, device)
                self._set_times(shown, _mtime_ns(info), fd=fd)
            finally:
                os.close(fd)
            return
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
        fd = self._replace(parent, parts, lambda: os.open(name, _FILE_FLAGS, 0, dir_fd=parent))
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
            raise Refused(f"parent of {shown} is a symlink")
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
            # A tree of this layer, of any depth: removed without recursion (its
            # files' sizes stay counted in `size`, an overestimate only).
            remove_tree_at(parent, name)
        else:
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                self._size -= st.st_size
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
            shown = show(b"/".join(parts)) or "."
            try:
                fd = self._walk(parts, shown, create=False)
            except _Missing:
                continue  # removed or replaced by a later entry
            if self.is_root:
                self._set_owner(shown, meta.uid, meta.gid, fd=fd)
                os.chmod(fd, meta.mode)
            else:
                self._record(fd, shown, meta.uid, meta.gid, stat.S_IFDIR | meta.mode)
            if meta.mtime_ns is not None:
                self._set_times(shown, meta.mtime_ns, fd=fd)
        if not self.is_root:
            with contextlib.suppress(OSError):  # no user xattrs: warned of already
                overridestat.mark(self.root_fd)

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

    def _record(self, fd: int, shown: str, uid: int, gid: int, mode: int, rdev: int = 0) -> None:
        """Owner and mode (type bits included) recorded (no user xattrs: the mode alone)."""
        try:
            overridestat.record(fd, uid, gid, mode, rdev)
        except OSError as e:
            if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            self.warn(f"owner {uid}:{gid} of {shown} not kept: {e.strerror}")
            os.chmod(fd, stat.S_IMODE(mode))

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
            attr = raw(key[len(_XATTR_PREFIX) :])
            # A file's own trusted.overlay.X is stored escaped, as overlayfs stores
            # it for a nested overlay (and the mount shows it again as
            # trusted.overlay.X): it can never act as overlay bookkeeping.
            stored = whiteout.stored_xattr(attr)
            if stored is None:
                why = ("owners are recorded only by a rootless unpack"
                       if attr == overridestat.XATTR
                       else "overlay attributes come only from whiteout entries")  # fmt: skip
                self.warn(f"dropped xattr {show(attr)} of {shown}: {why}")
                continue
            attr = stored
            try:
                if fd is not None:
                    os.setxattr(fd, attr, raw(value))
                elif at is not None:
                    os.setxattr(child_path(*at), attr, raw(value), follow_symlinks=False)
            except OSError as e:
                if e.errno not in _SOFT_XATTR_ERRORS:
                    raise
                self.warn(f"xattr {show(attr)} of {shown} not set: {e.strerror}")


# --------------------------------------------------------------------------- values


def raw(text: str) -> bytes:
    """The bytes tarfile decoded with utf-8/surrogateescape."""
    return text.encode("utf-8", "surrogateescape")


def show(name: bytes) -> str:
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
