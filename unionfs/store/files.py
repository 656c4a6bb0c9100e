"""File helpers of the store: atomic JSON files, tree sizes, removal, hashing.

`write_json_atomic` writes beside the target and renames over it, so a reader
sees the old file or the new one, never a part. `rmtree` removes trees the
store made and tolerates another command removing the same tree at once; it
and `tree_size` walk iteratively, as a tree anyone can write may be of any
depth.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import stat
from pathlib import Path
from typing import IO, Any, BinaryIO

from unionfs.fs.layer import DIR_FLAGS
from unionfs.fs.treewalk import remove_tree_at, walk_dirs
from unionfs.store.records import SHA256

_COPY_CHUNK = 1 << 20


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def tree_size(path: Path) -> int:
    """Bytes on disk of the regular files under `path` (allocated blocks, so a
    sparse file counts what it holds, not its length), hard links once, no
    symlinks followed; 0 when `path` is not a directory. Iterative, through
    directory descriptors (`unionfs.fs.treewalk`): a tree of any depth and
    path length is read."""
    total = 0
    seen: set[tuple[int, int]] = set()

    def count(fd: int) -> list[str]:
        nonlocal total
        subdirs: list[str] = []
        try:
            it = os.scandir(fd)
        except OSError:
            return subdirs
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    subdirs.append(entry.name)
                elif stat.S_ISREG(st.st_mode):
                    if st.st_nlink > 1:
                        key = (st.st_dev, st.st_ino)
                        if key in seen:
                            continue
                        seen.add(key)
                    total += st.st_blocks * 512
        return subdirs

    try:
        fd = os.open(path, DIR_FLAGS)
    except OSError:
        return 0
    try:
        walk_dirs(fd, count, open_subdir=_open_readable)
    except OSError:
        pass  # a directory moved meanwhile (a container in use): what was counted
    finally:
        os.close(fd)
    return total


def _open_readable(parent: int, name: str) -> int | None:
    try:
        return os.open(name, DIR_FLAGS, dir_fd=parent)
    except OSError:
        return None  # vanished, replaced, or not readable: not counted


def rmtree(path: Path) -> None:
    """Remove a tree made by the store (or renamed into it, such as a container's
    upper layer that anyone in the container could fill).

    Iterative (`unionfs.fs.treewalk`), so no depth raises RecursionError or runs
    out of descriptors. Another command may be
    removing the same leftover at the same time, so names that vanish meanwhile
    are not errors. A normal user's layer may hold read-only dirs (0555):
    they are made writable first. Raises OSError when the tree cannot be
    removed."""
    parent = os.open(path.parent, DIR_FLAGS)
    try:
        remove_tree_at(parent, path.name)
    finally:
        os.close(parent)


class HashingReader:
    """A read-only stream that hashes and optionally copies what is read through it."""

    def __init__(self, src: BinaryIO, copy_to: IO[bytes] | None) -> None:
        self._src = src
        self._copy = copy_to
        self.sha = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        if data:
            self.sha.update(data)
            self.count += len(data)
            if self._copy is not None:
                self._copy.write(data)
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while self.read(_COPY_CHUNK):
            pass

    @property
    def digest(self) -> str:
        return SHA256 + self.sha.hexdigest()
