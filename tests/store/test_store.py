"""The image and container store: import, share, tag, remove, survive interruptions.

Images here are OCI layouts and docker archives written by tests/oci.py, so
each case controls the bytes; real tools' images are tested in test_images.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.support import oci
from tests.support.cli import run_unionfs
from tests.support.oci import Layer, directory, file, hardlink, symlink, whiteout
from unionfs.errors import UnionfsError
from unionfs.image.refs import Reference, parse_reference
from unionfs.store.store import Store

REPO = Path(__file__).resolve().parents[2]

BASE = Layer(
    oci.tar_bytes(
        [
            directory("bin"),
            file("bin/tool", "#!/bin/sh\necho tool\n", 0o4755),
            symlink("bin/alias", "tool"),
            directory("etc"),
            file("etc/motd", "base motd\n"),
            file("etc/old.conf", "old\n"),
            directory("srv", uid=1000, gid=1000),
            file("srv/one", "1\n"),
            hardlink("srv/one-again", "srv/one"),
            directory("tmp", 0o1777),
        ]
    )
)
UPDATE = Layer(
    oci.tar_bytes(
        [
            directory("etc"),
            file("etc/motd", "updated motd\n"),
            whiteout("etc/.wh.old.conf"),
        ]
    ),
    compression="zstd",
)
APP = Layer(oci.tar_bytes([directory("app"), file("app/main", "print('hi')\n")]))


def unionfs(*args: str, root: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_unionfs(*args, root=root, check=check)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def layout(tmp_path: Path) -> Path:
    """Two images sharing their base layer: base (1 layer) and app (3 layers)."""
    return oci.oci_layout(tmp_path / "layout", [([BASE], "base"), ([BASE, UPDATE, APP], "app")])


def staging_entries(store: Store) -> list[str]:
    return sorted(p.name for p in store.tmp.iterdir()) if store.tmp.exists() else []


def test_import_layout_shares_the_base_layer(store: Store, layout: Path) -> None:
    results = store.import_path(layout)
    assert len(results) == 2
    images = {len(i.layers): i for i in store.images()}
    assert set(images) == {1, 3}
    assert images[1].diff_ids == images[3].diff_ids[:1]
    # three distinct layers, the base unpacked once
    assert len(store.layer_ids()) == 3
    base_dir = store.layer_path(oci.sha256(BASE.tar))
    assert (base_dir / "bin/tool").read_text() == "#!/bin/sh\necho tool\n"
    assert (base_dir / "bin/tool").stat().st_mode & 0o7777 == 0o4755
    assert os.readlink(base_dir / "bin/alias") == "tool"
    assert (base_dir / "srv/one").stat().st_ino == (base_dir / "srv/one-again").stat().st_ino
    # the image ID is the config digest; the layout's bare tags name the image
    # localhost/<layout dir>:<tag>, as podman names an image of an OCI layout
    for image in store.images():
        assert store.read_blob(image.id) == oci.config_bytes(
            [BASE] if len(image.layers) == 1 else [BASE, UPDATE, APP]
        )
        tag = "base" if len(image.layers) == 1 else "app"
        assert store.tags_of(image.id) == [Reference("localhost/layout", tag)]
    assert staging_entries(store) == []


def test_import_again_reuses_every_layer(store: Store, layout: Path, tmp_path: Path) -> None:
    first = unionfs("image", "import", str(layout), root=store.root)
    assert first.stdout.count("unpacked") == 3, first.stdout
    again = unionfs("image", "import", str(layout), root=store.root)
    assert "unpacked" not in again.stdout
    assert again.stdout.count("already in the store") == 4, again.stdout
    assert len(store.images()) == 2
    assert len(store.layer_ids()) == 3


def test_named_import_and_tags(store: Store, tmp_path: Path) -> None:
    single = oci.oci_layout(tmp_path / "one", [([BASE, UPDATE], "latest")])
    out = unionfs("image", "import", str(single), "demo/app:1.0", root=store.root).stdout
    assert "Loaded image: demo/app:1.0" in out
    image = store.resolve_image("demo/app:1.0")
    assert store.resolve_image(image.id[7:19]) == image
    assert store.resolve_image(image.id) == image
    unionfs("tag", "demo/app:1.0", "demo/app", root=store.root)
    assert store.resolve_image("demo/app") == image  # :latest by default
    listing = unionfs("images", root=store.root).stdout.splitlines()
    assert listing[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert {tuple(line.split()[:3]) for line in listing[1:]} == {
        ("demo/app", "1.0", image.id[7:19]),
        ("demo/app", "latest", image.id[7:19]),
    }
    as_json = json.loads(unionfs("images", "--json", root=store.root).stdout)
    assert {(r["repository"], r["tag"]) for r in as_json} == {
        ("demo/app", "1.0"),
        ("demo/app", "latest"),
    }
    # removing one of two tags only untags
    out = unionfs("rmi", "demo/app:1.0", root=store.root).stdout
    assert out.strip() == "Untagged: demo/app:1.0"
    assert len(store.layer_ids()) == 2
    out = unionfs("rmi", "demo/app", root=store.root).stdout
    assert "Deleted: " + image.id in out
    assert store.images() == [] and store.layer_ids() == []
    assert list(store.blobs.iterdir()) == []


def test_inspect_and_history(store: Store, tmp_path: Path) -> None:
    history: list[dict[str, str | bool]] = [
        {"created": "2024-05-01T10:00:00Z", "created_by": "ADD base", "comment": "c1"},
        {"created": "2024-05-01T10:00:01Z", "created_by": "ENV A=1", "empty_layer": True},
        {"created": "2024-05-01T10:00:02Z", "created_by": "RUN update"},
        {"created": "2024-05-01T10:00:03Z", "created_by": "COPY app", "author": "me"},
    ]
    single = oci.oci_layout(
        tmp_path / "one",
        [([BASE, UPDATE, APP], None)],
        history=history,
        config={"Env": ["A=1"], "Cmd": ["/app/main"], "WorkingDir": "/app", "Labels": {"k": "v"}},
    )
    unionfs("image", "import", str(single), "hist:1", root=store.root)
    [info] = json.loads(unionfs("image", "inspect", "hist:1", root=store.root).stdout)
    assert info["RepoTags"] == ["hist:1"]
    assert info["RepoDigests"][0].startswith("hist@sha256:")
    assert info["Config"]["WorkingDir"] == "/app"
    assert info["Config"]["Labels"] == {"k": "v"}
    assert info["RootFS"]["Layers"] == [oci.sha256(la.tar) for la in (BASE, UPDATE, APP)]
    assert info["Created"] == "2024-05-01T10:00:00.123456789Z"
    assert info["Size"] > 0
    rows = json.loads(unionfs("history", "--json", "hist:1", root=store.root).stdout)
    assert [r["created_by"] for r in rows] == [h["created_by"] for h in history]
    assert [r["layer_index"] for r in rows] == [1, None, 2, 3]
    assert rows[1]["empty_layer"] and rows[1]["size"] == 0
    table = unionfs("history", "hist:1", root=store.root).stdout.splitlines()
    assert table[0].split()[:3] == ["CREATED", "CREATED", "BY"]
    assert "COPY app" in table[1] and "(empty layer)" in table[3]


def test_containers_share_layers_and_df_says_so(store: Store, layout: Path) -> None:
    store.import_path(layout)
    app = next(i for i in store.images() if len(i.layers) == 3)
    names = [store.create_container(app.id, f"c{i}").name for i in range(10)]
    assert len({c.id for c in store.containers()}) == 10
    for c in store.containers():
        assert store.container_upper(c).is_dir() and not any(store.container_upper(c).iterdir())
    du = json.loads(unionfs("df", "--json", root=store.root).stdout)
    layer_sizes = {la["diff_id"]: la["size"] for la in du["layers"]}
    base_id = oci.sha256(BASE.tar)
    base_row = next(la for la in du["layers"] if la["diff_id"] == base_id)
    assert (base_row["images"], base_row["containers"]) == (2, 10)
    app_size = sum(layer_sizes.values())
    assert du["disk_size"] == app_size  # the uppers are empty
    assert du["logical_size"] == layer_sizes[base_id] + app_size + 10 * app_size
    text = unionfs("df", root=store.root).stdout
    assert "2 images, 10 containers, 3 layers" in text
    ps = json.loads(unionfs("ps", "--json", root=store.root).stdout)
    assert sorted(r["name"] for r in ps) == sorted(names)
    # a name is taken once
    proc = unionfs("create", app.id, "--name", "c1", root=store.root, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "unionfs: error: the container name c1 is already in use"


def test_rmi_refused_while_a_container_uses_the_image(store: Store, tmp_path: Path) -> None:
    single = oci.oci_layout(tmp_path / "one", [([BASE, UPDATE], None)])
    [imported] = store.import_path(single, parse_reference("img"))
    c = store.create_container("img", "box")
    proc = unionfs("rmi", "img", root=store.root, check=False)
    assert proc.returncode == 1
    assert "used by container box" in proc.stderr and "--force" in proc.stderr
    # forced: the image goes, the container keeps its layers
    unionfs("rmi", "--force", "img", root=store.root)
    assert store.images() == []
    assert sorted(store.layer_ids()) == sorted(imported.image.diff_ids)
    assert all(p.is_dir() for p in store.lowers(c.diff_ids))
    unionfs("rm", "box", root=store.root)
    assert store.layer_ids() == [] and store.containers() == []


def test_legacy_docker_archive(store: Store, tmp_path: Path) -> None:
    archive = oci.docker_legacy_archive(
        tmp_path / "legacy.tar",
        [Layer(BASE.tar, "none"), Layer(UPDATE.tar, "none")],
        ["legacy:v1"],
    )
    out = unionfs("image", "import", str(archive), root=store.root).stdout
    assert "Loaded image: legacy:v1" in out
    image = store.resolve_image("legacy:v1")
    assert image.diff_ids == (oci.sha256(BASE.tar), oci.sha256(UPDATE.tar))
    # a manifest is made for it (for export), but it names no registry digest
    manifest = json.loads(store.read_blob(image.manifest_digest))
    assert [la["digest"] for la in manifest["layers"]] == list(image.diff_ids)
    [info] = json.loads(unionfs("image", "inspect", "legacy:v1", root=store.root).stdout)
    assert info["RepoDigests"] == []


def test_corrupt_layer_stores_nothing(store: Store, tmp_path: Path) -> None:
    def corrupt(path: Path, index: dict[str, object]) -> None:
        manifests = index["manifests"]
        assert isinstance(manifests, list)
        manifest = json.loads(
            (path / "blobs/sha256" / manifests[0]["digest"].split(":")[1]).read_bytes()
        )
        blob = path / "blobs/sha256" / manifest["layers"][1]["digest"].split(":")[1]
        data = bytearray(blob.read_bytes())
        data[-20] ^= 0xFF
        blob.write_bytes(bytes(data))

    bad = oci.oci_layout(tmp_path / "bad", [([BASE, UPDATE], "x")], tamper=corrupt)
    proc = unionfs("image", "import", str(bad), "bad", root=store.root, check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("unionfs: error: ")
    assert "Traceback" not in proc.stderr
    assert store.images() == []
    assert store.tags() == {}
    # the good base layer may stay (a later import reuses it); nothing half-made does
    assert store.layer_ids() in ([], [oci.sha256(BASE.tar)])
    assert staging_entries(store) == []


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([file("../evil", "x")], "escapes"),
        ([symlink("link", "/tmp"), file("link/x", "x")], "symlink"),
        ([hardlink("h", "../../etc/passwd")], "escapes"),
    ],
)
def test_malicious_layer_refused(
    store: Store, tmp_path: Path, entries: list[oci.Entry], message: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    entries = [(symlink(e.name, str(outside)) if e.kind == "symlink" else e) for e in entries]
    bad = oci.oci_layout(tmp_path / "bad", [([Layer(oci.tar_bytes(entries))], None)])
    with pytest.raises(UnionfsError, match=message):
        store.import_path(bad, Reference("bad"))
    assert list(outside.iterdir()) == []
    assert store.images() == [] and store.layer_ids() == []
    assert staging_entries(store) == []


def test_bad_input_one_line(store: Store, tmp_path: Path) -> None:
    cases = [
        (("image", "import", str(tmp_path / "nope")), "no such"),
        (("image", "import", str(REPO / "setup.cfg")), "not a docker save archive"),
        (("image", "inspect", "missing"), "no such image: missing"),
        (("tag", "missing", "x"), "no such image: missing"),
        (("rm", "missing"), "no such container: missing"),
        (("create", "missing"), "no such image: missing"),
        (("image", "import", str(tmp_path), "Bad:Name"), "invalid reference"),
    ]
    for args, text in cases:
        proc = unionfs(*args, root=store.root, check=False)
        assert proc.returncode != 0, args
        lines = proc.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("unionfs: error: "), (args, proc.stderr)
        assert text in lines[0], (args, lines[0])


def test_interrupted_import_leaves_nothing_half_visible(store: Store, tmp_path: Path) -> None:
    big = Layer(
        oci.tar_bytes([file(f"f{i}", os.urandom(1 << 20)) for i in range(96)]),
        compression="gzip",
    )
    layout = oci.oci_layout(tmp_path / "big", [([BASE, big], None)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "unionfs", "--root", str(store.root), "image", "import",
         str(layout), "big"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    big_id = oci.sha256(big.tar)[7:]
    try:
        deadline = time.monotonic() + 60
        # wait until the big layer is being unpacked in the staging area
        while time.monotonic() < deadline:
            staged = list(store.tmp.glob("layer-*/layer/diff/f*")) if store.tmp.exists() else []
            if staged:
                break
            assert proc.poll() is None, "the import ended before it could be interrupted"
            time.sleep(0.01)
        else:
            raise AssertionError("the import never started unpacking")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not (store.layers_dir / big_id).exists()
    assert store.images() == []
    assert staging_entries(store)  # the leftover is there until the next command
    # the next command that changes the store cleans up; a second import works
    unionfs("image", "import", str(layout), "big", root=store.root)
    assert staging_entries(store) == []
    assert (store.layers_dir / big_id / "layer.json").exists()
    assert len(store.resolve_image("big").layers) == 2


def test_concurrent_imports_end_with_one_copy(store: Store, tmp_path: Path) -> None:
    layers = [BASE, Layer(oci.tar_bytes([file(f"d/f{i}", os.urandom(4096)) for i in range(2000)]))]
    layout = oci.oci_layout(tmp_path / "l", [(layers, None)])
    cmd = [sys.executable, "-m", "unionfs", "--root", str(store.root), "image", "import",
           str(layout), "same:1"]  # fmt: skip
    procs = [
        subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    assert len(store.images()) == 1
    assert len(store.layer_ids()) == 2
    assert staging_entries(store) == []
    # the big layer was unpacked by one of them, and found in place by the other
    combined = outs[0][0] + outs[1][0]
    assert combined.count("unpacked") + combined.count("already in the store") == 4


def test_store_version_is_checked(store: Store, tmp_path: Path) -> None:
    store.root.mkdir(parents=True)
    (store.root / "store.json").write_text('{"version": 99}')
    proc = unionfs("images", root=store.root, check=False)
    assert proc.returncode == 1
    assert "format version 99" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to user nobody")
def test_store_of_a_normal_user() -> None:
    """As a normal user: OCI whiteouts are kept, and read-only dirs of a layer
    do not stop its removal."""
    # pytest's tmp dirs are root's own (0700): nobody could not reach a home there
    home = Path(tempfile.mkdtemp(prefix="unionfs-user-"))
    try:
        _store_of_a_normal_user(home)
    finally:
        subprocess.run(["rm", "-rf", str(home)], check=True)


def _store_of_a_normal_user(home: Path) -> None:
    layer = Layer(oci.tar_bytes([directory("ro", 0o555), file("ro/f", "x"), whiteout(".wh.gone")]))
    oci.oci_layout(home / "layout", [([layer], None)])
    subprocess.run(["chown", "-R", "nobody:nogroup", str(home)], check=True)

    def as_nobody(*args: str) -> str:
        proc = subprocess.run(
            ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
             "env", f"HOME={home}", "UNIONFS_ROOT=", sys.executable, "-m", "unionfs", *args],
            cwd=REPO, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    as_nobody("image", "import", str(home / "layout"), "mine:1")
    # the default store of a normal user is in the XDG data dir
    store = Store(home / ".local/share/unionfs")
    [diff_id] = store.resolve_image("mine:1").diff_ids
    assert (store.layer_path(diff_id) / ".wh.gone").is_file()
    # the user keeps its layer dirs writable (so it can remove them) and the
    # image's mode in their override record
    ro = store.layer_path(diff_id) / "ro"
    assert ro.stat().st_mode & 0o777 == 0o755
    assert os.getxattr(ro, "user.containers.override_stat") == b"0:0:0555:dir"
    assert "Deleted layer" in as_nobody("rmi", "mine:1")
    assert store.layer_ids() == [] and staging_entries(store) == []
