"""The pyfuse3 adapter: inode numbers and attributes in, FUSEErrors out.

Every handler calls `vfs.UnionFS` and translates: `OSError` becomes
``FUSEError(errno)``; anything unexpected is logged with its traceback and
becomes ``EIO`` (an exception escaping a handler would stop `pyfuse3.main`).
"""

import errno
import functools
import logging
import os
import stat
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import pyfuse3
import trio

from unionfs.fs.events import setattr_reason
from unionfs.fs.inodes import Node
from unionfs.fs.owners import IDENTITY
from unionfs.fs.vfs import UnionFS
from unionfs.fs.xattrs import ACL_ACCESS_XATTR
from unionfs.fuse.entryino import set_reported_ino

log = logging.getLogger(__name__)

# Layers never change under a mount, so the kernel may keep names, attributes
# and page cache for as long as it likes.
IMMUTABLE_TIMEOUT = 86400.0
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC

_STATVFS_FIELDS = ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files",
                   "f_ffree", "f_favail", "f_namemax")  # fmt: skip

# Features of a pyfuse3 that carries patches/pyfuse3, found at run time so that
# a stock pyfuse3 works too (without them). FALLOCATE and FUSE_DONT_MASK need no
# check: a stock pyfuse3 never calls `fallocate` nor reads `enable_dont_mask`.
CACHE_DIRS = hasattr(pyfuse3.FileInfo, "cache_readdir")  # opendir may return a FileInfo

P = ParamSpec("P")
R = TypeVar("R")


def _handler(
    fn: Callable[Concatenate["Operations", P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate["Operations", P], Coroutine[Any, Any, R]]:
    """The errno boundary around one request handler (and its debug log line)."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: "Operations", /, *args: P.args, **kwargs: P.kwargs) -> R:
        self.requests[name] += 1
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


def _sup_groups(pid: int) -> set[int]:
    """The supplementary groups of a caller (none if it is gone already)."""
    try:
        return pyfuse3.get_sup_groups(pid)
    except OSError:
        return set()


def _read_only() -> pyfuse3.FUSEError:
    """A write to a mount without an upper layer (mounted MS_RDONLY, so the
    kernel mostly refuses these itself)."""
    return pyfuse3.FUSEError(errno.EROFS)


class Operations(pyfuse3.Operations):
    """Request handlers of a union mount (writable when it has an upper layer)."""

    supports_dot_lookup = True
    # FUSE_WRITEBACK_CACHE (``-o writeback=1``; read by pyfuse3 at INIT): the
    # kernel keeps written data in its page cache and sends it in large WRITEs
    # (at the latest on fsync and close), keeps size, mtime and ctime itself
    # and sends them in SETATTR, and appends at the size it knows. So a file
    # opened write-only is opened read-write on the layer (the kernel reads the
    # pages a partial write fills), and O_APPEND is never passed on
    # (`UnionFS.open`). Off by default: the kernel then never takes mtime from
    # the daemon, and a truncate(2) to the current size leaves it as it was,
    # where overlayfs over ext4 or tmpfs sets it.
    enable_writeback_cache = False
    # FUSE_POSIX_ACL: the kernel checks the layers' POSIX ACLs (read through
    # getxattr, then cached with the inode) besides the mode bits, as overlayfs
    # does.
    enable_acl = True
    # FUSE_DONT_MASK (read by a pyfuse3 that carries patches/pyfuse3, ignored by
    # a stock one): new entries' modes arrive without the caller's umask, and
    # `UnionFS` applies ``ctx.umask`` unless the parent's default ACL replaces it.
    # A stock pyfuse3 lets the kernel apply the umask first, also where a
    # default ACL should replace it.
    enable_dont_mask = True

    def __init__(
        self,
        fs: UnionFS,
        *,
        debug: bool = False,
        cache_timeout: float = IMMUTABLE_TIMEOUT,
        acl: bool = True,
        writeback: bool = False,
    ) -> None:
        super().__init__()
        self.fs = fs
        self.enable_acl = acl  # read by pyfuse3 when the kernel's INIT arrives
        self.enable_writeback_cache = writeback and fs.writable
        self.requests = fs.events.requests  # requests by type, counted by `_handler`
        self.debug = debug
        # With a timeout of 0 the kernel caches nothing: every access asks the
        # daemon again (only useful to measure what the caches buy).
        self.timeout = cache_timeout
        self.keep_cache = cache_timeout > 0
        # FOPEN_CACHE_DIR: the kernel keeps listings in its page cache and a
        # warm walk never reaches the daemon. Layers never change under a mount,
        # and the kernel drops a cached listing itself when the directory
        # changes through this mount (the only way it changes); `_copy_up`
        # drops one whose d_ino a copy-up made stale. Needs a pyfuse3 whose
        # opendir may return a FileInfo (patches/pyfuse3).
        self.cache_dirs = self.keep_cache and CACHE_DIRS
        self._locks: dict[int, trio.Lock] = {}  # per-inode, for copy-up and removal
        # Owners are shown as stored unless uidmapping=/gidmapping=/squash_* ask
        # otherwise: `entry` runs for every lookup, getattr and listed entry.
        self._map_owners = fs.uids != IDENTITY or fs.gids != IDENTITY

    def entry(self, node: Node) -> pyfuse3.EntryAttributes:
        st = node.st
        # One unpack of the packed lstat (`NodeStat`), in `FIELD_NAMES` order.
        mode, uid, gid, _, _, _, rdev, size, blksize, blocks, atime, mtime, ctime = st.fields()
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.ino
        shown = self.fs.shown_ino(node)
        if shown != node.ino:
            set_reported_ino(attr, shown)  # a name of a lower hard-link group
        attr.generation = 0
        attr.entry_timeout = self.timeout
        attr.attr_timeout = self.timeout
        attr.st_mode = mode
        attr.st_nlink = self.fs.link_count(node)
        if self._map_owners:
            attr.st_uid, attr.st_gid = self.fs.shown_owner(st)
        else:
            attr.st_uid = uid
            attr.st_gid = gid
        attr.st_rdev = rdev
        attr.st_size = size
        attr.st_blksize = blksize
        attr.st_blocks = blocks
        attr.st_atime_ns = atime
        attr.st_mtime_ns = mtime
        attr.st_ctime_ns = ctime
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
        self.requests["forget"] += 1
        try:
            self.fs.forget(inode_list)
        except Exception:  # forget must never raise
            log.exception("forget failed")

    @_handler
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self.entry(self.fs.getattr(inode))

    @_handler
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.fs.readlink(inode)

    @_handler
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        self.fs.node(inode)
        if mode & os.W_OK and not self.fs.writable:
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
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int | pyfuse3.FileInfo:
        fh = self.fs.opendir(inode)
        if self.cache_dirs:
            return pyfuse3.FileInfo(fh=fh, keep_cache=True, cache_readdir=True)
        return fh

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

    def _layer_flags(self, flags: int) -> int:
        """The flags to open the layer file with: read-write where the kernel
        caches writes and may read pages of a file opened write-only."""
        if self.enable_writeback_cache and flags & os.O_ACCMODE == os.O_WRONLY:
            return flags & ~os.O_ACCMODE | os.O_RDWR
        return flags

    @_handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if flags & _WRITE_FLAGS:
            self._writable()
            await self._copy_up(self.fs.node(inode), "write")
        fh = self.fs.open(inode, self._layer_flags(flags))
        return pyfuse3.FileInfo(fh=fh, keep_cache=self.keep_cache)

    @_handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return self.fs.read(fh, off, size)

    @_handler
    async def release(self, fh: int) -> None:
        self.fs.release(fh)

    # -- extended attributes ---------------------------------------------------

    @_handler
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        value = self.fs.xattr_value(inode, name)
        if value is None:
            raise pyfuse3.FUSEError(errno.ENODATA)
        return value

    @_handler
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        return self.fs.listxattr(inode)

    # -- writes ----------------------------------------------------------------

    def _lock(self, ino: int) -> trio.Lock:
        lock = self._locks.get(ino)
        if lock is None:
            lock = self._locks[ino] = trio.Lock()
        return lock

    def _unlock_done(self, ino: int) -> None:
        lock = self._locks.get(ino)
        if lock is not None and not lock.locked() and lock.statistics().tasks_waiting == 0:
            del self._locks[ino]

    async def _copy_up(self, node: Node, reason: str) -> None:
        """Copy `node` up, its data in a worker thread: a large copy-up never
        stalls requests for other files. Requests for this inode wait.
        `reason` is what the copy-up is recorded as (`events.REASONS`)."""
        fs = self.fs
        if not fs.needs_copy_up(node):
            return
        async with self._lock(node.ino):
            if fs.needs_copy_up(node):
                if stat.S_ISDIR(node.st.st_mode):
                    fs.upper_dir(node, reason)
                else:
                    shown = fs.shown_ino(node)
                    job = fs.prepare_copy_up(node, reason)
                    try:
                        temp = await trio.to_thread.run_sync(job.run)
                    finally:
                        job.close()
                    fs.finish_copy_up(job, temp)
                    # The copy is a new file: its link count (a lower hard link's
                    # drops to 1), ctime and blocks differ from what the kernel
                    # cached. Data is the same, so the page cache stays.
                    self._forget_attributes(node.ino)
                    if self.cache_dirs and node.parent is not None and fs.shown_ino(node) != shown:
                        # A name of a lower hard-link group now has its own
                        # inode number: the cached listing's d_ino is stale.
                        self._forget_listing(node.parent.ino)
        self._unlock_done(node.ino)

    @staticmethod
    def _forget_attributes(ino: int) -> None:
        try:
            pyfuse3.invalidate_inode(ino, attr_only=True)
        except OSError as e:  # the kernel no longer knows the inode: nothing cached
            log.debug("invalidate_inode(%d): %s", ino, e)

    @staticmethod
    def _forget_listing(ino: int) -> None:
        """Drop the kernel's cached listing (and attributes) of directory `ino`."""
        try:
            pyfuse3.invalidate_inode(ino, attr_only=False)
        except OSError as e:  # the kernel no longer knows the inode: nothing cached
            log.debug("invalidate_inode(%d): %s", ino, e)

    def _writable(self) -> None:
        if not self.fs.writable:
            raise _read_only()

    @_handler
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._writable()
        fh, node = self.fs.create(
            parent_inode, name, mode, self._layer_flags(flags), ctx.uid, ctx.gid, ctx.umask
        )
        return pyfuse3.FileInfo(fh=fh, keep_cache=self.keep_cache), self.entry(node)

    @_handler
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        return self.entry(
            self.fs.mknod(parent_inode, name, mode, rdev, ctx.uid, ctx.gid, ctx.umask)
        )

    @_handler
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        return self.entry(self.fs.mkdir(parent_inode, name, mode, ctx.uid, ctx.gid, ctx.umask))

    @_handler
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        return self.entry(self.fs.symlink(parent_inode, name, target, ctx.uid, ctx.gid))

    @_handler
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        node = self.fs.node(inode)
        await self._copy_up(node, "link")
        async with self._lock(inode):
            node = self.fs.link(inode, new_parent_inode, new_name)
        self._unlock_done(inode)
        return self.entry(node)

    @_handler
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._writable()
        victim = self.fs.peek(parent_inode, name)
        if victim.ino not in self._locks:
            # No copy-up of it is under way, and nothing runs between the peek
            # and the removal: the peeked node is still the one to remove.
            self.fs.unlink(parent_inode, name, victim)
        else:
            async with self._lock(victim.ino):
                self.fs.unlink(parent_inode, name)
            self._unlock_done(victim.ino)
        if self.enable_writeback_cache and (victim.open_fds or victim.st.st_nlink > 1):
            # The kernel lowered its cached link count, and with the writeback
            # cache it would keep it: a lower file still open keeps its link
            # (as on overlayfs), so what the daemon reports must win.
            self._forget_attributes(victim.ino)

    @_handler
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._writable()
        self.fs.rmdir(parent_inode, name)

    @_handler
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self._writable()
        src = self.fs.peek(parent_inode_old, name_old)
        # As overlayfs: a rename that fails its checks copies nothing up.
        self.fs.check_rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)
        if not stat.S_ISDIR(src.st.st_mode):
            await self._copy_up(src, "rename")
        async with self._lock(src.ino):
            self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)
        self._unlock_done(src.ino)

    @_handler
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._writable()
        times_only = not (
            fields.update_size or fields.update_uid or fields.update_gid or fields.update_mode
        )
        node = self.fs.node(inode)
        if times_only and node.unlinked and (self.fs.needs_copy_up(node) or not node.open_fds):
            # With FUSE_WRITEBACK_CACHE the kernel writes back the ctime it
            # gave a file it just unlinked: a file without a name that nothing
            # holds open (or a lower one, which has nothing to copy up to) keeps
            # no times that anything could read again.
            return self.entry(node)
        reason = setattr_reason(
            size=fields.update_size,
            owner=fields.update_uid or fields.update_gid,
            mode=fields.update_mode,
            times=fields.update_atime or fields.update_mtime or fields.update_ctime,
        )
        await self._copy_up(node, reason)
        node = self.fs.setattr(
            inode,
            fh,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            size=attr.st_size if fields.update_size else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
        )
        return self.entry(node)

    @_handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return self.fs.write(fh, off, buf)

    @_handler
    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        # Dispatched by a pyfuse3 that carries patches/pyfuse3 (FALLOCATE);
        # with a stock one the kernel answers EOPNOTSUPP itself.
        self.fs.fallocate(fh, mode, offset, length)

    @_handler
    async def flush(self, fh: int) -> None:
        # Nothing to do on close: data goes straight to the layer file and the
        # daemon keeps no POSIX locks (the kernel keeps them itself). ENOSYS
        # makes the kernel stop sending FLUSH for the rest of the mount
        # (`fc->no_flush`), one request less per close; it still writes dirty
        # pages back on close, and close(2) never sees this error.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @_handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        self.fs.fsync(fh, datasync)

    @_handler
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self.fs.fsyncdir(self.fs.listing_node(fh).ino)

    @_handler
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self._writable()
        self.fs.check_settable(name, value)
        await self._copy_up(self.fs.node(inode), "setxattr")
        groups = None
        if ctx.uid != 0 and name == ACL_ACCESS_XATTR:
            groups = frozenset([ctx.gid, *_sup_groups(ctx.pid)])
        self.fs.setxattr(inode, name, value, caller_groups=groups)

    @_handler
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._writable()
        self.fs.check_removable(inode, name)
        await self._copy_up(self.fs.node(inode), "removexattr")
        self.fs.removexattr(inode, name)
