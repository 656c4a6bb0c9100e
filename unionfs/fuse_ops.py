"""The pyfuse3 adapter: inode numbers and attributes in, FUSEErrors out.

Every handler calls `vfs.UnionFS` and translates: `OSError` becomes
``FUSEError(errno)``; anything unexpected is logged with its traceback and
becomes ``EIO`` (an exception escaping a handler would stop `pyfuse3.main`).
"""

import errno
import functools
import logging
import os
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import pyfuse3

from .inodes import Node
from .vfs import UnionFS

log = logging.getLogger(__name__)

# Layers never change under a mount, so the kernel may keep names, attributes
# and page cache for as long as it likes.
IMMUTABLE_TIMEOUT = 86400.0

_STATVFS_FIELDS = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                   "f_ffree", "f_favail", "f_namemax")  # fmt: skip

P = ParamSpec("P")
R = TypeVar("R")


def _handler(
    fn: Callable[Concatenate["Operations", P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate["Operations", P], Coroutine[Any, Any, R]]:
    """The errno boundary around one request handler (and its debug log line)."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: "Operations", /, *args: P.args, **kwargs: P.kwargs) -> R:
        if self.debug:
            log.debug("%s%r", name, args)
        try:
            return await fn(self, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as e:
            if self.debug:
                log.debug("%s%r -> %s", name, args, errno.errorcode.get(e.errno or 0, e.errno))
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("%s%r failed", name, args)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def _read_only() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.EROFS)


class Operations(pyfuse3.Operations):
    """Request handlers of a read-only union mount."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(
        self, fs: UnionFS, *, debug: bool = False, cache_timeout: float = IMMUTABLE_TIMEOUT
    ) -> None:
        super().__init__()
        self.fs = fs
        self.debug = debug
        # With a timeout of 0 the kernel caches nothing: every access asks the
        # daemon again (only useful to measure what the caches buy).
        self.timeout = cache_timeout
        self.keep_cache = cache_timeout > 0

    def entry(self, node: Node) -> pyfuse3.EntryAttributes:
        st = node.st
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.ino
        attr.generation = 0
        attr.entry_timeout = self.timeout
        attr.attr_timeout = self.timeout
        attr.st_mode = st.st_mode
        attr.st_nlink = self.fs.link_count(node)
        attr.st_uid = st.st_uid
        attr.st_gid = st.st_gid
        attr.st_rdev = st.st_rdev
        attr.st_size = st.st_size
        attr.st_blksize = st.st_blksize
        attr.st_blocks = st.st_blocks
        attr.st_atime_ns = st.st_atime_ns
        attr.st_mtime_ns = st.st_mtime_ns
        attr.st_ctime_ns = st.st_ctime_ns
        return attr

    def negative_entry(self) -> pyfuse3.EntryAttributes:
        """A cacheable "no such name" (inode 0), valid as long as the layers are."""
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = 0
        attr.entry_timeout = self.timeout
        return attr

    # -- lookups and attributes ------------------------------------------------

    @_handler
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        try:
            node = self.fs.lookup(parent_inode, name)
        except FileNotFoundError:
            return self.negative_entry()
        return self.entry(node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        try:
            self.fs.forget(inode_list)
        except Exception:  # forget must never raise
            log.exception("forget failed")

    @_handler
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.entry(self.fs.node(inode))

    @_handler
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.fs.readlink(inode)

    @_handler
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        self.fs.node(inode)
        if mode & os.W_OK:
            raise _read_only()
        return True  # permission bits are checked by the kernel (default_permissions)

    @_handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        sv = self.fs.statfs()
        data = pyfuse3.StatvfsData()
        for field in _STATVFS_FIELDS:
            setattr(data, field, getattr(sv, field))
        return data

    # -- directories -----------------------------------------------------------

    @_handler
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        return self.fs.opendir(inode)

    @_handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        fs = self.fs
        for name, node, next_id in fs.readdir(fh, start_id):
            if not pyfuse3.readdir_reply(token, name, self.entry(node), next_id):
                fs.entry_not_returned(node)
                return
            fs.entry_returned(name, node)

    @_handler
    async def releasedir(self, fh: int) -> None:
        self.fs.releasedir(fh)

    # -- files -----------------------------------------------------------------

    @_handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=self.fs.open(inode, flags), keep_cache=self.keep_cache)

    @_handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return self.fs.read(fh, off, size)

    @_handler
    async def release(self, fh: int) -> None:
        self.fs.release(fh)

    # -- extended attributes ---------------------------------------------------

    @_handler
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return self.fs.getxattr(inode, name)

    @_handler
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        return self.fs.listxattr(inode)

    # -- writes: the layers are read-only --------------------------------------
    # The mount carries MS_RDONLY, so the kernel refuses these itself; the
    # handlers answer EROFS for any request that reaches the daemon regardless.

    async def setattr(self, *args: object) -> pyfuse3.EntryAttributes:
        raise _read_only()

    async def mknod(self, *args: object) -> pyfuse3.EntryAttributes:
        raise _read_only()

    async def mkdir(self, *args: object) -> pyfuse3.EntryAttributes:
        raise _read_only()

    async def unlink(self, *args: object) -> None:
        raise _read_only()

    async def rmdir(self, *args: object) -> None:
        raise _read_only()

    async def symlink(self, *args: object) -> pyfuse3.EntryAttributes:
        raise _read_only()

    async def rename(self, *args: object) -> None:
        raise _read_only()

    async def link(self, *args: object) -> pyfuse3.EntryAttributes:
        raise _read_only()

    async def create(self, *args: object) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise _read_only()

    async def write(self, *args: object) -> int:
        raise _read_only()

    async def setxattr(self, *args: object) -> None:
        raise _read_only()

    async def removexattr(self, *args: object) -> None:
        raise _read_only()
