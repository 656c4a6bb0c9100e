"""Small OCI image layouts and docker save archives written by the tests
themselves, to feed the importer exactly the bytes a case needs (including
broken and malicious ones). Real tools' output is tested elsewhere."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Entry:
    """One tar member: a file (data), dir, symlink/hardlink (link), fifo, or device."""

    name: str
    kind: str = "file"
    data: bytes = b""
    mode: int = 0o644
    link: str = ""
    uid: int = 0
    gid: int = 0
    mtime: int = 1_700_000_000
    xattrs: dict[str, str] = field(default_factory=dict)
    devmajor: int = 0
    devminor: int = 0


_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "chardev": tarfile.CHRTYPE,
}


def tar_bytes(entries: Iterable[Entry], *, end_blocks: bool = True) -> bytes:
    """A PAX tar of `entries`, in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = _TYPES[e.kind]
            info.mode = e.mode
            info.uid, info.gid = e.uid, e.gid
            info.mtime = e.mtime
            info.linkname = e.link
            info.devmajor, info.devminor = e.devmajor, e.devminor
            if e.xattrs:
                info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in e.xattrs.items()}
            if e.kind == "file":
                info.size = len(e.data)
                tf.addfile(info, io.BytesIO(e.data))
            else:
                tf.addfile(info)
    data = buf.getvalue()
    if not end_blocks:
        data = data.rstrip(b"\0")
        data += b"\0" * (-len(data) % 512)
    return data


def file(name: str, data: bytes | str = b"", mode: int = 0o644, **kw: Any) -> Entry:
    return Entry(name, "file", data.encode() if isinstance(data, str) else data, mode, **kw)


def directory(name: str, mode: int = 0o755, **kw: Any) -> Entry:
    return Entry(name, "dir", mode=mode, **kw)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, "symlink", mode=0o777, link=target)


def hardlink(name: str, target: str) -> Entry:
    return Entry(name, "hardlink", link=target)


def whiteout(name: str) -> Entry:
    """As podman/buildah write them: size 0, mode 0."""
    return Entry(name, "file", mode=0)


@dataclass
class Layer:
    tar: bytes
    compression: str = "gzip"  # gzip | zstd | none
    media_type: str | None = None  # None: the honest one

    @property
    def blob(self) -> bytes:
        if self.compression == "gzip":
            return gzip.compress(self.tar, compresslevel=1, mtime=0)
        if self.compression == "zstd":
            return zstandard.ZstdCompressor().compress(self.tar)
        return self.tar

    @property
    def declared_type(self) -> str:
        if self.media_type is not None:
            return self.media_type
        return OCI_LAYER + {"gzip": "+gzip", "zstd": "+zstd", "none": ""}[self.compression]


def config_bytes(layers: list[Layer], **extra: Any) -> bytes:
    history = extra.pop("history", None) or [
        {"created": "2024-05-01T10:00:00Z", "created_by": f"step {i + 1}"}
        for i in range(len(layers))
    ]
    cfg = {
        "created": "2024-05-01T10:00:00.123456789Z",
        "architecture": "amd64",
        "os": "linux",
        "config": extra.pop("config", {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]}),
        "rootfs": {"type": "layers", "diff_ids": [sha256(la.tar) for la in layers]},
        "history": history,
        **extra,
    }
    return json.dumps(cfg).encode()


def write_blob(layout: Path, data: bytes) -> str:
    digest = sha256(data)
    p = layout / "blobs" / "sha256" / digest.split(":")[1]
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return digest


def oci_layout(
    path: Path,
    images: list[tuple[list[Layer], str | None]],
    *,
    tamper: Callable[[Path, dict[str, Any]], None] | None = None,
    **config_extra: Any,
) -> Path:
    """An OCI image layout dir holding `images` (layers bottom first, ref name)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    manifests = []
    for layers, ref in images:
        cfg = config_bytes(layers, **config_extra)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": write_blob(path, cfg), "size": len(cfg)},
            "layers": [
                {
                    "mediaType": la.declared_type,
                    "digest": write_blob(path, la.blob),
                    "size": len(la.blob),
                }
                for la in layers
            ],
        }
        mbytes = json.dumps(manifest).encode()
        desc: dict[str, Any] = {
            "mediaType": OCI_MANIFEST,
            "digest": write_blob(path, mbytes),
            "size": len(mbytes),
        }
        if ref:
            desc["annotations"] = {"org.opencontainers.image.ref.name": ref}
        manifests.append(desc)
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    if tamper is not None:
        tamper(path, index)
    (path / "index.json").write_text(json.dumps(index))
    return path


def tar_dir(src: Path, dest: Path) -> Path:
    """Pack a layout dir into an archive (oci-archive)."""
    with tarfile.open(dest, "w") as tf:
        for p in sorted(src.rglob("*")):
            tf.add(p, arcname=str(p.relative_to(src)), recursive=False)
    return dest


def docker_legacy_archive(dest: Path, layers: list[Layer], repo_tags: list[str]) -> Path:
    """A docker save archive of the legacy generation: <id>/layer.tar (plain tars)."""
    cfg = config_bytes(layers)
    cfg_name = sha256(cfg).split(":")[1] + ".json"
    with tarfile.open(dest, "w") as tf:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

        add(cfg_name, cfg)
        paths = []
        for la in layers:
            lid = hashlib.sha256(la.tar).hexdigest()
            add(f"{lid}/VERSION", b"1.0")
            add(f"{lid}/json", json.dumps({"id": lid}).encode())
            add(f"{lid}/layer.tar", la.tar)
            paths.append(f"{lid}/layer.tar")
        manifest = [{"Config": cfg_name, "RepoTags": repo_tags, "Layers": paths}]
        add("manifest.json", json.dumps(manifest).encode())
    return dest
