"""`unionfs diff`: the changes a container's upper layer makes to its image.

Hand-built upper and lower layers in every whiteout format, a generated
comparison with the pure-Python merge of tests/stack.py, then real mounts: a
container changed through unionfs, and the same changes made through kernel
overlayfs, whose upper layer must read the same.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.store.test_store_mount import mount, unionfs
from tests.support import oci
from tests.support.kernel import TmpMounts
from tests.support.oci import directory, file, whiteout
from tests.support.stack import (
    Dir,
    Entry,
    File,
    Format,
    HardLink,
    Layer,
    Symlink,
    Whiteout,
    build_stack,
    expected_merge,
    format_params,
)
from unionfs.errors import UnionfsError
from unionfs.inspect.changes import Change, container_changes
from unionfs.store.store import Store

Pairs = list[tuple[str, str]]


def changes(tmp_path: Path, upper: Layer, lowers: list[Layer], fmt: Format) -> Pairs:
    dirs = build_stack([upper, *lowers], tmp_path / "stack", fmt)
    return [(c.kind, c.path) for c in container_changes(dirs[0], dirs[1:])]


# --------------------------------------------------------------------------- table

# (case, upper, lowers top first, expected changes)
CASES: list[tuple[str, Layer, list[Layer], Pairs]] = [
    ("nothing changed", [], [[File("etc/motd")]], []),
    ("add a file", [File("new")], [[File("etc/motd")]], [("A", "/new")]),
    (
        "nested adds: everything under an added dir is A",
        [File("a/b/c/f"), Symlink("a/b/link", "c/f")],
        [[File("etc/motd")]],
        [("A", "/a"), ("A", "/a/b"), ("A", "/a/b/c"), ("A", "/a/b/c/f"), ("A", "/a/b/link")],
    ),
    (
        "modify a file: its copied-up parent is C",
        [File("etc/motd", b"changed\n")],
        [[File("etc/motd", b"motd\n"), File("etc/hosts")]],
        [("C", "/etc"), ("C", "/etc/motd")],
    ),
    (
        "delete a file",
        [Whiteout("etc/motd")],
        [[File("etc/motd"), File("etc/hosts")]],
        [("C", "/etc"), ("D", "/etc/motd")],
    ),
    (
        "delete a dir with content: only the dir is D",
        [Whiteout("var/cache")],
        [[File("var/cache/a"), File("var/cache/sub/b"), File("var/log")]],
        [("C", "/var"), ("D", "/var/cache")],
    ),
    (
        "a deep delete lists every parent",
        [Whiteout("usr/share/doc/x")],
        [[File("usr/share/doc/x"), File("usr/share/doc/y")]],
        [("C", "/usr"), ("C", "/usr/share"), ("C", "/usr/share/doc"), ("D", "/usr/share/doc/x")],
    ),
    (
        "a whiteout with nothing below is not shown",
        [Whiteout("etc/ghost"), Whiteout("nowhere")],
        [[File("etc/motd")]],
        [("C", "/etc")],
    ),
    (
        "opaque dir: C, D for each hidden lower child, A or C for its own",
        [Dir("opt/app", opaque=True), File("opt/app/a", b"new a"), File("opt/app/new")],
        [[File("opt/app/a"), File("opt/app/b"), File("opt/app/sub/c"), File("opt/keep")]],
        [
            ("C", "/opt"),
            ("C", "/opt/app"),
            ("C", "/opt/app/a"),
            ("D", "/opt/app/b"),
            ("A", "/opt/app/new"),
            ("D", "/opt/app/sub"),
        ],
    ),
    (
        "opaque dir over nothing is just added",
        [Dir("fresh", opaque=True), File("fresh/x")],
        [[File("etc/motd")]],
        [("A", "/fresh"), ("A", "/fresh/x")],
    ),
    (
        "file to dir (opaque, as mkdir over a whiteout makes it)",
        [Dir("srv/data", opaque=True), File("srv/data/x")],
        [[File("srv/data"), File("srv/other")]],
        [("C", "/srv"), ("C", "/srv/data"), ("A", "/srv/data/x")],
    ),
    (
        "file to dir (a plain dir over the file)",
        [Dir("srv/data"), File("srv/data/x")],
        [[File("srv/data")]],
        [("C", "/srv"), ("C", "/srv/data"), ("A", "/srv/data/x")],
    ),
    (
        "dir to file: the lower children are not listed",
        [File("home/user", b"now a file")],
        [[File("home/user/.profile"), Dir("home/user/sub")]],
        [("C", "/home"), ("C", "/home/user")],
    ),
    (
        "symlink replaces a file",
        [Symlink("bin/sh", "dash")],
        [[File("bin/sh"), File("bin/dash")]],
        [("C", "/bin"), ("C", "/bin/sh")],
    ),
    (
        "a copied-up dir with no change below is still C",
        [Dir("tmp", mode=0o1777)],
        [[Dir("tmp", mode=0o1777)]],
        [("C", "/tmp")],
    ),
    (
        "hard link to a copied-up file",
        [File("etc/a", b"a"), HardLink("etc/b", "etc/a")],
        [[File("etc/a", b"a")]],
        [("C", "/etc"), ("C", "/etc/a"), ("A", "/etc/b")],
    ),
    (
        "a whiteout inside an added dir is not shown",
        [Dir("new"), Whiteout("new/x"), File("new/y")],
        [[File("etc/motd")]],
        [("A", "/new"), ("A", "/new/y")],
    ),
    (
        "the image deleted it and the container makes it again: A",
        [File("etc/old", b"back")],
        [[Whiteout("etc/old")], [File("etc/old"), File("etc/motd")]],
        [("C", "/etc"), ("A", "/etc/old")],
    ),
    (
        "the image deleted it and the container deletes it too: nothing",
        [Whiteout("etc/old")],
        [[Whiteout("etc/old")], [File("etc/old"), File("etc/motd")]],
        [("C", "/etc")],
    ),
    (
        "the image's own opaque dir hides the bottom layer",
        [File("d/bottom")],
        [[Dir("d", opaque=True), File("d/top")], [File("d/bottom")]],
        [("C", "/d"), ("A", "/d/bottom")],
    ),
    (
        "a change deep in a merged dir of several layers",
        [File("usr/lib/b", b"new")],
        [[File("usr/lib/a")], [File("usr/lib/b"), File("usr/bin/c")]],
        [("C", "/usr"), ("C", "/usr/lib"), ("C", "/usr/lib/b")],
    ),
    (
        "sorted by path bytes, as docker sorts",
        [File("a-b"), File("a/b"), File("A")],
        [[File("z")]],
        [("A", "/A"), ("A", "/a"), ("A", "/a-b"), ("A", "/a/b")],
    ),
]


@pytest.mark.parametrize("fmt", format_params())
@pytest.mark.parametrize(
    ("upper", "lowers", "expected"),
    [pytest.param(u, lo, e, id=name) for name, u, lo, e in CASES],
)
def test_changes_table(
    tmp_path: Path, fmt: Format, upper: Layer, lowers: list[Layer], expected: Pairs
) -> None:
    assert changes(tmp_path, upper, lowers, fmt) == expected


def test_no_lower_layers(tmp_path: Path) -> None:
    [upper] = build_stack([[File("a/b"), Whiteout("c")]], tmp_path / "s", "oci")
    found = container_changes(upper, [])
    assert found == [Change("A", "/a"), Change("A", "/a/b")]


def test_undecodable_name_keeps_its_bytes(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9")
    dirs = build_stack([[File(name)], [File("etc/motd")]], tmp_path / "s", "oci")
    [change] = container_changes(dirs[0], dirs[1:])
    assert change == Change("A", "/" + name)
    assert change.line() == b"A /caf\xe9"
    assert change.to_json() == {"kind": "A", "path": "/caf\udce9"}


def test_missing_upper_is_an_error(tmp_path: Path) -> None:
    [lower] = build_stack([[File("x")]], tmp_path / "s", "oci")
    with pytest.raises(UnionfsError, match=r"layer directory .*gone is missing"):
        container_changes(tmp_path / "gone", [lower])


# --------------------------------------------------------------------------- generated

#: A small tree every generated layer picks its entries from (parents first).
TREE = ["a", "a/x", "a/d", "a/d/z", "a/d/w", "b", "b/x", "b/y", "c"]


def random_layer(rng: random.Random) -> list[Entry]:
    """Each path absent, a file, a dir (perhaps opaque) or a whiteout, consistently
    (nothing under a file or a whiteout)."""
    blocked: set[str] = set()
    out: list[Entry] = []
    for path in TREE:
        parent = path.rpartition("/")[0]
        if parent in blocked:
            blocked.add(path)
            continue
        pick = rng.choice(["-", "-", "f", "d", "o", "w"])
        if pick in "fw":
            blocked.add(path)
        if pick == "f":
            out.append(File(path, f"{path} {rng.random()}".encode()))
        elif pick == "w":
            out.append(Whiteout(path))
        elif pick in "do":
            out.append(Dir(path, opaque=pick == "o"))
    return out


def oracle(upper: Layer, lowers: Sequence[Layer]) -> Pairs:
    """The changes computed from tests/stack.py's own merge of the two views: a
    name whose winning copy is in the upper layer is A or C; a name the image
    shows and the container does not is D when its parent is still a directory."""
    new = expected_merge([upper, *lowers])
    old = expected_merge(lowers) if lowers else {}
    out: Pairs = []
    for path, m in new.items():
        if path != "." and m.layer == 0:
            out.append(("C" if path in old else "A", "/" + path))
    for path in old:
        now_parent = new.get(path.rpartition("/")[0] or ".")
        if path not in new and now_parent is not None and isinstance(now_parent.entry, Dir):
            out.append(("D", "/" + path))
    out.sort(key=lambda c: c[1].encode())
    return out


@pytest.mark.parametrize("fmt", format_params())
def test_changes_match_independent_merge(tmp_path: Path, fmt: Format) -> None:
    rng = random.Random(f"changes-{fmt}")  # noqa: S311 (replayable test data, not secrets)
    for i in range(60):
        stack = [random_layer(rng) for _ in range(rng.randint(1, 3))]
        upper, lowers = stack[0], stack[1:]
        dirs = build_stack(stack, tmp_path / f"s{i}", fmt)
        got = [(c.kind, c.path) for c in container_changes(dirs[0], dirs[1:])]
        assert got == oracle(upper, lowers), f"stack {i}: {stack}"


# --------------------------------------------------------------------------- mounted

BASE = oci.Layer(
    oci.tar_bytes(
        [
            directory("etc"),
            file("etc/motd", "base motd\n"),
            file("etc/hosts", "127.0.0.1 localhost\n"),
            file("etc/issue", "Linux\n"),
            file("etc/attr-file", "attr\n"),
            file("etc/link-src", "link\n"),
            file("etc/old.conf", "old\n"),
            directory("var"),
            directory("var/cache"),
            file("var/cache/a", "a\n"),
            directory("var/cache/sub"),
            file("var/cache/sub/b", "b\n"),
            directory("var/log"),
            directory("opt"),
            directory("opt/app"),
            file("opt/app/a", "a\n"),
            file("opt/app/b", "b\n"),
            directory("opt/app/sub"),
            file("opt/app/sub/c", "c\n"),
            directory("srv"),
            file("srv/data", "data\n"),
            directory("home"),
            directory("home/user"),
            file("home/user/.profile", "profile\n"),
            directory("usr"),
            directory("usr/bin"),
            file("usr/bin/tool", "#!/bin/sh\n", 0o755),
            file("usr/bin/other", "#!/bin/sh\n", 0o755),
            directory("tmp", 0o1777),
        ]
    )
)
TOP = oci.Layer(
    oci.tar_bytes(
        [directory("etc"), file("etc/motd", "image motd\n"), whiteout("etc/.wh.old.conf")]
    ),
    compression="zstd",
)


def change_everything(root: Path) -> None:
    """Every kind of change, through a mount whose root is `root`."""
    (root / "new.txt").write_text("new\n")
    (root / "data/a/b").mkdir(parents=True)
    (root / "data/a/b/f").write_text("f\n")
    with open(root / "etc/motd", "a") as f:
        f.write("more\n")
    os.chmod(root / "etc/hosts", 0o600)
    os.unlink(root / "etc/issue")
    shutil.rmtree(root / "var/cache")
    shutil.rmtree(root / "opt/app")  # replace a dir: the new one is opaque
    (root / "opt/app").mkdir()
    (root / "opt/app/a").write_text("new a\n")
    (root / "opt/app/new").write_text("new\n")
    os.unlink(root / "srv/data")  # file to dir
    (root / "srv/data").mkdir()
    (root / "srv/data/x").write_text("x\n")
    shutil.rmtree(root / "home/user")  # dir to file
    (root / "home/user").write_text("now a file\n")
    os.rename(root / "usr/bin/tool", root / "usr/bin/tool2")  # copy-up + whiteout
    os.symlink("tool2", root / "usr/bin/alias")
    os.link(root / "etc/link-src", root / "etc/link-dst")
    os.setxattr(root / "etc/attr-file", "user.note", b"noted")
    (root / "etc/old.conf").write_text("back\n")  # the image deleted it
    (root / "tmp/scratch").write_text("gone soon\n")
    os.unlink(root / "tmp/scratch")


EXPECTED = [
    {"kind": k, "path": p}
    for k, p in [
        ("A", "/data"),
        ("A", "/data/a"),
        ("A", "/data/a/b"),
        ("A", "/data/a/b/f"),
        ("C", "/etc"),
        ("C", "/etc/attr-file"),
        ("C", "/etc/hosts"),
        ("D", "/etc/issue"),
        ("A", "/etc/link-dst"),
        ("C", "/etc/link-src"),
        ("C", "/etc/motd"),
        ("A", "/etc/old.conf"),
        ("C", "/home"),
        ("C", "/home/user"),
        ("A", "/new.txt"),
        ("C", "/opt"),
        ("C", "/opt/app"),
        ("C", "/opt/app/a"),
        ("D", "/opt/app/b"),
        ("A", "/opt/app/new"),
        ("D", "/opt/app/sub"),
        ("C", "/srv"),
        ("C", "/srv/data"),
        ("A", "/srv/data/x"),
        ("C", "/tmp"),
        ("C", "/usr"),
        ("C", "/usr/bin"),
        ("A", "/usr/bin/alias"),
        ("D", "/usr/bin/tool"),
        ("A", "/usr/bin/tool2"),
        ("C", "/var"),
        ("D", "/var/cache"),
    ]
]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    layout = oci.oci_layout(tmp_path / "layout", [([BASE, TOP], None)])
    store_root = tmp_path / "store"
    unionfs("image", "import", str(layout), "changes:1", root=store_root)
    return store_root


def diff_json(root: Path, container: str) -> list[dict[str, str]]:
    data: list[dict[str, str]] = json.loads(unionfs("diff", "--json", container, root=root).stdout)
    return data


@pytest.mark.mount
@pytest.mark.parametrize("whiteouts", ["overlay", "oci"])
def test_diff_of_a_changed_container(
    root: Path, tmp_mounts: TmpMounts, tmp_path: Path, whiteouts: str
) -> None:
    unionfs("create", "changes:1", "--name", "c", root=root)
    assert diff_json(root, "c") == []
    mnt = mount(root, tmp_mounts, "c", "--whiteout-format", whiteouts)
    change_everything(mnt)
    assert diff_json(root, "c") == EXPECTED  # read while mounted
    unionfs("umount", str(mnt), root=root)
    assert diff_json(root, "c") == EXPECTED
    text = unionfs("diff", "c", root=root).stdout
    assert text.splitlines() == [f"{c['kind']} {c['path']}" for c in EXPECTED]

    upper = next((root / "containers").iterdir()) / "upper"
    if whiteouts == "oci":
        assert (upper / "etc/.wh.issue").exists()
    else:
        assert stat.S_ISCHR(os.lstat(upper / "etc/issue").st_mode)


@pytest.mark.mount
def test_kernel_overlay_upper_reads_the_same(
    root: Path, tmp_mounts: TmpMounts, tmp_path: Path
) -> None:
    """The same changes made by kernel overlayfs over the same layer dirs: its
    upper layer (char-device whiteouts, trusted.overlay.opaque) reads the same."""
    store = Store(root)
    lowers = store.lowers(store.resolve_image("changes:1").diff_ids)
    upper, work = tmp_path / "kupper", tmp_path / "kwork"
    upper.mkdir()
    work.mkdir()
    opts = ("redirect_dir=off", "index=off", "metacopy=off")
    mnt = tmp_mounts.overlay(lowers, upper=upper, work=work, extra_opts=opts)
    change_everything(mnt)
    tmp_mounts.unmount(mnt)

    assert stat.S_ISCHR(os.lstat(upper / "etc/issue").st_mode)
    assert os.getxattr(upper / "opt/app", "trusted.overlay.opaque") == b"y"
    found = [c.to_json() for c in container_changes(upper, lowers)]
    assert found == EXPECTED


def test_diff_of_no_such_container(tmp_path: Path) -> None:
    proc = unionfs("diff", "nosuch", root=tmp_path / "store", check=False)
    assert proc.returncode == 1
    assert proc.stdout.strip() == "unionfs: error: no such container: nosuch"
