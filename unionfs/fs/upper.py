"""The writable upper layer: whiteouts and opaque dirs written, and copy-up.

Everything here works on directory descriptors and names; it knows nothing of
the merge rules or of FUSE.

Copy-up builds the copy in the work dir (same filesystem as the upper) under a
temporary name, with owner, mode, xattrs, timestamps and data, then renames it
into place in one step: a crash leaves at most a stray temporary in the work
dir (cleared at the next mount), never a half-copied file in the upper layer.
Data goes by reflink (FICLONE) when the filesystem can, else by
``copy_file_range`` over the data extents only (holes stay holes), else by
read/write.

A copy records where it came from in ``trusted.overlay.unionfs.origin`` (the
filesystem id, device and inode of the lower copy), so the file keeps its inode
number after copy-up and across remounts. The ``trusted.overlay.`` prefix keeps
it hidden both through unionfs and through kernel overlayfs mounting the same
upper. A daemon that is not root cannot write ``trusted.*``: it records the
origin in ``user.overlay.unionfs.origin`` (hidden the same way, like overlayfs's
``userxattr`` bookkeeping), on directories and regular files only, as the
kernel allows ``user.*`` on nothing else. Both names are read.

With ``userxattr`` (`Upper.open`) a root daemon writes its bookkeeping (origin,
opacity, redirects) in ``user.overlay.*`` too, as kernel overlayfs mounted with
``userxattr`` does, so that such a mount can take the upper over.
"""

import contextlib
import errno
import fcntl
import itertools
import logging
import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from unionfs.fs import layer as io
from unionfs.fs import whiteout
from unionfs.fs.inodes import StatLike
from unionfs.fs.layer import Layer

log = logging.getLogger(__name__)

ORIGIN_XATTR = b"trusted.overlay.unionfs.origin"
USER_ORIGIN_XATTR = b"user.overlay.unionfs.origin"
_ORIGIN = struct.Struct("<QQQ")
FICLONE = 0x40049409
_CHUNK = 1 << 20
WORK_SUBDIR = "unionfs-work"
XATTR_SKIP_PREFIXES = whiteout.PRIVATE_XATTR_PREFIXES
#: A directory's default POSIX ACL, which new entries in it inherit.
ACL_DEFAULT_XATTR = b"system.posix_acl_default"


def pack_origin(fsid: int, st: os.stat_result) -> bytes:
    return _ORIGIN.pack(fsid & 0xFFFFFFFFFFFFFFFF, st.st_dev, st.st_ino)


def read_origin(dirfd: int, name: bytes) -> bytes | None:
    """The origin recorded on `name` in `dirfd`, under either name."""
    for attr in (ORIGIN_XATTR, USER_ORIGIN_XATTR):
        value = io.getxattr_at(dirfd, name, attr)
        if value is not None:
            return value
    return None


def unpack_origin(value: bytes | None) -> tuple[int, int, int] | None:
    if value is None or len(value) != _ORIGIN.size:
        return None
    fsid, dev, ino = _ORIGIN.unpack(value)
    return fsid, dev, ino


def proc_fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


@dataclass(eq=False)
class Upper:
    """The upper layer (index 0 of the stack) and its work dir."""

    layer: Layer
    work_fd: int
    oci_whiteouts: bool
    lock_fd: int = -1  # the work dir itself, flock()ed while mounted
    _names: "itertools.count[int]" = field(default_factory=itertools.count)
    #: Where copies record their origin: ``trusted.*`` needs CAP_SYS_ADMIN in
    #: the initial user namespace (root in a user namespace has not got it).
    origin_xattr: bytes = ORIGIN_XATTR
    #: Bookkeeping goes to ``user.overlay.*``: asked for (``userxattr``) or
    #: ``trusted.*`` cannot be written. Invariant: ``origin_xattr`` agrees.
    user_xattrs: bool = False

    @classmethod
    def open(
        cls, layer: Layer, work: Path, *, oci_whiteouts: bool, userxattr: bool = False
    ) -> "Upper":
        """Open the work dir (a private subdirectory of `work`), clearing what
        an earlier, interrupted mount left there. Refuses an upper or work dir
        that another mount is using (each is locked for the life of the mount).
        `userxattr`: write bookkeeping as ``user.overlay.*`` even where
        ``trusted.*`` could be written (overlayfs's ``userxattr``)."""
        base = os.open(work, io.DIR_FLAGS)
        try:
            if os.fstat(base).st_dev != layer.dev:
                raise OSError(errno.EXDEV, "the work dir is not on the upper layer's filesystem")
            _lock(base, "the work dir is in use by another mount")
            _lock(layer.root_fd, "the upper dir is in use by another mount")
            try:
                os.mkdir(WORK_SUBDIR, 0o700, dir_fd=base)
            except FileExistsError:
                _clear_dir(base, WORK_SUBDIR)
            work_fd = os.open(WORK_SUBDIR, io.DIR_FLAGS, dir_fd=base)
        except BaseException:
            os.close(base)
            raise
        upper = cls(layer, work_fd, oci_whiteouts or not _can_make_whiteouts(work_fd), base)
        if userxattr or not _can_write_trusted(work_fd):
            upper.origin_xattr = USER_ORIGIN_XATTR
            upper.user_xattrs = True
        return upper

    def close(self) -> None:
        for fd in (self.work_fd, self.lock_fd):
            if fd >= 0:
                os.close(fd)
        self.work_fd = self.lock_fd = -1

    def temp_name(self) -> bytes:
        return b"#%d.%d" % (os.getpid(), next(self._names))

    def discard_temp(self, name: bytes) -> None:
        try:
            st = os.stat(name, dir_fd=self.work_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            _clear_dir(self.work_fd, os.fsdecode(name))
            os.rmdir(name, dir_fd=self.work_fd)
        else:
            os.unlink(name, dir_fd=self.work_fd)

    def make_temp(self, parent_fd: int, make: Callable[[int, bytes], None]) -> bytes:
        """A new entry made by `make(dirfd, name)` under a temporary name in the
        work dir, as if made in the upper directory `parent_fd`: when that has a
        default POSIX ACL, the entry is made inside a scratch directory carrying
        the same default ACL, so the filesystem applies the inheritance (an ACL
        from the default one and the mode, no umask) as it would in place."""
        temp = self.temp_name()
        default = io.fd_getxattr(parent_fd, ACL_DEFAULT_XATTR)
        if default is None:
            make(self.work_fd, temp)
            return temp
        box = self.temp_name()
        os.mkdir(box, 0o700, dir_fd=self.work_fd)
        try:
            box_fd = io.open_dir_at(self.work_fd, box)
            try:
                os.setxattr(box_fd, ACL_DEFAULT_XATTR, default)
                make(box_fd, temp)
                os.rename(temp, temp, src_dir_fd=box_fd, dst_dir_fd=self.work_fd)
            finally:
                os.close(box_fd)
        finally:
            self.discard_temp(box)
        return temp

    def install(self, temp: bytes, dirfd: int, name: bytes) -> None:
        """Rename a finished temporary into place, replacing a whiteout there."""
        replace(self.work_fd, temp, dirfd, name)

    # -- whiteouts and opaque directories ---------------------------------------

    def write_whiteout(self, dirfd: int, name: bytes) -> None:
        """Hide `name` of the lower layers; replaces whatever the upper has there
        (a non-directory), in one rename."""
        if self.oci_whiteouts:
            marker = whiteout.OCI_PREFIX + name
            if len(marker) > io.NAME_MAX:
                raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
            fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0,
                         dir_fd=dirfd)  # fmt: skip
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dirfd)
            return
        temp = self.temp_name()
        os.mknod(temp, stat.S_IFCHR, os.makedev(0, 0), dir_fd=self.work_fd)
        try:
            self.install(temp, dirfd, name)
        except BaseException:
            self.discard_temp(temp)
            raise

    def remove_whiteout(self, dirfd: int, name: bytes) -> None:
        """Drop an OCI whiteout of `name` if there is one (overlayfs-style ones are
        replaced by the rename that creates the new entry)."""
        marker = whiteout.OCI_PREFIX + name
        if len(marker) <= io.NAME_MAX:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(marker, dir_fd=dirfd)

    def make_opaque(self, fd: int) -> None:
        """Mark an upper directory opaque with the overlayfs xattr
        (``trusted.overlay.opaque=y``, ``user.overlay.opaque=y`` with
        ``userxattr`` or where ``trusted.*`` cannot be written), and in the
        OCI-whiteout mode also with
        a ``.wh..wh..opq`` entry. Never the entry beside the xattr in the
        overlayfs mode: kernel overlayfs mounting the upper would list it.
        Exported layers get the entry from the xattr (`layerwriter`)."""
        try:
            if os.geteuid() != 0 or self.user_xattrs:
                raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))
            os.setxattr(fd, whiteout.OPAQUE_XATTRS[0], whiteout.OPAQUE_YES)
        except PermissionError:
            os.setxattr(fd, whiteout.OPAQUE_XATTRS[1], whiteout.OPAQUE_YES)
        if not self.oci_whiteouts:
            return
        st = os.fstat(fd)
        marker = os.open(whiteout.OCI_OPAQUE, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0,
                         dir_fd=fd)  # fmt: skip
        os.close(marker)
        # The marker is bookkeeping: the directory keeps its times.
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))

    # -- copy-up -------------------------------------------------------------------

    def copy_dir(self, src_fd: int, st: StatLike, origin: bytes) -> bytes:
        """An empty directory in the work dir with `src_fd`'s metadata."""
        temp = self.temp_name()
        os.mkdir(temp, 0o700, dir_fd=self.work_fd)
        try:
            fd = os.open(temp, io.DIR_FLAGS, dir_fd=self.work_fd)
            try:
                copy_xattrs(io.fd_listxattr(src_fd), lambda a: io.fd_getxattr(src_fd, a),
                            lambda a, v: os.setxattr(fd, a, v))  # fmt: skip
                os.setxattr(fd, self.origin_xattr, origin)
                os.chown(fd, st.st_uid, st.st_gid)
                os.chmod(fd, stat.S_IMODE(st.st_mode))
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(fd)
        except BaseException:
            self.discard_temp(temp)
            raise
        return temp

    def copy_file(self, src_fd: int, st: StatLike, xattrs: dict[bytes, bytes],
                  origin: bytes | None) -> bytes:  # fmt: skip
        """A full copy of an open regular file in the work dir. Safe to run in a
        worker thread: it touches nothing but its own descriptors."""
        temp = self.temp_name()
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600,
                     dir_fd=self.work_fd)  # fmt: skip
        try:
            copy_data(src_fd, fd, st.st_size)
            for a, v in xattrs.items():
                os.setxattr(fd, a, v)
            if origin is not None:
                os.setxattr(fd, self.origin_xattr, origin)
            os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))  # after chown, which clears set-id bits
            os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
        except BaseException:
            os.close(fd)
            self.discard_temp(temp)
            raise
        os.close(fd)
        return temp

    def copy_special(self, st: StatLike, target: bytes | None,
                     xattrs: dict[bytes, bytes], origin: bytes | None) -> bytes:  # fmt: skip
        """A symlink, fifo, socket or device node in the work dir."""
        temp = self.temp_name()
        if target is not None:
            os.symlink(target, temp, dir_fd=self.work_fd)
        else:
            os.mknod(temp, st.st_mode, st.st_rdev, dir_fd=self.work_fd)
        try:
            path = io.child_path(self.work_fd, temp)
            for a, v in xattrs.items():
                os.setxattr(path, a, v, follow_symlinks=False)
            if origin is not None and self.origin_xattr == ORIGIN_XATTR:
                os.setxattr(path, ORIGIN_XATTR, origin, follow_symlinks=False)
            os.chown(temp, st.st_uid, st.st_gid, dir_fd=self.work_fd, follow_symlinks=False)
            if target is None:
                os.chmod(path, stat.S_IMODE(st.st_mode))
            os.utime(temp, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=self.work_fd,
                     follow_symlinks=False)  # fmt: skip
        except BaseException:
            self.discard_temp(temp)
            raise
        return temp


def _can_make_whiteouts(work_fd: int) -> bool:
    """Whether this process may make a character device 0/0 in the work dir:
    root may, and since Linux 5.8 anyone may make that one device node (a
    whiteout); elsewhere deletions are written as OCI ``.wh.`` files."""
    if os.geteuid() == 0:
        return True
    probe = b".whiteout-probe"
    try:
        os.mknod(probe, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=work_fd)
    except OSError:
        return False
    os.unlink(probe, dir_fd=work_fd)
    return True


def _can_write_trusted(work_fd: int) -> bool:
    """Whether ``trusted.*`` xattrs can be written here (an upper filesystem
    without xattrs at all counts as yes: its writes fail as they always did)."""
    if os.geteuid() != 0:
        return False
    probe = b"trusted.overlay.unionfs.probe"
    try:
        os.setxattr(work_fd, probe, b"")
    except PermissionError:
        return False
    except OSError:
        return True
    with contextlib.suppress(OSError):
        os.removexattr(work_fd, probe)
    return True


def _lock(fd: int, message: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise OSError(errno.EBUSY, message) from None


def replace(src_dirfd: int, src: bytes, dst_dirfd: int, dst: bytes) -> None:
    """rename(2), except that a directory may also replace a whiteout (or any
    non-directory): the two are exchanged in one step and the old entry, now at
    `src`, is removed."""
    try:
        os.rename(src, dst, src_dir_fd=src_dirfd, dst_dir_fd=dst_dirfd)
    except NotADirectoryError:
        st = os.stat(src, dir_fd=src_dirfd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            raise
        io.renameat2(src_dirfd, src, dst_dirfd, dst, io.RENAME_EXCHANGE)
        os.unlink(src, dir_fd=src_dirfd)


def copy_xattrs(
    names: list[bytes],
    get: Callable[[bytes], bytes | None],
    put: Callable[[bytes, bytes], None],
) -> None:
    for a in names:
        if a.startswith(XATTR_SKIP_PREFIXES):
            continue
        value = get(a)
        if value is not None:
            try:
                put(a, value)
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise
                log.warning("xattr %r not copied up: %s", a, e.strerror)


def read_xattrs(dirfd: int, name: bytes) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for a in io.listxattr_at(dirfd, name):
        if a.startswith(XATTR_SKIP_PREFIXES):
            continue
        value = io.getxattr_at(dirfd, name, a)
        if value is not None:
            out[a] = value
    return out


def copy_data(src: int, dst: int, size: int) -> None:
    """Copy `size` bytes: reflink, else the data extents by copy_file_range
    (holes are left as holes), else read/write."""
    try:
        fcntl.ioctl(dst, FICLONE, src)
        return
    except OSError:
        pass
    offset = 0
    while offset < size:
        try:
            data = os.lseek(src, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break  # only a hole is left
            data = offset  # SEEK_DATA unsupported: treat all as data
        hole = min(size, os.lseek(src, data, os.SEEK_HOLE)) if data < size else size
        _copy_range(src, dst, data, hole - data)
        offset = hole
    os.ftruncate(dst, size)


def _copy_range(src: int, dst: int, offset: int, length: int) -> None:
    end = offset + length
    while offset < end:
        try:
            n = os.copy_file_range(src, dst, min(end - offset, 1 << 30), offset, offset)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            n = 0
        if n == 0:
            _read_write(src, dst, offset, end)
            return
        offset += n


def _read_write(src: int, dst: int, offset: int, end: int) -> None:
    while offset < end:
        chunk = os.pread(src, min(_CHUNK, end - offset), offset)
        if not chunk:
            return
        os.pwrite(dst, chunk, offset)
        offset += len(chunk)


def _clear_dir(parent_fd: int, name: str) -> None:
    """Remove the contents of `parent_fd/name` (not following symlinks)."""
    fd = os.open(name, io.DIR_FLAGS, dir_fd=parent_fd)
    try:
        for entry in os.scandir(fd):
            if entry.is_dir(follow_symlinks=False):
                _clear_dir(fd, entry.name)
                os.rmdir(entry.name, dir_fd=fd)
            else:
                os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)
