"""Tests of the test-support code (tests/stack.py, kernel.py, tree.py, conftest.py).

They use kernel overlayfs as the reference and do not need unionfs. Hand-written
expectations pin down the merge rules; ``expected_merge`` must agree with both
them and the kernel, because the unionfs tests trust it later.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.support.kernel import (
    REQUIRE_MOUNTS_ENV,
    TmpMounts,
    _unescape,
    is_mountpoint,
    mount_overlay,
    mounts_under,
    overlay_mount,
    overlay_options,
    requires_root_and_fuse,
    unmount,
)
from tests.support.stack import (
    DEFAULT_MTIME_NS,
    KERNEL_FORMATS,
    OCI_OPAQUE,
    UNPREDICTABLE,
    Device,
    Dir,
    Fifo,
    File,
    Format,
    HardLink,
    Layer,
    Symlink,
    Whiteout,
    build_layer,
    build_stack,
    default_mtime_ns,
    expected_merge,
    expected_snapshot,
    kernel_ghosts,
)
from tests.support.tree import (
    Node,
    check_ino_consistency,
    compare,
    render,
    snapshot,
)

# --------------------------------------------------------------------------- the stack

TOP: Layer = [
    File("etc/hosts", b"127.0.0.1 top\n", mode=0o600),  # replaced twice
    Whiteout("var/cache"),  # a directory whited out
    Dir("opt", opaque=True),  # opaque: only its own content shows
    File("opt/new", b"new\n"),
    Dir("merged", mode=0o750, uid=1, gid=2, xattrs={"user.from": b"top"}),
    File("merged/from2", b"2\n"),
    File("merged/shadowed", b"top\n"),
    Dir("op2"),  # merges with an opaque dir in the middle layer
    File("op2/t", b"t\n"),
    File("replaced_dir", b"a file over a dir\n"),  # a non-dir hides the dir below
    Dir("was_file"),  # a dir over a file: nothing to merge with
    File("was_file/inner", b"inner\n"),
    Dir("wd"),  # a dir over a whiteout: nothing to merge with
    File("wd/new", b"new\n"),
    Whiteout("fifo"),  # a whiteout at the layer root
]
MIDDLE: Layer = [
    File("etc/hosts", b"127.0.0.1 middle\n"),
    Whiteout("etc/gone"),  # a file whited out
    Dir("merged", mode=0o700),
    File("merged/from1", b"1\n"),
    File("merged/shadowed", b"middle\n"),
    Whiteout("merged/gone0"),
    File("var/cache/middle", b"hidden by the top whiteout\n"),
    Whiteout("wd"),
    Dir("op2", opaque=True),
    File("op2/m", b"m\n"),
]
BOTTOM: Layer = [
    Dir("etc"),
    File("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
    File("etc/hosts", b"127.0.0.1 bottom\n"),
    File("etc/gone", b"gone\n"),
    File("var/cache/apt/pkg", b"pkg\n"),
    File("var/log/syslog", b"log\n"),
    File("opt/old", b"old\n"),
    File("opt/sub/x", b"x\n"),
    Dir("merged", mode=0o755),
    File("merged/from0", b"0\n"),
    File("merged/shadowed", b"bottom\n"),
    File("merged/gone0", b"gone\n"),
    File("op2/b", b"b\n"),
    File("replaced_dir/child", b"child\n"),
    File("was_file", b"file\n"),
    File("wd/old", b"old\n"),
    File("bin/tool", b"#!/bin/sh\n", mode=0o4755),  # setuid
    Dir("tmp", mode=0o1777),  # sticky
    Symlink("link", "etc/hosts"),
    Symlink("dangling", "/nonexistent/target"),
    File("hl/a", b"shared\n", mode=0o640, uid=7, gid=8),
    HardLink("hl/b", "hl/a"),
    File("xa", b"x\n", xattrs={"user.note": b"hello", "trusted.note": b"t"}),
    File("owned", b"o\n", uid=1000, gid=1000, mode=0o600),
    File("empty"),
    Fifo("fifo"),
    Fifo("pipe", mode=0o600),
    Device("dev/null", "char", 1, 3, mode=0o666),
    File("timed", b"t\n", mtime_ns=1_234_567_890_987_654_321),
]
STACK: list[Layer] = [TOP, MIDDLE, BOTTOM]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def children(snap: Mapping[str, object], parent: str) -> set[str]:
    prefix = parent + "/"
    return {p[len(prefix) :] for p in snap if p.startswith(prefix) and "/" not in p[len(prefix) :]}


def mount_opts(fmt: Format) -> tuple[str, ...]:
    return ("userxattr",) if fmt == "user" else ()


def kernel_snapshot(
    layers: list[Layer], fmt: Format, tmp_path: Path, tmp_mounts: TmpMounts
) -> dict[str, Node]:
    dirs = build_stack(layers, tmp_path / f"layers-{fmt}", fmt)
    mnt = tmp_mounts.overlay(dirs, name=f"kernel-{fmt}", extra_opts=mount_opts(fmt))
    try:
        return snapshot(mnt)
    finally:
        tmp_mounts.unmount(mnt)


# --------------------------------------------------------------------------- pure


def test_expected_merge_hand_checked() -> None:
    m = expected_merge(STACK)
    for hidden in ("etc/gone", "var/cache", "var/cache/apt", "merged/gone0", "fifo"):
        assert hidden not in m
    assert children(m, "opt") == {"new"}
    assert children(m, "op2") == {"t", "m"}
    assert children(m, "merged") == {"from0", "from1", "from2", "shadowed"}
    assert children(m, "var") == {"log"}
    assert children(m, "wd") == {"new"}
    assert children(m, "was_file") == {"inner"}
    assert "replaced_dir/child" not in m
    assert m["replaced_dir"].entry == File("replaced_dir", b"a file over a dir\n")
    assert m["etc/hosts"].entry == TOP[0]
    assert m["etc/passwd"].layer == 2
    assert m["merged"].layers == (0, 1, 2)
    assert m["merged"].entry == TOP[4]  # metadata of the topmost dir
    assert m["merged/shadowed"].layer == 0
    assert m["op2"].layers == (0, 1)
    assert m["opt"].layers == (0,)
    assert m["wd"].layers == (0,)
    assert m["was_file"].layers == (0,)
    assert m["etc"].layers == (0, 1, 2)  # implicit dirs merge like declared ones
    assert m["."].layers == (0, 1, 2)
    assert m["hl/b"].inode == File("hl/a", b"shared\n", mode=0o640, uid=7, gid=8)
    assert m["hl/a"].nlink == m["hl/b"].nlink == 2
    assert m["etc/hosts"].mtime_ns == default_mtime_ns(2)
    assert m["etc/passwd"].mtime_ns == default_mtime_ns(0) == DEFAULT_MTIME_NS
    assert m["timed"].mtime_ns == 1_234_567_890_987_654_321


def test_expected_merge_more_rules() -> None:
    # A whiteout hides the name in every layer below, not just the next one.
    m = expected_merge([[], [Whiteout("a")], [], [File("a")]])
    assert "a" not in m
    # An opaque dir cuts off the layers below it but merges with those above.
    m = expected_merge([[File("d/1")], [Dir("d", opaque=True), File("d/2")], [File("d/3")]])
    assert children(m, "d") == {"1", "2"}
    # A dir absent from a middle layer still merges with the one below.
    m = expected_merge([[File("d/1")], [File("other")], [File("d/3")]])
    assert children(m, "d") == {"1", "3"}
    assert m["d"].layers == (0, 2)
    # A non-dir in the middle stops the merge of the dirs around it.
    m = expected_merge([[File("d/1")], [File("d")], [File("d/3")]])
    assert children(m, "d") == {"1"}
    # Whiteouts inside an opaque dir, or of names that never existed, hide nothing.
    m = expected_merge([[Dir("d", opaque=True), Whiteout("d/x"), Whiteout("y")], [File("z")]])
    assert set(m) == {".", "d", "z"}


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        ([File("a"), File("a")], "declared twice"),
        ([File("a"), File("a/b")], "to be a directory"),
        ([HardLink("b", "missing")], "hard link"),
        ([Dir("d"), HardLink("b", "d")], "hard link"),
        ([Dir(".", opaque=True)], "root cannot be opaque"),
    ],
)
def test_invalid_layers(layer: Layer, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        expected_merge([layer])


def test_paths_are_normalized() -> None:
    assert File("/etc//hosts").path == "etc/hosts"
    assert Dir("/").path == "."
    assert HardLink("/a", "/b/./c").target == "b/c"
    with pytest.raises(ValueError, match=r"'\.\.'"):
        File("a/../../escape")


def test_compare_reports_differences() -> None:
    a = {
        ".": Node(type="dir", mode=0o755, size=4096, nlink=3),
        "f": Node(type="file", mode=0o644, sha256="1", xattrs={"user.a": b"1"}, ino=5),
        "g": Node(type="file"),
    }
    b = {
        ".": Node(type="dir", mode=0o755, size=80, nlink=1),
        "f": Node(type="file", mode=0o600, sha256="1", xattrs={"user.a": b"2"}, ino=9),
        "h": Node(type="symlink", target="x"),
    }
    diff = compare(a, b, names=("kernel", "unionfs"))
    assert diff == [
        ".: nlink 3 != 1",
        ".: size 4096 != 80",
        "f: mode 0o644 != 0o600",
        "f: xattrs (kernel vs unionfs) user.a: b'1' != b'2'",
        "g: only in kernel (file - None:None size=None sha256=- nlink=None mtime_ns=None)",
        "h: only in unionfs (symlink - None:None -> x nlink=None mtime_ns=None)",
    ]
    ignored = {"size@dir", "nlink@dir", "mode", "xattrs"}
    assert compare(a, b, ignore=ignored, names=("kernel", "unionfs")) == diff[4:]
    assert compare(a, b, fields={"ino"}, names=("kernel", "unionfs")) == [
        "f: ino 5 != 9",
        *diff[4:],
    ]
    assert compare({"x": Node(type="file")}, {"x": Node(type="dir")}) == ["x: type file != dir"]
    assert compare(a, a) == []
    with pytest.raises(ValueError, match="unknown node field"):
        compare(a, b, ignore={"sizes"})


def test_check_ino_consistency() -> None:
    good = {
        ".": Node(type="dir", ino=1),
        "a": Node(type="file", ino=2, d_ino=2, nlink=2, sha256="s"),
        "b": Node(type="file", ino=2, d_ino=2, nlink=2, sha256="s"),
    }
    assert check_ino_consistency(good) == []
    bad = {
        "a": Node(type="file", ino=2, d_ino=3, nlink=1, sha256="s"),
        "b": Node(type="file", ino=2, d_ino=2, nlink=1, sha256="t"),
        "c": Node(type="dir", ino=4, d_ino=4),
        "d": Node(type="dir", ino=4, d_ino=4),
    }
    assert check_ino_consistency(bad) == [
        "a: st_ino 2 != d_ino 3",
        "a and b share st_ino 2 but differ in sha256: 's' != 't'",
        "st_ino 2 has nlink 1 but 2 names: ['a', 'b']",
        "directories share st_ino 4: c, d",
    ]


def test_mountinfo_unescape() -> None:
    assert _unescape(rb"/tmp/a\040b\011c\012d\134e") == "/tmp/a b\tc\nd\\e"


def test_overlay_options() -> None:
    opts = overlay_options([Path("/l/a:b"), Path("/l/c,d")], extra_opts=["userxattr"])
    assert opts == r"lowerdir=/l/a\:b:/l/c\,d,userxattr"
    opts = overlay_options([Path("/l")], Path("/u\\x"), Path("/w"))
    assert opts == r"lowerdir=/l,upperdir=/u\\x,workdir=/w"
    with pytest.raises(ValueError, match="single lowerdir"):
        overlay_options([Path("/l")])
    with pytest.raises(ValueError, match="go together"):
        overlay_options([Path("/l")], Path("/u"))


def test_snapshot_plain_tree(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d/f").write_bytes(b"data")
    os.symlink("d/f", tmp_path / "l")
    os.symlink("../../outside", tmp_path / "d/up")  # never followed
    os.link(tmp_path / "d/f", tmp_path / "g")
    snap = snapshot(tmp_path)
    assert set(snap) == {".", "d", "d/f", "d/up", "g", "l"}
    assert snap["d/f"].sha256 == sha(b"data")
    assert snap["d/f"].size == 4
    assert snap["d/f"].nlink == 2
    assert snap["l"].type == "symlink"
    assert snap["l"].target == "d/f"
    assert snap["l"].sha256 is None
    assert snap["."].d_ino is None
    assert check_ino_consistency(snap) == []


# --------------------------------------------------------------------------- layers on disk


@requires_root_and_fuse
@pytest.mark.parametrize("fmt", ["chardev", "xattr", "oci", "user"])
def test_layer_encoding(fmt: Format, tmp_path: Path) -> None:
    layer: Layer = [
        Dir("d", opaque=True),
        File("d/f", b"x"),
        Whiteout("gone"),
        Whiteout("sub/gone"),
        File("suid", b"s", mode=0o4755, uid=5, gid=6),
        Dir("sticky", mode=0o1777),
    ]
    root = build_layer(layer, tmp_path / "layer", fmt, depth=3)
    mtime = default_mtime_ns(3)
    prefix = "user.overlay." if fmt == "user" else "trusted.overlay."
    if fmt == "oci":
        for p in (".wh.gone", "sub/.wh.gone", f"d/{OCI_OPAQUE}"):
            st = os.lstat(root / p)
            assert stat.S_ISREG(st.st_mode) and st.st_size == 0
        assert not (root / "gone").exists()
        assert os.listxattr(root / "d") == []
    else:
        assert os.getxattr(root / "d", prefix + "opaque") == b"y"
        for p in ("gone", "sub/gone"):
            st = os.lstat(root / p)
            if fmt == "chardev":
                assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)
            else:
                assert stat.S_ISREG(st.st_mode) and st.st_size == 0
                assert os.getxattr(root / p, prefix + "whiteout") == b""
        markers = {p: os.listxattr(root / p) for p in (".", "sub")}
        if fmt == "chardev":
            assert markers == {".": [], "sub": []}
        else:  # the parents of xattr whiteouts are marked for the kernel
            assert os.getxattr(root, prefix + "opaque") == b"x"
            assert os.getxattr(root / "sub", prefix + "opaque") == b"x"
    suid = os.lstat(root / "suid")
    assert (stat.S_IMODE(suid.st_mode), suid.st_uid, suid.st_gid) == (0o4755, 5, 6)
    assert stat.S_IMODE(os.lstat(root / "sticky").st_mode) == 0o1777
    sub = os.lstat(root / "sub")  # implicit parent
    assert stat.S_IMODE(sub.st_mode) == 0o755
    for p in (".", "d", "d/f", "sub", "suid", "sticky"):
        assert os.lstat(root / p).st_mtime_ns == mtime, p


@requires_root_and_fuse
def test_build_stack_layout(tmp_path: Path) -> None:
    dirs = build_stack([[File("top")], [File("bottom")]], tmp_path, "chardev")
    assert dirs == [tmp_path / "layer0", tmp_path / "layer1"]
    assert (dirs[0] / "top").exists() and (dirs[1] / "bottom").exists()
    assert os.lstat(dirs[0] / "top").st_mtime_ns == default_mtime_ns(1)
    assert os.lstat(dirs[1] / "bottom").st_mtime_ns == default_mtime_ns(0)
    with pytest.raises(ValueError, match="reserved"):
        build_stack([[File(".wh.x")]], tmp_path / "oci", "oci")


# --------------------------------------------------------------------------- kernel


@requires_root_and_fuse
@pytest.mark.parametrize("fmt", KERNEL_FORMATS)
def test_kernel_agrees_with_expected_merge(
    fmt: Format, tmp_path: Path, tmp_mounts: TmpMounts
) -> None:
    assert kernel_ghosts(STACK, fmt) == set()
    snap = kernel_snapshot(STACK, fmt, tmp_path, tmp_mounts)
    expected = expected_snapshot(STACK)
    diff = compare(expected, snap, ignore=UNPREDICTABLE, names=("expected", "kernel"))
    assert diff == [], render(snap)
    assert check_ino_consistency(snap) == []


@requires_root_and_fuse
@pytest.mark.parametrize("fmt", ["chardev", "xattr"])
def test_kernel_key_paths(fmt: Format, tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    s = kernel_snapshot(STACK, fmt, tmp_path, tmp_mounts)
    for hidden in ("etc/gone", "var/cache", "merged/gone0", "fifo", "replaced_dir/child"):
        assert hidden not in s
    assert children(s, "opt") == {"new"}
    assert children(s, "op2") == {"t", "m"}
    assert children(s, "merged") == {"from0", "from1", "from2", "shadowed"}
    assert children(s, "wd") == {"new"}
    assert children(s, "was_file") == {"inner"}
    assert children(s, "var") == {"log"}
    assert s["merged/shadowed"].sha256 == sha(b"top\n")
    assert (s["merged"].mode, s["merged"].uid, s["merged"].gid) == (0o750, 1, 2)
    assert s["merged"].xattrs == {"user.from": b"top"}
    hosts = s["etc/hosts"]
    assert (hosts.mode, hosts.sha256) == (0o600, sha(b"127.0.0.1 top\n"))
    assert hosts.mtime_ns == default_mtime_ns(2)
    assert s["replaced_dir"].type == "file"
    assert s["bin/tool"].mode == 0o4755
    assert (s["tmp"].type, s["tmp"].mode) == ("dir", 0o1777)
    assert (s["link"].type, s["link"].target) == ("symlink", "etc/hosts")
    assert s["dangling"].target == "/nonexistent/target"
    assert s["hl/a"].ino == s["hl/b"].ino
    assert s["hl/a"].nlink == s["hl/b"].nlink == 2
    assert (s["hl/b"].uid, s["hl/b"].gid, s["hl/b"].mode) == (7, 8, 0o640)
    assert s["xa"].xattrs == {"trusted.note": b"t", "user.note": b"hello"}
    assert (s["owned"].uid, s["owned"].gid, s["owned"].mode) == (1000, 1000, 0o600)
    assert (s["dev/null"].type, s["dev/null"].rdev) == ("chardev", (1, 3))
    assert (s["pipe"].type, s["pipe"].mode) == ("fifo", 0o600)
    assert s["empty"].sha256 == sha(b"")
    assert s["timed"].mtime_ns == 1_234_567_890_987_654_321
    # overlayfs' own xattrs never show through the mount
    for path, node in s.items():
        assert node.error is None, path
        assert not any(".overlay." in name for name in node.xattrs or {}), path


@requires_root_and_fuse
def test_kernel_formats_agree(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    snaps = {fmt: kernel_snapshot(STACK, fmt, tmp_path, tmp_mounts) for fmt in KERNEL_FORMATS}
    for fmt in KERNEL_FORMATS[1:]:
        assert compare(snaps["chardev"], snaps[fmt], names=("chardev", fmt)) == []


@requires_root_and_fuse
def test_kernel_directory_metadata(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    """What kernel overlayfs reports for directories; unionfs is compared against it."""
    dirs = build_stack(STACK, tmp_path / "layers", "chardev")
    mnt = tmp_mounts.overlay(dirs)
    s = snapshot(mnt)
    merge = expected_merge(STACK)
    for path, node in s.items():
        if node.type != "dir":
            continue
        real = os.lstat(dirs[merge[path].layer] / path)
        # Merged directories report nlink 1; a directory from one layer reports its own.
        assert node.nlink == (1 if len(merge[path].layers) > 1 else real.st_nlink), path
        # The size is the topmost real directory's.
        assert node.size == real.st_size, path
        # Directories report the mount's st_dev.
        assert node.dev == os.lstat(mnt).st_dev, path
    # d_ino from readdir equals st_ino, also in merged directories.
    assert check_ino_consistency(s) == []


GHOSTS: list[Layer] = [
    [
        Dir("opq", opaque=True),
        Whiteout("opq/a"),  # in an opaque dir
        File("opq/keep"),
        Whiteout("pure/x"),  # in a dir only this layer has
        File("pure/keep"),
        Whiteout("merged/a"),  # in a merged dir: hidden in every format
        File("m2/top"),
    ],
    [
        Dir("m2", opaque=True),
        Whiteout("m2/w"),  # an opaque dir that merges with one above
        File("m2/keep"),
        File("merged/b"),
    ],
    [File("opq/a"), File("merged/a"), File("m2/w")],
]


@requires_root_and_fuse
@pytest.mark.parametrize("fmt", KERNEL_FORMATS)
def test_kernel_ghost_whiteouts(fmt: Format, tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    """The kernel lists whiteouts of directories that are not merged (and xattr
    whiteouts in opaque directories) in readdir, though lookup says ENOENT."""
    snap = kernel_snapshot(GHOSTS, fmt, tmp_path, tmp_mounts)
    ghosts = {p for p, node in snap.items() if node.type == "error"}
    assert ghosts == kernel_ghosts(GHOSTS, fmt)
    expected_ghosts = {"opq/a", "pure/x"} | ({"m2/w"} if fmt != "chardev" else set())
    assert ghosts == expected_ghosts
    assert all(snap[p].error == "lstat: ENOENT" for p in ghosts)
    visible = {p: n for p, n in snap.items() if p not in ghosts}
    assert compare(expected_snapshot(GHOSTS), visible, ignore=UNPREDICTABLE) == []


@requires_root_and_fuse
def test_mount_paths_that_need_escaping(tmp_path: Path) -> None:
    odd = tmp_path / "odd dir"
    dirs = build_stack([[File("top")], [File("bottom")]], odd / "a:b,c", "chardev")
    mnt = odd / "mount point\\with\tescapes"
    mnt.mkdir()
    try:
        mount_overlay(dirs, mnt)
        assert is_mountpoint(mnt)
        assert [m.mountpoint for m in mounts_under(odd)] == [str(mnt)]
        assert sorted(os.listdir(mnt)) == ["bottom", "top"]
    finally:
        unmount(mnt)
    assert not is_mountpoint(mnt)
    unmount(mnt)  # not mounted: no error
    assert not is_mountpoint(tmp_path / "never-existed")


@requires_root_and_fuse
def test_overlay_mount_unmounts_on_error(tmp_path: Path) -> None:
    dirs = build_stack([[File("a")], []], tmp_path / "layers", "chardev")
    mnt = tmp_path / "mnt"
    with pytest.raises(RuntimeError, match="boom"), overlay_mount(dirs, mnt) as m:
        assert is_mountpoint(m)
        raise RuntimeError("boom")
    assert not is_mountpoint(mnt)


@requires_root_and_fuse
def test_stacked_mounts_are_all_unmounted(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    dirs = build_stack([[File("a")], []], tmp_path / "layers", "chardev")
    mnt = tmp_mounts.mountpoint()
    mount_overlay(dirs, mnt)
    mount_overlay(dirs, mnt)
    assert len([m for m in mounts_under(mnt) if m.mountpoint == str(mnt)]) == 2
    unmount(mnt)
    assert not is_mountpoint(mnt)


# --------------------------------------------------------------------------- conftest rules

INNER_CONFTEST = 'pytest_plugins = ["tests.conftest"]\n'


@pytest.mark.allow_warnings  # the inner session's records reach this test's caplog too
def test_unexpected_warnings_fail_the_test(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(
        textwrap.dedent(
            """
            import logging
            import pytest

            log = logging.getLogger("unionfs.fs")

            def test_unexpected():
                log.warning("copy-up failed")

            def test_error_level():
                logging.getLogger("unionfs").error("broken")

            def test_info_is_fine():
                log.info("hello")

            def test_other_loggers_are_fine():
                logging.getLogger("trio").warning("whatever")

            @pytest.mark.allow_warnings
            def test_allowed():
                log.warning("copy-up failed")

            @pytest.mark.allow_warnings(r"fell back to read/write")
            def test_allowed_pattern():
                log.warning("reflink unsupported, fell back to read/write")

            @pytest.mark.allow_warnings(r"fell back")
            def test_pattern_does_not_match():
                log.warning("something else")

            @pytest.fixture
            def noisy_teardown():
                yield
                log.warning("at teardown")

            def test_teardown_warning(noisy_teardown):
                pass
            """
        )
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=8, errors=4)
    result.stdout.fnmatch_lines(["*unexpected warnings logged*", "*WARNING unionfs.fs: copy-up*"])
    for name in ("unexpected", "error_level", "pattern_does_not_match", "teardown_warning"):
        result.stdout.fnmatch_lines([f"ERROR *::test_{name}*"])


@requires_root_and_fuse
def test_tmp_mounts_unmount_after_failure(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(
        textwrap.dedent(
            """
            from tests.support.kernel import is_mountpoint, requires_root_and_fuse
            from tests.support.stack import File, build_stack

            @requires_root_and_fuse
            def test_fails_while_mounted(tmp_path, tmp_mounts):
                dirs = build_stack([[File("a")], []], tmp_path / "layers", "chardev")
                mnt = tmp_mounts.overlay(dirs)
                assert is_mountpoint(mnt)
                assert False, "fails with the mount live"
            """
        )
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    assert mounts_under(pytester.path) == []


@requires_root_and_fuse
def test_session_reports_forgotten_mounts(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(
        textwrap.dedent(
            """
            from tests.support.kernel import mount_overlay, requires_root_and_fuse
            from tests.support.stack import File, build_stack

            @requires_root_and_fuse
            def test_forgets_to_unmount(tmp_path):
                dirs = build_stack([[File("a")], []], tmp_path / "layers", "chardev")
                (tmp_path / "mnt").mkdir()
                mount_overlay(dirs, tmp_path / "mnt")
            """
        )
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*tests left mounts behind*"])
    assert mounts_under(pytester.path) == []


def test_caplog_sees_unionfs_loggers(caplog: pytest.LogCaptureFixture) -> None:
    """The warning rule relies on unionfs records reaching caplog's handler."""
    logging.getLogger("unionfs.test").info("not a warning")
    assert [r.getMessage() for r in caplog.records] in ([], ["not a warning"])


def test_mount_tests_skip_without_support(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tests.conftest.mount_support_problem", lambda: "needs root (test)")
    monkeypatch.delenv(REQUIRE_MOUNTS_ENV, raising=False)
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(
        textwrap.dedent(
            """
            import pytest
            from tests.support.kernel import requires_root_and_fuse

            @requires_root_and_fuse
            def test_alias():
                pass

            @pytest.mark.mount
            def test_marker():
                pass

            def test_plain():
                pass
            """
        )
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines(["*mount test: needs root (test)*"])
    monkeypatch.setenv(REQUIRE_MOUNTS_ENV, "1")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=2)
