"""Real container images, built and exported by the real tools, for the tests.

podman builds them (its RUN steps run under runc), skopeo exports them from podman's
storage as docker-archive, OCI layout or oci-archive with gzip, zstd or no layer
compression, and umoci unpacks them as the reference merged view. Nothing comes
from a registry: the images start ``FROM scratch`` with Debian's static busybox.

Two images, the second built on the first, so they share their bottom layers:

``localhost/unionfs-test/base:1`` (3 layers, then metadata-only steps)
    1. ``COPY rootfs/ /``: ``/bin/busybox``, ``/bin/sh`` -> busybox, ``/etc/motd``
       carrying the xattr ``user.origin=base`` (COPY keeps user xattrs: the layer
       tar has a ``SCHILY.xattr.user.origin`` record).
    2. ``RUN``: busybox's applet symlinks in /bin; setuid ``/usr/bin/tool`` (4755)
       and a symlink to it; sticky ``/tmp`` (1777); setgid ``/srv/shared`` (2775);
       ``/srv/data`` owned by 1000:1000 holding a hard-link pair ``one``/``one-again``;
       files that the next layer deletes or replaces.
    3. ``RUN``: deletes ``/etc/gone`` and ``/etc/conf.d/b.conf`` (whiteouts) and
       replaces the directory ``/d`` (an opaque directory: ``/d/.wh..wh..opq``).
    Then ENV, LABEL, WORKDIR, ENTRYPOINT and CMD: history entries with
    ``empty_layer``.

``localhost/unionfs-test/app:1`` (``FROM`` base: its 3 layers plus 1)
    4. ``RUN``: adds ``/app/main`` and ``/etc/conf.d/c.conf``, deletes one name of
       the hard-link pair (``/srv/data/one``).

podman runs with a private storage (``--root``/``--runroot``/``--tmpdir`` and its
own storage.conf), never the machine's default one, with the overlay driver: it is
the driver whose layer diffs carry opaque directories (vfs writes a whiteout per
removed name instead). The overlay driver leaves a bind mount on its graph root
after each command; every command here removes it again. The run root is
``<store>/run``, or a short path under /run/unionfs-tests where that would pass
the 50 characters podman allows.

The built storage is kept in ``/var/cache/unionfs-tests/images/<key>`` (or
``$UNIONFS_TESTS_IMAGE_CACHE``; set it empty to build under pytest's tmp dir each
run), where the key hashes the Containerfiles, the build context and the tools'
versions: a later run with the same key reuses it without building.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest
import zstandard

from tests.support.kernel import MountError, mounts_under, unmount

BUSYBOX = Path("/bin/busybox")
IMAGE_TOOLS = ("podman", "skopeo", "runc", "umoci")
CACHE_ENV = "UNIONFS_TESTS_IMAGE_CACHE"
DEFAULT_CACHE = Path("/var/cache/unionfs-tests/images")
RUN_ROOTS = Path("/run/unionfs-tests")
STORAGE_DRIVER = "overlay"
FORMATS = ("docker-archive", "oci", "oci-archive")
COMPRESSIONS = ("gzip", "zstd", "none")

BASE_TAG = "localhost/unionfs-test/base:1"
APP_TAG = "localhost/unionfs-test/app:1"
BASE_LAYERS = 3
APP_LAYERS = 4

# crun fails on this kernel's cgroup setup; the default ulimits are above the
# kernel's limits here.
BUILD_OPTIONS = (
    "--runtime",
    "runc",
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=32768:32768",
    "--network",
    "none",
    "--pull=never",
    "--layers",
    "--format",
    "oci",
)

BASE_CONTAINERFILE = """\
FROM scratch
COPY rootfs/ /
RUN /bin/busybox --install -s /bin \\
 && mkdir -p /usr/bin /etc/conf.d /srv/data /d/sub /tmp \\
 && chmod 1777 /tmp \\
 && printf '#!/bin/sh\\necho tool\\n' > /usr/bin/tool \\
 && chmod 4755 /usr/bin/tool \\
 && ln -s tool /usr/bin/tool-alias \\
 && echo a=1 > /etc/conf.d/a.conf \\
 && echo b=1 > /etc/conf.d/b.conf \\
 && echo gone > /etc/gone \\
 && echo one > /srv/data/one \\
 && ln /srv/data/one /srv/data/one-again \\
 && chown -R 1000:1000 /srv/data \\
 && mkdir -m 2775 /srv/shared \\
 && echo old > /d/sub/old \\
 && echo keep > /d/keep
RUN rm /etc/gone /etc/conf.d/b.conf \\
 && rm -rf /d \\
 && mkdir /d \\
 && echo new > /d/new
ENV GREETING=hello
LABEL org.opencontainers.image.title="unionfs test base"
WORKDIR /srv
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo $GREETING"]
"""

APP_CONTAINERFILE = f"""\
FROM {BASE_TAG}
RUN mkdir /app \\
 && echo "print('hi')" > /app/main \\
 && echo c=1 > /etc/conf.d/c.conf \\
 && rm /srv/data/one
ENV APP=1
CMD ["cat /app/main"]
"""

# Bump when what is built, or how, changes in a way the key does not see.
_RECIPE_VERSION = "1"


class ImageToolError(RuntimeError):
    """podman, skopeo or umoci failed."""


def image_tools_problem() -> str | None:
    """Why the real-image tests cannot run here, or None if they can."""
    missing = [tool for tool in IMAGE_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"not installed: {', '.join(missing)}"
    if os.geteuid() != 0:
        return "podman's storage here is root's (the tests run rootful podman)"
    if not BUSYBOX.is_file():
        return f"{BUSYBOX} (Debian's busybox-static) is missing"
    return None


_PROBLEM = image_tools_problem()
requires_image_tools = pytest.mark.skipif(_PROBLEM is not None, reason=f"image tools: {_PROBLEM}")


def _run(args: Sequence[str | Path], env: dict[str, str] | None = None) -> str:
    cmd = [os.fspath(a) for a in args]
    proc = subprocess.run(
        cmd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if proc.returncode != 0:
        raise ImageToolError(
            f"{' '.join(cmd)}: exit {proc.returncode}:\n{proc.stderr.strip()[-4000:]}"
        )
    return proc.stdout


# --------------------------------------------------------------------------- storage


def _graph_root(store_root: Path) -> Path:
    return store_root / "graph"


def _run_root(store_root: Path) -> Path:
    """`store_root`/run, or a short path under /run/unionfs-tests where that is longer
    than the 50 characters podman accepts for a run root."""
    inside = store_root.resolve() / "run"
    if len(str(inside)) <= 50:
        return inside
    return RUN_ROOTS / hashlib.sha256(os.fsencode(inside)).hexdigest()[:16]


def _tool_env(store_root: Path) -> dict[str, str]:
    """The environment for podman and skopeo: our own storage.conf (so a machine's
    storage settings, such as a mount_program, never apply) and temp dir."""
    conf = store_root / "storage.conf"
    tmp = store_root / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    conf.write_text(
        "[storage]\n"
        f'driver = "{STORAGE_DRIVER}"\n'
        f'graphroot = "{_graph_root(store_root)}"\n'
        f'runroot = "{_run_root(store_root)}"\n'
    )
    return {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf), "TMPDIR": str(tmp)}


def release_mounts(store_root: Path) -> None:
    """Unmount what containers-storage left mounted under `store_root` (its overlay
    driver bind-mounts the graph root onto itself and keeps it)."""
    for info in mounts_under(store_root):
        with contextlib.suppress(MountError):
            unmount(info.mountpoint)


def storage_transport(store_root: Path, tag: str) -> str:
    """The containers-storage transport spec skopeo needs to read `tag`."""
    graph, run = _graph_root(store_root), _run_root(store_root)
    return f"containers-storage:[{STORAGE_DRIVER}@{graph}+{run}]{tag}"


def podman(store_root: Path, *args: str | Path) -> str:
    """Run podman on the private storage at `store_root`; returns its stdout."""
    env = _tool_env(store_root)
    try:
        return _run(
            [
                "podman",
                "--root",
                _graph_root(store_root),
                "--runroot",
                _run_root(store_root),
                "--tmpdir",
                store_root / "libpod-tmp",
                "--storage-driver",
                STORAGE_DRIVER,
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
                *args,
            ],
            env,
        )
    finally:
        release_mounts(store_root)


def skopeo(store_root: Path, *args: str | Path) -> str:
    """Run skopeo with the storage settings of `store_root`."""
    try:
        return _run(["skopeo", *args], _tool_env(store_root))
    finally:
        release_mounts(store_root)


def build_image(store_root: Path, context: Path, containerfile: str, tag: str) -> None:
    """``podman build`` the Containerfile text `containerfile` in `context` as `tag`,
    one layer per COPY/RUN step, into the private storage at `store_root`."""
    digest = hashlib.sha256(containerfile.encode()).hexdigest()[:16]
    path = store_root / "containerfiles" / f"{digest}.Containerfile"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(containerfile)
    podman(store_root, "build", *BUILD_OPTIONS, "-f", path, "-t", tag, context)


def image_id(store_root: Path, tag: str) -> str:
    """The image ID podman reports (hex, the sha256 of the config)."""
    return podman(store_root, "inspect", "--format", "{{.Id}}", tag).strip()


@dataclass(frozen=True)
class BuiltImage:
    """An image in a private podman storage."""

    store_root: Path
    tag: str
    id: str
    """The image ID as podman reports it: 64 hex digits."""
    layers: int

    @property
    def config_digest(self) -> str:
        return "sha256:" + self.id

    @property
    def transport(self) -> str:
        return storage_transport(self.store_root, self.tag)


def export(
    image: BuiltImage, fmt: str, dest: Path, compression: str, name: str | None = None
) -> Path:
    """Write `image` with skopeo as `fmt` (docker-archive, oci, oci-archive) to `dest`,
    named `name` there (default: its tag).

    `compression` (gzip, zstd, none) is that of the layers for oci and oci-archive.
    skopeo always writes docker-archive layers uncompressed, so for docker-archive
    "gzip" compresses the whole archive, as ``docker save | gzip`` does, and zstd is
    refused. An OCI layout dir that exists already gets the image added to it.
    Returns `dest`.
    """
    name = name or image.tag
    if fmt not in FORMATS or compression not in COMPRESSIONS:
        raise ValueError(f"unknown format or compression: {fmt}, {compression}")
    if fmt == "docker-archive":
        if compression == "zstd":
            raise ValueError("docker-archive layers are never zstd-compressed")
        plain = dest if compression == "none" else dest.with_name(dest.name + ".plain")
        skopeo(image.store_root, "copy", "-q", image.transport, f"docker-archive:{plain}:{name}")
        if compression == "gzip":
            gzip_file(plain, dest)
            plain.unlink()
        return dest
    options = {
        "gzip": ["--dest-compress-format", "gzip"],
        "zstd": ["--dest-compress-format", "zstd"],
        "none": ["--dest-decompress", "--dest-oci-accept-uncompressed-layers"],
    }[compression]
    skopeo(image.store_root, "copy", "-q", *options, image.transport, f"{fmt}:{dest}:{name}")
    return dest


def podman_save(images: Sequence[BuiltImage], dest: Path) -> Path:
    """``podman save -m``: one docker-archive holding several images, each layer
    once. Returns `dest`."""
    podman(
        images[0].store_root,
        "save",
        "-q",
        "--format",
        "docker-archive",
        "-m",
        "-o",
        dest,
        *(i.tag for i in images),
    )
    return dest


def gzip_file(src: Path, dest: Path) -> None:
    """gzip `src` into `dest`, as ``gzip -c``."""
    with open(src, "rb") as fin, gzip.open(dest, "wb", compresslevel=1) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def umoci_unpack(oci_layout: Path, tag: str, dest: Path) -> Path:
    """``umoci unpack`` (as root: owners kept) of `tag` in `oci_layout` into `dest`;
    returns the rootfs. umoci here reads gzip and uncompressed layers, not zstd."""
    _run(["umoci", "unpack", "--image", f"{oci_layout}:{tag}", dest])
    return dest / "rootfs"


# --------------------------------------------------------------------------- docker 25


OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
_OCI_LAYOUT_CONTENT = b'{"imageLayoutVersion": "1.0.0"}'


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _docker_names(reference: str) -> tuple[str, str, str]:
    """(familiar name, tag, full name) of a reference, as docker spells them:
    ``busybox`` -> (``busybox``, ``latest``, ``docker.io/library/busybox:latest``)."""
    name, tag = reference, "latest"
    slash, colon = reference.rfind("/"), reference.rfind(":")
    if colon > slash:
        name, tag = reference[:colon], reference[colon + 1 :]
    first = name.split("/", 1)[0]
    if "/" in name and ("." in first or ":" in first or first == "localhost"):
        full = name
    elif "/" in name:
        full = "docker.io/" + name
    else:
        full = "docker.io/library/" + name
    familiar = full.removeprefix("docker.io/library/").removeprefix("docker.io/")
    return familiar, tag, f"{full}:{tag}"


@contextlib.contextmanager
def _decompressed(path: Path) -> Iterator[BinaryIO]:
    with open(path, "rb") as f:
        magic = f.read(4)
        f.seek(0)
        if magic.startswith(b"\x1f\x8b"):
            with gzip.GzipFile(fileobj=f) as g:
                yield cast(BinaryIO, g)
        elif magic == b"\x28\xb5\x2f\xfd":
            with zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True) as z:
                yield z
        else:
            yield f


def docker_current_archive(oci_layout_dir: Path, dest_tar: Path) -> Path:
    """Write what ``docker save`` of docker 25 and later writes, from an OCI layout.

    That is an OCI image layout whose layers are uncompressed (blob digest = diff_id,
    media type ``application/vnd.oci.image.layer.v1.tar``) and whose index entries
    carry ``io.containerd.image.name`` (full name) and
    ``org.opencontainers.image.ref.name`` (the tag) and the platform, plus the
    legacy ``manifest.json`` (``Config``/``RepoTags``/``Layers`` as
    ``blobs/sha256/<hex>`` paths) and ``repositories``, all in one plain tar in
    lexical order (moby image/tarexport/save.go). Left out: the per-layer v1 JSON
    blobs docker also writes, which nothing references.

    Every top-level image of the layout's index.json is saved, named by its
    ``org.opencontainers.image.ref.name`` (a full reference). Returns `dest_tar`.
    """
    blobs = oci_layout_dir / "blobs" / "sha256"
    out_blobs: dict[str, Path | bytes] = {}
    stage = dest_tar.with_name(dest_tar.name + ".d")
    stage.mkdir()
    index_manifests: list[dict[str, Any]] = []
    docker_manifest: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    index = json.loads((oci_layout_dir / "index.json").read_bytes())
    try:
        for desc in index["manifests"]:
            manifest = json.loads((blobs / desc["digest"].removeprefix("sha256:")).read_bytes())
            config_hex = manifest["config"]["digest"].removeprefix("sha256:")
            config = (blobs / config_hex).read_bytes()
            config_doc = json.loads(config)
            out_blobs[config_hex] = config
            layer_descs = []
            for layer, diff_id in zip(
                manifest["layers"], config_doc["rootfs"]["diff_ids"], strict=True
            ):
                diff_hex = diff_id.removeprefix("sha256:")
                plain = stage / diff_hex
                if not plain.exists():
                    src = blobs / layer["digest"].removeprefix("sha256:")
                    digest = hashlib.sha256()
                    with _decompressed(src) as fin, open(plain, "wb") as fout:
                        while chunk := fin.read(1 << 20):
                            digest.update(chunk)
                            fout.write(chunk)
                    if digest.hexdigest() != diff_hex:
                        raise ValueError(f"layer {layer['digest']} does not unpack to {diff_id}")
                out_blobs[diff_hex] = plain
                layer_descs.append(
                    {"mediaType": OCI_LAYER, "digest": diff_id, "size": plain.stat().st_size}
                )
            oci_manifest = _compact(
                {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {
                        "mediaType": "application/vnd.oci.image.config.v1+json",
                        "digest": "sha256:" + config_hex,
                        "size": len(config),
                    },
                    "layers": layer_descs,
                }
            )
            manifest_hex = hashlib.sha256(oci_manifest).hexdigest()
            out_blobs[manifest_hex] = oci_manifest
            familiar, tag, full = _docker_names(
                desc["annotations"]["org.opencontainers.image.ref.name"]
            )
            index_manifests.append(
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": "sha256:" + manifest_hex,
                    "size": len(oci_manifest),
                    "annotations": {
                        "io.containerd.image.name": full,
                        "org.opencontainers.image.ref.name": tag,
                    },
                    "platform": {
                        "architecture": config_doc["architecture"],
                        "os": config_doc["os"],
                    },
                }
            )
            docker_manifest.append(
                {
                    "Config": f"blobs/sha256/{config_hex}",
                    "RepoTags": [f"{familiar}:{tag}"],
                    "Layers": [f"blobs/sha256/{d['digest'][7:]}" for d in layer_descs],
                }
            )
            repositories.setdefault(familiar, {})[tag] = layer_descs[-1]["digest"][7:]
        new_index = _compact(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "manifests": index_manifests,
            }
        )
        with tarfile.open(dest_tar, "w", format=tarfile.PAX_FORMAT) as tar:
            for name in ("blobs", "blobs/sha256"):
                info = tarfile.TarInfo(name)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            for blob_hex in sorted(out_blobs):
                content = out_blobs[blob_hex]
                _add_file(tar, f"blobs/sha256/{blob_hex}", content)
            _add_file(tar, "index.json", new_index)
            _add_file(tar, "manifest.json", json.dumps(docker_manifest).encode() + b"\n")
            _add_file(tar, "oci-layout", _OCI_LAYOUT_CONTENT)
            _add_file(tar, "repositories", json.dumps(repositories).encode() + b"\n")
    finally:
        shutil.rmtree(stage)
    return dest_tar


def _add_file(tar: tarfile.TarFile, name: str, content: Path | bytes) -> None:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    if isinstance(content, bytes):
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    else:
        info.size = content.stat().st_size
        with open(content, "rb") as f:
            tar.addfile(info, f)


# --------------------------------------------------------------------------- the set


@dataclass(frozen=True)
class ImageSet:
    """The two test images in their storage."""

    store_root: Path
    base: BuiltImage
    app: BuiltImage
    xattr_in_context: bool
    """Whether the build context's /etc/motd carried user.origin (the filesystem
    may refuse user xattrs); when False the image has no xattr either."""
    built_in_seconds: float | None
    """How long building took, or None when the images came from the cache."""


def _make_context(context: Path) -> bool:
    """The build context: rootfs/ with busybox, sh and /etc/motd (with an xattr).
    Returns whether the xattr could be set."""
    rootfs = context / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "etc").mkdir()
    shutil.copyfile(BUSYBOX, rootfs / "bin" / "busybox")
    (rootfs / "bin" / "busybox").chmod(0o755)
    (rootfs / "bin" / "sh").symlink_to("busybox")
    motd = rootfs / "etc" / "motd"
    motd.write_text("unionfs test image\n")
    try:
        os.setxattr(motd, "user.origin", b"base")
    except OSError:
        return False
    return True


def _cache_key() -> str:
    versions = [_run([tool, "--version"]).strip() for tool in ("podman", "skopeo", "runc")]
    digest = hashlib.sha256()
    for part in (
        _RECIPE_VERSION,
        STORAGE_DRIVER,
        BASE_CONTAINERFILE,
        APP_CONTAINERFILE,
        " ".join(BUILD_OPTIONS),
        *versions,
    ):
        digest.update(part.encode() + b"\0")
    with open(BUSYBOX, "rb") as f:
        digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:24]


def _cache_dir() -> Path | None:
    value = os.environ.get(CACHE_ENV)
    if value == "":
        return None
    root = Path(value) if value else DEFAULT_CACHE
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return root if os.access(root, os.W_OK) else None


def _build_set(store_root: Path) -> dict[str, Any]:
    """Build both images into `store_root`; returns what the marker file records."""
    start = time.monotonic()
    context = store_root / "context"
    xattr = _make_context(context)
    build_image(store_root, context, BASE_CONTAINERFILE, BASE_TAG)
    build_image(store_root, context, APP_CONTAINERFILE, APP_TAG)
    return {
        "base": image_id(store_root, BASE_TAG),
        "app": image_id(store_root, APP_TAG),
        "xattr_in_context": xattr,
        "built_in_seconds": time.monotonic() - start,
    }


def _image_set(store_root: Path, record: dict[str, Any], cached: bool) -> ImageSet:
    return ImageSet(
        store_root=store_root,
        base=BuiltImage(store_root, BASE_TAG, record["base"], BASE_LAYERS),
        app=BuiltImage(store_root, APP_TAG, record["app"], APP_LAYERS),
        xattr_in_context=bool(record["xattr_in_context"]),
        built_in_seconds=None if cached else float(record["built_in_seconds"]),
    )


def _from_cache(cache: Path) -> ImageSet:
    key = _cache_key()
    store_root = cache / key
    marker = store_root / "images.json"
    with open(cache / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            record = json.loads(marker.read_text())
            try:
                ids = (image_id(store_root, BASE_TAG), image_id(store_root, APP_TAG))
            except ImageToolError:
                ids = ("", "")
            if ids == (record["base"], record["app"]):
                return _image_set(store_root, record, cached=True)
            marker.unlink()
        if store_root.exists():
            release_mounts(store_root)
            shutil.rmtree(store_root)
        store_root.mkdir()
        record = _build_set(store_root)
        marker.write_text(json.dumps(record))
        return _image_set(store_root, record, cached=False)


_SETS: dict[Path, ImageSet] = {}


def built_images(tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    """The test images, built once per test run (or taken from the cache).

    Call it from a session-scoped fixture; repeated calls return the same set.
    Where the image tools are missing, the calling test is skipped with the reason.
    """
    problem = image_tools_problem()
    if problem is not None:
        pytest.skip(problem)
    base = tmp_path_factory.getbasetemp()
    if base not in _SETS:
        cache = _cache_dir()
        if cache is not None:
            _SETS[base] = _from_cache(cache)
        else:
            store_root = tmp_path_factory.mktemp("image-storage")
            _SETS[base] = _image_set(store_root, _build_set(store_root), cached=False)
    return _SETS[base]
