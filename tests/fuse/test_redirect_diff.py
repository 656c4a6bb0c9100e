"""Directory renames with redirects, unionfs against kernel overlayfs with
``redirect_dir=on``: the renames unionmount-testsuite exercises (a populated
lower dir, an empty one, a dir moved between parents, a dir renamed twice, mass
renames, hard links inside renamed dirs), each followed by a remount with the
upper rotated into the lower stack (it becomes the top lower layer, a fresh
upper goes on top), another rename there, and one more rotation. Both sides must
agree on every result, every merged tree, every upper as a layer and every
redirect written. Then each reads the other's upper, and ``redirect_dir=off``
keeps the EXDEV that makes mv copy.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import pytest

from tests.fuse.test_write_diff import layer_view, ls, meta, same_inode, settle
from tests.support.kernel import TmpMounts
from tests.support.stack import Dir, File, HardLink, Layer, Whiteout, build_stack
from tests.support.tree import (
    DEFAULT_FIELDS,
    Node,
    check_ino_consistency,
    compare,
    render,
    snapshot,
)

pytestmark = pytest.mark.mount

KERNEL_OPTS = ("redirect_dir=on", "index=off", "metacopy=off")
REDIRECT = "trusted.overlay.redirect"
MASS = 24

STACK: list[Layer] = [
    [  # top
        File("srv/merged/top", b"top\n"),
        Whiteout("data/tree/gone"),
        File("data/tree/sub/upper-z", b"uz\n"),
    ],
    [  # bottom
        File("data/tree/x", b"x\n", xattrs={"user.k": b"v"}),
        File("data/tree/gone", b"gone\n"),
        File("data/tree/sub/z", b"z\n", mode=0o600),
        Dir("data/empty", mode=0o750),
        File("srv/merged/low", b"low\n"),
        File("srv/merged/sub/deep", b"deep\n"),
        File("hl/dir/x", b"linked\n"),
        HardLink("hl/dir/y", "hl/dir/x"),
        *(File(f"mass/d{i:02d}/f", b"%d\n" % i) for i in range(MASS)),
    ],
]

Op: TypeAlias = Callable[[Path], object]
Mounter: TypeAlias = Callable[[TmpMounts, list[Path], Path, Path, str], Path]


def mount_kernel(tm: TmpMounts, lowers: list[Path], upper: Path, work: Path, name: str) -> Path:
    return tm.overlay(lowers, name=name, upper=upper, work=work, extra_opts=KERNEL_OPTS)


def mount_unionfs(tm: TmpMounts, lowers: list[Path], upper: Path, work: Path, name: str) -> Path:
    return tm.unionfs(lowers, name=name, args=["--upper", str(upper), "--work", str(work)])


def outcome(op: Op, mnt: Path) -> object:
    try:
        return ("ok", op(mnt))
    except OSError as e:
        return ("errno", errno.errorcode.get(e.errno or 0, e.errno))


@dataclass
class Round:
    result: object
    tree: dict[str, Node]
    upper: dict[str, Node]
    redirects: dict[str, bytes]


def run_rounds(
    tmp_path: Path, tm: TmpMounts, mounter: Mounter, label: str, ops: Sequence[Op | None]
) -> list[Round]:
    """Each op on a fresh upper over the stack, the previous upper rotated into
    the lowers; None only looks (after the last rotation)."""
    root = tmp_path / label
    lowers = build_stack(STACK, root / "layers", "chardev")
    since = time.time_ns() - 1_000_000_000
    rounds = []
    for i, op in enumerate(ops):
        upper, work = root / f"upper{i}", root / f"work{i}"
        upper.mkdir()
        work.mkdir()
        mnt = mounter(tm, lowers, upper, work, f"mnt-{label}{i}")
        result = outcome(op, mnt) if op is not None else None
        tree = snapshot(mnt)
        tm.unmount(mnt)
        problems = check_ino_consistency(tree)
        assert problems == [], f"{label} round {i}: " + "\n".join(problems)
        raw = snapshot(upper)
        redirects = {
            p: n.xattrs[REDIRECT] for p, n in raw.items() if n.xattrs and REDIRECT in n.xattrs
        }
        rounds.append(Round(result, settle(tree, since), settle(layer_view(raw), since), redirects))
        lowers = [upper, *lowers]
    return rounds


def differential(tmp_path: Path, tm: TmpMounts, ops: Sequence[Op | None]) -> None:
    ref = run_rounds(tmp_path, tm, mount_kernel, "k", ops)
    sub = run_rounds(tmp_path, tm, mount_unionfs, "u", ops)
    names = ("overlayfs", "unionfs")
    problems = []
    for i, (r, s) in enumerate(zip(ref, sub, strict=True)):
        if r.result != s.result:
            problems.append(f"round {i} result: overlayfs {r.result!r}, unionfs {s.result!r}")
        problems += [f"round {i} merged: {d}" for d in compare(r.tree, s.tree, names=names)]
        problems += [f"round {i} upper: {d}" for d in compare(r.upper, s.upper, names=names)]
        if r.redirects != s.redirects:
            problems.append(f"round {i} redirects: overlayfs {r.redirects}, unionfs {s.redirects}")
    assert problems == [], (
        "\n".join(problems) + "\n\nunionfs trees:\n" + "\n".join(render(s.tree) for s in sub)
    )


# --------------------------------------------------------------------------- scenarios


def rename_populated(m: Path) -> object:
    os.rename(m / "data/tree", m / "data/tree2")
    return ls(m / "data/tree2"), ls(m / "data/tree2/sub"), os.path.exists(m / "data/tree")


def rename_populated_again(m: Path) -> object:
    os.rename(m / "data/tree2", m / "srv/tree3")
    os.rename(m / "srv/tree3/sub", m / "subtop")
    return ls(m / "srv/tree3"), ls(m / "subtop")


def rename_empty(m: Path) -> object:
    os.rename(m / "data/empty", m / "data/empty2")
    os.mkdir(m / "data/empty2/new")
    return ls(m / "data/empty2"), meta(m / "data/empty2")[:2]


def rename_empty_again(m: Path) -> object:
    os.rename(m / "data/empty2", m / "empty3")
    os.rmdir(m / "empty3/new")
    os.rmdir(m / "empty3")
    return ls(m), ls(m / "data")


def move_between_parents(m: Path) -> object:
    os.rename(m / "data/tree", m / "srv/merged/tree")
    return ls(m / "srv/merged"), ls(m / "srv/merged/tree")


def move_back(m: Path) -> object:
    os.rename(m / "srv/merged/tree", m / "data/tree")
    os.rename(m / "srv/merged", m / "data/merged")
    return ls(m / "data"), ls(m / "data/merged"), ls(m / "data/tree")


def rename_twice(m: Path) -> object:
    os.rename(m / "data/tree", m / "data/t1")
    os.rename(m / "data/t1", m / "srv/t2")
    os.rename(m / "srv/t2", m / "srv/t3")
    return ls(m / "srv"), ls(m / "srv/t3")


def rename_twice_more(m: Path) -> object:
    os.rename(m / "srv/t3", m / "srv/t4")
    os.rename(m / "srv/t4", m / "data/tree")
    return ls(m / "data"), ls(m / "data/tree/sub")


def mass_renames(m: Path) -> object:
    for i in range(MASS):
        os.rename(m / f"mass/d{i:02d}", m / f"mass/e{i:02d}")
    os.mkdir(m / "mass2")
    for i in range(0, MASS, 2):
        os.rename(m / f"mass/e{i:02d}", m / f"mass2/e{i:02d}")
    return ls(m / "mass"), ls(m / "mass2")


def mass_renames_again(m: Path) -> object:
    for i in range(MASS):
        src = m / ("mass2" if i % 2 == 0 else "mass") / f"e{i:02d}"
        os.rename(src, m / f"mass/f{i:02d}")
    return ls(m / "mass"), sorted((m / f"mass/f{i:02d}/f").read_text() for i in range(MASS))


def hard_links_in_renamed_dir(m: Path) -> object:
    os.rename(m / "hl/dir", m / "hl/dir2")
    a, b = m / "hl/dir2/x", m / "hl/dir2/y"
    return meta(a), same_inode(a, b)


def hard_links_moved_again(m: Path) -> object:
    os.rename(m / "hl/dir2", m / "linked")
    a, b = m / "linked/x", m / "linked/y"
    before = same_inode(a, b)
    with open(a, "ab") as f:  # the copy-up of one name breaks the group (index=off)
        f.write(b"more\n")
    return before, same_inode(a, b), b.read_bytes(), os.lstat(a).st_nlink


SCENARIOS: dict[str, tuple[Op, Op]] = {
    "populated lower dir": (rename_populated, rename_populated_again),
    "empty lower dir": (rename_empty, rename_empty_again),
    "moved between parents": (move_between_parents, move_back),
    "renamed twice": (rename_twice, rename_twice_more),
    "mass renames": (mass_renames, mass_renames_again),
    "hard links in a renamed dir": (hard_links_in_renamed_dir, hard_links_moved_again),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_rename_matches_kernel(tmp_path: Path, tmp_mounts: TmpMounts, name: str) -> None:
    """The rename, then (upper rotated down) a follow-up rename, then one more
    rotation to look: the kernel and unionfs agree at every step."""
    first, second = SCENARIOS[name]
    differential(tmp_path, tmp_mounts, [first, second, None])


# --------------------------------------------------------------------------- interop


def everything(m: Path) -> None:
    """Every kind of rename of the scenarios, on one tree."""
    os.rename(m / "data/tree", m / "data/t1")
    os.rename(m / "data/t1", m / "srv/merged/t2")
    os.rename(m / "srv/merged/t2/sub", m / "sub")
    os.rename(m / "data/empty", m / "empty")
    mass_renames(m)
    os.rename(m / "hl/dir", m / "srv/merged/sub/hl")
    os.rename(m / "srv/merged", m / "merged")


@pytest.mark.parametrize("writer", ["kernel", "unionfs"])
def test_upper_read_by_the_other(tmp_path: Path, tmp_mounts: TmpMounts, writer: str) -> None:
    """One implementation renames; the other mounts its upper over the same lowers
    and shows the same tree."""
    mounters = {"kernel": mount_kernel, "unionfs": mount_unionfs}
    reader = "unionfs" if writer == "kernel" else "kernel"
    lowers = build_stack(STACK, tmp_path / "layers", "chardev")
    upper, work, work2 = tmp_path / "upper", tmp_path / "work", tmp_path / "work2"
    for d in (upper, work, work2):
        d.mkdir()
    mnt = mounters[writer](tmp_mounts, lowers, upper, work, "w")
    everything(mnt)
    written = snapshot(mnt)
    tmp_mounts.unmount(mnt)
    mnt = mounters[reader](tmp_mounts, lowers, upper, work2, "r")
    read = snapshot(mnt)
    tmp_mounts.unmount(mnt)
    diffs = compare(written, read, fields=DEFAULT_FIELDS, names=(writer, reader))
    assert diffs == [], "\n".join(diffs) + "\n\n" + render(read)


# --------------------------------------------------------------------------- redirect_dir=off


def test_redirect_dir_off_keeps_exdev(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    """``-o redirect_dir=off``: rename(2) of a lower dir is EXDEV, as overlayfs
    with redirect_dir=off, and mv copies; the upper holds no redirect."""
    results = {}
    trees = {}
    for label in ("kernel", "unionfs"):
        lowers = build_stack(STACK, tmp_path / label / "layers", "chardev")
        upper, work = tmp_path / label / "upper", tmp_path / label / "work"
        upper.mkdir()
        work.mkdir()
        if label == "kernel":
            opts = ("redirect_dir=off", "index=off", "metacopy=off")
            mnt = tmp_mounts.overlay(lowers, name=label, upper=upper, work=work, extra_opts=opts)
        else:
            args = ["--upper", str(upper), "--work", str(work), "-o", "redirect_dir=off"]
            mnt = tmp_mounts.unionfs(lowers, name=label, args=args)
        first = outcome(lambda m: os.rename(m / "data/tree", m / "data/tree2"), mnt)
        proc = subprocess.run(["mv", str(mnt / "data/tree"), str(mnt / "srv/tree")], check=False)
        results[label] = (first, proc.returncode, ls(mnt / "srv/tree"))
        trees[label] = snapshot(mnt)
        tmp_mounts.unmount(mnt)
        raw = snapshot(upper)
        assert not [p for p, n in raw.items() if n.xattrs and REDIRECT in n.xattrs]
        shutil.rmtree(tmp_path / label / "work")
    assert results["unionfs"] == results["kernel"]
    assert results["unionfs"][0] == ("errno", "EXDEV")
    # mv copies: times of the copies are the copy's, so compare names and types.
    assert compare(trees["kernel"], trees["unionfs"], fields={"type", "size", "sha256"}) == []


def test_inode_numbers_survive_rename_and_remount(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    """A renamed dir and what it holds keep their st_ino through the rename and
    a remount (the dir by the origin its upper copy records)."""
    lowers = build_stack(STACK, tmp_path / "layers", "chardev")
    upper = tmp_path / "upper"
    upper.mkdir()
    old = ("data/tree", "data/tree/x", "data/tree/sub", "data/tree/sub/z")
    new = ("srv/t", "srv/t/x", "srv/t/sub", "srv/t/sub/z")
    seen = []
    for i in range(2):
        work = tmp_path / f"work{i}"
        work.mkdir()
        mnt = mount_unionfs(tmp_mounts, lowers, upper, work, f"m{i}")
        if i == 0:
            seen.append([os.lstat(mnt / p).st_ino for p in old])
            os.rename(mnt / "data/tree", mnt / "srv/t")
        seen.append([os.lstat(mnt / p).st_ino for p in new])
        tmp_mounts.unmount(mnt)
    assert seen[0] == seen[1] == seen[2], seen
