"""Copy-up in `UnionFS`: bringing an entry of a lower layer into the upper
layer before its first change, parents first.

`unionfs.fs.upper` builds a copy in the work dir; this module decides what is
copied when, installs the copy in place (the parent directory keeps its
timestamps, so a copy-up changes nothing a reader can see), switches the node
to its upper copy and records the copy-up as an event. A file's copy-up runs in
three steps (`prepare_copy_up`, `CopyUp.run`, `finish_copy_up`) so that the
adapter can run the data copy in a worker thread.
"""

import contextlib
import errno
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass

from unionfs.fs.core import Core, _err, _pack, mount_path
from unionfs.fs.inodes import Node, StatLike
from unionfs.fs.merge import Copy, Kind
from unionfs.fs.upper import Upper, read_xattrs


class CopyUps(Core):
    """Copy-up of directories and of other entries."""

    def _need_upper(self) -> Upper:
        if self.upper is None:
            raise _err(errno.EROFS)
        return self.upper

    def upper_dir(self, node: Node, reason: str = "parent") -> int:
        """`node` (a directory) in the upper layer, copying it and its parents
        up first if needed; returns its descriptor there. `reason` is what
        the copy-up of `node` itself is recorded as (its parents' is "parent")."""
        upper = self._need_upper()
        chain: list[Node] = []
        cur: Node | None = node
        while cur is not None and cur.copies[0].layer != 0:
            chain.append(cur)
            cur = cur.parent
        for d in reversed(chain):
            assert d.parent is not None  # the root always has an upper copy
            started = time.perf_counter()
            pfd = self.dir_fd(d.parent, 0)
            src = self.dir_fd(d, d.top_layer)
            # As it is on disk: a recorded owner travels in its xattr.
            temp = upper.copy_dir(src, self.disk_stat(d), _pack(d.key))
            with _parent_times_kept(pfd):
                upper.install(temp, pfd, d.name)
            source = d.top_layer
            d.copies = (Copy(0, Kind.DIR), *d.copies)
            d.xattr_names = None
            self.events.copy_up(
                mount_path(d),
                reason if d is node else "parent",
                layer=source,
                data=False,
                nbytes=0,
                seconds=time.perf_counter() - started,
            )
        return self.dir_fd(node, 0)

    def needs_copy_up(self, node: Node) -> bool:
        return self.upper is not None and node.copies[0].layer != 0

    def prepare_copy_up(self, node: Node, reason: str) -> "CopyUp":
        """Step 1 of a copy-up (on the event loop): parents up, source open.
        `reason` is what the copy-up is recorded as (`events.REASONS`)."""
        upper = self._need_upper()
        assert node.parent is not None
        self.upper_dir(node.parent)
        started = time.perf_counter()
        lower_pfd = self.parent_fd(node)
        st = self.disk_stat(node)  # a recorded owner and mode travel in their xattr
        origin = _pack(node.key)
        xattrs = read_xattrs(lower_pfd, node.name)
        if stat.S_ISREG(st.st_mode):
            src = os.open(node.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=lower_pfd)
            return CopyUp(upper, node, st, xattrs, origin, reason, started, src_fd=src)
        target = os.readlink(node.name, dir_fd=lower_pfd) if stat.S_ISLNK(st.st_mode) else None
        return CopyUp(upper, node, st, xattrs, origin, reason, started, target=target)

    def finish_copy_up(self, job: "CopyUp", temp: bytes) -> None:
        """Step 3 (on the event loop): rename the copy into place, repoint readers."""
        node = job.node
        assert node.parent is not None
        pfd = self.dir_fd(node.parent, 0)
        with _parent_times_kept(pfd):
            job.upper.install(temp, pfd, node.name)
        source = node.top_layer
        node.copies = (Copy(0, Kind.NONDIR),)
        node.xattr_names = None
        self.refresh(node)
        # Files opened read-only before the copy-up now read the copy.
        for fd in node.open_fds:
            new = os.open(node.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            os.dup2(new, fd)
            os.close(new)
        data = stat.S_ISREG(job.st.st_mode)
        self.events.copy_up(
            mount_path(node),
            job.reason,
            layer=source,
            data=data,
            nbytes=job.st.st_size if data else 0,
            seconds=time.perf_counter() - job.started,
        )

    def copy_up(self, node: Node, reason: str) -> None:
        """Copy a non-directory (or a directory's metadata) into the upper layer;
        `reason` is what the copy-up is recorded as (`events.REASONS`)."""
        if not self.needs_copy_up(node):
            return
        if stat.S_ISDIR(node.st.st_mode):
            self.upper_dir(node, reason)
            return
        job = self.prepare_copy_up(node, reason)
        try:
            temp = job.run()
        finally:
            job.close()
        self.finish_copy_up(job, temp)


@dataclass(eq=False)
class CopyUp:
    """A copy-up in progress: `run` (the data copy) may go to a worker thread."""

    upper: Upper
    node: Node
    st: StatLike
    xattrs: dict[bytes, bytes]
    origin: bytes | None
    reason: str  # what it is recorded as
    started: float  # time.perf_counter() when the source was opened
    src_fd: int | None = None
    target: bytes | None = None

    def run(self) -> bytes:
        """Build the copy in the work dir; returns its temporary name."""
        if self.src_fd is not None:
            return self.upper.copy_file(self.src_fd, self.st, self.xattrs, self.origin)
        return self.upper.copy_special(self.st, self.target, self.xattrs, self.origin)

    def close(self) -> None:
        if self.src_fd is not None:
            os.close(self.src_fd)
            self.src_fd = None


@contextlib.contextmanager
def _parent_times_kept(dirfd: int) -> Iterator[None]:
    """A copy-up is invisible: the parent directory keeps its timestamps."""
    st = os.fstat(dirfd)
    yield
    os.utime(dirfd, ns=(st.st_atime_ns, st.st_mtime_ns))
