"""`unionfs image analyze` and the per-layer marked trees of `unionfs browse`,
on images whose waste and changes are known by construction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import oci
from tests.support.oci import directory, file, symlink, whiteout
from unionfs.cli.main import main
from unionfs.image.refs import parse_reference
from unionfs.inspect.analyze import analyze
from unionfs.inspect.layerchanges import layer_changes, prefix
from unionfs.inspect.layertree import LayerBrowser, MarkedEntry
from unionfs.inspect.stack import Stack, dir_stack, image_stack
from unionfs.store.store import Store

# A file written in layer 1, overwritten in 2, deleted in 3; a directory whose
# files layer 3 deletes with one whiteout; a directory layer 4 makes opaque; a
# file duplicated unchanged; a file replaced by a directory; files never touched.
L1 = oci.Layer(
    oci.tar_bytes(
        [
            directory("etc"),
            file("etc/app.conf", b"1" * 1000),
            file("keep", b"k" * 500),
            directory("cache"),
            file("cache/a", b"a" * 300),
            directory("cache/sub"),
            file("cache/sub/b", b"b" * 200),
            directory("conf.d"),
            file("conf.d/x", b"x" * 40),
            file("conf.d/y", b"y" * 60),
            file("same", b"s" * 70),
            file("turns-dir", b"t" * 9),
            symlink("link", "keep"),
        ]
    )
)
L2 = oci.Layer(oci.tar_bytes([directory("etc"), file("etc/app.conf", b"2" * 800)]))
L3 = oci.Layer(
    oci.tar_bytes([directory("etc"), whiteout("etc/.wh.app.conf"), whiteout(".wh.cache")])
)
L4 = oci.Layer(
    oci.tar_bytes(
        [
            directory("conf.d"),
            whiteout("conf.d/.wh..wh..opq"),
            file("conf.d/z", b"z" * 5),
            file("same", b"s" * 70),
            directory("turns-dir"),
            file("turns-dir/new", b"n" * 3),
        ]
    )
)
TOTAL = 1000 + 500 + 300 + 200 + 40 + 60 + 70 + 9 + 800 + 5 + 70 + 3


@pytest.fixture
def store(tmp_path: Path) -> Store:
    layout = oci.oci_layout(tmp_path / "layout", [([L1, L2, L3, L4], "w")])
    s = Store(tmp_path / "store")
    s.import_path(layout, parse_reference("waste:1"))
    return s


@pytest.fixture
def stack(store: Store) -> Stack:
    return image_stack(store, store.resolve_image("waste:1"))


def test_waste_known_by_construction(stack: Stack) -> None:
    a = analyze(stack)
    by_path = {w.path: [(stack.layer(c.layer).key, c.kind, c.size) for c in w.copies]
               for w in a.wasteful}  # fmt: skip
    assert by_path == {
        "/etc/app.conf": [("1", "stored", 1000), ("2", "stored", 800), ("3", "deleted", 0)],
        "/cache/a": [("1", "stored", 300), ("3", "deleted", 0)],
        "/cache/sub/b": [("1", "stored", 200), ("3", "deleted", 0)],
        "/conf.d/x": [("1", "stored", 40), ("4", "deleted", 0)],
        "/conf.d/y": [("1", "stored", 60), ("4", "deleted", 0)],
        "/same": [("1", "stored", 70), ("4", "stored", 70)],
        "/turns-dir": [("1", "stored", 9), ("4", "deleted", 0)],
    }
    wasted = 1800 + 300 + 200 + 40 + 60 + 140 + 9
    assert a.wasted_bytes == wasted
    assert a.total_bytes == TOTAL
    assert [w.path for w in a.wasteful][:2] == ["/etc/app.conf", "/cache/a"]  # most bytes first
    # dive's score: each path's smallest copy over all copies
    smallest = 500 + 70 + 5 + 3  # keep, same, conf.d/z, turns-dir/new; the rest end deleted
    assert a.efficiency == pytest.approx(smallest / TOTAL)
    assert [a.layer_bytes[la.index] for la in stack.layers] == [78, 0, 800, TOTAL - 878]
    assert a.user_bytes == 878
    assert a.wasted_user_percent == pytest.approx(100 * wasted / 878)


def test_no_waste_is_full_efficiency(tmp_path: Path) -> None:
    layers = []
    for i, files in enumerate([{"a": b"1" * 10}, {"b": b"22"}, {}]):
        d = tmp_path / f"l{i}"
        d.mkdir()
        for name, data in files.items():
            (d / name).write_bytes(data)
        layers.append(d)
    a = analyze(dir_stack(list(reversed(layers))))
    assert (a.wasted_bytes, a.wasteful, a.efficiency, a.total_bytes) == (0, [], 1.0, 12)
    assert a.wasted_user_percent == 0.0
    empty = tmp_path / "empty"
    empty.mkdir()
    assert analyze(dir_stack([empty])).efficiency == 1.0


def test_layer_changes_say_what_each_layer_removes(stack: Stack) -> None:
    top = {c.path: c for c in layer_changes(stack, 0)}  # layer 4
    assert top["/conf.d"].kind == "C"
    assert {r.path for r in top["/conf.d/x"].removed} == {"/conf.d/x"}
    assert top["/turns-dir"].type == "directory"
    assert [(r.path, r.size, stack.layer(r.layer).key) for r in top["/turns-dir"].removed] == [
        ("/turns-dir", 9, "1")
    ]
    three = {c.path: c for c in layer_changes(stack, 1)}
    assert [r.path for r in three["/cache"].removed] == ["/cache/a", "/cache/sub/b"]
    assert prefix(stack, 2).layers[0].key == "2" and prefix(stack, 0) is stack


def _marks(root: MarkedEntry, stack: Stack) -> dict[str, tuple[str | None, str | None]]:
    return {
        e.path: (e.mark, stack.layer(e.by).key if e.by is not None else None) for e in root.walk()
    }


def test_marked_trees_as_of_each_layer(stack: Stack) -> None:
    browser = LayerBrowser(stack)
    t = browser.tree(0)  # as of layer 4: everything, each mark by its layer
    marks = _marks(t.root, t.stack)
    assert marks["/conf.d/x"] == ("opaque", "4")
    assert marks["/conf.d/z"] == ("added", "4")
    assert marks["/same"] == ("changed", "4")
    assert marks["/etc/app.conf"] == ("removed", "3")
    assert marks["/cache"] == ("removed", "3")
    assert marks["/keep"] == ("added", "1")
    assert marks["/turns-dir"] == ("changed", "4")
    assert marks["/"] == (None, None)

    only = _marks(browser.tree(1, only=True).root, prefix(stack, 1))  # layer 3 alone
    assert only == {
        "/": (None, None),
        "/cache": ("removed", "3"),
        "/etc": ("changed", "3"),
        "/etc/app.conf": ("removed", "3"),
    }
    two = _marks(browser.tree(2).root, prefix(stack, 2))  # as of layer 2
    assert two["/etc/app.conf"] == ("changed", "2")
    assert two["/cache/sub/b"] == ("added", "1")
    assert "/conf.d/z" not in two

    exp = browser.explain(1, "/etc/app.conf")
    assert exp.status == "hidden" and exp.stack.layers[0].key == "3"


# -- the command ---------------------------------------------------------------------


def run(store: Store, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["--root", str(store.root), "image", "analyze", "waste:1", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_analyze_command(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(store, capsys)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "image waste:1: 4 layers"
    assert lines[1] == f"Total size:  3.06kB ({TOTAL} bytes)"
    assert lines[3].startswith("Wasted:      2.55kB (2549 bytes, ")
    assert "7 wasteful paths" in out
    row = next(line for line in lines if "/etc/app.conf" in line)
    assert row.split() == ["1.8kB", "/etc/app.conf", "layer", "1:", "1kB,", "layer", "2:",
                           "800B,", "layer", "3:", "deleted"]  # fmt: skip

    code, out, err = run(store, capsys, "--json")
    data = json.loads(out)
    assert code == 0 and data["failed"] == []
    assert (data["total_bytes"], data["wasted_bytes"]) == (TOTAL, 2549)
    assert data["efficiency"] == pytest.approx(578 / TOTAL, abs=1e-6)
    first = data["wasteful"][0]
    assert first["path"] == "/etc/app.conf" and first["wasted_bytes"] == 1800
    assert first["copies"][2] == {"layer": "3", "kind": "deleted", "bytes": 0}


def test_analyze_thresholds(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(store, capsys, "--fail-under", "0.1", "--max-wasted", "2549")[0] == 0
    code, out, err = run(store, capsys, "--fail-under", "95%")
    assert code == 1 and out.startswith("image waste:1")
    assert err == "unionfs: error: efficiency 18.90% is under 95.00% (--fail-under)\n"
    code, _, err = run(store, capsys, "--max-wasted", "2.5kB", "--max-wasted-percent", "50")
    assert code == 1
    assert err.splitlines() == [
        "unionfs: error: 2549 bytes wasted, over 2500 bytes (--max-wasted)",
        "unionfs: error: 290.32% of the bytes above the base layer wasted, over 50% "
        "(--max-wasted-percent)",
    ]
    code, out, err = run(store, capsys, "--json", "--max-wasted", "1000")
    assert code == 1 and json.loads(out)["failed"] == [
        "2549 bytes wasted, over 1000 bytes (--max-wasted)"
    ]
    code, _, err = run(store, capsys, "--fail-under", "2")
    assert code == 2 and "not between 0 and 1" in err
    code, _, err = run(store, capsys, "--max-wasted", "lots")
    assert code == 2 and "is not a size" in err
    code = main(["--root", str(store.root), "image", "analyze", "nope:1"])
    assert code == 1 and "nope" in capsys.readouterr().err
