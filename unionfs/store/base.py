"""The store root: its layout on disk, the store lock, staging dirs.

Every change is built in ``tmp/`` and renamed into place while holding the
store lock, so a reader sees an object whole or not at all. A command that is
interrupted (Ctrl-C, kill -9) leaves at most an entry in ``tmp/``; the next
command that takes the lock removes entries whose owner is gone (each staging
dir holds a file its owner keeps flock()ed).

`StoreBase` is what every part of `unionfs.store.store.Store` builds on; it
also declares the methods the parts call on one another.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from unionfs.errors import UnionfsError
from unionfs.store.files import read_json, rmtree, write_json_atomic
from unionfs.store.records import hex_of

if TYPE_CHECKING:
    from unionfs.image.refs import Reference
    from unionfs.image.sources import SourceLayer
    from unionfs.store.layers import ImportReport
    from unionfs.store.leases import Lease
    from unionfs.store.records import ContainerRecord, ImageRecord, LayerBlob

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_STAGING_LOCK = ".owner"
_STUCK = "stuck-"


MIN_FREE_ENV = "UNIONFS_MIN_FREE"
_DEFAULT_MIN_FREE = 1 << 30
_DEFAULT_MIN_FREE_SHARE = 0.05
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``1048576``, ``512K``, ``100M``, ``2G``, ``1T`` (powers of 1024; a trailing
    ``B``/``iB`` is allowed) in bytes; ValueError otherwise."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in _SIZE_UNITS else ""
    number = t[: len(t) - len(unit)].strip()
    if not number.isdigit():
        raise ValueError(text)
    return int(number) * _SIZE_UNITS[unit]


def default_root() -> Path:
    """``$UNIONFS_ROOT``; else /var/lib/unionfs for root, the XDG data dir for others."""
    env = os.environ.get("UNIONFS_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/unionfs")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(data) / "unionfs"


@dataclass
class StoreBase:
    """The store root: its paths, creating it, the store lock, staging dirs.
    `unionfs.store.store.Store` is this plus one mixin per concern."""

    root: Path
    _lock_fd: int = field(default=-1, repr=False)
    _lock_depth: int = field(default=0, repr=False)

    # paths
    @property
    def blobs(self) -> Path:
        return self.root / "blobs" / "sha256"

    @property
    def layers_dir(self) -> Path:
        return self.root / "layers"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def containers_dir(self) -> Path:
        return self.root / "containers"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def tags_file(self) -> Path:
        return self.root / "tags.json"

    def blob_path(self, digest: str) -> Path:
        return self.blobs / hex_of(digest)

    def layer_path(self, diff_id: str) -> Path:
        """The unpacked layer directory (what a mount uses as a lower layer)."""
        return self.layers_dir / hex_of(diff_id) / "diff"

    def container_path(self, cid: str) -> Path:
        return self.containers_dir / cid

    # -- creation and locking --------------------------------------------------

    def _ensure(self) -> None:
        if (self.root / "store.json").exists():
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise UnionfsError(f"cannot create the store {self.root}: {e.strerror}") from None
        if not self.root.is_dir():
            raise UnionfsError(f"store {self.root}: not a directory")
        for d in (self.blobs, self.layers_dir, self.images_dir, self.containers_dir, self.tmp):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_json_atomic(self.root / "store.json", {"version": FORMAT_VERSION})

    def check_version(self) -> None:
        """The store's format is the one this unionfs reads; a root that exists
        and is not a directory is refused (by every command alike)."""
        if self.root.exists() and not self.root.is_dir():
            raise UnionfsError(f"store {self.root}: not a directory")
        path = self.root / "store.json"
        if not path.exists():
            return
        try:
            version = read_json(path).get("version")
        except (OSError, ValueError, AttributeError):
            raise UnionfsError(f"store {self.root}: store.json is unreadable") from None
        if version != FORMAT_VERSION:
            raise UnionfsError(
                f"store {self.root} has format version {version}; this unionfs reads "
                f"version {FORMAT_VERSION}"
            )

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store lock (re-entrant within this object); clean up leftovers."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        self._ensure()
        self.check_version()
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_fd, self._lock_depth = fd, 1
            self._clean_tmp()
            yield
        finally:
            self._lock_fd, self._lock_depth = -1, 0
            os.close(fd)  # releases the flock

    def _clean_tmp(self) -> None:
        """Remove staging entries whose owner is gone (interrupted commands).

        An entry that cannot be removed never blocks the command: it is renamed
        ``stuck-*``, reported once (a warning), and from then on tried again
        quietly by each command."""
        for entry in self.tmp.iterdir():
            owner = entry / _STAGING_LOCK
            if entry.is_dir() and not entry.is_symlink() and owner.exists():
                try:
                    fd = os.open(owner, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    fd = -1  # its owner file went away meanwhile: its dir is going too
                if fd < 0:
                    continue
                try:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # its owner is still at work
                    self._remove_leftover(entry)
                finally:
                    os.close(fd)
            else:
                self._remove_leftover(entry)

    def _remove_leftover(self, path: Path) -> None:
        """Remove `path` in tmp/; when that fails, set it aside (see `_clean_tmp`)."""
        try:
            rmtree(path)
        except OSError as e:
            if path.name.startswith(_STUCK):
                log.debug("leftover %s still cannot be removed: %s", path, e)
                return
            stuck = path.with_name(_STUCK + path.name)
            with contextlib.suppress(OSError):
                os.rename(path, stuck)
                path = stuck
            log.warning(
                "warning: cannot remove %s (%s); it is left there, and each "
                "command tries again",
                path, e.strerror or e,
            )  # fmt: skip

    @contextlib.contextmanager
    def staging(self, what: str) -> Iterator[Path]:
        """A fresh dir in tmp/, owned by this process until the block ends, then removed
        (whatever was renamed out of it by then stays)."""
        with self.locked():
            path = self.tmp / f"{what}-{secrets.token_hex(8)}"
            path.mkdir(mode=0o700)
            fd = os.open(path / _STAGING_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            try:
                self._remove_leftover(path)
            finally:
                os.close(fd)

    def free_space_reserve(self) -> int:
        """Bytes a layer being unpacked must leave free on the store's filesystem:
        ``$UNIONFS_MIN_FREE`` (``0`` for no limit), else 1 GiB or 5% of the
        filesystem, whichever is less."""
        text = os.environ.get(MIN_FREE_ENV)
        if text:
            try:
                return parse_size(text)
            except ValueError:
                raise UnionfsError(
                    f"{MIN_FREE_ENV}={text!r}: not a size (such as 500M, 2G or 0)"
                ) from None
        st = os.statvfs(self.root)
        return min(_DEFAULT_MIN_FREE, int(st.f_blocks * st.f_frsize * _DEFAULT_MIN_FREE_SHARE))

    def _discard(self, path: Path) -> None:
        """Take `path` out of view in one rename, then delete it."""
        doomed = self.tmp / f"deleted-{secrets.token_hex(8)}"
        os.rename(path, doomed)
        self._remove_leftover(doomed)

    # -- what the parts ask of one another -----------------------------------------
    # Provided by the mixins `Store` is assembled from; declared here so that each
    # mixin type-checks on its own.

    if TYPE_CHECKING:
        # content.py
        def _put_blob_bytes(self, stage: Path, data: bytes) -> str: ...

        @staticmethod
        def _make_manifest(config: bytes, layers: list[LayerBlob]) -> bytes: ...

        # layers.py
        def layer_ids(self) -> list[str]: ...

        def _import_layer(
            self, layer: SourceLayer, report: ImportReport, lease: Lease
        ) -> LayerBlob: ...

        # images.py
        def images(self) -> list[ImageRecord]: ...

        def image(self, image_id: str) -> ImageRecord | None: ...

        def resolve_image(self, text: str) -> ImageRecord: ...

        def _set_tags(
            self, wanted: list[Reference], image_id: str
        ) -> tuple[tuple[Reference, str], ...]: ...

        # containers.py
        def containers(self) -> list[ContainerRecord]: ...

        def resolve_container(self, text: str) -> ContainerRecord: ...

        def container_upper(self, c: ContainerRecord) -> Path: ...

        def keep_unmounted(
            self, c: ContainerRecord, action: str
        ) -> contextlib.AbstractContextManager[None]: ...

        # gc.py
        def collect_garbage(self) -> list[str]: ...
