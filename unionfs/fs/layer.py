"""One read-only layer directory and the system calls made inside it.

Every path inside a layer is reached from a directory file descriptor, one
component at a time, with ``O_NOFOLLOW``: a symlink stored in a layer is
content to show, never a path for the daemon to follow. The layer's own path
is followed, symlinks included, as overlayfs follows its layer dirs
(containers/storage names lower dirs by links ``l/XXXX -> ../ID/diff``).
Extended attributes of
a child are read through ``/proc/self/fd/DIRFD/NAME`` with ``lgetxattr``, which
resolves only the descriptor's magic link and never follows the final name.
"""

import ctypes
import errno
import os
import stat
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from unionfs.fs import whiteout
from unionfs.fs.inodes import NodeStat
from unionfs.fs.merge import Copy, Kind

NAME_MAX = 255
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC  # a layer's own path
_MISSING = (errno.ENOENT, errno.ENOTDIR)
_NO_XATTR = (errno.ENODATA, errno.ENOTSUP, errno.EPERM)


@dataclass(eq=False)
class Layer:
    """A layer directory opened once; `index` is its position, 0 = top."""

    index: int
    path: Path
    root_fd: int = field(repr=False)
    fsid: int = field(repr=False)
    dev: int = field(repr=False)

    @classmethod
    def open(cls, index: int, path: Path) -> "Layer":
        fd = os.open(path, ROOT_FLAGS)
        st = os.fstat(fd)
        fsid = os.fstatvfs(fd).f_fsid or st.st_dev
        return cls(index, path, fd, fsid, st.st_dev)

    def close(self) -> None:
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1


def child_path(dirfd: int, name: bytes) -> bytes:
    """A path naming `name` inside the directory open as `dirfd` (for *xattr calls)."""
    return b"/proc/self/fd/%d/%s" % (dirfd, name)


def lstat_at(dirfd: int, name: bytes) -> os.stat_result | None:
    """``fstatat(AT_SYMLINK_NOFOLLOW)``; None when the name is absent."""
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except OSError as e:
        if e.errno in _MISSING:
            return None
        raise


def open_dir_at(dirfd: int, name: bytes) -> int:
    """Open a subdirectory without following a symlink in its place."""
    return os.open(name, DIR_FLAGS, dir_fd=dirfd)


def getxattr_at(dirfd: int, name: bytes, attr: bytes) -> bytes | None:
    """An xattr of a child (not following symlinks); None when it is not set."""
    try:
        return os.getxattr(child_path(dirfd, name), attr, follow_symlinks=False)
    except OSError as e:
        if e.errno in _NO_XATTR:
            return None
        raise


def listxattr_at(dirfd: int, name: bytes) -> list[bytes]:
    try:
        names = os.listxattr(child_path(dirfd, name), follow_symlinks=False)
    except OSError as e:
        if e.errno in _NO_XATTR:
            return []
        raise
    return [n.encode("utf-8", "surrogateescape") for n in names]


def fd_getxattr(fd: int, attr: bytes) -> bytes | None:
    try:
        return os.getxattr(fd, attr)
    except OSError as e:
        if e.errno in _NO_XATTR:
            return None
        raise


def fd_listxattr(fd: int) -> list[bytes]:
    try:
        names = os.listxattr(fd)
    except OSError as e:
        if e.errno in _NO_XATTR:
            return []
        raise
    return [n.encode("utf-8", "surrogateescape") for n in names]


def is_xattr_whiteout(dirfd: int, name: bytes, st: "os.stat_result | NodeStat") -> bool:
    """A zero-size regular file marked with an overlay whiteout xattr."""
    if not whiteout.may_be_xattr_whiteout(st):
        return False
    return any(getxattr_at(dirfd, name, a) is not None for a in whiteout.WHITEOUT_XATTRS)


def redirect_at(dirfd: int, name: bytes, names: Collection[bytes] | None = None) -> bytes | None:
    """The overlayfs redirect a child directory carries (one listxattr when it
    has none), as stored: ``/a/b`` (absolute) or ``b`` (a sibling's name).
    `names`: the child's xattr names, when the caller listed them already."""
    if names is None:
        names = listxattr_at(dirfd, name)
    for attr in whiteout.REDIRECT_XATTRS:
        if attr in names:
            value = getxattr_at(dirfd, name, attr)
            if value:
                return value
    return None


def parse_redirect(value: bytes) -> bytes | tuple[bytes, ...] | None:
    """A redirect as a location: a name (relative) or the names of a path from
    the layer root (absolute); None for a value overlayfs would refuse too
    (an empty component, a relative value with a slash)."""
    if value.startswith(b"/"):
        parts = tuple(value[1:].split(b"/"))
        if all(p and p not in (b".", b"..") and len(p) <= NAME_MAX for p in parts):
            return parts
        return None
    if value in (b".", b"..") or b"/" in value or b"\0" in value or len(value) > NAME_MAX:
        return None
    return value


def open_path(root_fd: int, parts: tuple[bytes, ...]) -> int:
    """Open the directory `parts` below `root_fd`, one component at a time
    without following symlinks (the caller closes the result)."""
    fd = root_fd
    for part in parts:
        nxt = open_dir_at(fd, part)
        if fd != root_fd:
            os.close(fd)
        fd = nxt
    return fd if fd != root_fd else os.dup(root_fd)


def is_opaque_dir(fd: int, names: Collection[bytes] | None = None) -> bool:
    """Whether the directory open as `fd` cuts off the layers below it.
    `names`: its xattr names, when the caller listed them already (then only
    an opaque xattr that is there is read)."""
    for attr in whiteout.OPAQUE_XATTRS:
        if names is not None and attr not in names:
            continue
        if fd_getxattr(fd, attr) == whiteout.OPAQUE_YES:
            return True
    return lstat_at(fd, whiteout.OCI_OPAQUE) is not None


_COPIES: dict[tuple[int, Kind], Copy] = {}


def copy_of(layer: int, kind: Kind) -> Copy:
    """The one shared `Copy` for (`layer`, `kind`): copies are immutable, and
    every node holds some, so they are not made anew for every entry."""
    copy = _COPIES.get((layer, kind))
    if copy is None:
        copy = _COPIES[layer, kind] = Copy(layer, kind)
    return copy


def classify(layer: int, dirfd: int, name: bytes, st: "os.stat_result | NodeStat | None") -> Copy:
    """What a layer holds under `name`, given its lstat (or None when absent).

    The OCI form ``.wh.NAME`` is looked for by the caller (it is a sibling
    entry, not a property of `NAME` itself).
    """
    if st is None:
        return copy_of(layer, Kind.ABSENT)
    mode = st.st_mode
    if stat.S_ISDIR(mode):
        return copy_of(layer, Kind.DIR)
    if whiteout.is_chardev_whiteout(st) or is_xattr_whiteout(dirfd, name, st):
        return copy_of(layer, Kind.WHITEOUT)
    return copy_of(layer, Kind.NONDIR)


def observe(
    layer: int, dirfd: int, name: bytes, *, oci: bool = True
) -> tuple[Copy, os.stat_result | None]:
    """Look `name` up in one layer's directory: its classification and lstat.

    With `oci` false an absent name is reported absent without looking for its
    OCI whiteout ``.wh.NAME`` (for a caller to whom both mean "not there").
    """
    st = lstat_at(dirfd, name)
    if st is None:
        marker = whiteout.OCI_PREFIX + name
        if oci and len(marker) <= NAME_MAX and lstat_at(dirfd, marker) is not None:
            return copy_of(layer, Kind.WHITEOUT), None
        return copy_of(layer, Kind.ABSENT), None
    return classify(layer, dirfd, name, st), st


def scan_dir(fd: int) -> list[tuple[bytes, NodeStat]]:
    """Every entry of an open directory with its lstat, in directory order.

    Each lstat is packed (`NodeStat`) as it is read: an `os.stat_result` is
    about twenty objects, and the thousands of a large directory, alive at
    once, would leave the allocator's pools of small blocks fragmented by the
    nodes made in between, for as long as the daemon runs."""
    out: list[tuple[bytes, NodeStat]] = []
    with os.scandir(fd) as it:
        for entry in it:
            try:
                st = NodeStat(entry.stat(follow_symlinks=False))
            except FileNotFoundError:
                continue
            out.append((os.fsencode(entry.name), st))
    return out


RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]  # fmt: skip
_libc.renameat2.restype = ctypes.c_int
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate.restype = ctypes.c_int


def renameat2(src_dirfd: int, src: bytes, dst_dirfd: int, dst: bytes, flags: int) -> None:
    """rename(2) with RENAME_NOREPLACE / RENAME_EXCHANGE (glibc's renameat2)."""
    if _libc.renameat2(src_dirfd, src, dst_dirfd, dst, flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with its mode flags (Python's os has posix_fallocate only)."""
    if _libc.fallocate(fd, mode, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
