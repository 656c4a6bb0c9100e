"""``-o userxattr`` with a root daemon against kernel overlayfs mounted
``userxattr``: each over its own fresh upper on the same lower layer, the same
operations give the same results, the same merged tree, and the same overlay
bookkeeping in the upper (``user.overlay.*`` only, never ``trusted.overlay.*``).
Then each mount reads the upper the other wrote.

The two differ in bookkeeping that only one of them has: the kernel's
``user.overlay.origin`` (a file handle), ``impure`` and ``uuid``, and
unionfs's ``user.overlay.unionfs.origin``; those are compared apart.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.kernel import TmpMounts
from tests.support.tree import compare, snapshot

pytestmark = pytest.mark.mount

KERNEL_ONLY = {"user.overlay.origin", "user.overlay.impure", "user.overlay.uuid"}
UNIONFS_ONLY = {"user.overlay.unionfs.origin"}


def _lower(base: Path) -> Path:
    lower = base / "lower"
    (lower / "a/sub").mkdir(parents=True)
    (lower / "a/f").write_bytes(b"a/f\n")
    (lower / "a/sub/deep").write_bytes(b"deep\n")
    (lower / "b").mkdir()
    (lower / "b/g").write_bytes(b"g\n")
    (lower / "c").write_bytes(b"c\n")
    (lower / "gone").write_bytes(b"gone\n")
    return lower


def _run(op: Callable[[], object]) -> str:
    try:
        op()
    except OSError as exc:
        return errno.errorcode[exc.errno or 0]
    return "ok"


def _operations(mnt: Path) -> dict[str, str]:
    """Rename of a lower dir (EXDEV: no redirects with userxattr), rm -r then
    mkdir of a lower dir (opaque), a copy-up of a file and of a dir, an unlink
    (whiteout)."""

    def rm_b() -> None:
        os.unlink(mnt / "b/g")
        os.rmdir(mnt / "b")
        os.mkdir(mnt / "b")
        (mnt / "b/new").write_bytes(b"new\n")

    def append_c() -> None:
        with open(mnt / "c", "ab") as f:
            f.write(b"more\n")

    ops: dict[str, Callable[[], object]] = {
        "rename lower dir": lambda: os.rename(mnt / "a", mnt / "a2"),
        "rm -r and mkdir a lower dir": rm_b,
        "append to a lower file": append_c,
        "chmod in a lower dir": lambda: os.chmod(mnt / "a/sub/deep", 0o600),
        "unlink": lambda: os.unlink(mnt / "gone"),
        "mkdir": lambda: os.mkdir(mnt / "fresh"),
    }
    return {what: _run(op) for what, op in ops.items()}


def _overlay_xattrs(upper: Path) -> dict[str, dict[str, bytes]]:
    """Every ``*.overlay.*`` attribute in `upper`, by relative path."""
    out: dict[str, dict[str, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(upper):
        for name in [".", *dirnames, *filenames]:
            path = os.path.normpath(os.path.join(dirpath, name))
            found = {
                a: os.getxattr(path, a, follow_symlinks=False)
                for a in os.listxattr(path, follow_symlinks=False)
                if ".overlay." in a
            }
            if found:
                out[os.path.relpath(path, upper)] = found
    return out


def _without(attrs: dict[str, dict[str, bytes]], names: set[str]) -> dict[str, dict[str, bytes]]:
    kept = {p: {a: v for a, v in d.items() if a not in names} for p, d in attrs.items()}
    return {p: d for p, d in kept.items() if d}


def _fresh(base: Path, name: str) -> tuple[Path, Path]:
    upper, work = base / f"{name}-upper", base / f"{name}-work"
    upper.mkdir()
    work.mkdir()
    return upper, work


def test_userxattr_writes_what_overlayfs_writes(tmp_mounts: TmpMounts, tmp_path: Path) -> None:
    lower = _lower(tmp_path)
    k_upper, k_work = _fresh(tmp_path, "kernel")
    u_upper, u_work = _fresh(tmp_path, "unionfs")
    kernel = tmp_mounts.overlay([lower], upper=k_upper, work=k_work, extra_opts=("userxattr",))
    ours = tmp_mounts.unionfs(
        [], args=["-o", f"lowerdir={lower},upperdir={u_upper},workdir={u_work},userxattr"]
    )
    k_results, u_results = _operations(kernel), _operations(ours)
    assert u_results == k_results
    assert k_results["rename lower dir"] == "EXDEV"
    assert k_results["rm -r and mkdir a lower dir"] == "ok"
    diffs = compare(
        snapshot(kernel), snapshot(ours), ignore=("mtime_ns",), names=("kernel", "unionfs")
    )
    assert not diffs, "\n".join(diffs)

    k_attrs, u_attrs = _overlay_xattrs(k_upper), _overlay_xattrs(u_upper)
    assert not [a for d in u_attrs.values() for a in d if a.startswith("trusted.")], u_attrs
    assert _without(u_attrs, UNIONFS_ONLY) == _without(k_attrs, KERNEL_ONLY)
    assert u_attrs["b"]["user.overlay.opaque"] == b"y"
    for copied in ("c", "a", "a/sub", "a/sub/deep"):
        assert "user.overlay.unionfs.origin" in u_attrs[copied], copied

    # Interop: each mount reads the upper the other wrote, and sees the same tree.
    merged = snapshot(ours)
    tmp_mounts.unmount(kernel)
    tmp_mounts.unmount(ours)
    kernel_over_ours = tmp_mounts.overlay(
        [lower], name="k2", upper=u_upper, work=_fresh(tmp_path, "k2")[1], extra_opts=("userxattr",)
    )
    diffs = compare(
        merged, snapshot(kernel_over_ours), ignore=("mtime_ns",), names=("unionfs", "kernel")
    )
    assert not diffs, "\n".join(diffs)
    tmp_mounts.unmount(kernel_over_ours)
    ours_over_kernel = tmp_mounts.unionfs(
        [],
        name="u2",
        args=[
            "-o",
            f"lowerdir={lower},upperdir={k_upper},workdir={_fresh(tmp_path, 'u2')[1]},userxattr",
        ],
    )
    diffs = compare(
        merged,
        snapshot(ours_over_kernel),
        ignore=("mtime_ns",),
        names=("unionfs", "unionfs over kernel's upper"),
    )
    assert not diffs, "\n".join(diffs)


def test_userxattr_with_redirect_dir_on_writes_user_redirects(
    tmp_mounts: TmpMounts, tmp_path: Path
) -> None:
    """fuse-overlayfs takes ``userxattr,redirect_dir=on`` (overlayfs refuses
    it): the redirect goes to ``user.overlay.redirect`` and unionfs follows it."""
    lower = _lower(tmp_path)
    upper, work = _fresh(tmp_path, "unionfs")
    opts = f"lowerdir={lower},upperdir={upper},workdir={work},userxattr,redirect_dir=on"
    ours = tmp_mounts.unionfs([], args=["-o", opts])
    os.rename(ours / "a", ours / "a2")
    assert (ours / "a2/sub/deep").read_bytes() == b"deep\n"
    attrs = _overlay_xattrs(upper)
    assert attrs["a2"]["user.overlay.redirect"] == b"a"
    assert not [a for d in attrs.values() for a in d if a.startswith("trusted.")], attrs
    tmp_mounts.unmount(ours)
    again = tmp_mounts.unionfs([], name="again", args=["-o", opts])
    assert sorted(os.listdir(again / "a2")) == ["f", "sub"]
    assert not (again / "a").exists()
