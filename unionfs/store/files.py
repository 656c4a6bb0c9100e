"""File helpers of the store: atomic JSON files, tree sizes, removal, hashing.

`write_json_atomic` writes beside the target and renames over it, so a reader
sees the old file or the new one, never a part. `rmtree` removes trees the
store made and tolerates another command removing the same tree at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import stat
from pathlib import Path
from typing import IO, Any, BinaryIO

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
    """Apparent bytes of the regular files under `path`, hard links once, no symlinks followed."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [str(path)]
    while stack:
        top = stack.pop()
        try:
            it = os.scandir(top)
        except OSError:
            continue
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
                elif stat.S_ISREG(st.st_mode):
                    if st.st_nlink > 1:
                        key = (st.st_dev, st.st_ino)
                        if key in seen:
                            continue
                        seen.add(key)
                    total += st.st_size
    return total


def rmtree(path: Path) -> None:
    """Remove a tree made by the store. Another command may be removing the same
    leftover at the same time, so names that vanish meanwhile are not errors."""

    def vanished_ok(func: Any, name: str, exc: Any) -> None:
        if isinstance(exc[1], FileNotFoundError):
            return
        if isinstance(exc[1], PermissionError) and os.geteuid() != 0:
            # a layer unpacked by a normal user may hold read-only dirs (0555)
            parent = os.path.dirname(name)
            os.chmod(parent, 0o700)
            if os.path.isdir(name) and not os.path.islink(name):
                os.chmod(name, 0o700)
                shutil.rmtree(name, onerror=vanished_ok)
            else:
                os.unlink(name)
            return
        raise exc[1]

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, onerror=vanished_ok)
    else:
        path.unlink(missing_ok=True)


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
