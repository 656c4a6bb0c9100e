"""`unionfs explain` and `unionfs tree`: which layer every entry comes from and what hides what.

Hand-built stacks in every whiteout and opaque form checked against written
expectations; random stacks checked against an independent model built from
the layer descriptions (tests/stack.py's `expected_merge` plus the hiding rule
below); a store image with history; a container changed through the
filesystem semantics (a real copy-up); and live mounts.
"""

from __future__ import annotations

import io
import json
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest
from rich.console import Console

from tests.store.test_store_mount import mount
from tests.support import oci
from tests.support.kernel import TmpMounts
from tests.support.oci import directory, file, symlink, whiteout
from tests.support.stack import (
    Dir,
    Entry,
    File,
    Format,
    Layer,
    MergedEntry,
    Symlink,
    Whiteout,
    build_stack,
    expected_merge,
    format_params,
)
from unionfs.cli.inspect import explanation_text, render_tree
from unionfs.cli.main import main
from unionfs.fs.layer import Layer as FsLayer
from unionfs.fs.upper import Upper
from unionfs.fs.vfs import UnionFS
from unionfs.fuse.runstate import MountState
from unionfs.image.refs import parse_reference
from unionfs.inspect.answers import Cause, Explanation, TreeEntry
from unionfs.inspect.stack import dir_stack, mount_stack
from unionfs.inspect.view import StackView, split_path
from unionfs.store.records import short_id
from unionfs.store.store import Store

WHITEOUT_FORM = {
    "chardev": "char device 0/0",
    "xattr": "xattr trusted.overlay.whiteout",
    "user": "xattr user.overlay.whiteout",
    "oci": "OCI .wh.{name} entry",
}
OPAQUE_FORM = {
    "chardev": "xattr trusted.overlay.opaque=y",
    "xattr": "xattr trusted.overlay.opaque=y",
    "user": "xattr user.overlay.opaque=y",
    "oci": "OCI .wh..wh..opq entry",
}


class MakeView(Protocol):
    def __call__(self, layers: Sequence[Layer], fmt: Format = "oci", /) -> StackView: ...


@pytest.fixture
def view_of(tmp_path: Path) -> Iterator[MakeView]:
    """Build a stack (top first) in a format and open it; closed at teardown."""
    views: list[StackView] = []

    def make(layers: Sequence[Layer], fmt: Format = "oci", /) -> StackView:
        dirs = build_stack(layers, tmp_path / f"stack{len(views)}", fmt)
        views.append(StackView(dir_stack(dirs)))
        return views[-1]

    yield make
    for v in views:
        v.close()


CauseT = tuple[str, int, str] | None
Fate = tuple[int, str, str, CauseT]


def _cause(c: Cause | None) -> CauseT:
    return (c.kind, c.layer, c.path) if c is not None else None


def fates(exp: Explanation) -> list[Fate]:
    """Every copy as (layer, type, status, (cause kind, cause layer, cause path))."""
    return [(c.layer, c.type, c.status, _cause(c.by)) for c in exp.copies]


# --------------------------------------------------------------------------- by hand

# (case, layers top first, path, status, visible layer, merged layers, fates)
CASES: list[tuple[str, list[Layer], str, str, int | None, tuple[int, ...], list[Fate]]] = [
    (
        "a file shadows the copies below it",
        [[File("etc/motd")], [File("etc/motd")], [File("etc/motd")]],
        "/etc/motd",
        "visible",
        0,
        (0,),
        [
            (0, "file", "visible", None),
            (1, "file", "shadowed", ("above", 0, "/etc/motd")),
            (2, "file", "shadowed", ("above", 0, "/etc/motd")),
        ],
    ),
    (
        "a whiteout hides the file below",
        [[Whiteout("etc/old")], [File("etc/motd")], [File("etc/old")]],
        "/etc/old",
        "hidden",
        None,
        (),
        [(0, "whiteout", "whiteout", None), (2, "file", "hidden", ("whiteout", 0, "/etc/old"))],
    ),
    (
        "a whiteout below a visible file changes nothing",
        [[File("x")], [Whiteout("x")], [File("x")]],
        "/x",
        "visible",
        0,
        (0,),
        [
            (0, "file", "visible", None),
            (1, "whiteout", "shadowed", ("above", 0, "/x")),
            (2, "file", "shadowed", ("above", 0, "/x")),
        ],
    ),
    (
        "directories merge down to an opaque one, which cuts off the rest",
        [[Dir("d")], [Dir("d", opaque=True)], [Dir("d")]],
        "/d",
        "visible",
        0,
        (0, 1),
        [
            (0, "directory", "visible", None),
            (1, "directory", "merged", None),
            (2, "directory", "hidden", ("opaque", 1, "/d")),
        ],
    ),
    (
        "an opaque parent cuts off a lower child",
        [[Dir("d", opaque=True), File("d/new")], [File("d/old")]],
        "/d/old",
        "hidden",
        None,
        (),
        [(1, "file", "hidden", ("opaque", 0, "/d"))],
    ),
    (
        "a whited-out parent hides everything under it",
        [[Whiteout("a")], [Dir("a")], [File("a/b/c")]],
        "/a/b/c",
        "hidden",
        None,
        (),
        [(2, "file", "hidden", ("whiteout", 0, "/a"))],
    ),
    (
        "a file above a parent directory",
        [[File("a")], [File("a/b")]],
        "/a/b",
        "hidden",
        None,
        (),
        [(1, "file", "hidden", ("nondir", 0, "/a"))],
    ),
    (
        "a non-directory below a directory is ignored and ends the merge",
        [[Dir("d")], [File("d")], [Dir("d"), File("d/y")]],
        "/d",
        "visible",
        0,
        (0,),
        [
            (0, "directory", "visible", None),
            (1, "file", "shadowed", ("above", 0, "/d")),
            (2, "directory", "hidden", ("nondir", 1, "/d")),
        ],
    ),
    (
        "... and so hides what the directories below it hold",
        [[Dir("d")], [File("d")], [Dir("d"), File("d/y")]],
        "/d/y",
        "hidden",
        None,
        (),
        [(2, "file", "hidden", ("nondir", 1, "/d"))],
    ),
    (
        "a whiteout under a directory ends the merge",
        [[Dir("d"), File("d/a")], [Whiteout("d")], [Dir("d"), File("d/b")]],
        "/d",
        "visible",
        0,
        (0,),
        [
            (0, "directory", "visible", None),
            (1, "whiteout", "whiteout", None),
            (2, "directory", "hidden", ("whiteout", 1, "/d")),
        ],
    ),
    (
        "... and hides the children of the directories below it",
        [[Dir("d"), File("d/a")], [Whiteout("d")], [Dir("d"), File("d/b")]],
        "/d/b",
        "hidden",
        None,
        (),
        [(2, "file", "hidden", ("whiteout", 1, "/d"))],
    ),
    (
        "a whiteout with nothing below it hides nothing",
        [[Whiteout("gone")], [File("other")]],
        "/gone",
        "absent",
        None,
        (),
        [(0, "whiteout", "whiteout", None)],
    ),
    (
        "a directory merged from every layer",
        [[File("etc/a")], [Symlink("etc/l", "a")], [File("etc/b")]],
        "/etc",
        "visible",
        0,
        (0, 1, 2),
        [
            (0, "directory", "visible", None),
            (1, "directory", "merged", None),
            (2, "directory", "merged", None),
        ],
    ),
    (
        "no layer has it",
        [[File("a")], [File("b")]],
        "/c",
        "absent",
        None,
        (),
        [],
    ),
]


@pytest.mark.parametrize(
    ("layers", "path", "status", "layer", "merged", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_explain_table(
    view_of: MakeView,
    layers: list[Layer],
    path: str,
    status: str,
    layer: int | None,
    merged: tuple[int, ...],
    expected: list[Fate],
) -> None:
    exp = view_of(layers).explain(path)
    assert (exp.status, exp.layer) == (status, layer)
    assert fates(exp) == expected
    if exp.entry is not None and exp.entry.type == "directory":
        assert exp.merged_layers == merged
    assert not exp.unknown


@pytest.mark.parametrize("fmt", format_params())
def test_whiteout_and_opaque_forms(view_of: MakeView, fmt: Format) -> None:
    view = view_of(
        [
            [Whiteout("etc/old"), Dir("d", opaque=True), File("d/new")],
            [File("etc/old", b"old"), File("d/x"), Dir("d/sub"), File("d/sub/deep")],
        ],
        fmt,
    )
    old = view.explain("/etc/old")
    assert old.status == "hidden"
    form = WHITEOUT_FORM[fmt].format(name="old")
    assert old.copies[0].form == form
    assert old.reason == Cause("whiteout", 0, "/etc/old", form)
    assert explanation_text(old).splitlines()[1] == f"  hidden by the whiteout in lower 2 ({form})"

    d = view.explain("/d")
    assert d.copies[0].opaque == OPAQUE_FORM[fmt]
    assert fates(d) == [
        (0, "directory", "visible", None),
        (1, "directory", "hidden", ("opaque", 0, "/d")),
    ]
    deep = view.explain("/d/sub/deep")
    assert deep.reason == Cause("opaque", 0, "/d", OPAQUE_FORM[fmt])
    assert deep.blocked is not None
    assert (deep.blocked.path, deep.blocked.status, deep.blocked.layer) == ("/d/sub", "hidden", 1)
    # the OCI markers are never visible names
    assert {e.name for e in view.tree("/d").children or []} == {"new"}


def test_parents_explain_their_children(view_of: MakeView) -> None:
    view = view_of([[Whiteout("a"), File("f")], [Dir("a")], [File("a/b/c"), File("f/x")]])
    exp = view.explain("/a/b/c")
    assert exp.blocked is not None
    assert (exp.blocked.path, exp.blocked.status, exp.blocked.layer, exp.blocked.type) == (
        "/a",
        "hidden",
        1,
        "directory",
    )
    assert _cause(exp.blocked.by) == ("whiteout", 0, "/a")
    assert explanation_text(exp).splitlines()[:2] == [
        "/a/b/c: not in the merged view",
        "  /a is not in the merged view: its directory in lower 2 is hidden by the whiteout "
        "in lower 3 (OCI .wh.a entry)",
    ]
    under_file = view.explain("/f/x")
    assert under_file.blocked is not None
    assert (under_file.blocked.status, under_file.blocked.layer) == ("nondir", 0)
    assert "/f is a file from lower 3: nothing can be under it" in explanation_text(under_file)
    # a parent no layer has: nothing to explain, the command's error
    nowhere = view.explain("/nowhere/x")
    assert nowhere.unknown
    assert nowhere.blocked is not None and nowhere.blocked.path == "/nowhere"
    # a parent that only a whiteout names is explained
    gone = view_of([[Whiteout("gone")], [File("f")]]).explain("/gone/x")
    assert not gone.unknown
    assert gone.blocked is not None and gone.blocked.status == "deleted"


def test_reserved_names_are_never_shown(view_of: MakeView) -> None:
    view = view_of([[Whiteout("etc/old"), Dir("d", opaque=True)], [File("etc/old")]], "oci")
    for path in ("/etc/.wh.old", "/d/.wh..wh..opq"):
        exp = view.explain(path)
        assert exp.reserved and exp.status == "hidden"
        assert [c.status for c in exp.copies] == ["hidden"]
        assert exp.copies[0].by is not None and exp.copies[0].by.kind == "reserved"


def test_paths_are_taken_lexically() -> None:
    assert split_path("/") == []
    assert split_path("etc//motd/") == [b"etc", b"motd"]
    assert split_path("/a/../../b/./c") == [b"b", b"c"]
    assert split_path(b"/caf\xe9") == [b"caf\xe9"]


def test_root_and_non_utf8_names(view_of: MakeView) -> None:
    view = view_of([[File("caf\udce9", b"x")], [File("other")]])
    root = view.explain("/")
    assert (root.status, root.layer, root.merged_layers) == ("visible", 0, (0, 1))
    exp = view.explain(b"/caf\xe9")
    assert exp.status == "visible" and exp.path == "/caf\udce9"
    assert explanation_text(exp).startswith("/caf\\xe9: file")
    json.dumps(exp.to_json())


# --------------------------------------------------------------------------- text

TEXT_STACK: list[Layer] = [
    [
        File("etc/motd", b"top\n"),
        Whiteout("etc/old"),
        Dir("opt", opaque=True),
        File("opt/new"),
        Symlink("link", "etc/motd"),
    ],
    [File("etc/motd", b"middle\n", mode=0o600), Dir("srv"), File("srv/x")],
    [File("etc/motd", b"bottom\n"), File("etc/old", b"o"), Dir("opt/app"), Dir("srv/x")],
]


def _plain(text: str, dirs: Sequence[Path]) -> str:
    for i, d in enumerate(dirs):
        text = text.replace(str(d), f"DIR{i}")
    return text


def test_explanation_text(tmp_path: Path) -> None:
    dirs = build_stack(TEXT_STACK, tmp_path / "s", "oci")
    with StackView(dir_stack(dirs)) as view:
        motd, old, srv_x = (view.explain(p) for p in ("/etc/motd", "/etc/old", "/srv/x"))
        link = view.explain("/link")
    assert _plain(explanation_text(motd), dirs) == (
        "/etc/motd: file, mode 0644 (-rw-r--r--), owner 0:0, 4 bytes\n"
        "  from lower 3 of 3 (DIR0)\n"
        "  layers that hold /etc/motd, top first:\n"
        "    lower 3 of 3 (DIR0)\n"
        "      file 0644, 4 bytes: visible\n"
        "    lower 2 of 3 (DIR1)\n"
        "      file 0600, 7 bytes: shadowed by the copy in lower 3\n"
        "    lower 1 of 3 (DIR2)\n"
        "      file 0644, 7 bytes: shadowed by the copy in lower 3"
    )
    assert _plain(explanation_text(old), dirs) == (
        "/etc/old: not in the merged view\n"
        "  hidden by the whiteout in lower 3 (OCI .wh.old entry)\n"
        "  layers that hold /etc/old, top first:\n"
        "    lower 3 of 3 (DIR0)\n"
        "      whiteout (OCI .wh.old entry): hides the copies below\n"
        "    lower 1 of 3 (DIR2)\n"
        "      file 0644, 1 byte: hidden by the whiteout in lower 3 (OCI .wh.old entry)"
    )
    assert _plain(explanation_text(srv_x), dirs).splitlines()[-2:] == [
        "    lower 1 of 3 (DIR2)",
        "      directory 0755: shadowed by the copy in lower 2",
    ]
    assert explanation_text(link).splitlines()[0] == "/link: symlink -> etc/motd, owner 0:0"


def _render(root: TreeEntry, view: StackView) -> str:
    out = io.StringIO()
    render_tree(root, view.stack, Console(file=out, width=200, highlight=False))
    return out.getvalue()


def test_tree_text(tmp_path: Path) -> None:
    dirs = build_stack(TEXT_STACK, tmp_path / "s", "oci")
    with StackView(dir_stack(dirs)) as view:
        plain = _render(view.tree("/"), view)
        hidden = _render(view.tree("/", show_hidden=True), view)
        only = _render(view.tree("/", layer=0), view)
        shallow = _render(view.tree("/", depth=1), view)
    legend = (
        "3 layer dirs: layers, top first\n"
        "  [3] lower 3 of 3 (DIR0)\n"
        "  [2] lower 2 of 3 (DIR1)\n"
        "  [1] lower 1 of 3 (DIR2)\n"
        "\n"
    )
    assert _plain(plain, dirs) == legend + (
        "/  [3+2+1]\n"
        "├── etc/  [3+2+1]\n"
        "│   └── motd  [3]\n"
        "├── link -> etc/motd  [3]\n"
        "├── opt/  [3]\n"
        "│   └── new  [3]\n"
        "└── srv/  [2+1]\n"
        "    └── x  [2]\n"
    )
    assert _plain(hidden, dirs) == legend + (
        "/  [3+2+1]\n"
        "├── etc/  [3+2+1]\n"
        "│   ├── motd  [3]\n"
        "│   └── old  [1] hidden by the whiteout in lower 3 (OCI .wh.old entry)\n"
        "├── link -> etc/motd  [3]\n"
        "├── opt/  [3] opaque in lower 3\n"
        "│   ├── app/  [1] cut off by the opaque directory /opt in lower 3 "
        "(OCI .wh..wh..opq entry)\n"
        "│   └── new  [3]\n"
        "└── srv/  [2+1]\n"
        "    └── x  [2]\n"
    )
    assert _plain(only, dirs) == legend + (
        "/  [3+2+1]\n"
        "├── etc/  [3+2+1]\n"
        "│   └── motd  [3]\n"
        "├── link -> etc/motd  [3]\n"
        "└── opt/  [3]\n"
        "    └── new  [3]\n"
    )
    assert _plain(shallow, dirs) == legend + (
        "/  [3+2+1]\n├── etc/  [3+2+1]\n├── link -> etc/motd  [3]\n├── opt/  [3]\n└── srv/  [2+1]\n"
    )


# --------------------------------------------------------------------------- random

TREE = ["a", "a/b", "a/b/c", "a/d", "e", "e/f", "e/f/g"]


def random_layer(rng: random.Random) -> list[Entry]:
    """Each path absent, a file, a symlink, a dir (perhaps opaque) or a whiteout,
    consistently (nothing under a non-directory)."""
    blocked: set[str] = set()
    out: list[Entry] = []
    for path in TREE:
        if path.rpartition("/")[0] in blocked:
            blocked.add(path)
            continue
        pick = rng.choice("--fdowl")
        if pick in "fwl":
            blocked.add(path)
        if pick == "f":
            out.append(File(path, f"{path} {rng.random()}".encode()))
        elif pick == "l":
            out.append(Symlink(path, "elsewhere"))
        elif pick == "w":
            out.append(Whiteout(path))
        elif pick in "do":
            out.append(Dir(path, opaque=pick == "o"))
    return out


def _entries(layer: Layer) -> dict[str, Entry]:
    """A layer's entries by path, with the parent directories it implies."""
    out: dict[str, Entry] = {e.path: e for e in layer}
    for path in list(out):
        parent = path.rpartition("/")[0]
        while parent:
            out.setdefault(parent, Dir(parent))
            parent = parent.rpartition("/")[0]
    return out


def oracle(
    held: list[dict[str, Entry]], merged: dict[str, MergedEntry], path: str, layer: int
) -> tuple[str, CauseT]:
    """The fate of `layer`'s copy of `path` from the descriptions alone: the first
    level (from the root) where that layer's copy is not part of the merged entry,
    and the topmost entry above it there that hides it (a whiteout, an opaque
    directory, a non-directory that ends the merge, or the visible copy itself)."""
    parts = path.split("/")
    for k in range(1, len(parts) + 1):
        q = "/".join(parts[:k])
        last = k == len(parts)
        m = merged.get(q)
        if m is not None and layer in m.layers and (last or isinstance(m.entry, Dir)):
            if not last:
                continue
            return ("visible" if m.layer == layer else "merged"), None
        contributing = merged["/".join(parts[: k - 1]) or "."].layers
        top_dir: int | None = None
        for j in contributing:
            if j == layer:
                break
            e = held[j].get(q)
            if e is None:
                continue
            if isinstance(e, Whiteout):
                return "hidden", ("whiteout", j, "/" + q)
            if not isinstance(e, Dir):
                if top_dir is None and last:
                    return "shadowed", ("above", j, "/" + q)
                return "hidden", ("nondir", j, "/" + q)
            if top_dir is None:
                top_dir = j
            if e.opaque:
                return "hidden", ("opaque", j, "/" + q)
        if isinstance(held[layer][q], Whiteout):
            return "whiteout", None
        assert top_dir is not None and last  # a non-directory below the visible directories
        return "shadowed", ("above", top_dir, "/" + q)
    raise AssertionError("unreachable")


def check_stack(view: StackView, stack: Sequence[Layer]) -> None:
    merged = expected_merge(stack)
    held = [_entries(layer) for layer in stack]
    for path in [*TREE, "a/b/c/x"]:
        exp = view.explain("/" + path)
        m = merged.get(path)
        where = f"{path} in {stack}"
        if m is not None:
            assert (exp.status, exp.layer) == ("visible", m.layer), where
            if isinstance(m.entry, Dir):
                assert exp.merged_layers == m.layers, where
        else:
            real = any(path in h and not isinstance(h[path], Whiteout) for h in held)
            assert exp.status == ("hidden" if real else "absent"), where
        want = [(i, oracle(held, merged, path, i)) for i, h in enumerate(held) if path in h]
        got = [(c.layer, (c.status, _cause(c.by))) for c in exp.copies]
        assert got == want, where
        tops = [c for c in exp.copies if c.type != "whiteout"]
        if exp.status == "hidden":
            assert _cause(exp.reason) == _cause(tops[0].by), where

    tree = view.tree("/")
    shown = {e.path.lstrip("/") or ".": (e.layer, e.layers) for e in tree.walk()}
    assert shown == {
        p: (m.layer, m.layers if isinstance(m.entry, Dir) else (m.layer,))
        for p, m in merged.items()
    }, stack

    with_hidden = view.tree("/", show_hidden=True)
    hidden = {
        e.path.lstrip("/"): (e.layer, _cause(e.hidden_by))
        for e in with_hidden.walk()
        if e.hidden_by is not None
    }
    want_hidden = {}
    for path in TREE:
        parent = merged.get(path.rpartition("/")[0] or ".")
        if path in merged or parent is None or not isinstance(parent.entry, Dir):
            continue
        holders = [i for i, h in enumerate(held) if path in h and not isinstance(h[path], Whiteout)]
        if holders:
            want_hidden[path] = (holders[0], oracle(held, merged, path, holders[0])[1])
    assert hidden == want_hidden, stack

    for index in range(len(stack)):
        only = {e.path.lstrip("/") for e in view.tree("/", layer=index).walk()} - {""}
        own = {p for p, m in merged.items() if p != "." and m.layer == index}
        context = {p.rpartition("/")[0] for p in own} | {
            "/".join(p.split("/")[:k]) for p in own for k in range(1, p.count("/") + 1)
        }
        assert only == own | (context - {""}), (index, stack)


@pytest.mark.parametrize("fmt", format_params())
def test_random_stacks_match_the_model(tmp_path: Path, fmt: Format) -> None:
    rng = random.Random(f"explain-{fmt}")  # noqa: S311 (replayable test data, not secrets)
    for i in range(80):
        stack = [random_layer(rng) for _ in range(rng.randint(1, 4))]
        dirs = build_stack(stack, tmp_path / f"s{i}", fmt)
        with StackView(dir_stack(dirs)) as view:
            check_stack(view, stack)


# --------------------------------------------------------------------------- the store

BASE = oci.Layer(
    oci.tar_bytes(
        [
            directory("etc"),
            file("etc/motd", "base motd\n"),
            file("etc/old.conf", "old\n"),
            directory("opt"),
            directory("opt/app"),
            file("opt/app/a", "a\n"),
            symlink("link", "etc/motd"),
        ]
    )
)
UPDATE = oci.Layer(
    oci.tar_bytes(
        [
            directory("etc"),
            file("etc/motd", "updated motd\n"),
            whiteout("etc/.wh.old.conf"),
            directory("opt"),
            whiteout("opt/.wh..wh..opq"),
            file("opt/new", "new\n"),
        ]
    )
)
APP = oci.Layer(oci.tar_bytes([directory("app"), file("app/main", "print('hi')\n")]))
HISTORY = [
    {"created": "2024-05-01T10:00:00Z", "created_by": "ADD base.tar /"},
    {"created": "2024-05-01T10:00:01Z", "created_by": "ENV X=1", "empty_layer": True},
    {"created": "2024-05-01T10:00:02Z", "created_by": "RUN apt-get install -y motd"},
    {"created": "2024-05-01T10:00:03Z", "created_by": "COPY app /app"},
]
SHORT = {n: short_id(oci.sha256(la.tar)) for n, la in ((1, BASE), (2, UPDATE), (3, APP))}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    layout = oci.oci_layout(tmp_path / "layout", [([BASE, UPDATE, APP], None)], history=HISTORY)
    s = Store(tmp_path / "store")
    s.import_path(layout, parse_reference("app:1"))
    return s


def run(store: Store, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--root", str(store.root), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_an_image_names_history_steps(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(store, capsys, "explain", "app:1", "/etc/motd")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "/etc/motd: file, mode 0644 (-rw-r--r--), owner 0:0, 13 bytes"
    assert lines[1] == (
        f"  from layer 2 of 3 (sha256:{SHORT[2]}), made by: RUN apt-get install -y motd"
    )
    assert f"    layer 1 of 3 (sha256:{SHORT[1]}), made by: ADD base.tar /" in lines
    assert "      file 0644, 10 bytes: shadowed by the copy in layer 2" in lines

    code, out, _ = run(store, capsys, "explain", "--json", "app:1", "etc/old.conf")
    data = json.loads(out)
    assert (code, data["status"]) == (0, "hidden")
    assert data["reason"]["kind"] == "whiteout" and data["reason"]["layer"] == "2"
    assert [c["layer"] for c in data["copies"]] == ["2", "1"]
    steps = [(la["key"], la["created_by"]) for la in data["stack"]["layers"]]
    assert steps == [
        ("3", "COPY app /app"),
        ("2", "RUN apt-get install -y motd"),
        ("1", "ADD base.tar /"),
    ]

    code, out, _ = run(store, capsys, "explain", "app:1", "/opt/app/a")
    assert code == 0
    assert (
        "  /opt/app is not in the merged view: its directory in layer 1 is cut off by the "
        "opaque directory /opt in layer 2" in out
    )


def test_explain_errors(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(store, capsys, "explain", "nope", "/etc")
    assert (code, err) == (1, "unionfs: error: no such container or image: nope\n")
    code, _, err = run(store, capsys, "explain", "app:1", "/no/such/thing")
    assert (code, err) == (1, "unionfs: error: /no/such/thing: no layer has /no\n")
    code, out, _ = run(store, capsys, "explain", "app:1", "/no-such-thing")
    assert (code, out) == (0, "/no-such-thing: not in the merged view\n  no layer has it\n")
    code, _, err = run(store, capsys, "explain", str(store.root))
    assert code == 1 and "is not on a live unionfs mount" in err
    code, _, err = run(store, capsys, "tree", "app:1", "/etc/old.conf")
    assert (code, err) == (
        1,
        "unionfs: error: /etc/old.conf: not in the merged view (unionfs explain says why)\n",
    )
    code, _, err = run(store, capsys, "tree", "app:1", "--layer", "9")
    assert (code, err) == (1, "unionfs: error: no layer 9 in image app:1: its layers are 3, 2, 1\n")
    code, _, err = run(store, capsys, "tree", "nothing-here")
    assert (code, err) == (
        1,
        "unionfs: error: no such container, image or unionfs mount: nothing-here\n",
    )


def test_tree_of_an_image(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(store, capsys, "tree", "app:1", "--show-hidden")
    assert code == 0
    lines = out.splitlines()
    assert lines[:4] == [
        "image app:1: layers, top first",
        f"  [3] layer 3 of 3 (sha256:{SHORT[3]}), made by: COPY app /app",
        f"  [2] layer 2 of 3 (sha256:{SHORT[2]}), made by: RUN apt-get install -y motd",
        f"  [1] layer 1 of 3 (sha256:{SHORT[1]}), made by: ADD base.tar /",
    ]
    assert "│   └── old.conf  [1] hidden by the whiteout in layer 2" in "\n".join(lines)
    code, out, _ = run(store, capsys, "tree", "--json", "app:1", "--layer", "2")
    paths = set(_tree_paths(json.loads(out)["tree"]))
    assert paths == {"/", "/etc", "/etc/motd", "/opt", "/opt/new"}
    code, out, _ = run(store, capsys, "tree", "--json", "app:1", "/opt", "--show-hidden")
    opt = json.loads(out)["tree"]
    assert (opt["path"], opt["layer"], opt["opaque"]) == ("/opt", "2", "2")
    assert [(c["name"], c["hidden_by"]) for c in opt["children"]] == [
        ("app", {"kind": "opaque", "layer": "2", "path": "/opt", "form": opt_form(store)}),
        ("new", None),
    ]


def test_a_mount_of_store_layers_is_named_as_the_store_names_them(store: Store) -> None:
    """A mount's published layer dirs are recognised as the store's: an image
    mounted read-only, a container, a container mounted read-only; other dirs
    stay plain ``lower N``."""
    image = store.resolve_image("app:1")
    c = store.create_container("app:1", "box")
    lowers = [str(p) for p in store.lowers(image.diff_ids)]
    upper = str(store.container_upper(c))

    def state(lowers: list[str], upper: str | None) -> MountState:
        return MountState("/mnt/x", os.getpid(), lowers, upper, None, "/nonexistent")

    img = mount_stack(state(lowers, None))
    assert img.what == "image app:1 on /mnt/x"
    assert img.layers[0].label == (f"layer 3 of 3 (sha256:{SHORT[3]}), made by: COPY app /app")
    for stack in (mount_stack(state(lowers, upper)), mount_stack(state([upper, *lowers], None))):
        assert stack.what == "container box (app:1) on /mnt/x"
        assert [la.key for la in stack.layers] == ["upper", "3", "2", "1"]
        assert stack.has_upper
    plain = mount_stack(state([lowers[0], "/elsewhere"], None))
    assert [la.label for la in plain.layers] == [
        f"lower 2 of 2 ({lowers[0]})",
        "lower 1 of 2 (/elsewhere)",
    ]
    assert plain.what == "the mount on /mnt/x"


def opt_form(store: Store) -> str:
    """How the importer marked /opt opaque (an xattr as root, else the OCI entry)."""
    layer = store.layer_path(oci.sha256(UPDATE.tar))
    has_entry = (layer / "opt/.wh..wh..opq").exists()
    return "OCI .wh..wh..opq entry" if has_entry else "xattr trusted.overlay.opaque=y"


def _tree_paths(data: dict[str, Any]) -> Iterator[str]:
    yield data["path"]
    for c in data["children"] or ():
        yield from _tree_paths(c)


@pytest.mark.skipif(os.geteuid() != 0, reason="copy-up keeps owners: needs root")
def test_container_copy_up_through_the_filesystem(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """A write through the filesystem semantics copies a file up; explain says
    from which layer, and that the recorded origin is that copy."""
    c = store.create_container("app:1", "box")
    paths = [store.container_upper(c), *store.lowers(c.diff_ids)]
    layers = [FsLayer.open(i, p) for i, p in enumerate(paths)]
    upper = Upper.open(layers[0], store.container_work(c), oci_whiteouts=False)
    fs = UnionFS(layers, upper=upper)
    try:
        root = fs.inodes.root
        etc = fs.lookup(root.ino, b"etc")
        motd = fs.lookup(etc.ino, b"motd")
        fh = fs.open(motd.ino, os.O_WRONLY | os.O_APPEND)
        fs.write(fh, 13, b"more\n")
        fs.release(fh)
        app = fs.lookup(root.ino, b"app")
        fs.unlink(app.ino, b"main")
        fh, _ = fs.create(root.ino, b"new", 0o644, os.O_WRONLY, 0, 0)
        fs.release(fh)
    finally:
        fs.close()
        upper.close()
        for la in layers:
            la.close()

    code, out, _ = run(store, capsys, "explain", "box", "/etc/motd")
    assert code == 0
    assert out.splitlines()[1:3] == [
        "  from the container's upper layer",
        f"  copied up from layer 2 of 3 (sha256:{SHORT[2]}), made by: RUN apt-get install -y "
        "motd; its recorded origin (trusted.overlay.unionfs.origin) is that copy",
    ]
    data = json.loads(run(store, capsys, "explain", "--json", "box", "/etc/motd")[1])
    assert data["upper"] == {"relation": "copied-up", "layer": "2", "origin": "matches"}
    assert [(c["layer"], c["status"]) for c in data["copies"]] == [
        ("upper", "visible"),
        ("2", "shadowed"),
        ("1", "shadowed"),
    ]
    etc_data = json.loads(run(store, capsys, "explain", "--json", "box", "/etc")[1])
    assert etc_data["upper"]["relation"] == "copied-up"
    assert etc_data["merged_layers"] == ["upper", "2", "1"]
    main_data = json.loads(run(store, capsys, "explain", "--json", "box", "/app/main")[1])
    assert main_data["reason"]["kind"] == "whiteout" and main_data["reason"]["layer"] == "upper"
    assert main_data["copies"][0]["form"] == "char device 0/0"
    new = json.loads(run(store, capsys, "explain", "--json", "box", "/new")[1])
    assert new["upper"] == {"relation": "created", "layer": None, "origin": "none"}
    code, out, _ = run(store, capsys, "tree", "box", "--layer", "upper", "--show-hidden")
    assert "│   └── main  [3] hidden by the whiteout in the upper layer (char device 0/0)" in out
    assert "├── etc/  [upper+2+1]" in out


# --------------------------------------------------------------------------- live mounts


@pytest.mark.mount
def test_explain_a_live_container_mount(
    store: Store, tmp_mounts: TmpMounts, capsys: pytest.CaptureFixture[str]
) -> None:
    """The mount's own state names its layers: a file written through the mount
    is explained as copied up, from the image layer that made it."""
    store.create_container("app:1", "c")
    mnt = mount(store.root, tmp_mounts, "c")  # the daemon: a CLI mount
    with open(mnt / "etc/motd", "a") as f:
        f.write("changed\n")
    code, out, _ = run(store, capsys, "explain", "--json", str(mnt / "etc/motd"))
    data = json.loads(out)
    assert (code, data["status"], data["layer"]) == (0, "visible", "upper")
    assert data["upper"] == {"relation": "copied-up", "layer": "2", "origin": "matches"}
    assert data["stack"]["what"] == f"container c (app:1) on {mnt}"
    assert data["entry"]["size"] == len("updated motd\nchanged\n")
    _, out, _ = run(store, capsys, "explain", str(mnt / "link"))  # the link, not its target
    assert out.splitlines()[:2] == [
        "/link: symlink -> etc/motd, owner 0:0",
        f"  from layer 1 of 3 (sha256:{SHORT[1]}), made by: ADD base.tar /",
    ]
    _, out, _ = run(store, capsys, "tree", str(mnt), "/etc")
    assert out.splitlines()[-2:] == ["/etc/  [upper+2+1]", "└── motd  [upper]"]


@pytest.mark.mount
def test_explain_a_plain_lower_mount(
    tmp_path: Path, tmp_mounts: TmpMounts, capsys: pytest.CaptureFixture[str]
) -> None:
    fmt: Format = "chardev" if os.geteuid() == 0 else "oci"
    dirs = build_stack(TEXT_STACK, tmp_path / "s", fmt)
    mnt = tmp_mounts.unionfs(dirs)
    unused = Store(tmp_path / "unused-store")
    code, out, _ = run(unused, capsys, "explain", "--json", str(mnt / "etc/old"))
    data = json.loads(out)
    assert (code, data["status"], data["reason"]["kind"], data["reason"]["layer"]) == (
        0,
        "hidden",
        "whiteout",
        "3",
    )
    _, out, _ = run(unused, capsys, "explain", str(mnt / "srv/x"))
    assert out.splitlines()[:2] == [
        "/srv/x: file, mode 0644 (-rw-r--r--), owner 0:0, 0 bytes",
        f"  from lower 2 of 3 ({dirs[1]})",
    ]
    _, out, _ = run(unused, capsys, "explain", str(mnt))
    assert out.splitlines()[2] == "  a merged directory: lower 3, lower 2, lower 1 (top first)"
    _, out, _ = run(unused, capsys, "tree", str(mnt / "opt"), "--show-hidden")
    assert out.splitlines()[-3:] == [
        "/opt/  [3] opaque in lower 3",
        f"├── app/  [1] cut off by the opaque directory /opt in lower 3 ({OPAQUE_FORM[fmt]})",
        "└── new  [3]",
    ]
