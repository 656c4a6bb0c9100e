"""The image and container store: an embedded directory, no server.

Layout under the store root (containerd's vocabulary: content store, unpacked
layers as snapshots, image records, containers)::

    store.json                   format version
    lock                         flock()ed by every command that changes the store
    blobs/sha256/<hex>           content-addressed blobs: manifests, configs, layer tars
    layers/<hex>/diff/           a layer unpacked once, keyed by its diff_id
    layers/<hex>/layer.json      its diff_id, size, and how it was unpacked
    layers/<hex>.lock            held while that layer is being unpacked
    images/<hex>.json            an image record, keyed by its ID (config digest)
    tags.json                    NAME:TAG -> image ID
    containers/<id>/             container.json, upper/, work/
    tmp/                         staging: everything is built here, then renamed into place

Every change is built in ``tmp/`` and renamed into place while holding the
store lock, so a reader sees an object whole or not at all. A command that is
interrupted (Ctrl-C, kill -9) leaves at most an entry in ``tmp/``; the next
command that takes the lock removes entries whose owner is gone (each staging
dir holds a file its owner keeps flock()ed). What a layer, image or container
uses is never counted in a file: it is computed from the records, so there
are no counts to get wrong.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from unionfs.errors import UnionfsError
from unionfs.fuse.daemon import FSTYPE, mounts
from unionfs.image import refs
from unionfs.image.layerwriter import WrittenLayer, write_layer
from unionfs.image.refs import Reference
from unionfs.image.sources import SourceImage, SourceLayer, open_image_source
from unionfs.image.unpack import Compression, detect_compression, unpack_layer

FORMAT_VERSION = 1
SHA256 = "sha256:"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
_LAYER_SUFFIX = {"gzip": "+gzip", "zstd": "+zstd", "none": ""}
_STAGING_LOCK = ".owner"
_COPY_CHUNK = 1 << 20


def default_root() -> Path:
    """``$UNIONFS_ROOT``; else /var/lib/unionfs for root, the XDG data dir for others."""
    env = os.environ.get("UNIONFS_ROOT")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/unionfs")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(data) / "unionfs"


def hex_of(digest: str) -> str:
    return digest.removeprefix(SHA256)


def short_id(digest: str) -> str:
    return hex_of(digest)[:12]


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> dt.datetime | None:
    """RFC 3339 as image configs write it (nanoseconds allowed)."""
    if not text:
        return None
    t = text.strip()
    if t.endswith(("Z", "z")):
        t = t[:-1] + "+00:00"
    head, dot, rest = t.partition(".")
    if dot:
        frac = "".join(ch for ch in rest if ch.isdigit())
        tz = rest[len(frac) :]
        t = f"{head}.{frac[:6].ljust(6, '0')}{tz}"
    try:
        when = dt.datetime.fromisoformat(t)
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


# -- records ------------------------------------------------------------------


@dataclass(frozen=True)
class LayerBlob:
    """One layer of an image: its diff_id and the blob it came from."""

    diff_id: str
    digest: str
    media_type: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "diff_id": self.diff_id,
            "digest": self.digest,
            "media_type": self.media_type,
            "size": self.size,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LayerBlob:
        return cls(d["diff_id"], d["digest"], d["media_type"], int(d["size"]))


@dataclass(frozen=True)
class ImageRecord:
    """An image: its ID is the digest of its config."""

    id: str
    manifest_digest: str
    layers: tuple[LayerBlob, ...]  # bottom first
    imported: str
    repo_digest: bool  # the manifest came from the source (a registry digest), not made here

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "manifest_digest": self.manifest_digest,
            "layers": [la.to_json() for la in self.layers],
            "imported": self.imported,
            "repo_digest": self.repo_digest,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImageRecord:
        return cls(
            d["id"],
            d["manifest_digest"],
            tuple(LayerBlob.from_json(x) for x in d["layers"]),
            d["imported"],
            bool(d.get("repo_digest", False)),
        )

    @property
    def diff_ids(self) -> tuple[str, ...]:
        return tuple(la.diff_id for la in self.layers)


@dataclass(frozen=True)
class ContainerRecord:
    """A container: an upper and a work dir over an image's layers."""

    id: str
    name: str
    image: str  # image ID
    image_ref: str  # what it was created from, as given
    diff_ids: tuple[str, ...]  # the image's layers, bottom first (kept if the image goes)
    created: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "image": self.image,
            "image_ref": self.image_ref,
            "diff_ids": list(self.diff_ids),
            "created": self.created,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ContainerRecord:
        return cls(
            d["id"], d["name"], d["image"], d["image_ref"], tuple(d["diff_ids"]), d["created"]
        )


@dataclass(frozen=True)
class LayerInfo:
    diff_id: str
    size: int  # apparent bytes of its files, hard links counted once
    entries: int
    compression: str
    unpacked: str


# -- import progress ----------------------------------------------------------


class ImportReport(Protocol):
    """What an import tells the person running it."""

    def layer_start(self, index: int, count: int, diff_id: str, size: int | None) -> None: ...
    def layer_progress(self, done: int) -> None: ...
    def layer_done(self, diff_id: str, *, reused: bool, info: LayerInfo) -> None: ...
    def warning(self, text: str) -> None: ...


class QuietReport:
    def layer_start(self, index: int, count: int, diff_id: str, size: int | None) -> None:
        pass

    def layer_progress(self, done: int) -> None:
        pass

    def layer_done(self, diff_id: str, *, reused: bool, info: LayerInfo) -> None:
        pass

    def warning(self, text: str) -> None:
        pass


@dataclass(frozen=True)
class Imported:
    image: ImageRecord
    tags: tuple[Reference, ...]
    untagged_from: tuple[tuple[Reference, str], ...] = ()  # tags moved away from other images


@dataclass(frozen=True)
class Committed:
    """What a commit made: a new image whose top layer holds the container's changes."""

    image: ImageRecord
    container: ContainerRecord
    layer: WrittenLayer
    tag: Reference | None
    untagged_from: tuple[tuple[Reference, str], ...]  # the tag, moved away from another image
    warnings: tuple[str, ...]  # entries left out of the layer or of its unpacked copy


class _CollectWarnings(QuietReport):
    """An import report that keeps the warnings and says nothing."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, text: str) -> None:
        self.lines.append(text)


# -- file helpers ---------------------------------------------------------------


def _write_json_atomic(path: Path, data: Any) -> None:
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


def _read_json(path: Path) -> Any:
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


def _rmtree(path: Path) -> None:
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


class _HashingReader:
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


# -- the store ------------------------------------------------------------------


@dataclass
class Store:
    """An opened store directory. Reading commands work on a store that does not
    exist yet (it is empty); the first change creates it."""

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
        _write_json_atomic(self.root / "store.json", {"version": FORMAT_VERSION})

    def check_version(self) -> None:
        path = self.root / "store.json"
        if not path.exists():
            return
        try:
            version = _read_json(path).get("version")
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
        """Remove staging entries whose owner is gone (interrupted commands)."""
        for entry in self.tmp.iterdir():
            owner = entry / _STAGING_LOCK
            if entry.is_dir() and not entry.is_symlink() and owner.exists():
                fd = os.open(owner, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # its owner is still at work
                    _rmtree(entry)
                finally:
                    os.close(fd)
            else:
                _rmtree(entry)

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
                _rmtree(path)
            finally:
                os.close(fd)

    # -- reading records ---------------------------------------------------------

    def images(self) -> list[ImageRecord]:
        if not self.images_dir.is_dir():
            return []
        out = []
        for p in sorted(self.images_dir.glob("*.json")):
            with contextlib.suppress(FileNotFoundError):
                out.append(ImageRecord.from_json(_read_json(p)))
        return out

    def image(self, image_id: str) -> ImageRecord | None:
        p = self.images_dir / f"{hex_of(image_id)}.json"
        try:
            return ImageRecord.from_json(_read_json(p))
        except FileNotFoundError:
            return None

    def tags(self) -> dict[Reference, str]:
        try:
            raw = _read_json(self.tags_file)
        except FileNotFoundError:
            return {}
        out = {}
        for text, image_id in raw.items():
            name, _, tag = text.rpartition(":")
            out[Reference(name, tag)] = image_id
        return out

    def _write_tags(self, tags: dict[Reference, str]) -> None:
        _write_json_atomic(self.tags_file, {str(r): i for r, i in sorted(tags.items(), key=str)})

    def tags_of(self, image_id: str) -> list[Reference]:
        return sorted((r for r, i in self.tags().items() if i == image_id), key=str)

    def containers(self) -> list[ContainerRecord]:
        if not self.containers_dir.is_dir():
            return []
        out = []
        for p in sorted(self.containers_dir.glob("*/container.json")):
            with contextlib.suppress(FileNotFoundError):
                out.append(ContainerRecord.from_json(_read_json(p)))
        return sorted(out, key=lambda c: c.created)

    def layer_info(self, diff_id: str) -> LayerInfo:
        d = _read_json(self.layers_dir / hex_of(diff_id) / "layer.json")
        return LayerInfo(d["diff_id"], d["size"], d["entries"], d["compression"], d["unpacked"])

    def layer_ids(self) -> list[str]:
        if not self.layers_dir.is_dir():
            return []
        return [
            SHA256 + p.name
            for p in sorted(self.layers_dir.iterdir())
            if p.is_dir() and (p / "layer.json").exists()
        ]

    def config(self, image: ImageRecord) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.blob_path(image.id).read_bytes())
        return data

    def read_blob(self, digest: str) -> bytes:
        return self.blob_path(digest).read_bytes()

    # -- resolving names ------------------------------------------------------------

    def resolve_image(self, text: str) -> ImageRecord:
        """An image by NAME[:TAG], NAME@DIGEST, full or short ID."""
        image = self._find_image(text)
        if image is None:
            raise UnionfsError(f"no such image: {text}")
        return image

    def _find_image(self, text: str) -> ImageRecord | None:
        name, tag, digest = refs.split_reference(text)
        tags = self.tags()
        if digest is None and refs.is_valid_name(name):
            image_id = tags.get(Reference(name, tag or refs.DEFAULT_TAG))
            if image_id is not None:
                return self.image(image_id)
        if digest is not None:
            for image in self.images():
                if image.manifest_digest == digest and (
                    name in {r.name for r, i in tags.items() if i == image.id}
                ):
                    return image
            return None
        prefix = text.removeprefix(SHA256)
        if len(prefix) >= 3 and all(c in "0123456789abcdef" for c in prefix):
            found = [i for i in self.images() if hex_of(i.id).startswith(prefix)]
            if len(found) > 1:
                raise UnionfsError(f"image ID prefix {text} is ambiguous: give more digits")
            if found:
                return found[0]
        return None

    def resolve_container(self, text: str) -> ContainerRecord:
        found = self.find_container(text)
        if found is None:
            raise UnionfsError(f"no such container: {text}")
        return found

    def find_container(self, text: str) -> ContainerRecord | None:
        containers = self.containers()
        for c in containers:
            if c.name == text:
                return c
        if len(text) >= 3 and all(ch in "0123456789abcdef" for ch in text):
            found = [c for c in containers if c.id.startswith(text)]
            if len(found) > 1:
                raise UnionfsError(f"container ID prefix {text} is ambiguous: give more digits")
            if found:
                return found[0]
        return None

    # -- importing ------------------------------------------------------------------

    def import_path(
        self, path: Path, name: Reference | None = None, report: ImportReport | None = None
    ) -> list[Imported]:
        """Import every image of a docker save archive, OCI layout or oci-archive."""
        report = report or QuietReport()
        with open_image_source(path) as images:
            if not images:
                raise UnionfsError(f"{path} holds no image")
            if name is not None and len(images) > 1:
                raise UnionfsError(
                    f"{path} holds {len(images)} images: import it without a name "
                    "(their own names are used), then tag them"
                )
            results = []
            for src in images:
                wanted: list[Reference]
                if name is not None:
                    wanted = [name]
                else:
                    found = (refs.source_reference(n) for n in src.names)
                    wanted = list(dict.fromkeys(r for r in found if r is not None))
                results.append(self._import_image(src, wanted, report))
            return results

    def _import_image(
        self, src: SourceImage, wanted: list[Reference], report: ImportReport
    ) -> Imported:
        config_digest = SHA256 + hashlib.sha256(src.config).hexdigest()
        if config_digest != src.config_digest:
            raise UnionfsError(f"image config digest mismatch: {src.config_digest}")
        try:
            config = json.loads(src.config)
            diff_ids = list(config["rootfs"]["diff_ids"])
        except (ValueError, KeyError, TypeError):
            raise UnionfsError(
                f"image {short_id(config_digest)}: config has no rootfs.diff_ids"
            ) from None
        if len(diff_ids) != len(src.layers):
            raise UnionfsError(
                f"image {short_id(config_digest)}: {len(src.layers)} layers but "
                f"{len(diff_ids)} diff_ids in its config"
            )
        layers: list[LayerBlob] = []
        for i, layer in enumerate(src.layers):
            if layer.diff_id != diff_ids[i]:
                raise UnionfsError(f"layer {i + 1}: diff_id differs from the config's")
            report.layer_start(i, len(src.layers), layer.diff_id, layer.size)
            layers.append(self._import_layer(layer, report))
        with self.staging("image") as stage:
            self._put_blob_bytes(stage, src.config)
            if src.manifest is not None and src.manifest_digest is not None:
                manifest_bytes, repo_digest = src.manifest, True
            else:
                manifest_bytes, repo_digest = self._make_manifest(src.config, layers), False
            manifest_digest = self._put_blob_bytes(stage, manifest_bytes)
            record = ImageRecord(
                config_digest, manifest_digest, tuple(layers), now_rfc3339(), repo_digest
            )
            with self.locked():
                existing = self.image(config_digest)
                if existing is not None:
                    record = existing
                else:
                    _write_json_atomic(self.images_dir / f"{hex_of(config_digest)}.json",
                                       record.to_json())  # fmt: skip
                moved = self._set_tags(wanted, config_digest)
        return Imported(record, tuple(wanted), moved)

    @staticmethod
    def _make_manifest(config: bytes, layers: list[LayerBlob]) -> bytes:
        """An OCI manifest for a source that has none (legacy docker archives)."""
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": SHA256 + hashlib.sha256(config).hexdigest(),
                "size": len(config),
            },
            "layers": [
                {"mediaType": la.media_type, "digest": la.digest, "size": la.size} for la in layers
            ],
        }
        return json.dumps(manifest, separators=(",", ":")).encode()

    def _put_blob_bytes(self, stage: Path, data: bytes) -> str:
        digest = SHA256 + hashlib.sha256(data).hexdigest()
        target = self.blob_path(digest)
        if not target.exists():
            tmp = stage / f"blob-{secrets.token_hex(4)}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            with self.locked():
                if not target.exists():
                    os.rename(tmp, target)
        return digest

    def _import_layer(self, layer: SourceLayer, report: ImportReport) -> LayerBlob:
        """Unpack one layer unless the store has it; keep its blob for export."""
        layer_dir = self.layers_dir / hex_of(layer.diff_id)
        with self.locked():
            pass  # creates the store and clears leftovers before the first layer
        lock_fd = os.open(
            self.layers_dir / f"{hex_of(layer.diff_id)}.lock",
            os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
            0o600,
        )
        try:
            # One unpacker per layer: a concurrent import of the same layer waits here
            # and then finds it in place.
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            have_layer = (layer_dir / "layer.json").exists()
            if have_layer and layer.digest is not None and self.blob_path(layer.digest).exists():
                info = self.layer_info(layer.diff_id)
                report.layer_done(layer.diff_id, reused=True, info=info)
                blob = self.blob_path(layer.digest)
                return LayerBlob(
                    layer.diff_id,
                    layer.digest,
                    self._layer_media_type(blob, detect_compression),
                    blob.stat().st_size,
                )
            with self.staging("layer") as stage:
                blob_tmp = stage / "blob"
                with layer.open() as raw, open(blob_tmp, "wb") as copy:
                    reader = _HashingReader(raw, copy)
                    if have_layer:
                        reader.drain()  # only the blob is missing (another compression)
                        digest = reader.digest
                        diff_id_ok = True
                        info = self.layer_info(layer.diff_id)
                    else:
                        (stage / "layer" / "diff").mkdir(parents=True)
                        result = unpack_layer(
                            reader,
                            stage / "layer" / "diff",
                            expected_digest=layer.digest,
                            expected_diff_id=layer.diff_id,
                            progress=report.layer_progress,
                        )
                        for w in result.warnings:
                            report.warning(w)
                        digest = result.digest
                        diff_id_ok = result.diff_id == layer.diff_id
                        info = LayerInfo(
                            layer.diff_id,
                            result.size,
                            result.entries,
                            result.compression,
                            now_rfc3339(),
                        )
                        _write_json_atomic(
                            stage / "layer" / "layer.json",
                            {
                                "diff_id": info.diff_id,
                                "size": info.size,
                                "entries": info.entries,
                                "compression": info.compression,
                                "unpacked": info.unpacked,
                            },
                        )
                if layer.digest is not None and digest != layer.digest:
                    raise UnionfsError(
                        f"layer {short_id(layer.diff_id)}: blob digest mismatch: expected "
                        f"{layer.digest}, got {digest}"
                    )
                if not diff_id_ok:
                    raise UnionfsError(f"layer {short_id(layer.diff_id)}: diff_id mismatch")
                media_type = self._layer_media_type(blob_tmp, detect_compression)
                size = blob_tmp.stat().st_size
                with self.locked():
                    if not self.blob_path(digest).exists():
                        os.rename(blob_tmp, self.blob_path(digest))
                    if not have_layer:
                        os.rename(stage / "layer", layer_dir)
            report.layer_done(layer.diff_id, reused=have_layer, info=info)
            return LayerBlob(layer.diff_id, digest, media_type, size)
        finally:
            os.close(lock_fd)

    @staticmethod
    def _layer_media_type(blob: Path, detect: Callable[[bytes], str]) -> str:
        with open(blob, "rb") as f:
            head = f.read(8)
        return OCI_LAYER + _LAYER_SUFFIX[detect(head)]

    # -- tags -------------------------------------------------------------------------

    def _set_tags(
        self, wanted: list[Reference], image_id: str
    ) -> tuple[tuple[Reference, str], ...]:
        """Point tags at `image_id`; return the (tag, old image) pairs moved away."""
        with self.locked():
            tags = self.tags()
            moved = []
            for ref in wanted:
                old = tags.get(ref)
                if old is not None and old != image_id:
                    moved.append((ref, old))
                tags[ref] = image_id
            if wanted:
                self._write_tags(tags)
            return tuple(moved)

    def tag(self, source: str, target: Reference) -> ImageRecord:
        with self.locked():
            image = self.resolve_image(source)
            self._set_tags([target], image.id)
            return image

    # -- removing images -------------------------------------------------------------

    def remove_image(self, text: str, *, force: bool = False) -> list[str]:
        """``rmi``: untag, and delete the image once no tag is left. Lines to print."""
        with self.locked():
            image = self.resolve_image(text)
            tags = self.tags()
            name, tag, digest = refs.split_reference(text)
            by_tag = Reference(name, tag or refs.DEFAULT_TAG)
            lines = []
            names = [r for r, i in tags.items() if i == image.id]
            if digest is None and by_tag in names and len(names) > 1:
                del tags[by_tag]
                self._write_tags(tags)
                return [f"Untagged: {by_tag}"]
            users = [c for c in self.containers() if c.image == image.id]
            if users and not force:
                raise UnionfsError(
                    f"image {short_id(image.id)} is used by container"
                    f"{'s' if len(users) > 1 else ''} {', '.join(c.name for c in users)}: "
                    "remove them first, or use --force (the containers keep its layers)"
                )
            mounted = [m for m in mounts_of_image(image.id)]
            if mounted:
                raise UnionfsError(
                    f"image {short_id(image.id)} is mounted on {mounted[0]}: unmount it first"
                )
            for r in names:
                del tags[r]
                lines.append(f"Untagged: {r}")
            self._write_tags(tags)
            (self.images_dir / f"{hex_of(image.id)}.json").unlink()
            lines.append(f"Deleted: {image.id}")
            lines += self.collect_garbage()
            return lines

    def collect_garbage(self) -> list[str]:
        """Delete layers and blobs that no image or container uses."""
        with self.locked():
            images = self.images()
            containers = self.containers()
            used_layers = {d for i in images for d in i.diff_ids}
            used_layers |= {d for c in containers for d in c.diff_ids}
            used_blobs = set()
            for i in images:
                used_blobs |= {i.id, i.manifest_digest, *(la.digest for la in i.layers)}
            used_blobs |= {c.image for c in containers}  # their configs (for commit)
            lines = []
            for diff_id in self.layer_ids():
                if diff_id not in used_layers:
                    self._discard(self.layers_dir / hex_of(diff_id))
                    with contextlib.suppress(FileNotFoundError):
                        (self.layers_dir / f"{hex_of(diff_id)}.lock").unlink()
                    lines.append(f"Deleted layer: {diff_id}")
            if self.blobs.is_dir():
                for p in self.blobs.iterdir():
                    if SHA256 + p.name not in used_blobs:
                        p.unlink()
            return lines

    def _discard(self, path: Path) -> None:
        """Take `path` out of view in one rename, then delete it."""
        doomed = self.tmp / f"deleted-{secrets.token_hex(8)}"
        os.rename(path, doomed)
        _rmtree(doomed)

    # -- containers --------------------------------------------------------------------

    def create_container(self, image_text: str, name: str | None = None) -> ContainerRecord:
        if name is not None and not _valid_container_name(name):
            raise UnionfsError(
                f"invalid container name {name!r}: letters, digits and _ . - "
                "(starting with a letter or digit)"
            )
        with self.staging("container") as stage, self.locked():
            image = self.resolve_image(image_text)
            taken = {c.name for c in self.containers()}
            if name is None:
                name = _generate_name(taken)
            elif name in taken:
                raise UnionfsError(f"the container name {name} is already in use")
            cid = secrets.token_hex(32)
            box = stage / cid
            box.mkdir(mode=0o700)
            (box / "upper").mkdir(mode=0o755)
            (box / "work").mkdir(mode=0o700)
            record = ContainerRecord(cid, name, image.id, image_text, image.diff_ids, now_rfc3339())
            _write_json_atomic(box / "container.json", record.to_json())
            os.rename(box, self.container_path(cid))
            return record

    def container_upper(self, c: ContainerRecord) -> Path:
        return self.container_path(c.id) / "upper"

    def container_work(self, c: ContainerRecord) -> Path:
        return self.container_path(c.id) / "work"

    def lowers(self, diff_ids: tuple[str, ...]) -> list[Path]:
        """Layer dirs, top first, as a mount takes them."""
        paths = [self.layer_path(d) for d in reversed(diff_ids)]
        for p in paths:
            if not p.is_dir():
                raise UnionfsError(f"layer {p.parent.name[:12]} is missing from the store")
        return paths

    def container_mounted(self, c: ContainerRecord) -> bool:
        """Whether a daemon serves this container (it holds its work dir locked)."""
        try:
            fd = os.open(self.container_work(c), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def remove_container(self, text: str) -> ContainerRecord:
        with self.locked():
            c = self.resolve_container(text)
            if self.container_mounted(c):
                where = mounts_of_container(c.id)
                raise UnionfsError(
                    f"container {c.name} is mounted"
                    f"{' on ' + where[0] if where else ''}: unmount it first"
                )
            self._discard(self.container_path(c.id))
            self.collect_garbage()
            return c

    # -- committing a container ---------------------------------------------------------

    def commit_container(
        self,
        text: str,
        name: Reference | None = None,
        *,
        message: str = "",
        author: str = "",
        compression: Compression = "gzip",
    ) -> Committed:
        """``commit``: a new image, the container's image plus one layer made of its
        upper layer (`unionfs.layerwriter`), tagged `name` if given.

        The new layer's blob is stored, and unpacked from that blob (not copied
        from the upper) into ``layers/<diff_id>``, so the image is mountable at
        once and what a mount of it shows is what the blob holds. The old
        layers' blobs are shared with the image they came from. The container
        is left as it is. It must not be mounted writable; while its layer is
        written, its work dir stays locked, so no mount can start. An empty upper
        gives an empty layer, as ``docker commit`` does.
        """
        with contextlib.ExitStack() as hold:
            with self.locked():
                c = self.resolve_container(text)
                hold.enter_context(self.keep_unmounted(c, "commit"))
                config = self._commit_base_config(c)
                base = self._commit_base_layers(c)
            with self.staging("commit") as stage:
                blob = stage / "blob"
                with open(blob, "wb") as f:
                    written = write_layer(self.container_upper(c), f, compression=compression)
                    f.flush()
                    os.fsync(f.fileno())
                report = _CollectWarnings()

                def reopen() -> BinaryIO:
                    return blob.open("rb")

                source = SourceLayer(
                    digest=written.digest,
                    media_type=OCI_LAYER + _LAYER_SUFFIX[compression],
                    size=written.size,
                    diff_id=written.diff_id,
                    open=reopen,
                )
                top = self._import_layer(source, report)
        now = now_rfc3339()
        config["created"] = now
        if author:
            config["author"] = author
        config["rootfs"] = {"type": "layers", "diff_ids": [*c.diff_ids, top.diff_id]}
        step = {"created": now, "created_by": "unionfs commit", "author": author,
                "comment": message}  # fmt: skip
        config["history"] = [*(config.get("history") or []), {k: v for k, v in step.items() if v}]
        config_bytes = json.dumps(config, separators=(",", ":")).encode()
        layers = [*base, top]
        with self.staging("image") as stage:
            config_digest = self._put_blob_bytes(stage, config_bytes)
            manifest_digest = self._put_blob_bytes(stage, self._make_manifest(config_bytes, layers))
            record = ImageRecord(config_digest, manifest_digest, tuple(layers), now, False)
            with self.locked():
                # A removal that ran meanwhile may have collected what nothing used yet.
                gone = [la for la in layers if not self.blob_path(la.digest).exists()]
                if gone or not (self.layers_dir / hex_of(top.diff_id) / "layer.json").exists():
                    raise UnionfsError(
                        f"container {c.name}: layers were removed from the store while it "
                        "was committed: commit again"
                    )
                if self.image(config_digest) is None:
                    _write_json_atomic(self.images_dir / f"{hex_of(config_digest)}.json",
                                       record.to_json())  # fmt: skip
                moved = self._set_tags([name], config_digest) if name is not None else ()
        return Committed(record, c, written, name, moved, (*written.warnings, *report.lines))

    @contextlib.contextmanager
    def keep_unmounted(self, c: ContainerRecord, action: str) -> Iterator[None]:
        """Hold `c`'s work dir locked, as its daemon does while mounted: refused
        (with the way out) when it is mounted writable, and no mount starts until
        the block ends. A read-only mount leaves the upper as it is: allowed."""
        try:
            fd = os.open(self.container_work(c), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise UnionfsError(f"container {c.name} is damaged: its work dir is missing") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                where = mounts_of_container(c.id)
                if where:
                    raise UnionfsError(
                        f"container {c.name} is mounted on {where[0]}: unmount it "
                        f"(unionfs umount {where[0]}) and {action} again"
                    ) from None
                raise UnionfsError(
                    f"container {c.name} is in use (mounted, or another {action} is running): "
                    f"unmount it and {action} again"
                ) from None
            yield
        finally:
            os.close(fd)  # releases the flock

    def _commit_base_config(self, c: ContainerRecord) -> dict[str, Any]:
        """The config of the container's image (kept for commit even after ``rmi``)."""
        try:
            config = json.loads(self.blob_path(c.image).read_bytes())
        except FileNotFoundError:
            raise UnionfsError(
                f"container {c.name}: the config of its image {short_id(c.image)} is missing "
                "from the store"
            ) from None
        if not isinstance(config, dict):
            raise UnionfsError(f"image {short_id(c.image)}: its config is not a JSON object")
        return config

    def _commit_base_layers(self, c: ContainerRecord) -> list[LayerBlob]:
        """The blobs of the container's layers, from its image's record, else from any
        image that has the same layer."""
        image = self.image(c.image)
        found: dict[str, LayerBlob] = {}
        for record in [*([image] if image is not None else []), *self.images()]:
            for la in record.layers:
                if la.diff_id not in found and self.blob_path(la.digest).exists():
                    found[la.diff_id] = la
        missing = [d for d in c.diff_ids if d not in found]
        if missing:
            raise UnionfsError(
                f"container {c.name}: the blob of its layer {short_id(missing[0])} left the "
                "store with its image, and a committed image must list it: import the image "
                "again, then commit"
            )
        return [found[d] for d in c.diff_ids]


# -- names and mounts ------------------------------------------------------------------

_ADJECTIVES = tuple(
    [
        "agile",
        "bold",
        "brave",
        "bright",
        "calm",
        "clever",
        "cosy",
        "crisp",
        "eager",
        "fair",
        "fond",
        "gentle",
        "happy",
        "jolly",
        "keen",
        "kind",
        "lively",
        "lucid",
        "merry",
        "neat",
        "nimble",
        "noble",
        "placid",
        "proud",
        "quick",
        "quiet",
        "sharp",
        "shiny",
        "snug",
        "steady",
        "sunny",
        "swift",
        "tidy",
        "vivid",
        "warm",
        "witty",
        "zen",
    ]
)
_NOUNS = tuple(
    [
        "badger",
        "beaver",
        "bison",
        "crane",
        "dingo",
        "eagle",
        "ferret",
        "finch",
        "gecko",
        "heron",
        "ibis",
        "jackal",
        "koala",
        "lemur",
        "lynx",
        "marmot",
        "mole",
        "newt",
        "otter",
        "panda",
        "pika",
        "quail",
        "raven",
        "seal",
        "shrew",
        "stoat",
        "swan",
        "tapir",
        "toucan",
        "vole",
        "walrus",
        "wombat",
        "yak",
        "zebra",
    ]
)


def _generate_name(taken: set[str]) -> str:
    for _ in range(1000):
        name = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NOUNS)}"
        if name not in taken:
            return name
    return f"container_{secrets.token_hex(4)}"


def _valid_container_name(name: str) -> bool:
    return re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}", name) is not None


def mount_source(kind: str, object_id: str) -> str:
    """The source name a store mount shows in the mount table (``fsname``)."""
    return f"unionfs:{kind}:{short_id(object_id)}"


def _mounts_with_source(source: str) -> list[str]:
    return [m.mountpoint for m in mounts() if m.fstype == FSTYPE and m.source == source]


def mounts_of_container(cid: str) -> list[str]:
    return _mounts_with_source(mount_source("container", cid))


def mounts_of_image(image_id: str) -> list[str]:
    return _mounts_with_source(mount_source("image", image_id))
