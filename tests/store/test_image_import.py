"""Real images imported into the store, mounted, and compared with ``umoci unpack``.

The test images of tests/images.py (built by podman, exported by skopeo and podman
in every format and layer compression they write) go through ``unionfs image
import`` into a store; a container of the image, mounted writable, and the image
itself, mounted read-only, must show what umoci's unpack of the same image shows.
Then the store's bookkeeping is checked against what the tools say of the images:
shared layers stored once, disk use, ``image inspect`` and ``history`` against
podman's, and writes through a container landing in its upper layer only.

Everything goes through the command line (``python -m unionfs --root STORE ...``),
as a person would drive it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
import subprocess
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_unionfs
from tests.support.images import (
    APP_TAG,
    BASE_TAG,
    ImageSet,
    built_images,
    docker_current_archive,
    export,
    podman,
    podman_save,
    requires_image_tools,
    umoci_unpack,
)
from tests.support.kernel import TmpMounts, is_mountpoint
from tests.support.tree import ALL_FIELDS, Node, check_ino_consistency, compare, render, snapshot
from unionfs.store.store import Store

pytestmark = [pytest.mark.mount, requires_image_tools]

REPO = Path(__file__).resolve().parents[2]

#: What a union legitimately shows otherwise than umoci's plain unpacked tree:
#: - ``nlink`` of directories: a union reports 1 for a merged directory (as
#:   overlayfs does), a plain tree counts its subdirectories;
#: - ``size`` of directories: the backing filesystem's business, and in a union
#:   that of the topmost directory of the name;
#: - ``nlink`` of everything else: a name from a lower layer keeps the link count
#:   of its layer's inode, as overlayfs shows it without ``index=on``. In the app
#:   image ``/srv/data/one-again`` has 2 (layer 2 links it with ``one``; layer 4
#:   deletes ``one``) where umoci's tree has 1. Those counts are compared with the
#:   kernel's overlayfs over the same layer dirs instead, and hard-link groups
#:   (names sharing an inode) with umoci's.
#: Inode and device numbers are not compared (tests.tree.DEFAULT_FIELDS leaves them
#: out): the union numbers its own inodes; check_ino_consistency checks them.
UNION_DIFFERS = frozenset({"nlink", "size@dir"})


# --------------------------------------------------------------------------- driving


def unionfs(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python -m unionfs --root ROOT ARGS``; stdout and stderr together."""
    return run_unionfs(*args, root=root, check=check, merge_stderr=True)


def unionfs_json(root: Path, *args: str) -> Any:
    return json.loads(unionfs(root, *args).stdout)


def mount(root: Path, tmp_mounts: TmpMounts, what: str, *args: str) -> Path:
    """``unionfs mount WHAT MOUNTPOINT ARGS`` on a registered mountpoint."""
    mnt = tmp_mounts.mountpoint(re.sub(r"[^A-Za-z0-9_.-]", "_", what))
    unionfs(root, "mount", what, str(mnt), *args)
    assert is_mountpoint(mnt)
    return mnt


def umount(root: Path, mnt: Path) -> None:
    unionfs(root, "umount", str(mnt))
    assert not is_mountpoint(mnt)


def layout_layers(layout: Path) -> list[tuple[str, Path]]:
    """(diff_id, blob) of each layer of the only image of an OCI layout, bottom first."""
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    (desc,) = index["manifests"]
    manifest = json.loads((blobs / desc["digest"].removeprefix("sha256:")).read_text())
    config = json.loads((blobs / manifest["config"]["digest"].removeprefix("sha256:")).read_text())
    return [
        (diff_id, blobs / layer["digest"].removeprefix("sha256:"))
        for diff_id, layer in zip(config["rootfs"]["diff_ids"], manifest["layers"], strict=True)
    ]


def tar_file_bytes(blob: Path) -> int:
    """Bytes of the regular files a layer tar holds; a hard link's second name is a
    link entry, not a file, so every file counts once (as the store counts)."""
    with tarfile.open(blob, "r:*") as tar:
        return sum(member.size for member in tar if member.isreg())


def allocated_bytes(top: Path) -> int:
    """Bytes allocated to the regular files under `top`, each inode once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _, filenames in os.walk(top):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


# --------------------------------------------------------------------------- comparing


def without_root_mtime(snap: Mapping[str, Node]) -> dict[str, Node]:
    """`snap` with the root's mtime dropped. No layer tar lists the root, so its
    mtime says when it was made: umoci stamps the epoch, a container's root is its
    upper dir (made by ``create``), an image's is its top layer dir (made on import)."""
    out = dict(snap)
    out["."] = dataclasses.replace(out["."], mtime_ns=None)
    return out


def link_groups(snap: Mapping[str, Node]) -> set[frozenset[str]]:
    """The sets of non-directory names that share one inode."""
    groups: dict[tuple[int | None, int], set[str]] = {}
    for path, node in snap.items():
        if node.type not in ("dir", "error") and node.ino is not None:
            groups.setdefault((node.dev, node.ino), set()).add(path)
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def check_union(
    mnt: Path, reference: Mapping[str, Node], lowers: list[Path], tmp_mounts: TmpMounts
) -> None:
    """The union on `mnt` shows the tree umoci unpacked (`reference`), link counts as
    the kernel's overlayfs over `lowers` shows them, and consistent inode numbers."""
    ours = snapshot(mnt)
    diffs = compare(
        without_root_mtime(reference),
        without_root_mtime(ours),
        ignore=UNION_DIFFERS,
        names=("umoci", "unionfs"),
    )
    assert diffs == [], "\n".join(diffs) + "\n\nunionfs:\n" + render(ours)
    kernel = snapshot(tmp_mounts.overlay(lowers), content=False, xattrs=False)
    link_counts = compare(
        kernel, ours, fields={"nlink"}, ignore={"nlink@dir"}, names=("overlayfs", "unionfs")
    )
    assert link_counts == [], "\n".join(link_counts)
    assert check_ino_consistency(ours) == []
    assert link_groups(ours) == link_groups(reference)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    return built_images(tmp_path_factory)


@dataclass(frozen=True)
class Reference:
    """An image exported as an OCI layout with gzip layers, and umoci's unpack of it."""

    layout: Path
    tree: dict[str, Node]


def _reference(images: ImageSet, tmp_path_factory: pytest.TempPathFactory, base: bool) -> Reference:
    image, tag = (images.base, BASE_TAG) if base else (images.app, APP_TAG)
    work = tmp_path_factory.mktemp("base-reference" if base else "app-reference")
    layout = export(image, "oci", work / "layout", "gzip")
    return Reference(layout, snapshot(umoci_unpack(layout, tag, work / "bundle")))


@pytest.fixture(scope="module")
def app_ref(images: ImageSet, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    return _reference(images, tmp_path_factory, base=False)


@pytest.fixture(scope="module")
def base_ref(images: ImageSet, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    return _reference(images, tmp_path_factory, base=True)


#: How each source is written: (images, the app's gzip OCI layout, a new dir) -> path.
SOURCES: dict[str, Callable[[ImageSet, Path, Path], Path]] = {
    "oci-gzip": lambda images, layout, d: layout,
    "oci-zstd": lambda images, layout, d: export(images.app, "oci", d / "oci", "zstd"),
    "oci-none": lambda images, layout, d: export(images.app, "oci", d / "oci", "none"),
    "oci-archive-gzip": lambda images, layout, d: export(
        images.app, "oci-archive", d / "app.oci.tar", "gzip"
    ),
    "oci-archive-zstd": lambda images, layout, d: export(
        images.app, "oci-archive", d / "app.oci.tar", "zstd"
    ),
    # skopeo's docker-archive, as podman save writes it too: uncompressed layers
    "docker-archive": lambda images, layout, d: export(
        images.app, "docker-archive", d / "app.tar", "none"
    ),
    # the same, gzip-compressed as a whole (docker save | gzip)
    "docker-archive-gzip": lambda images, layout, d: export(
        images.app, "docker-archive", d / "app.tar.gz", "gzip"
    ),
    # docker >= 25: an OCI layout with uncompressed layers plus manifest.json
    "docker-current": lambda images, layout, d: docker_current_archive(layout, d / "saved.tar"),
}

#: The compression each source's layers arrive in, as the import reports it.
LAYER_COMPRESSION = {
    "oci-gzip": "gzip",
    "oci-zstd": "zstd",
    "oci-none": "none",
    "oci-archive-gzip": "gzip",
    "oci-archive-zstd": "zstd",
    "docker-archive": "none",
    "docker-archive-gzip": "none",
    "docker-current": "none",
}


@dataclass(frozen=True)
class ImportedStore:
    """A store into which one source of the app image was imported as ``app:1``."""

    source: str
    root: Path
    output: str


@pytest.fixture(scope="module", params=sorted(SOURCES))
def imported(
    request: pytest.FixtureRequest,
    images: ImageSet,
    app_ref: Reference,
    tmp_path_factory: pytest.TempPathFactory,
) -> ImportedStore:
    source: str = request.param
    work = tmp_path_factory.mktemp(f"import-{source}")
    path = SOURCES[source](images, app_ref.layout, work)
    root = work / "store"
    output = unionfs(root, "image", "import", str(path), "app:1").stdout
    return ImportedStore(source, root, output)


def fresh_store(tmp_path: Path, app_ref: Reference) -> Path:
    """A new store holding the app image as ``app:1``."""
    root = tmp_path / "store"
    unionfs(root, "image", "import", str(app_ref.layout), "app:1")
    return root


# --------------------------------------------------------------------------- 1. formats


def test_import_reports_each_layer(imported: ImportedStore, images: ImageSet) -> None:
    """Every layer is unpacked once, from the compression the source has."""
    wanted = LAYER_COMPRESSION[imported.source]
    lines = imported.output.splitlines()
    unpacked = [line for line in lines if re.fullmatch(r"layer \d/4 \w{12}: unpacked .*", line)]
    assert len(unpacked) == 4, imported.output
    assert all(line.endswith(f"({wanted})") for line in unpacked), imported.output
    assert f"Loaded image: app:1 ({images.app.id[:12]})" in lines


def test_container_matches_umoci(
    imported: ImportedStore, app_ref: Reference, tmp_mounts: TmpMounts
) -> None:
    """A new container of the imported image, mounted writable, shows umoci's tree."""
    name = f"c-{imported.source}"
    unionfs(imported.root, "create", "app:1", "--name", name)
    mnt = mount(imported.root, tmp_mounts, name)
    image = Store(imported.root).resolve_image("app:1")
    check_union(mnt, app_ref.tree, Store(imported.root).lowers(image.diff_ids), tmp_mounts)


def test_image_read_only_matches_umoci(
    imported: ImportedStore, app_ref: Reference, tmp_mounts: TmpMounts
) -> None:
    """The imported image, mounted read-only, shows umoci's tree."""
    mnt = mount(imported.root, tmp_mounts, "app:1", "--read-only")
    image = Store(imported.root).resolve_image("app:1")
    check_union(mnt, app_ref.tree, Store(imported.root).lowers(image.diff_ids), tmp_mounts)
    with pytest.raises(OSError, match="Read-only file system"):
        (mnt / "etc/motd").write_text("x")


# --------------------------------------------------------------------------- 2. sharing


def check_shared(root: Path, images: ImageSet) -> None:
    """base and app are in the store; base's 3 layers are stored once, used by both."""
    base = Store(root).resolve_image(BASE_TAG)
    app = Store(root).resolve_image(APP_TAG)
    assert base.id == images.base.config_digest
    assert app.id == images.app.config_digest
    assert app.diff_ids[:3] == base.diff_ids
    du = unionfs_json(root, "df", "--json")
    assert (du["images"], len(du["layers"])) == (2, 4)
    used_by = {la["diff_id"]: la["images"] for la in du["layers"]}
    assert used_by == {**dict.fromkeys(base.diff_ids, 2), app.diff_ids[3]: 1}
    assert sorted(p.name for p in (root / "layers").iterdir() if p.is_dir()) == sorted(
        d.removeprefix("sha256:") for d in app.diff_ids
    )


def reused_layers(output: str) -> list[str]:
    """The short diff_ids the import found already in the store, in order."""
    return re.findall(r"^layer \d/\d (\w{12}): already in the store", output, re.MULTILINE)


def test_second_image_reuses_base_layers(
    images: ImageSet, app_ref: Reference, tmp_path: Path
) -> None:
    """base from a docker-archive, then app from an OCI layout: the 3 shared layers
    are recognised by diff_id whatever the source's compression, and not unpacked
    again."""
    root = tmp_path / "store"
    base_tar = export(images.base, "docker-archive", tmp_path / "base.tar", "none")
    first = unionfs(root, "image", "import", str(base_tar)).stdout
    assert reused_layers(first) == []
    second = unionfs(root, "image", "import", str(app_ref.layout)).stdout
    base_ids = [d.removeprefix("sha256:")[:12] for d, _ in layout_layers(app_ref.layout)[:3]]
    assert reused_layers(second) == base_ids, second
    assert len(re.findall(r": unpacked ", second)) == 1, second
    check_shared(root, images)


def test_podman_save_imports_both_images(images: ImageSet, tmp_path: Path) -> None:
    """One ``podman save -m`` archive holding base and app, imported in one go."""
    root = tmp_path / "store"
    archive = podman_save([images.base, images.app], tmp_path / "both.tar")
    output = unionfs(root, "image", "import", str(archive)).stdout
    assert len(reused_layers(output)) == 3, output
    assert len(re.findall(r": unpacked ", output)) == 4, output
    assert f"Loaded image: {BASE_TAG} ({images.base.id[:12]})" in output
    assert f"Loaded image: {APP_TAG} ({images.app.id[:12]})" in output
    check_shared(root, images)


def test_base_image_hard_links(
    images: ImageSet, base_ref: Reference, tmp_path: Path, tmp_mounts: TmpMounts
) -> None:
    """The base image (where ``/srv/data/one`` and ``one-again`` are still one file),
    read-only, shows umoci's tree with the hard-link pair intact."""
    root = tmp_path / "store"
    unionfs(root, "image", "import", str(base_ref.layout))
    mnt = mount(root, tmp_mounts, BASE_TAG, "--read-only")
    lowers = Store(root).lowers(Store(root).resolve_image(BASE_TAG).diff_ids)
    check_union(mnt, base_ref.tree, lowers, tmp_mounts)
    assert frozenset({"srv/data/one", "srv/data/one-again"}) in link_groups(snapshot(mnt))


# --------------------------------------------------------------------------- 3. disk use


def test_ten_containers_share_the_layers(
    app_ref: Reference, tmp_path: Path, tmp_mounts: TmpMounts
) -> None:
    """Ten containers cost nothing on disk until one writes; without sharing each
    would cost one image."""
    root = fresh_store(tmp_path, app_ref)
    store = Store(root)
    # df counts bytes on disk: allocated blocks, each hard-linked file once
    layer_bytes = {
        d: allocated_bytes(store.layer_path(d)) for d, _ in layout_layers(app_ref.layout)
    }
    assert all(n > 0 for n in layer_bytes.values())
    image_size = sum(layer_bytes.values())

    du = unionfs_json(root, "df", "--json")
    assert {la["diff_id"]: la["size"] for la in du["layers"]} == layer_bytes
    assert (du["disk_size"], du["logical_size"]) == (image_size, image_size)

    names = [f"c{i}" for i in range(10)]
    for count, name in enumerate(names, start=1):
        unionfs(root, "create", "app:1", "--name", name)
        if count in (1, 10):
            du = unionfs_json(root, "df", "--json")
            assert du["containers"] == count
            assert du["disk_size"] == image_size
            assert du["logical_size"] == image_size * (1 + count)
    assert {la["containers"] for la in du["layers"]} == {10}

    mnt = mount(root, tmp_mounts, "c3")
    (mnt / "tmp/note").write_bytes(b"n" * 1000)
    umount(root, mnt)
    du = unionfs_json(root, "df", "--json")
    (c3,) = [c for c in store.containers() if c.name == "c3"]
    note = os.stat(store.container_upper(c3) / "tmp/note").st_blocks * 512
    assert note >= 1000
    assert du["upper_sizes"] == {**dict.fromkeys(names, 0), "c3": note}
    assert du["disk_size"] == image_size + note
    assert du["logical_size"] == image_size * 11 + note


# --------------------------------------------------------------------------- 4. inspect


def test_inspect_and_history_match_podman(
    images: ImageSet, app_ref: Reference, tmp_path: Path
) -> None:
    """``image inspect`` and ``history`` say what podman says of the image."""
    root = tmp_path / "store"
    unionfs(root, "image", "import", str(app_ref.layout))  # named as the layout names it
    (theirs,) = json.loads(podman(images.store_root, "inspect", APP_TAG))
    (ours,) = unionfs_json(root, "image", "inspect", APP_TAG)

    assert ours["Id"] == "sha256:" + theirs["Id"].removeprefix("sha256:")
    assert ours["Id"] == images.app.config_digest
    assert ours["RepoTags"] == [APP_TAG]
    config = ours["Config"]
    # what the Containerfiles set (ENV accumulates over FROM; buildah adds PATH)
    assert {"GREETING=hello", "APP=1"} <= set(config["Env"])
    assert config["Entrypoint"] == ["/bin/sh", "-c"]
    assert config["Cmd"] == ["cat /app/main"]
    assert config["WorkingDir"] == "/srv"
    assert config["Labels"]["org.opencontainers.image.title"] == "unionfs test base"
    for key in ("Env", "Entrypoint", "Cmd", "WorkingDir", "Labels"):
        assert config[key] == theirs["Config"][key], key
    assert ours["RootFS"]["Layers"] == theirs["RootFS"]["Layers"]
    assert ours["RootFS"]["Layers"] == [d for d, _ in layout_layers(app_ref.layout)]

    rows = unionfs_json(root, "history", "--json", APP_TAG)
    steps = theirs["History"]
    assert len(rows) == len(steps) == 11
    for row, step in zip(rows, steps, strict=True):
        assert row["created"] == step["created"]
        assert row["created_by"] == step["created_by"]
        assert row["comment"] == step.get("comment", "")
        assert row["empty_layer"] == step.get("empty_layer", False)
        assert (row["layer"] is None) == row["empty_layer"]
    assert [r["layer"] for r in rows if r["layer"]] == theirs["RootFS"]["Layers"]
    assert [r["layer_index"] for r in rows if r["layer"]] == [1, 2, 3, 4]
    # podman's own history (newest first): a size for exactly the steps with a layer
    podman_rows = json.loads(podman(images.store_root, "history", "--format", "json", APP_TAG))
    assert [p["CreatedBy"] for p in reversed(podman_rows)] == [r["created_by"] for r in rows]
    assert [p["size"] > 0 for p in reversed(podman_rows)] == [r["layer"] is not None for r in rows]
    layer_bytes = dict((d, tar_file_bytes(blob)) for d, blob in layout_layers(app_ref.layout))
    assert {r["layer"]: r["size"] for r in rows if r["layer"]} == layer_bytes


# --------------------------------------------------------------------------- 5. writes


def test_writes_land_in_the_upper_only(
    images: ImageSet, app_ref: Reference, tmp_path: Path, tmp_mounts: TmpMounts
) -> None:
    """Appending to a base file, deleting one and making a directory through a
    container change its upper layer and nothing in the shared layer dirs."""
    root = fresh_store(tmp_path, app_ref)
    unionfs(root, "create", "app:1", "--name", "box")
    store = Store(root)
    box = store.resolve_container("box")
    lowers = store.lowers(box.diff_ids)
    before = {layer: snapshot(layer) for layer in lowers}
    upper = store.container_upper(box)

    mnt = mount(root, tmp_mounts, "box")
    subprocess.run(
        ["sh", "-c", "echo added >> etc/motd && rm etc/conf.d/a.conf && mkdir newdir"],
        cwd=mnt,
        check=True,
    )
    umount(root, mnt)

    for layer in lowers:
        assert compare(before[layer], snapshot(layer), fields=ALL_FIELDS) == [], layer
    changed = snapshot(upper)
    assert sorted(changed) == [".", "etc", "etc/conf.d", "etc/conf.d/a.conf", "etc/motd", "newdir"]
    motd = changed["etc/motd"]
    reference_motd = app_ref.tree["etc/motd"]
    assert (upper / "etc/motd").read_text() == "unionfs test image\nadded\n"
    assert (motd.mode, motd.uid, motd.gid) == (
        reference_motd.mode,
        reference_motd.uid,
        reference_motd.gid,
    )
    assert motd.xattrs is not None
    # trusted.overlay.* is the union's own bookkeeping (the copy's origin, as overlayfs
    # records it); what the file carried comes along
    carried = {k: v for k, v in motd.xattrs.items() if not k.startswith("trusted.overlay.")}
    assert carried == ({"user.origin": b"base"} if images.xattr_in_context else {})
    whiteout = changed["etc/conf.d/a.conf"]
    assert (whiteout.type, whiteout.rdev) == ("chardev", (0, 0))
    assert changed["newdir"].type == "dir"

    # A second mount shows umoci's tree with exactly these changes: copy-up kept the
    # rest of etc/motd's metadata (xattrs included, the union's own ones hidden).
    mnt = mount(root, tmp_mounts, "box")
    assert (mnt / "etc/motd").read_text() == "unionfs test image\nadded\n"
    diffs = compare(
        without_root_mtime(app_ref.tree),
        without_root_mtime(snapshot(mnt)),
        ignore=UNION_DIFFERS,
        names=("umoci", "unionfs"),
    )
    assert {tuple(line.split(" ", 2)[:2]) for line in diffs} == {
        ("etc/motd:", "size"),
        ("etc/motd:", "sha256"),
        ("etc/motd:", "mtime_ns"),
        ("etc/conf.d:", "mtime_ns"),
        ("etc/conf.d/a.conf:", "only"),
        ("newdir:", "only"),
    }, "\n".join(diffs)
    assert "etc/conf.d/a.conf: only in umoci" in "\n".join(diffs)
