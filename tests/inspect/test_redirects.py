"""Inspection of an upper with renamed directories (redirects): ``unionfs diff``
shows the new name added and the old one deleted, as docker diff shows a
renamed directory; ``explain`` and ``tree`` say where the content comes from."""

from pathlib import Path

from tests.fs.test_redirect import LOWER, Env
from tests.support.stack import build_stack
from unionfs.fs.inodes import ROOT_INO
from unionfs.inspect.answers import Renamed
from unionfs.inspect.changes import Change, container_changes
from unionfs.inspect.stack import dir_stack
from unionfs.inspect.view import StackView


def test_diff_of_renamed_dirs(tmp_path: Path) -> None:
    e = Env(tmp_path, build_stack(LOWER, tmp_path / "lower", "chardev"))
    try:
        e.fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0)  # relative redirect
        e.fs.rename(e.walk("p").ino, b"q", ROOT_INO, b"q2", 0)  # absolute
        e.fs.mkdir(e.walk("q2").ino, b"new", 0o755, 0, 0)
        e.fs.unlink(e.walk("b/sub").ino, b"two")
    finally:
        e.close()
    assert container_changes(e.upper_dir, e.lowers) == [
        Change("D", "/a"),
        Change("A", "/b"),
        Change("A", "/b/sub"),
        Change("C", "/p"),
        Change("D", "/p/q"),
        Change("A", "/q2"),
        Change("A", "/q2/new"),
    ]


def test_explain_and_tree_of_renamed_dirs(tmp_path: Path) -> None:
    """explain says where a renamed dir's content comes from, and explains what
    is inside it from that content; tree labels it."""
    e = Env(tmp_path, build_stack(LOWER, tmp_path / "lower", "chardev"))
    try:
        e.fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0)
        e.fs.rename(e.walk("p").ino, b"q", e.walk("b").ino, b"q2", 0)
    finally:
        e.close()
    with StackView(dir_stack(e.lowers, e.upper_dir)) as view:
        b = view.explain("/b")
        assert b.renamed == Renamed("/a", (1,))
        assert b.merged_layers == (0, 1)
        q2 = view.explain("/b/q2")
        assert q2.renamed == Renamed("/p/q", (1,))
        three = view.explain("/b/q2/three")
        assert (three.status, three.layer) == ("visible", 1)
        assert [(c.layer, c.status) for c in three.copies] == [(1, "visible")]
        old = view.explain("/a")  # the old name: a whiteout hides the lower dir
        assert old.status == "hidden"
        assert old.reason is not None and old.reason.kind == "whiteout"
        tree = view.tree("/")
        renamed = {t.path: t.renamed_from for t in tree.walk() if t.renamed_from}
        assert renamed == {"/b": "/a", "/b/q2": "/p/q"}
