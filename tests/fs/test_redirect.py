"""Directory renames with redirects (overlayfs ``redirect_dir=on``) through the
filesystem semantics, with no FUSE mount: the redirect written, the old name
whited out, lookups and listings following redirects in every layer, inode
numbers kept."""

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import Dir, File, HardLink, Layer, build_stack
from unionfs.fs.inodes import ROOT_INO, Node
from unionfs.fs.layer import Layer as FsLayer
from unionfs.fs.upper import Upper
from unionfs.fs.vfs import UnionFS

REDIRECT = "trusted.overlay.redirect"

LOWER: list[Layer] = [
    [
        File("a/one", b"1\n"),
        File("a/sub/two", b"2\n"),
        Dir("empty"),
        Dir("p/q"),
        File("p/q/three", b"3\n"),
        File("h/x", b"x\n"),
        HardLink("h/y", "h/x"),
    ],
]


class Env:
    """An upper over `layers` (top first), reopened by `remount`."""

    def __init__(self, root: Path, layers: list[Path]) -> None:
        self.root = root
        self.lowers = layers
        self.upper_dir = root / "upper"
        self.work_dir = root / "work"
        self.upper_dir.mkdir()
        self.work_dir.mkdir()
        self.fs = self._open()

    def _open(self) -> UnionFS:
        paths = [self.upper_dir, *self.lowers]
        layers = [FsLayer.open(i, p) for i, p in enumerate(paths)]
        return UnionFS(layers, upper=Upper.open(layers[0], self.work_dir, oci_whiteouts=False))

    def close(self) -> None:
        self.fs.close()
        assert self.fs.upper is not None
        self.fs.upper.close()
        for la in self.fs.layers:
            la.close()

    def remount(self, *, rotate: bool = False) -> None:
        """Open again; with `rotate` the upper becomes the top lower layer
        under a fresh upper."""
        self.close()
        if rotate:
            n = len(list(self.root.glob("old-upper-*")))
            old = self.root / f"old-upper-{n}"
            self.upper_dir.rename(old)
            self.lowers = [old, *self.lowers]
            self.upper_dir.mkdir()
        self.fs = self._open()

    def walk(self, path: str) -> Node:
        node = self.fs.inodes.root
        for part in path.split("/"):
            if part:
                node = self.fs.lookup(node.ino, part.encode())
        return node

    def tree(self, node: Node | None = None, prefix: str = "") -> dict[str, str]:
        """The merged tree: path -> "dir", or a file's content."""
        node = node or self.fs.inodes.root
        out: dict[str, str] = {}
        for name, child in self.fs.list_dir(node)[2:]:
            path = prefix + os.fsdecode(name)
            if stat.S_ISDIR(child.st.st_mode):
                out[path] = "dir"
                out.update(self.tree(self.walk(path), path + "/"))
            else:
                fh = self.fs.open(self.walk(path).ino, os.O_RDONLY)
                out[path] = self.fs.read(fh, 0, 100).decode()
                self.fs.release(fh)
        return out


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path, build_stack(LOWER, tmp_path / "lower", "chardev"))
    yield e
    e.close()


def moved(tree: dict[str, str], old: str, new: str) -> dict[str, str]:
    out = {}
    for p, v in tree.items():
        at = new + p[len(old) :] if p == old or p.startswith(old + "/") else p
        out[at] = v
    return dict(sorted(out.items()))


def test_rename_within_a_dir_writes_a_relative_redirect(env: Env) -> None:
    before = env.tree()
    ino = env.walk("a").ino
    env.fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0)
    assert os.getxattr(env.upper_dir / "b", REDIRECT) == b"a"
    assert stat.S_ISCHR((env.upper_dir / "a").lstat().st_mode)
    assert dict(sorted(env.tree().items())) == moved(before, "a", "b")
    assert env.walk("b").ino == ino
    env.remount()
    assert dict(sorted(env.tree().items())) == moved(before, "a", "b")
    assert env.walk("b").ino == ino


def test_rename_across_dirs_writes_an_absolute_redirect(env: Env) -> None:
    before = env.tree()
    env.fs.rename(env.walk("p").ino, b"q", env.walk("a/sub").ino, b"r", 0)
    assert os.getxattr(env.upper_dir / "a/sub/r", REDIRECT) == b"/p/q"
    expected = moved(before, "p/q", "a/sub/r")
    assert dict(sorted(env.tree().items())) == expected
    env.remount()
    assert dict(sorted(env.tree().items())) == expected


def test_renames_chain(env: Env) -> None:
    """a -> b (relative), then b moved into another dir (absolute, from the
    first redirect), then renamed again there (kept)."""
    before = env.tree()
    env.fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0)
    env.fs.rename(ROOT_INO, b"b", env.walk("p").ino, b"c", 0)
    assert os.getxattr(env.upper_dir / "p/c", REDIRECT) == b"/a"
    env.fs.rename(env.walk("p").ino, b"c", env.walk("p").ino, b"d", 0)
    assert os.getxattr(env.upper_dir / "p/d", REDIRECT) == b"/a"
    env.fs.rename(env.walk("p/d").ino, b"sub", ROOT_INO, b"top", 0)
    assert os.getxattr(env.upper_dir / "top", REDIRECT) == b"/a/sub"
    expected = moved(moved(before, "a", "p/d"), "p/d/sub", "top")
    assert dict(sorted(env.tree().items())) == expected
    for rotate in (False, True):
        env.remount(rotate=rotate)
        assert dict(sorted(env.tree().items())) == expected


def test_renames_after_rotation_follow_lower_redirects(env: Env) -> None:
    """A redirect in a lower layer (an upper rotated down) is followed, also on
    the way along an absolute path."""
    before = env.tree()
    env.fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0)
    env.remount(rotate=True)
    env.fs.rename(env.walk("b").ino, b"sub", ROOT_INO, b"s", 0)
    assert os.getxattr(env.upper_dir / "s", REDIRECT) == b"/b/sub"
    env.fs.rename(ROOT_INO, b"b", ROOT_INO, b"c", 0)
    expected = moved(moved(before, "a", "c"), "c/sub", "s")
    assert dict(sorted(env.tree().items())) == expected
    env.remount(rotate=True)
    assert dict(sorted(env.tree().items())) == expected


def test_changes_inside_a_renamed_dir(env: Env) -> None:
    env.fs.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0)
    b = env.walk("b")
    env.fs.unlink(b.ino, b"one")
    assert stat.S_ISCHR((env.upper_dir / "b/one").lstat().st_mode)
    env.fs.mkdir(b.ino, b"new", 0o755, 0, 0)
    env.fs.rename(b.ino, b"sub", b.ino, b"sub2", 0)
    expected = {"b/new": "dir", "b/sub2": "dir", "b/sub2/two": "2\n"}
    assert env.tree(env.walk("b"), "b/") == expected
    env.remount()
    assert env.tree(env.walk("b"), "b/") == expected
    assert "a" not in env.tree()


def test_renamed_over_an_empty_lower_dir(env: Env) -> None:
    before = env.tree()
    env.fs.rename(ROOT_INO, b"a", ROOT_INO, b"empty", 0)
    expected = moved({k: v for k, v in before.items() if k != "empty"}, "a", "empty")
    assert dict(sorted(env.tree().items())) == expected
    env.remount()
    assert dict(sorted(env.tree().items())) == expected
