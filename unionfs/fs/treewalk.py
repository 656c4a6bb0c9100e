"""Walking and removing a directory tree that anyone may have written, of any depth.

The walk (`walk_dirs`) is iterative, so no depth raises RecursionError; one directory
descriptor is open at a time besides the caller's (a finished directory is left
through ``..``, checked against the device and inode it was entered from), so no
depth runs out of descriptors either. Memory grows with the depth and with the
subdirectory names of the directories on the current path, never with the
tree's size. Names are reached relative to directory descriptors, never through
a path, and symlinks are never followed (removed as names). Names that vanish
meanwhile (another process removing the same tree) are not errors. A normal
user's tree may hold read-only dirs (0555): they are made writable first.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass

from unionfs.fs.layer import DIR_FLAGS


def remove_tree_at(parent: int, name: str | bytes) -> None:
    """Remove `name` in directory `parent`, whatever it is (a directory with
    everything in it). Raises OSError when it cannot be removed."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=parent)
        return
    try:
        empty_dir(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(name, dir_fd=parent)


@dataclass
class _Level:
    """A directory of the walk: its identity, its name in its parent, and
    the subdirectories still to visit."""

    ident: tuple[int, int]
    name: str
    subdirs: list[str]


def walk_dirs(
    top: int,
    enter: Callable[[int], list[str]],
    leave: Callable[[int, str], None] | None = None,
    *,
    open_subdir: Callable[[int, str], int | None] | None = None,
) -> None:
    """Visit every directory under `top` (an open directory, left open), depth first.

    `enter(fd)` is called once per directory, `top` included, and returns the
    names of the subdirectories to visit (it may do its own work on the other
    entries). `leave(parent_fd, name)` is called after the subdirectory `name`
    of `parent_fd` was visited. `open_subdir` opens a subdirectory (default:
    ``O_NOFOLLOW``, None when it vanished or is no longer a directory).
    A subdirectory moved away during the walk raises OSError(ESTALE).
    """
    opener = open_subdir or _open_plain
    cur = top
    levels = [_Level(_ident(top), "", enter(top))]
    try:
        while levels:
            level = levels[-1]
            if level.subdirs:
                name = level.subdirs.pop()
                sub = opener(cur, name)
                if sub is None:
                    continue
                if cur != top:
                    os.close(cur)
                cur = sub
                levels.append(_Level(_ident(sub), name, enter(sub)))
                continue
            levels.pop()
            if not levels:
                break
            if len(levels) == 1:
                parent = top
            else:
                parent = os.open("..", DIR_FLAGS, dir_fd=cur)
                if _ident(parent) != levels[-1].ident:
                    os.close(parent)
                    raise OSError(errno.ESTALE, "a directory moved while it was being walked")
            os.close(cur)
            cur = parent
            if leave is not None:
                leave(cur, level.name)
    finally:
        if cur != top:
            os.close(cur)


def empty_dir(top: int) -> None:
    """Remove everything in the directory `top` (left open, and left in place)."""

    def rmdir(parent: int, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(name, dir_fd=parent)

    walk_dirs(top, _clear, rmdir, open_subdir=_open_subdir)


def _open_plain(parent: int, name: str) -> int | None:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None
        raise


def _ident(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _open_subdir(parent: int, name: str) -> int | None:
    """Open directory `name` to empty it (made readable first when a normal user
    may not read it); None when it vanished or is no longer a directory. A mount
    point is not entered: OSError(EBUSY)."""
    for attempt in (1, 2):
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:  # replaced by a symlink meanwhile
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=parent)
                return None
            if e.errno != errno.EACCES or attempt == 2 or os.geteuid() == 0:
                raise
            os.chmod(name, 0o700, dir_fd=parent, follow_symlinks=True)
            continue
        if os.fstat(fd).st_dev != os.fstat(parent).st_dev:
            os.close(fd)  # never empty another filesystem mounted in the tree
            raise OSError(errno.EBUSY, "a filesystem is mounted there", name)
        return fd
    return None


def _clear(fd: int) -> list[str]:
    """Unlink every non-directory in directory `fd`; the names of its subdirectories."""
    if os.geteuid() != 0:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and st.st_mode & 0o700 != 0o700:
            os.chmod(fd, 0o700)  # a read-only dir of a normal user's layer
    subdirs: list[str] = []
    with os.scandir(fd) as it:
        for entry in it:
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.name)
                    continue
            except OSError:
                pass
            try:
                os.unlink(entry.name, dir_fd=fd)
            except FileNotFoundError:
                continue
            except IsADirectoryError:
                subdirs.append(entry.name)
    return subdirs
