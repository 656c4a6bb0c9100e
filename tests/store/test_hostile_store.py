"""The store against hostile and careless input: deep trees written by anyone,
leftovers that cannot be removed, names with a trailing newline, JSON nested
too deeply, layers bigger than the free space, a store root that is a file.
Each case is built here and kept small; each must end in one error line or
in the right result, and never leave the store unusable."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import oci
from tests.support.cli import run_unionfs
from tests.support.oci import Layer, directory, file
from unionfs.errors import UnionfsError
from unionfs.image.refs import is_digest, parse_reference, source_reference
from unionfs.image.registry.reference import parse_registry_reference
from unionfs.store.files import rmtree, tree_size
from unionfs.store.store import Store

DEPTH = 1200
"""More nested directories than Python's default recursion limit."""


def unionfs(*args: str, root: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_unionfs(*args, root=root, check=check)


def one_error_line(proc: subprocess.CompletedProcess[str], text: str) -> None:
    assert proc.returncode == 1, proc
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("unionfs: error: "), proc.stderr
    assert text in lines[0], lines[0]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A store removed after the test by our own removal (pytest's recursive
    one fails on the deep trees made here)."""
    s = Store(tmp_path / "store")
    yield s
    rmtree(s.root)


def deep_layer(name: str, depth: int = DEPTH) -> Layer:
    dirs = [directory("/".join([name] * i)) for i in range(1, depth + 1)]
    return Layer(oci.tar_bytes([*dirs, file("/".join([name] * depth) + "/f", "x")]))


def make_deep(top: Path, name: str, depth: int = DEPTH) -> None:
    """`depth` nested directories `name` under `top`, as ``mkdir -p`` in a
    container makes them (each relative to the last: no path is ever long)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = sub
        os.close(os.open("file", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)


def deep_json(text: str) -> Any:
    """json.loads of a document nested deeper than the default recursion limit."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(4 * DEPTH + limit)
    try:
        return json.loads(text)
    finally:
        sys.setrecursionlimit(limit)


def tmp_entries(store: Store) -> list[str]:
    return sorted(p.name for p in store.tmp.iterdir()) if store.tmp.exists() else []


# --------------------------------------------------------------------------- deep trees


def test_deep_trees_through_every_command(store: Store, tmp_path: Path) -> None:
    layout = oci.oci_layout(tmp_path / "layout", [([deep_layer("d")], "deep:1")])
    root = store.root
    assert "Loaded image: deep:1" in unionfs("image", "import", str(layout), root=root).stdout
    unionfs("create", "--name", "c1", "deep:1", root=root)
    (c,) = store.containers()
    make_deep(store.container_upper(c), "e")

    diff = unionfs("diff", "c1", root=root).stdout.splitlines()
    assert len(diff) == DEPTH + 1 and diff[0] == "A /e"
    assert diff[-1] == "A /" + "/".join(["e"] * DEPTH) + "/file"

    for source in ("deep:1", "c1"):
        tree = unionfs("tree", "--json", source, root=root)
        node = deep_json(tree.stdout)["tree"]
        depth = 0
        while node["children"]:
            node = node["children"][0]
            depth += 1
        assert depth == DEPTH + 1  # the directories and the file in the last one
    assert "[1]" in unionfs("tree", "deep:1", root=root).stdout
    explained = unionfs("explain", "c1", "/" + "/".join(["d"] * DEPTH) + "/f", root=root)
    assert "visible" in explained.stdout

    unionfs("commit", "c1", "deep:2", root=root)
    tree2 = deep_json(unionfs("tree", "--json", "deep:2", root=root).stdout)["tree"]
    assert [ch["name"] for ch in tree2["children"]] == ["d", "e"]

    assert json.loads(unionfs("df", "--json", root=root).stdout)["containers"] == 1
    unionfs("ps", root=root)
    unionfs("rm", "c1", root=root)
    unionfs("rmi", "deep:1", root=root)
    unionfs("rmi", "deep:2", root=root)
    assert store.images() == [] and store.containers() == [] and store.layer_ids() == []
    assert tmp_entries(store) == []


def test_deep_leftovers_do_not_block_the_next_command(store: Store, tmp_path: Path) -> None:
    """A leftover of an interrupted command with a deep tree in it is removed
    by the next command, as any other."""
    layout = oci.oci_layout(tmp_path / "layout", [([deep_layer("x", 50)], "small:1")])
    store.import_path(layout)
    leftover = store.tmp / "deleted-0123456789abcdef"
    leftover.mkdir()
    make_deep(leftover, "e")
    unionfs("tag", "small:1", "other:1", root=store.root)
    assert tmp_entries(store) == []


def test_a_leftover_that_cannot_be_removed_is_reported_once(store: Store, tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (a mount point stands in for what cannot be removed)")
    layout = oci.oci_layout(tmp_path / "layout", [([deep_layer("x", 3)], "small:1")])
    store.import_path(layout)
    mnt = store.tmp / "deleted-feedfacefeedface" / "mnt"
    mnt.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "leftover", str(mnt)], check=True)
    try:
        (mnt / "keep").write_text("not the store's\n")
        first = unionfs("tag", "small:1", "a:1", root=store.root)
        assert first.stderr.count("cannot remove") == 1, first.stderr
        assert tmp_entries(store) == ["stuck-deleted-feedfacefeedface"]
        stuck = store.tmp / "stuck-deleted-feedfacefeedface" / "mnt" / "keep"
        assert stuck.read_text() == "not the store's\n"  # a mount is never emptied
        second = unionfs("tag", "small:1", "b:1", root=store.root)
        assert second.stderr == ""
    finally:
        subprocess.run(["umount", str(store.tmp / "stuck-deleted-feedfacefeedface" / "mnt")],
                       check=False)  # fmt: skip
        subprocess.run(["umount", str(mnt)], check=False, stderr=subprocess.DEVNULL)
    unionfs("tag", "small:1", "c:1", root=store.root)
    assert tmp_entries(store) == []


def test_tree_size_counts_blocks_at_any_depth(tmp_path: Path) -> None:
    top = tmp_path / "t"
    top.mkdir()
    make_deep(top, "e", 2500)  # deeper than PATH_MAX allows a path to name
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(2500):
            sub = os.open("e", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = sub
        with open(os.open("data", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
            f.write(b"y" * 10_000)
            f.truncate(1 << 30)  # 1 GiB long, 10 kB on disk
    finally:
        os.close(fd)
    size = tree_size(top)
    assert 10_000 <= size < 100_000
    rmtree(top)
    assert not top.exists()


def test_ps_and_df_count_bytes_on_disk(store: Store, tmp_path: Path) -> None:
    sparse = Layer(oci.tar_bytes([file("small", "x" * 5000)]))
    layout = oci.oci_layout(tmp_path / "layout", [([sparse], "img:1")])
    store.import_path(layout)
    unionfs("create", "--name", "c1", "img:1", root=store.root)
    (c,) = store.containers()
    with open(store.container_upper(c) / "big", "wb") as f:
        f.truncate(1 << 30)
    ps = json.loads(unionfs("ps", "--json", root=store.root).stdout)
    assert ps[0]["upper_size"] < 1 << 20
    df = json.loads(unionfs("df", "--json", root=store.root).stdout)
    assert df["disk_size"] < 1 << 20
    assert all(la["size"] < 1 << 20 for la in df["layers"])


# --------------------------------------------------------------------------- free space


def test_a_layer_bigger_than_the_free_space_is_refused(store: Store, tmp_path: Path) -> None:
    big = Layer(oci.tar_bytes([file("zeros", bytes(32 << 20))]))
    layout = oci.oci_layout(tmp_path / "layout", [([big], "big:1")])
    store.root.mkdir()
    st = os.statvfs(store.root)
    free = st.f_bavail * st.f_frsize
    env_reserve = str(free - (8 << 20))  # 8 MiB to spare: 32 MiB cannot fit
    proc = subprocess.run(
        [*run_unionfs_cmd(store.root), "image", "import", str(layout)],
        env={**os.environ, "UNIONFS_MIN_FREE": env_reserve},
        capture_output=True,
        text=True,
        check=False,
    )
    one_error_line(proc, "free on the store's filesystem")
    assert store.images() == [] and store.layer_ids() == []
    assert tmp_entries(store) == []
    assert sorted(p.name for p in store.layers_dir.iterdir()) == []
    bad = subprocess.run(
        [*run_unionfs_cmd(store.root), "image", "import", str(layout)],
        env={**os.environ, "UNIONFS_MIN_FREE": "lots"},
        capture_output=True,
        text=True,
        check=False,
    )
    one_error_line(bad, "UNIONFS_MIN_FREE='lots': not a size")


def run_unionfs_cmd(root: Path) -> list[str]:
    return [sys.executable, "-m", "unionfs", "--root", str(root)]


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize("text", ["name\n", "name:tag\n", "name\n:tag", "localhost:5000/a\n"])
def test_a_name_is_checked_whole(text: str) -> None:
    with pytest.raises(UnionfsError):
        parse_reference(text)
    assert source_reference(text) is None


@pytest.mark.parametrize("text", ["localhost:5000/a:latest\n", "a.example\n/b:1", "alpine:3\n"])
def test_a_registry_reference_is_checked_whole(text: str) -> None:
    with pytest.raises(UnionfsError):
        parse_registry_reference(text)


def test_a_digest_is_checked_whole() -> None:
    good = "sha256:" + "a" * 64
    assert is_digest(good)
    assert not is_digest(good + "\n")


def test_tag_with_a_newline_is_refused(store: Store, tmp_path: Path) -> None:
    layout = oci.oci_layout(tmp_path / "layout", [([deep_layer("x", 2)], "one:1")])
    store.import_path(layout)
    one_error_line(unionfs("tag", "one:1", "two\n", root=store.root, check=False), "invalid")
    assert [str(r) for r in store.tags()] == ["one:1"]


def test_repo_tag_with_a_newline_in_an_archive_is_not_a_name(store: Store, tmp_path: Path) -> None:
    archive = oci.docker_legacy_archive(
        tmp_path / "a.tar", [deep_layer("x", 2)], ["evil:latest\n", "good:1"]
    )
    store.import_path(archive)
    assert [str(r) for r in store.tags()] == ["good:1"]
    assert "\n" not in "".join(unionfs("images", root=store.root).stdout.splitlines())


def test_layer_digest_with_a_newline_is_refused(store: Store, tmp_path: Path) -> None:
    def add_newline(path: Path, index: dict[str, object]) -> None:
        manifests = index["manifests"]
        assert isinstance(manifests, list)
        blob = path / "blobs/sha256" / manifests[0]["digest"].split(":")[1]
        manifest = json.loads(blob.read_bytes())
        manifest["layers"][0]["digest"] += "\n"
        data = json.dumps(manifest).encode()
        manifests[0]["digest"] = oci.write_blob(path, data)
        manifests[0]["size"] = len(data)

    layout = oci.oci_layout(
        tmp_path / "layout", [([deep_layer("x", 2)], "nl:1")], tamper=add_newline
    )
    proc = unionfs("image", "import", str(layout), root=store.root, check=False)
    one_error_line(proc, "digest")
    assert store.images() == [] and store.layer_ids() == []


def test_config_diff_id_with_a_newline_is_refused(store: Store, tmp_path: Path) -> None:
    layer = deep_layer("x", 2)
    layout = oci.oci_layout(
        tmp_path / "layout",
        [([layer], "nl:1")],
        rootfs={"type": "layers", "diff_ids": [oci.sha256(layer.tar) + "\n"]},
    )
    proc = unionfs("image", "import", str(layout), root=store.root, check=False)
    one_error_line(proc, "")
    assert store.images() == [] and store.layer_ids() == []
    assert not list(store.layers_dir.glob("*.lock"))


# --------------------------------------------------------------------------- JSON


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("which", ["index.json", "manifest", "config"])
def test_deeply_nested_json_is_one_error_line(store: Store, tmp_path: Path, which: str) -> None:
    bomb = nested(200_000)

    def tamper(path: Path, index: dict[str, object]) -> None:
        """Put the bomb in a blob under its own digest, so the parser is reached."""
        manifests = index["manifests"]
        assert isinstance(manifests, list)
        if which == "index.json":
            return  # written below
        mblob = path / "blobs/sha256" / manifests[0]["digest"].split(":")[1]
        if which == "manifest":
            data = ('{"schemaVersion": 2, "x": ' + bomb + "}").encode()
        else:
            manifest = json.loads(mblob.read_bytes())
            config = ('{"rootfs": ' + bomb + "}").encode()
            manifest["config"]["digest"] = oci.write_blob(path, config)
            manifest["config"]["size"] = len(config)
            data = json.dumps(manifest).encode()
        manifests[0]["digest"] = oci.write_blob(path, data)
        manifests[0]["size"] = len(data)

    layout = oci.oci_layout(tmp_path / "layout", [([deep_layer("x", 2)], "j:1")], tamper=tamper)
    if which == "index.json":
        (layout / "index.json").write_text('{"manifests": ' + bomb + "}")
    proc = unionfs("image", "import", str(layout), root=store.root, check=False)
    assert "Traceback" not in proc.stderr
    one_error_line(proc, "")


def test_deeply_nested_manifest_json_in_a_docker_archive(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "a.tar"
    data = nested(200_000).encode()
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    proc = unionfs("image", "import", str(path), root=store.root, check=False)
    one_error_line(proc, "manifest.json")


# --------------------------------------------------------------------------- the root


def test_a_store_root_that_is_a_file_fails_every_command(tmp_path: Path) -> None:
    root = tmp_path / "file"
    root.write_text("not a store\n")
    for args in (["images"], ["ps"], ["df"], ["tag", "a", "b"], ["image", "import", str(root)]):
        proc = unionfs(*args, root=root, check=False)
        one_error_line(proc, "not a directory")
    assert root.read_text() == "not a store\n"


def test_imports_leave_no_lock_files(store: Store, tmp_path: Path) -> None:
    good = oci.oci_layout(tmp_path / "good", [([deep_layer("x", 2)], "g:1")])
    store.import_path(good)

    def corrupt(path: Path, index: dict[str, object]) -> None:
        manifests = index["manifests"]
        assert isinstance(manifests, list)
        manifest = json.loads(
            (path / "blobs/sha256" / manifests[0]["digest"].split(":")[1]).read_bytes()
        )
        blob = path / "blobs/sha256" / manifest["layers"][0]["digest"].split(":")[1]
        data = bytearray(blob.read_bytes())
        data[-20] ^= 0xFF
        blob.write_bytes(bytes(data))

    bad = oci.oci_layout(tmp_path / "bad", [([deep_layer("y", 2)], "b:1")], tamper=corrupt)
    proc = unionfs("image", "import", str(bad), root=store.root, check=False)
    assert proc.returncode == 1
    assert sorted(p.name for p in store.layers_dir.iterdir() if not p.is_dir()) == []
