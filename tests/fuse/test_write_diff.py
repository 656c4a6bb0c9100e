"""Writable mounts: unionfs and kernel overlayfs, each with its own fresh upper and
work directory over identical lower layers, run the same operations and must agree:
the operation's result (value or errno), the merged tree, the upper layer as written
on disk, and the untouched lower layers.

Timestamps. Explicitly set times (the layers', ``utime(ns=...)``) must be equal to the
nanosecond. Times the filesystem sets to "now" (a file written, a directory whose
entries changed, ``UTIME_NOW``) differ between the two mounts by however long lay
between the two runs, so every mtime taken after a run started is recorded as
``RECENT``: the two sides must still agree on WHICH times were set by the run (for
example a copy-up must keep the lower file's mtime, and a directory that gained an
entry must get a new one).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import stat
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeAlias

import pytest

from tests.support.kernel import WAIT_LIMIT, TmpMounts, overlay_options
from tests.support.stack import (
    OCI_OPAQUE,
    Device,
    Dir,
    Fifo,
    File,
    Format,
    HardLink,
    Layer,
    Symlink,
    Whiteout,
    build_stack,
    kernel_ghosts,
)
from tests.support.tree import (
    ALL_FIELDS,
    DEFAULT_FIELDS,
    TYPE_NAMES,
    Node,
    check_ino_consistency,
    compare,
    render,
    snapshot,
)

pytestmark = pytest.mark.mount

#: Pin the kernel's behaviour to the one unionfs copies (these are also the module
#: defaults here): redirects (a directory with lower content is renamed with a
#: redirect to it), no inode index (copy-up of one name of a hard-link group breaks
#: the group), no metadata-only copy-up.
KERNEL_OPTS = ("redirect_dir=on", "index=off", "metacopy=off")

#: ``mtime_ns`` of a node whose mtime was set during the run (see the module doc).
RECENT = -1

#: A time set explicitly by operations: 2001-09-09T01:46:40.123456789Z.
T1 = 1_000_000_000_123_456_789
T2 = 1_000_000_100_987_654_321

LONG = "n" * 255
BIG = bytes(range(256)) * 400

STACK: list[Layer] = [
    [  # top
        File("etc/motd", b"top motd\n", xattrs={"user.note": b"top"}),
        Whiteout("etc/old.conf"),
        Dir("etc/conf.d", opaque=True),
        File("etc/conf.d/only", b"only\n"),
        Whiteout("var/cache"),
        File("srv/merged/top", b"top\n"),
        File("data/top-file", b"from the top\n", mode=0o600, uid=1000, gid=1000),
    ],
    [  # bottom
        File("etc/motd", b"bottom motd\n"),
        File("etc/old.conf", b"old\n"),
        File("etc/conf.d/a.conf", b"a\n"),
        File("var/cache/big", b"cache\n"),
        File("var/log/messages", b"log\n"),
        File("srv/merged/low", b"low\n"),
        File("srv/merged/sub/deep", b"deep\n"),
        File(
            "data/file",
            b"lower data\n",
            mode=0o640,
            uid=1000,
            gid=10,
            xattrs={"user.a": b"1", "user.b": b"\xff\x00", "trusted.t": b"t"},
        ),
        File("data/other", b"other\n"),
        File("data/big", BIG),
        File("data/exec", b"#!/bin/sh\n", mode=0o4755),
        Symlink("data/sym", "file", uid=1000, gid=1000),
        File("data/linked", b"linked\n"),
        HardLink("data/linked2", "data/linked"),
        File("data/tree/x", b"x\n"),
        File("data/tree/y", b"y\n"),
        Dir("data/empty"),
        Dir("data/sgid", mode=0o2777, gid=10),
        File(f"data/{LONG}", b"long\n"),
        Fifo("data/fifo"),
        Device("data/null", "char", 1, 3, mode=0o666),
    ],
]

#: A lower file 100 directories of 30-character names deep (about 3100 bytes).
DEEP_DIRS = [f"{i:03d}".ljust(30, "d") for i in range(100)]
DEEP_STACK: list[Layer] = [
    [File("top", b"top\n")],
    [File("/".join([*DEEP_DIRS, "leaf"]), b"leaf\n", mode=0o600)],
]


# --------------------------------------------------------------------------- harness

Op: TypeAlias = Callable[[Path], object]
Mounter: TypeAlias = Callable[[TmpMounts, list[Path], Path, Path, str], Path]


def mount_kernel(
    tmp_mounts: TmpMounts, lowers: list[Path], upper: Path, work: Path, name: str
) -> Path:
    return tmp_mounts.overlay(lowers, name=name, upper=upper, work=work, extra_opts=KERNEL_OPTS)


def mount_unionfs(
    tmp_mounts: TmpMounts, lowers: list[Path], upper: Path, work: Path, name: str
) -> Path:
    return tmp_mounts.unionfs(lowers, name=name, args=["--upper", str(upper), "--work", str(work)])


def mount_unionfs_o(
    tmp_mounts: TmpMounts, lowers: list[Path], upper: Path, work: Path, name: str
) -> Path:
    """unionfs mounted the way tools that drive fuse-overlayfs do it: ``-o``."""
    return tmp_mounts.unionfs([], name=name, args=["-o", overlay_options(lowers, upper, work)])


#: The implementation under test. Set it to ``mount_kernel`` to check the harness
#: itself: the kernel must then agree with itself everywhere.
SUBJECT: Mounter = mount_unionfs


def outcome(op: Op, mnt: Path) -> object:
    try:
        return ("ok", op(mnt))
    except OSError as e:
        return ("errno", errno.errorcode.get(e.errno or 0, e.errno))


@dataclass
class Run:
    """What one implementation did with one operation."""

    label: str
    result: object
    #: The merged tree after the operation, recent mtimes masked.
    tree: dict[str, Node]
    #: The upper directory after unmounting, recent mtimes and private xattrs masked.
    upper: dict[str, Node]
    #: The upper directory after unmounting, as it is on disk.
    raw_upper: dict[str, Node]
    #: Differences between each lower layer before and after (must be none).
    lower_changes: list[str]


def settle(snap: Mapping[str, Node], since_ns: int) -> dict[str, Node]:
    """``snap`` with every mtime at or after ``since_ns`` replaced by ``RECENT``."""
    return {
        p: replace(n, mtime_ns=RECENT) if n.mtime_ns is not None and n.mtime_ns >= since_ns else n
        for p, n in snap.items()
    }


OPAQUE_XATTR = "trusted.overlay.opaque"


def layer_view(snap: Mapping[str, Node]) -> dict[str, Node]:
    """A raw upper directory as a layer: without ``trusted.overlay.*`` xattrs
    (``opaque_marker_problems`` checks that unionfs wrote no OCI opaque entry).

    Each implementation keeps its own bookkeeping in ``trusted.overlay.*`` (origin,
    impure, ...), and the kernel also marks directories opaque where nothing below
    could show through (a new directory moved into a merged one, a directory
    renamed over a lower whiteout), so even the opaque marker may legitimately
    differ. Whether the markers that matter are there is checked by mounting one
    implementation's upper with the other (``test_upper_read_back``).

    The link count of whiteouts is left out too: the kernel makes every whiteout a
    hard link of one shared inode in the work dir, so its count is the number of
    whiteouts made since the mount, plus one.
    """
    out: dict[str, Node] = {}
    for p, node in snap.items():
        n = node
        if n.type == "chardev" and n.rdev == (0, 0):
            n = replace(n, nlink=None)
        if n.xattrs is not None:
            kept = {k: v for k, v in n.xattrs.items() if not k.startswith("trusted.overlay.")}
            n = replace(n, xattrs=kept)
        out[p] = n
    return out


def opaque_marker_problems(raw: Mapping[str, Node]) -> list[str]:
    """An upper written by unionfs in the overlayfs whiteout form marks opaque
    directories with the ``trusted.overlay.opaque=y`` xattr alone: kernel overlayfs
    mounting that upper would list a ``.wh..wh..opq`` entry as a file."""
    return [
        f"{p}: {OCI_OPAQUE} in an upper written with overlayfs whiteouts"
        for p in raw
        if os.path.basename(p) == OCI_OPAQUE
    ]


def run_once(
    tmp_path: Path,
    tmp_mounts: TmpMounts,
    mounter: Mounter,
    label: str,
    stack: list[Layer],
    op: Op,
    fmt: Format = "chardev",
) -> Run:
    # Each side gets its own copy of the layers, so that neither sees the access
    # times the other left on them; the paths of both sides have equal lengths.
    root = tmp_path / label
    lowers = build_stack(stack, root / "layers", fmt)
    before = [snapshot(layer) for layer in lowers]
    since = time.time_ns() - 1_000_000_000
    upper, work = root / "upper", root / "work"
    upper.mkdir()
    work.mkdir()
    mnt = mounter(tmp_mounts, lowers, upper, work, f"mnt-{label}")
    result = outcome(op, mnt)
    tree = snapshot(mnt)
    tmp_mounts.unmount(mnt)
    raw = snapshot(upper)
    changes = []
    for i, (layer, old) in enumerate(zip(lowers, before, strict=True)):
        diffs = compare(old, snapshot(layer), fields=ALL_FIELDS, names=("before", "after"))
        changes += [f"layer{i}: {d}" for d in diffs]
    return Run(
        label,
        result,
        settle(tree, since),
        settle(layer_view(raw), since),
        raw,
        changes,
    )


def differential(
    tmp_path: Path,
    tmp_mounts: TmpMounts,
    op: Op,
    stack: list[Layer] = STACK,
    *,
    upper_subset: bool = False,
    subject: Mounter | None = None,
    subject_fmt: Format = "chardev",
) -> None:
    """Run ``op`` on kernel overlayfs and on the subject; assert they agree.

    ``subject_fmt`` is how the subject's lower layers encode whiteouts and opaque
    directories (the kernel's always use "chardev"). With ``upper_subset`` the
    subject's upper may lack files the kernel's has (the
    kernel copies up before some checks that then fail), but what it has must match.
    """
    ref = run_once(tmp_path, tmp_mounts, mount_kernel, "k", stack, op)
    sub = run_once(tmp_path, tmp_mounts, subject or SUBJECT, "u", stack, op, subject_fmt)
    names = ("overlayfs", "unionfs")
    problems = []
    if ref.result != sub.result:
        problems.append(f"result: overlayfs {ref.result!r}, unionfs {sub.result!r}")
    problems += [f"merged: {d}" for d in compare(ref.tree, sub.tree, names=names)]
    if upper_subset:
        ref_upper = {p: n for p, n in ref.upper.items() if p in sub.upper}
        upper_diffs = compare(ref_upper, sub.upper, ignore={"nlink@dir"}, names=names)
    else:
        upper_diffs = compare(ref.upper, sub.upper, names=names)
    problems += [f"upper: {d}" for d in upper_diffs]
    if SUBJECT is not mount_kernel:
        problems += [f"unionfs upper: {d}" for d in opaque_marker_problems(sub.raw_upper)]
    problems += [f"overlayfs changed a lower {d}" for d in ref.lower_changes]
    problems += [f"unionfs changed a lower {d}" for d in sub.lower_changes]
    problems += [f"unionfs inode numbers: {d}" for d in check_ino_consistency(sub.tree)]
    assert problems == [], (
        "\n".join(problems)
        + f"\n\nresult: {sub.result!r}"
        + "\n\nunionfs merged tree:\n"
        + render(sub.tree)
        + "\n\nunionfs upper:\n"
        + render(sub.upper)
    )


# --------------------------------------------------------------------------- helpers


def when(ns: int) -> int | str:
    """A timestamp as a comparable value: "recent" if set within the last hour."""
    return "recent" if ns > time.time_ns() - 3600 * 1_000_000_000 else ns


def meta(p: Path) -> tuple[object, ...]:
    """lstat of ``p`` without inode numbers: type, mode, owner, size, nlink, mtime."""
    st = os.lstat(p)
    return (
        TYPE_NAMES.get(stat.S_IFMT(st.st_mode), "?"),
        oct(stat.S_IMODE(st.st_mode)),
        st.st_uid,
        st.st_gid,
        st.st_size,
        st.st_nlink,
        when(st.st_mtime_ns),
    )


def fmeta(fd: int) -> tuple[object, ...]:
    """Mode, size and link count of an open file descriptor."""
    st = os.fstat(fd)
    return (oct(stat.S_IMODE(st.st_mode)), st.st_size, st.st_nlink)


def times(p: Path) -> tuple[int | str, int | str]:
    """(atime, mtime) of ``p``, each as ``when`` gives it."""
    st = os.lstat(p)
    return when(st.st_atime_ns), when(st.st_mtime_ns)


def xattrs(p: Path) -> dict[str, bytes]:
    return {
        k: os.getxattr(p, k, follow_symlinks=False)
        for k in sorted(os.listxattr(p, follow_symlinks=False))
    }


def ls(p: Path) -> list[str]:
    return sorted(os.listdir(p))


def write(p: Path, data: bytes, *, exclusive: bool = False) -> None:
    with open(p, "xb" if exclusive else "wb") as f:
        f.write(data)


def pwrite(p: Path, data: bytes, offset: int) -> None:
    fd = os.open(p, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def same_inode(a: Path, b: Path) -> bool:
    return os.lstat(a).st_ino == os.lstat(b).st_ino


_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2


def renameat2(old: Path, new: Path, flags: int) -> None:
    """glibc's renameat2(2); raises OSError like os.rename."""
    rc = _libc.renameat2(_AT_FDCWD, os.fsencode(old), _AT_FDCWD, os.fsencode(new), flags)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(old))


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _timespec(ns: int) -> _Timespec:
    if ns in (UTIME_NOW, UTIME_OMIT):
        return _Timespec(0, ns)
    return _Timespec(ns // 1_000_000_000, ns % 1_000_000_000)


def utimensat(p: Path, atime: int, mtime: int) -> None:
    """utimensat(2) with ns times or UTIME_NOW / UTIME_OMIT, not following symlinks."""
    ts = (_Timespec * 2)(_timespec(atime), _timespec(mtime))
    at_symlink_nofollow = 0x100
    if _libc.utimensat(_AT_FDCWD, os.fsencode(p), ts, at_symlink_nofollow) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(p))


_USER_PRELUDE = """
import errno, os, sys
os.fchdir(int(sys.argv[1]))
def attempt(f, *args):
    try:
        f(*args)
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
"""


def as_user(m: Path, script: str, uid: int = 1000, gid: int = 1000) -> str:
    """Run the Python ``script`` as ``uid:gid`` (no supplementary groups) through
    ``setpriv``, in the mount's root, and return what it printed.

    The process enters the mount through an inherited directory fd, so the test's
    private temp directories above the mountpoint need not be searchable for it.
    """
    fd = os.open(m, os.O_RDONLY | os.O_DIRECTORY)
    try:
        proc = subprocess.run(
            [
                "setpriv",
                f"--reuid={uid}",
                f"--regid={gid}",
                "--clear-groups",
                "/usr/bin/python3",
                "-I",
                "-c",
                _USER_PRELUDE + script,
                str(fd),
            ],
            pass_fds=(fd,),
            capture_output=True,
            text=True,
            timeout=WAIT_LIMIT,
            check=False,
        )
    finally:
        os.close(fd)
    if proc.returncode != 0:
        raise AssertionError(f"script as {uid}:{gid} failed: {proc.stderr}")
    return proc.stdout.strip()


# --------------------------------------------------------------------------- operations
# Each operation gets the mountpoint and returns plain values that must be equal on
# both mounts (never inode numbers: compare them within the mount and return a bool).


def statvfs_of_upper(m: Path) -> object:
    """A writable overlay reports the upper filesystem's size and limits."""
    sv = os.statvfs(m)
    return sv.f_bsize, sv.f_blocks, sv.f_files, sv.f_namemax, bool(sv.f_flag & os.ST_RDONLY)


def create_write_read(m: Path) -> object:
    p = m / "etc/new"
    write(p, b"hello\n", exclusive=True)
    return p.read_bytes(), meta(p), ls(m / "etc")


def create_over_whiteout(m: Path) -> object:
    write(m / "etc/old.conf", b"reborn\n", exclusive=True)
    return (m / "etc/old.conf").read_bytes(), ls(m / "etc")


def create_in_opaque_dir(m: Path) -> object:
    write(m / "etc/conf.d/a.conf", b"new a\n", exclusive=True)
    return ls(m / "etc/conf.d")


def create_mode(m: Path) -> object:
    os.close(os.open(m / "data/mode0600", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return meta(m / "data/mode0600")


def create_deep_in_lower(m: Path) -> object:
    p = m / "srv/merged/sub/new"
    write(p, b"new\n")
    return ls(m / "srv/merged/sub"), meta(m / "srv/merged/sub")


def write_then_list(m: Path) -> object:
    """Attributes stay right when a listing of the parent follows a write."""
    p = m / "data/new"
    write(p, b"new content\n")
    ls(m / "data")
    return meta(p), p.read_bytes()


def fchmod_then_list(m: Path) -> object:
    p = m / "data/other"
    fd = os.open(p, os.O_RDWR)
    try:
        os.fchmod(fd, 0o600)
        os.fchown(fd, 1000, 1000)
    finally:
        os.close(fd)
    ls(m / "data")
    return meta(p)


def write_lower(m: Path) -> object:
    p = m / "data/file"
    with open(p, "r+b") as f:
        f.write(b"LOWER")
    return p.read_bytes(), meta(p), xattrs(p)


def write_top_lower(m: Path) -> object:
    p = m / "etc/motd"
    pwrite(p, b"TOP", 0)
    return p.read_bytes(), meta(p), xattrs(p)


def write_big_middle(m: Path) -> object:
    p = m / "data/big"
    data = b"\x00middle\x00"
    pwrite(p, data, 50_000)
    return p.read_bytes() == BIG[:50_000] + data + BIG[50_000 + len(data) :], meta(p)


def append_lower(m: Path) -> object:
    p = m / "data/file"
    with open(p, "ab") as f:
        f.write(b"appended\n")
    return p.read_bytes(), meta(p)


def truncate_shorter(m: Path) -> object:
    p = m / "data/file"
    os.truncate(p, 3)
    return p.read_bytes(), meta(p), xattrs(p)


def truncate_longer(m: Path) -> object:
    p = m / "data/file"
    os.truncate(p, 70_000)
    return p.read_bytes() == b"lower data\n" + bytes(70_000 - 11), meta(p)


def ftruncate_lower(m: Path) -> object:
    p = m / "data/file"
    fd = os.open(p, os.O_WRONLY)
    try:
        os.ftruncate(fd, 5)
        inside = fmeta(fd)
    finally:
        os.close(fd)
    return p.read_bytes(), meta(p), inside


def open_trunc_lower(m: Path) -> object:
    p = m / "data/file"
    os.close(os.open(p, os.O_WRONLY | os.O_TRUNC))
    return p.read_bytes(), meta(p), xattrs(p)


def open_rdwr_only(m: Path) -> object:
    """Opening for write copies up even if nothing is written."""
    p = m / "data/other"
    os.close(os.open(p, os.O_RDWR))
    return p.read_bytes(), meta(p)


def open_rdonly_no_copy_up(m: Path) -> object:
    p = m / "data/other"
    os.close(os.open(p, os.O_RDONLY))
    return p.read_bytes()


def ino_kept_by_write(m: Path) -> object:
    p = m / "data/file"
    before = os.stat(p).st_ino
    pwrite(p, b"x", 0)
    after = os.stat(p).st_ino
    d_ino = {e.name: e.inode() for e in os.scandir(m / "data")}["file"]
    return before == after, d_ino == after


def ino_kept_by_chmod_and_rename(m: Path) -> object:
    before = os.stat(m / "data/other").st_ino
    os.chmod(m / "data/other", 0o600)
    mid = os.stat(m / "data/other").st_ino
    os.rename(m / "data/other", m / "srv/other")
    return before == mid, before == os.stat(m / "srv/other").st_ino


def ro_fd_sees_later_write(m: Path) -> object:
    p = m / "data/file"
    ro = os.open(p, os.O_RDONLY)
    try:
        first = os.pread(ro, 5, 0)
        pwrite(p, b"NEW", 0)
        return first, os.pread(ro, 100, 0), fmeta(ro)
    finally:
        os.close(ro)


def chmod_lower(m: Path) -> object:
    os.chmod(m / "data/file", 0o604)
    return meta(m / "data/file"), xattrs(m / "data/file"), (m / "data/file").read_bytes()


def chown_lower(m: Path) -> object:
    os.chown(m / "data/other", 1000, 1000)
    return meta(m / "data/other")


def chown_setuid_file(m: Path) -> object:
    os.chown(m / "data/exec", 1000, 1000)
    return meta(m / "data/exec")


def lchown_symlink(m: Path) -> object:
    os.chown(m / "data/sym", 0, 10, follow_symlinks=False)
    return meta(m / "data/sym"), meta(m / "data/file"), os.readlink(m / "data/sym")


def chown_through_symlink(m: Path) -> object:
    os.chown(m / "data/sym", 0, 0)
    return meta(m / "data/sym"), meta(m / "data/file")


def chmod_lower_dir(m: Path) -> object:
    os.chmod(m / "data/tree", 0o700)
    return meta(m / "data/tree"), ls(m / "data/tree")


def chown_merged_dir(m: Path) -> object:
    os.chown(m / "srv/merged", 1000, 1000)
    return meta(m / "srv/merged"), ls(m / "srv/merged")


def utime_explicit(m: Path) -> object:
    os.utime(m / "data/file", ns=(T1, T2))
    return times(m / "data/file"), (m / "data/file").read_bytes()


def utime_now(m: Path) -> object:
    os.utime(m / "data/file")
    return times(m / "data/file")


def utime_omit_atime(m: Path) -> object:
    utimensat(m / "data/file", UTIME_OMIT, T2)
    return times(m / "data/file")


def utime_omit_mtime(m: Path) -> object:
    utimensat(m / "data/file", T1, UTIME_OMIT)
    return times(m / "data/file")


def utime_now_and_explicit(m: Path) -> object:
    utimensat(m / "data/file", UTIME_NOW, T2)
    return times(m / "data/file")


def utime_symlink(m: Path) -> object:
    os.utime(m / "data/sym", ns=(T1, T2), follow_symlinks=False)
    return times(m / "data/sym"), times(m / "data/file")


def utime_dir(m: Path) -> object:
    os.utime(m / "data/tree", ns=(T1, T2))
    return times(m / "data/tree")


def touch_tool(m: Path) -> object:
    """touch -a / -m set one time each (UTIME_OMIT for the other)."""
    subprocess.run(["touch", "-a", "-d", "@1000000000.5", str(m / "data/file")], check=True)
    subprocess.run(["touch", "-m", "-d", "@1000000100.25", str(m / "data/other")], check=True)
    return times(m / "data/file"), times(m / "data/other")


def setxattr_lower(m: Path) -> object:
    os.setxattr(m / "data/file", "user.new", b"value")
    return xattrs(m / "data/file"), (m / "data/file").read_bytes(), meta(m / "data/file")


def setxattr_replace(m: Path) -> object:
    os.setxattr(m / "data/file", "user.a", b"2", os.XATTR_REPLACE)
    return xattrs(m / "data/file")


def setxattr_create_existing(m: Path) -> None:
    os.setxattr(m / "data/file", "user.a", b"2", os.XATTR_CREATE)


def setxattr_replace_missing(m: Path) -> None:
    os.setxattr(m / "data/file", "user.none", b"2", os.XATTR_REPLACE)


def setxattr_dir(m: Path) -> object:
    os.setxattr(m / "srv/merged", "user.dir", b"d")
    return xattrs(m / "srv/merged"), ls(m / "srv/merged")


def setxattr_trusted(m: Path) -> object:
    os.setxattr(m / "data/other", "trusted.mine", b"t")
    return xattrs(m / "data/other")


def setxattr_overlay_private(m: Path) -> None:
    os.setxattr(m / "data/other", "trusted.overlay.opaque", b"y")


def removexattr_lower(m: Path) -> object:
    os.removexattr(m / "data/file", "user.a")
    return xattrs(m / "data/file"), meta(m / "data/file")


def removexattr_missing(m: Path) -> None:
    os.removexattr(m / "data/file", "user.none")


def mkdir_new(m: Path) -> object:
    os.mkdir(m / "data/newdir", 0o750)
    return meta(m / "data/newdir"), ls(m / "data/newdir")


def mkdir_existing(m: Path) -> None:
    os.mkdir(m / "data/tree")


def mkdir_over_whited_out_dir(m: Path) -> object:
    os.mkdir(m / "var/cache")
    return ls(m / "var/cache"), ls(m / "var")


def mkdir_under_whiteout(m: Path) -> None:
    os.mkdir(m / "var/cache/sub")


def mkdir_over_whited_out_file(m: Path) -> object:
    os.mkdir(m / "etc/old.conf")
    return ls(m / "etc/old.conf"), meta(m / "etc/old.conf")


def rmdir_upper(m: Path) -> object:
    os.mkdir(m / "data/newdir")
    os.rmdir(m / "data/newdir")
    return (m / "data/newdir").exists(), ls(m / "data")


def rmdir_merged_nonempty(m: Path) -> None:
    os.rmdir(m / "srv/merged")


def rmdir_lower_nonempty(m: Path) -> None:
    os.rmdir(m / "data/tree")


def rmdir_lower_emptied(m: Path) -> object:
    os.unlink(m / "data/tree/x")
    os.unlink(m / "data/tree/y")
    os.rmdir(m / "data/tree")
    gone = not os.path.lexists(m / "data/tree")
    os.mkdir(m / "data/tree")
    return gone, ls(m / "data/tree"), ls(m / "data")


def rmdir_merged_emptied(m: Path) -> object:
    for name in ("top", "low", "sub/deep"):
        os.unlink(m / "srv/merged" / name)
    os.rmdir(m / "srv/merged/sub")
    os.rmdir(m / "srv/merged")
    gone = not os.path.lexists(m / "srv/merged")
    os.mkdir(m / "srv/merged")
    return gone, ls(m / "srv/merged"), ls(m / "srv")


def rmdir_half_emptied(m: Path) -> None:
    os.unlink(m / "data/tree/x")
    os.rmdir(m / "data/tree")


def rmdir_lower_empty(m: Path) -> object:
    os.rmdir(m / "data/empty")
    return ls(m / "data")


def rmdir_then_file(m: Path) -> object:
    os.rmdir(m / "data/empty")
    write(m / "data/empty", b"now a file\n", exclusive=True)
    return meta(m / "data/empty")


def rmdir_opaque(m: Path) -> object:
    os.unlink(m / "etc/conf.d/only")
    os.rmdir(m / "etc/conf.d")
    os.mkdir(m / "etc/conf.d")
    return ls(m / "etc/conf.d")


def rmdir_file(m: Path) -> None:
    os.rmdir(m / "data/file")


def rmdir_whited_out(m: Path) -> None:
    os.rmdir(m / "var/cache")


def unlink_dir(m: Path) -> None:
    os.unlink(m / "data/empty")


def unlink_lower(m: Path) -> object:
    os.unlink(m / "data/other")
    return os.path.lexists(m / "data/other"), ls(m / "data")


def unlink_recreate(m: Path) -> object:
    os.unlink(m / "data/file")
    write(m / "data/file", b"second life\n", exclusive=True)
    return (m / "data/file").read_bytes(), meta(m / "data/file"), xattrs(m / "data/file")


def unlink_upper_only(m: Path) -> object:
    write(m / "data/temp", b"t")
    os.unlink(m / "data/temp")
    return ls(m / "data")


def unlink_top_layer(m: Path) -> object:
    os.unlink(m / "etc/motd")
    return ls(m / "etc")


def unlink_whited_out(m: Path) -> None:
    os.unlink(m / "etc/old.conf")


def unlink_hidden_by_opaque(m: Path) -> None:
    os.unlink(m / "etc/conf.d/a.conf")


def unlink_lower_hard_link(m: Path) -> object:
    os.unlink(m / "data/linked2")
    return meta(m / "data/linked"), ls(m / "data")


def unlink_special(m: Path) -> object:
    for name in ("sym", "fifo", "null"):
        os.unlink(m / "data" / name)
    return ls(m / "data")


def unlink_open_upper(m: Path) -> object:
    p = m / "data/temp"
    write(p, b"still here\n")
    fd = os.open(p, os.O_RDONLY)
    try:
        os.unlink(p)
        return fmeta(fd), os.pread(fd, 100, 0), os.path.lexists(p)
    finally:
        os.close(fd)


def unlink_open_lower(m: Path) -> object:
    p = m / "data/other"
    fd = os.open(p, os.O_RDONLY)
    try:
        os.unlink(p)
        return fmeta(fd), os.pread(fd, 100, 0), os.path.lexists(p)
    finally:
        os.close(fd)


def unlink_open_for_write(m: Path) -> object:
    p = m / "data/other"
    fd = os.open(p, os.O_RDWR)
    try:
        os.unlink(p)
        os.pwrite(fd, b"OTHER", 0)
        return fmeta(fd), os.pread(fd, 100, 0), os.path.lexists(p)
    finally:
        os.close(fd)


def symlink_readlink(m: Path) -> object:
    os.symlink("../etc/motd", m / "data/newlink")
    return (
        os.readlink(m / "data/newlink"),
        meta(m / "data/newlink"),
        (m / "data/newlink").read_bytes(),
    )


def symlink_existing(m: Path) -> None:
    os.symlink("x", m / "data/file")


def symlink_over_whiteout(m: Path) -> object:
    os.symlink("motd", m / "etc/old.conf")
    return os.readlink(m / "etc/old.conf"), (m / "etc/old.conf").read_bytes()


def link_lower(m: Path) -> object:
    os.link(m / "data/other", m / "data/other-link")
    pwrite(m / "data/other-link", b"O", 0)
    return (
        meta(m / "data/other"),
        meta(m / "data/other-link"),
        (m / "data/other").read_bytes(),
        same_inode(m / "data/other", m / "data/other-link"),
    )


def link_lower_across_dirs(m: Path) -> object:
    os.link(m / "data/file", m / "srv/merged/file")
    return meta(m / "srv/merged/file"), same_inode(m / "data/file", m / "srv/merged/file")


def link_upper(m: Path) -> object:
    write(m / "data/new", b"new\n")
    os.link(m / "data/new", m / "data/new2")
    return meta(m / "data/new"), meta(m / "data/new2"), same_inode(m / "data/new", m / "data/new2")


def link_lower_hard_linked(m: Path) -> object:
    os.link(m / "data/linked", m / "data/linked3")
    return (
        meta(m / "data/linked"),
        meta(m / "data/linked2"),
        meta(m / "data/linked3"),
        same_inode(m / "data/linked", m / "data/linked3"),
        same_inode(m / "data/linked", m / "data/linked2"),
    )


def write_lower_hard_linked(m: Path) -> object:
    pwrite(m / "data/linked", b"L", 0)
    return (
        (m / "data/linked").read_bytes(),
        (m / "data/linked2").read_bytes(),
        meta(m / "data/linked"),
        meta(m / "data/linked2"),
    )


def write_both_names_of_lower_hard_link(m: Path) -> object:
    """Both names known to the kernel before one is copied up: they are then two
    files, each copied up on its own first write."""
    a, b = m / "data/linked", m / "data/linked2"
    os.lstat(a)
    os.lstat(b)
    pwrite(a, b"AA", 0)
    after_a = a.read_bytes(), b.read_bytes(), same_inode(a, b)
    pwrite(b, b"B", 0)
    return after_a, (a.read_bytes(), b.read_bytes(), same_inode(a, b)), meta(a), meta(b)


def link_dir(m: Path) -> None:
    os.link(m / "data/tree", m / "data/tree-link")


def link_existing(m: Path) -> None:
    os.link(m / "data/file", m / "data/other")


def link_into_whited_out_dir(m: Path) -> None:
    os.link(m / "data/file", m / "var/cache/file")


def link_over_whiteout(m: Path) -> object:
    os.link(m / "data/other", m / "etc/old.conf")
    return (m / "etc/old.conf").read_bytes(), meta(m / "etc/old.conf")


def rename_upper(m: Path) -> object:
    write(m / "data/a", b"a\n")
    os.rename(m / "data/a", m / "data/b")
    return ls(m / "data"), (m / "data/b").read_bytes()


def rename_lower(m: Path) -> object:
    os.rename(m / "data/file", m / "data/renamed")
    return os.path.lexists(m / "data/file"), meta(m / "data/renamed"), xattrs(m / "data/renamed")


def rename_lower_across_dirs(m: Path) -> object:
    os.rename(m / "data/other", m / "srv/merged/other")
    return ls(m / "data"), ls(m / "srv/merged")


def rename_lower_back_and_forth(m: Path) -> object:
    os.rename(m / "data/other", m / "data/tmp-name")
    os.rename(m / "data/tmp-name", m / "data/other")
    return ls(m / "data"), (m / "data/other").read_bytes()


def rename_over_lower(m: Path) -> object:
    os.rename(m / "etc/motd", m / "data/other")
    return ls(m / "etc"), (m / "data/other").read_bytes(), xattrs(m / "data/other")


def rename_upper_over_lower(m: Path) -> object:
    write(m / "data/new", b"new\n")
    os.rename(m / "data/new", m / "data/file")
    return ls(m / "data"), meta(m / "data/file")


def rename_same_name(m: Path) -> object:
    os.rename(m / "data/other", m / "data/other")
    return ls(m / "data")


def rename_hard_link_onto_sibling(m: Path) -> object:
    os.rename(m / "data/linked", m / "data/linked2")
    return ls(m / "data")


def rename_lower_dir(m: Path) -> None:
    os.rename(m / "data/tree", m / "data/tree2")


def rename_merged_dir(m: Path) -> None:
    os.rename(m / "srv/merged", m / "srv/moved")


def rename_lower_empty_dir(m: Path) -> object:
    os.rename(m / "data/empty", m / "data/empty2")
    return ls(m / "data")


def rename_upper_dir(m: Path) -> object:
    os.mkdir(m / "data/nd")
    write(m / "data/nd/f", b"f\n")
    os.rename(m / "data/nd", m / "srv/nd")
    return ls(m / "data"), ls(m / "srv/nd")


def rename_upper_dir_onto_whited_out_dir(m: Path) -> object:
    os.mkdir(m / "data/nd")
    write(m / "data/nd/f", b"f\n")
    os.rename(m / "data/nd", m / "var/cache")
    return ls(m / "var/cache"), ls(m / "var")


def rename_upper_dir_onto_removed_lower_dir(m: Path) -> object:
    """The whiteout rmdir left in the upper is replaced by a directory, which must
    then hide the lower one (be opaque), in this mount and after a remount."""
    os.unlink(m / "var/log/messages")
    os.rmdir(m / "var/log")
    os.mkdir(m / "data/nd3")
    write(m / "data/nd3/f", b"f\n")
    os.rename(m / "data/nd3", m / "var/log")
    return ls(m / "var/log")


def rename_upper_dir_onto_lower_empty_dir(m: Path) -> object:
    os.mkdir(m / "data/nd")
    os.rename(m / "data/nd", m / "data/empty")
    return ls(m / "data"), ls(m / "data/empty")


def rename_upper_dir_onto_merged_dir(m: Path) -> None:
    os.mkdir(m / "data/nd")
    os.rename(m / "data/nd", m / "srv/merged")


def rename_file_onto_dir(m: Path) -> None:
    os.rename(m / "data/file", m / "data/empty")


def rename_dir_onto_file(m: Path) -> None:
    os.mkdir(m / "data/nd")
    os.rename(m / "data/nd", m / "data/file")


def rename_onto_whiteout(m: Path) -> object:
    os.rename(m / "data/other", m / "etc/old.conf")
    return ls(m / "etc"), ls(m / "data"), (m / "etc/old.conf").read_bytes()


def rename_whited_out(m: Path) -> None:
    os.rename(m / "etc/old.conf", m / "etc/new.conf")


def rename_into_whited_out_dir(m: Path) -> None:
    os.rename(m / "data/file", m / "var/cache/file")


def rename_noreplace_existing(m: Path) -> None:
    renameat2(m / "data/file", m / "data/other", RENAME_NOREPLACE)


def rename_noreplace_new(m: Path) -> object:
    renameat2(m / "data/file", m / "data/fresh", RENAME_NOREPLACE)
    return ls(m / "data")


def rename_noreplace_onto_whiteout(m: Path) -> object:
    renameat2(m / "data/file", m / "etc/old.conf", RENAME_NOREPLACE)
    return ls(m / "etc")


def rename_exchange_lower_files(m: Path) -> object:
    renameat2(m / "data/other", m / "etc/motd", RENAME_EXCHANGE)
    return (m / "data/other").read_bytes(), (m / "etc/motd").read_bytes(), xattrs(m / "data/other")


def rename_exchange_upper_and_lower(m: Path) -> object:
    write(m / "data/new", b"new\n")
    renameat2(m / "data/new", m / "data/other", RENAME_EXCHANGE)
    return (m / "data/new").read_bytes(), (m / "data/other").read_bytes()


def rename_exchange_upper_dir_and_lower_file(m: Path) -> object:
    os.mkdir(m / "data/nd")
    write(m / "data/nd/f", b"f\n")
    renameat2(m / "data/nd", m / "data/other", RENAME_EXCHANGE)
    return meta(m / "data/nd"), ls(m / "data/other")


def rename_exchange_missing(m: Path) -> None:
    renameat2(m / "data/file", m / "data/missing", RENAME_EXCHANGE)


def rename_exchange_whiteout(m: Path) -> None:
    renameat2(m / "data/file", m / "etc/old.conf", RENAME_EXCHANGE)


def rename_exchange_lower_dir(m: Path) -> None:
    os.mkdir(m / "data/nd")
    renameat2(m / "data/nd", m / "data/tree", RENAME_EXCHANGE)


def rename_exchange_lower_file_and_merged_dir(m: Path) -> None:
    """A lower file exchanged with a merged dir: both move, the dir with a
    redirect to its lower content."""
    renameat2(m / "data/linked", m / "srv/merged", RENAME_EXCHANGE)


def mkfifo_new(m: Path) -> object:
    os.mkfifo(m / "data/newfifo", 0o640)
    return meta(m / "data/newfifo")


def mknod_chardev(m: Path) -> object:
    os.mknod(m / "data/newnull", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    st = os.lstat(m / "data/newnull")
    return meta(m / "data/newnull"), (os.major(st.st_rdev), os.minor(st.st_rdev))


def mknod_blockdev(m: Path) -> object:
    os.mknod(m / "data/newblk", stat.S_IFBLK | 0o600, os.makedev(7, 0))
    st = os.lstat(m / "data/newblk")
    return meta(m / "data/newblk"), (os.major(st.st_rdev), os.minor(st.st_rdev))


def mknod_socket(m: Path) -> object:
    os.mknod(m / "data/newsock", stat.S_IFSOCK | 0o600)
    return meta(m / "data/newsock")


def mknod_over_whiteout(m: Path) -> object:
    os.mkfifo(m / "etc/old.conf")
    return meta(m / "etc/old.conf")


def mknod_existing(m: Path) -> None:
    os.mkfifo(m / "data/fifo")


def name_255(m: Path) -> object:
    p = m / "etc" / ("f" * 255)
    write(p, b"255\n", exclusive=True)
    os.mkdir(m / "etc" / ("d" * 255))
    os.symlink("t" * 255, m / "etc" / ("s" * 255))
    return p.read_bytes(), ls(m / "etc")


def name_256_create(m: Path) -> None:
    write(m / "etc" / ("f" * 256), b"", exclusive=True)


def name_256_mkdir(m: Path) -> None:
    os.mkdir(m / "etc" / ("d" * 256))


def name_256_rename(m: Path) -> None:
    os.rename(m / "data/file", m / "data" / ("r" * 256))


def name_255_lower_unlink(m: Path) -> object:
    os.unlink(m / "data" / LONG)
    return ls(m / "data")


def name_255_lower_rename(m: Path) -> object:
    os.rename(m / "data" / LONG, m / "etc" / ("r" * 255))
    return ls(m / "data"), ls(m / "etc")


def deep_chain(m: Path) -> object:
    """150 directories of 30-character names: about 4650 bytes, past PATH_MAX."""
    fds = [os.open(m, os.O_RDONLY | os.O_DIRECTORY)]
    try:
        for i in range(150):
            name = f"{i:03d}".ljust(30, "x")
            os.mkdir(name, 0o755, dir_fd=fds[-1])
            fds.append(os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
        fd = os.open("leaf", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fds[-1])
        os.write(fd, b"deep\n")
        os.close(fd)
        fd = os.open("leaf", os.O_RDONLY, dir_fd=fds[-1])
        data = os.read(fd, 100)
        os.close(fd)
        os.rename("leaf", "leaf2", src_dir_fd=fds[-1], dst_dir_fd=fds[-1])
        fresh = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1])
        try:
            listing = sorted(os.listdir(fresh))
        finally:
            os.close(fresh)
        os.unlink("leaf2", dir_fd=fds[-1])
        # Remove the chain again, bottom up, so the trees stay comparable by path.
        for i in reversed(range(150)):
            os.rmdir(f"{i:03d}".ljust(30, "x"), dir_fd=fds[i])
        return data, listing, ls(m)
    finally:
        for fd in fds:
            os.close(fd)


def rewinddir_sees_changes(m: Path) -> object:
    """A directory fd listed again (os.listdir rewinds it) shows the current entries."""
    fd = os.open(m / "data/tree", os.O_RDONLY | os.O_DIRECTORY)
    try:
        first = sorted(os.listdir(fd))
        write(m / "data/tree/new", b"new\n", exclusive=True)
        os.unlink(m / "data/tree/x")
        return first, sorted(os.listdir(fd))
    finally:
        os.close(fd)


def mmap_write_lower(m: Path) -> object:
    p = m / "data/file"
    fd = os.open(p, os.O_RDWR)
    try:
        with mmap.mmap(fd, 0) as mem:
            mem[0:5] = b"MMAP!"
            mem.flush()
    finally:
        os.close(fd)
    return p.read_bytes(), meta(p)


def sed_in_place(m: Path) -> object:
    """sed -i writes a temp file and renames it over the lower file."""
    subprocess.run(["sed", "-i", "s/lower/edited/", str(m / "data/file")], check=True)
    return (m / "data/file").read_bytes(), meta(m / "data/file")[:4], ls(m / "data")


def mv_lower_dir(m: Path) -> object:
    """mv of a lower dir across dirs: one rename, with an absolute redirect
    (``test_redirect_diff`` checks the EXDEV fallback of redirect_dir=off)."""
    proc = subprocess.run(
        ["mv", str(m / "data/tree"), str(m / "srv/tree")], capture_output=True, check=False
    )
    return proc.returncode, ls(m / "data"), ls(m / "srv/tree")


def cp_archive_into(m: Path) -> object:
    """cp -a of a lower tree into a new dir keeps owners, modes, times, xattrs.
    (The lower hard-link pair is left out: see ``cp_archive_hard_links``.)"""
    os.unlink(m / "data/linked2")
    subprocess.run(["cp", "-a", str(m / "data"), str(m / "srv/copy")], check=True)
    return ls(m / "srv/copy")


def cp_archive_hard_links(m: Path) -> object:
    """cp -a keeps two names of one inode as a hard link in the copy."""
    os.mkdir(m / "srv/pair")
    subprocess.run(
        ["cp", "-a", str(m / "data/linked"), str(m / "data/linked2"), str(m / "srv/pair")],
        check=True,
    )
    return meta(m / "srv/pair/linked"), same_inode(m / "srv/pair/linked", m / "srv/pair/linked2")


def deep_copy_up(m: Path) -> object:
    """Writing a lower file 100 directories deep copies up all of its parents."""
    p = m.joinpath(*DEEP_DIRS, "leaf")
    pwrite(p, b"LEAF", 0)
    return p.read_bytes(), meta(p)


def create_as_user(m: Path) -> object:
    os.chmod(m / "data", 0o777)
    out = as_user(
        m,
        "open('data/u-file', 'x').write('u')\n"
        "os.mkdir('data/u-dir')\n"
        "os.symlink('u-file', 'data/u-link')\n"
        "os.mkfifo('data/u-fifo')\n"
        "print('done')\n",
    )
    return out, [meta(m / "data" / n)[:4] for n in ("u-file", "u-dir", "u-link", "u-fifo")]


def create_as_user_in_setgid_dir(m: Path) -> object:
    out = as_user(
        m,
        "open('data/sgid/f', 'x').write('g')\nos.mkdir('data/sgid/d')\nprint('done')\n",
    )
    return out, meta(m / "data/sgid/f")[:4], meta(m / "data/sgid/d")[:4]


def user_denied(m: Path) -> object:
    return as_user(
        m,
        "print(attempt(os.open, 'data/other', os.O_WRONLY))\n"
        "print(attempt(os.open, 'etc/motd', os.O_WRONLY | os.O_APPEND))\n"
        "print(attempt(os.truncate, 'data/other', 0))\n"
        "print(attempt(os.open, 'data/created', os.O_WRONLY | os.O_CREAT, 0o644))\n"
        "print(attempt(os.unlink, 'data/other'))\n"
        "print(attempt(os.mkdir, 'data/newdir'))\n"
        "print(attempt(os.rename, 'data/other', 'data/o2'))\n"
        "print(attempt(os.chmod, 'data/other', 0o777))\n"
        "print(attempt(os.chown, 'data/top-file', 0, 0))\n"
        "print(attempt(os.setxattr, 'data/other', 'user.x', b'1'))\n"
        "print(attempt(os.open, 'data/file', os.O_RDONLY))\n",
    ).split()


def user_write_clears_setid(m: Path) -> object:
    # The writer lacks CAP_FSETID: the kernel drops setuid, and setgid of a
    # group-executable file, on write (file_remove_privs), here through the
    # page cache as well.
    os.chmod(m / "data/exec", 0o6777)
    out = as_user(
        m,
        "f = os.open('data/exec', os.O_WRONLY)\n"
        "os.pwrite(f, b'#', 0)\n"
        "print(oct(os.fstat(f).st_mode & 0o7777))\n"
        "os.close(f)\n",
    )
    return out, meta(m / "data/exec"), (m / "data/exec").read_bytes()


def user_truncate_clears_setid(m: Path) -> object:
    os.chmod(m / "data/exec", 0o6777)
    out = as_user(m, "os.truncate('data/exec', 3)\nprint(oct(os.stat('data/exec').st_mode))\n")
    return out, meta(m / "data/exec"), (m / "data/exec").read_bytes()


def user_writes_own_file(m: Path) -> object:
    out = as_user(
        m,
        "f = os.open('data/top-file', os.O_WRONLY | os.O_APPEND)\n"
        "os.write(f, b'by 1000\\n')\n"
        "print(attempt(os.chmod, 'data/top-file', 0o640))\n",
    )
    return out, meta(m / "data/top-file"), (m / "data/top-file").read_bytes()


OPERATIONS: dict[str, Op] = {
    "statvfs": statvfs_of_upper,
    # create
    "create, write, read back": create_write_read,
    "create O_EXCL on a lower file": lambda m: os.open(
        m / "data/other", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644
    ),
    "create O_EXCL on a top-layer file": lambda m: os.open(
        m / "etc/motd", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644
    ),
    "create in a whited-out dir": lambda m: os.open(
        m / "var/cache/new", os.O_WRONLY | os.O_CREAT, 0o644
    ),
    "create over a whiteout": create_over_whiteout,
    "create in an opaque dir, over a hidden name": create_in_opaque_dir,
    "create with mode 0600": create_mode,
    "create deep in a lower dir": create_deep_in_lower,
    # copy-up of data
    "write a new file, list its dir": write_then_list,
    "fchmod and fchown a lower file, list its dir": fchmod_then_list,
    "write a lower file": write_lower,
    "write a top-layer file": write_top_lower,
    "write inside a big lower file": write_big_middle,
    "append to a lower file": append_lower,
    "truncate a lower file shorter": truncate_shorter,
    "truncate a lower file longer": truncate_longer,
    "ftruncate a lower file": ftruncate_lower,
    "open O_TRUNC a lower file": open_trunc_lower,
    "open O_RDWR a lower file, no write": open_rdwr_only,
    "open O_RDONLY a lower file": open_rdonly_no_copy_up,
    "st_ino kept across copy-up by write": ino_kept_by_write,
    "st_ino kept across chmod and rename": ino_kept_by_chmod_and_rename,
    "read-only fd sees a later write": ro_fd_sees_later_write,
    # metadata copy-up
    "chmod a lower file": chmod_lower,
    "chown a lower file": chown_lower,
    "chown a setuid lower file": chown_setuid_file,
    "lchown a lower symlink": lchown_symlink,
    "chown through a lower symlink": chown_through_symlink,
    "chmod a lower dir": chmod_lower_dir,
    "chown a merged dir": chown_merged_dir,
    "utime explicit ns": utime_explicit,
    "utime now": utime_now,
    "utime omit atime": utime_omit_atime,
    "utime omit mtime": utime_omit_mtime,
    "utime now atime, explicit mtime": utime_now_and_explicit,
    "utime a lower symlink": utime_symlink,
    "utime a lower dir": utime_dir,
    "touch -a, touch -m": touch_tool,
    "chmod a whited-out name": lambda m: os.chmod(m / "etc/old.conf", 0o600),
    # xattrs
    "setxattr on a lower file": setxattr_lower,
    "setxattr XATTR_REPLACE": setxattr_replace,
    "setxattr XATTR_CREATE on an existing name": setxattr_create_existing,
    "setxattr XATTR_REPLACE on a missing name": setxattr_replace_missing,
    "setxattr on a merged dir": setxattr_dir,
    "setxattr trusted.* on a lower file": setxattr_trusted,
    "setxattr trusted.overlay.*": setxattr_overlay_private,
    "removexattr on a lower file": removexattr_lower,
    "removexattr a missing name": removexattr_missing,
    # directories
    "mkdir": mkdir_new,
    "mkdir an existing lower dir": mkdir_existing,
    "mkdir over a whited-out lower dir": mkdir_over_whited_out_dir,
    "mkdir under a whiteout": mkdir_under_whiteout,
    "mkdir over a whited-out lower file": mkdir_over_whited_out_file,
    "rmdir an upper dir": rmdir_upper,
    "rmdir a merged non-empty dir": rmdir_merged_nonempty,
    "rmdir a lower non-empty dir": rmdir_lower_nonempty,
    "rmdir a lower dir emptied, mkdir again": rmdir_lower_emptied,
    "rmdir a merged dir emptied, mkdir again": rmdir_merged_emptied,
    "rmdir a lower dir half emptied": rmdir_half_emptied,
    "rmdir an empty lower dir": rmdir_lower_empty,
    "rmdir a lower dir, create a file there": rmdir_then_file,
    "rmdir an opaque dir emptied, mkdir again": rmdir_opaque,
    "rmdir a file": rmdir_file,
    "rmdir a whited-out dir": rmdir_whited_out,
    "unlink a dir": unlink_dir,
    # unlink
    "unlink a lower file": unlink_lower,
    "unlink a lower file, create it again": unlink_recreate,
    "unlink an upper-only file": unlink_upper_only,
    "unlink a top-layer file": unlink_top_layer,
    "unlink a whited-out name": unlink_whited_out,
    "unlink a name hidden by an opaque dir": unlink_hidden_by_opaque,
    "unlink one name of a lower hard link": unlink_lower_hard_link,
    "unlink a symlink, fifo, device": unlink_special,
    "unlink an open upper file": unlink_open_upper,
    "unlink an open lower file": unlink_open_lower,
    "unlink a lower file open for writing": unlink_open_for_write,
    # symlinks and hard links
    "symlink, readlink": symlink_readlink,
    "symlink over an existing name": symlink_existing,
    "symlink over a whiteout": symlink_over_whiteout,
    "link a lower file": link_lower,
    "link a lower file into another dir": link_lower_across_dirs,
    "link an upper file": link_upper,
    "link a lower hard-linked file": link_lower_hard_linked,
    "write one name of a lower hard link": write_lower_hard_linked,
    "write both names of a lower hard link": write_both_names_of_lower_hard_link,
    "link a dir": link_dir,
    "link over an existing name": link_existing,
    "link into a whited-out dir": link_into_whited_out_dir,
    "link over a whiteout": link_over_whiteout,
    # rename
    "rename an upper file": rename_upper,
    "rename a lower file": rename_lower,
    "rename a lower file to another dir": rename_lower_across_dirs,
    "rename a lower file away and back": rename_lower_back_and_forth,
    "rename over an existing lower file": rename_over_lower,
    "rename an upper file over a lower file": rename_upper_over_lower,
    "rename a file onto itself": rename_same_name,
    "rename a hard link onto its sibling": rename_hard_link_onto_sibling,
    "rename a lower dir with content": rename_lower_dir,
    "rename a merged dir": rename_merged_dir,
    "rename an empty lower dir": rename_lower_empty_dir,
    "rename an upper-only dir": rename_upper_dir,
    "rename an upper dir onto a whited-out dir": rename_upper_dir_onto_whited_out_dir,
    "rename an upper dir onto a removed lower dir": rename_upper_dir_onto_removed_lower_dir,
    "rename an upper dir onto an empty lower dir": rename_upper_dir_onto_lower_empty_dir,
    "rename an upper dir onto a merged dir": rename_upper_dir_onto_merged_dir,
    "rename a file onto a dir": rename_file_onto_dir,
    "rename a dir onto a file": rename_dir_onto_file,
    "rename onto a whiteout": rename_onto_whiteout,
    "rename a whited-out name": rename_whited_out,
    "rename into a whited-out dir": rename_into_whited_out_dir,
    "RENAME_NOREPLACE onto an existing file": rename_noreplace_existing,
    "RENAME_NOREPLACE to a new name": rename_noreplace_new,
    "RENAME_NOREPLACE onto a whiteout": rename_noreplace_onto_whiteout,
    "RENAME_EXCHANGE two lower files": rename_exchange_lower_files,
    "RENAME_EXCHANGE upper and lower file": rename_exchange_upper_and_lower,
    "RENAME_EXCHANGE upper dir and lower file": rename_exchange_upper_dir_and_lower_file,
    "RENAME_EXCHANGE with a missing name": rename_exchange_missing,
    "RENAME_EXCHANGE with a whiteout": rename_exchange_whiteout,
    "RENAME_EXCHANGE with a lower dir": rename_exchange_lower_dir,
    "RENAME_EXCHANGE a lower file and a merged dir": rename_exchange_lower_file_and_merged_dir,
    # special files
    "mkfifo": mkfifo_new,
    "mknod a char device": mknod_chardev,
    "mknod a block device": mknod_blockdev,
    "mknod a socket": mknod_socket,
    "mkfifo over a whiteout": mknod_over_whiteout,
    "mkfifo over an existing name": mknod_existing,
    # names and depth
    "255-byte names": name_255,
    "256-byte name, create": name_256_create,
    "256-byte name, mkdir": name_256_mkdir,
    "256-byte name, rename": name_256_rename,
    "256-byte name, lookup": lambda m: os.lstat(m / ("n" * 256)),
    "unlink a 255-byte lower name": name_255_lower_unlink,
    "rename a 255-byte lower name": name_255_lower_rename,
    "a directory chain past PATH_MAX": deep_chain,
    "listing a dir fd again sees new entries": rewinddir_sees_changes,
    # tools
    "mmap write to a lower file": mmap_write_lower,
    "sed -i on a lower file": sed_in_place,
    "mv of a lower dir": mv_lower_dir,
    "cp -a of a merged dir": cp_archive_into,
    "cp -a of a lower hard-link pair": cp_archive_hard_links,
    # ownership and permissions
    "create as uid 1000": create_as_user,
    "write as uid 1000 clears setuid and setgid": user_write_clears_setid,
    "truncate as uid 1000 clears setuid and setgid": user_truncate_clears_setid,
    "create as uid 1000 in a setgid dir": create_as_user_in_setgid_dir,
    "uid 1000 denied on root's files": user_denied,
    "uid 1000 writes its own lower file": user_writes_own_file,
}


def test_stack_has_no_kernel_ghosts() -> None:
    """The kernel lists whiteouts in non-merged lower dirs; this stack has none, so
    the kernel's trees need no filtering."""
    assert kernel_ghosts(STACK, "chardev") == set()


#: Operations after which the kernel's upper holds a copy-up that unionfs need not
#: make: the kernel copies up before checking XATTR_CREATE / XATTR_REPLACE.
UPPER_SUBSET = {
    "setxattr XATTR_CREATE on an existing name",
    "setxattr XATTR_REPLACE on a missing name",
}


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_operation_matches_kernel(tmp_path: Path, tmp_mounts: TmpMounts, name: str) -> None:
    differential(tmp_path, tmp_mounts, OPERATIONS[name], upper_subset=name in UPPER_SUBSET)


#: Operations that meet whiteouts and opaque directories of the lower layers.
NEAR_WHITEOUTS = [
    "create in a whited-out dir",
    "create over a whiteout",
    "create in an opaque dir, over a hidden name",
    "mkdir over a whited-out lower dir",
    "mkdir over a whited-out lower file",
    "rmdir a merged dir emptied, mkdir again",
    "rmdir an opaque dir emptied, mkdir again",
    "unlink a lower file",
    "unlink a whited-out name",
    "unlink a name hidden by an opaque dir",
    "symlink over a whiteout",
    "link over a whiteout",
    "rename a lower file to another dir",
    "rename onto a whiteout",
    "rename an upper dir onto a whited-out dir",
    "rename an upper dir onto a removed lower dir",
    "mkfifo over a whiteout",
    "chmod a whited-out name",
]


@pytest.mark.parametrize("name", NEAR_WHITEOUTS)
def test_operation_over_oci_layers(tmp_path: Path, tmp_mounts: TmpMounts, name: str) -> None:
    """Lower layers with OCI ``.wh.`` whiteouts under unionfs behave as the same
    layers in overlayfs form under the kernel, and the upper comes out the same."""
    subject_fmt: Format = "chardev" if SUBJECT is mount_kernel else "oci"
    differential(tmp_path, tmp_mounts, OPERATIONS[name], subject_fmt=subject_fmt)


def test_copy_up_deep_parents(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    differential(tmp_path, tmp_mounts, deep_copy_up, DEEP_STACK)


def test_st_ino_stable_across_copy_up(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    lowers = build_stack(STACK, tmp_path / "layers", "chardev")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    mnt = SUBJECT(tmp_mounts, lowers, upper, work, "mnt")
    names = ["data/file", "data/other", "data/exec", "data/sym", "data/fifo", "etc/motd"]
    before = {n: os.lstat(mnt / n).st_ino for n in names}
    pwrite(mnt / "data/file", b"x", 0)
    os.chmod(mnt / "data/other", 0o600)
    os.setxattr(mnt / "data/exec", "user.x", b"1")
    os.chown(mnt / "data/sym", 1, 1, follow_symlinks=False)
    os.utime(mnt / "data/fifo", ns=(T1, T2))
    os.truncate(mnt / "etc/motd", 1)
    after = {n: os.lstat(mnt / n).st_ino for n in names}
    assert after == before
    assert check_ino_consistency(snapshot(mnt)) == []


# --------------------------------------------------------------------------- interop


def sequence(m: Path) -> None:
    """A bit of everything, for uppers that another implementation then reads."""
    write_lower(m)
    chown_lower(m)
    setxattr_dir(m)
    removexattr_lower(m)
    utime_symlink(m)
    create_write_read(m)
    create_over_whiteout(m)
    mkdir_over_whited_out_dir(m)
    write(m / "var/cache/inside", b"inside\n")
    rename_upper_dir_onto_removed_lower_dir(m)
    rmdir_lower_emptied(m)
    rmdir_merged_emptied(m)
    write(m / "srv/merged/again", b"again\n")
    rmdir_opaque(m)
    rmdir_lower_empty(m)
    symlink_readlink(m)
    unlink_top_layer(m)
    link_lower_hard_linked(m)
    rename_lower_across_dirs(m)
    rename_upper_dir(m)
    mkfifo_new(m)
    mknod_chardev(m)
    name_255_lower_unlink(m)
    utime_explicit(m)


def test_mount_with_o_options(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    """``-o lowerdir=A:B,upperdir=U,workdir=W`` mounts the same writable overlay."""
    subject = mount_kernel if SUBJECT is mount_kernel else mount_unionfs_o
    differential(tmp_path, tmp_mounts, sequence, subject=subject)


def _fresh(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.parametrize(
    ("writer", "reader"),
    [("unionfs", "overlayfs"), ("overlayfs", "unionfs"), ("unionfs", "unionfs")],
)
def test_upper_read_back(tmp_path: Path, tmp_mounts: TmpMounts, writer: str, reader: str) -> None:
    """An upper written by one implementation, mounted (fresh work dir) by another,
    shows the same tree, inode numbers of non-directories included if it is the
    same implementation."""
    mounters = {"overlayfs": mount_kernel, "unionfs": SUBJECT}
    lowers = build_stack(STACK, tmp_path / "layers", "chardev")
    upper = _fresh(tmp_path / "upper")
    mnt = mounters[writer](tmp_mounts, lowers, upper, _fresh(tmp_path / "work1"), "writer")
    sequence(mnt)
    written = snapshot(mnt)
    tmp_mounts.unmount(mnt)
    mnt = mounters[reader](tmp_mounts, lowers, upper, _fresh(tmp_path / "work2"), "reader")
    read = snapshot(mnt)
    fields = DEFAULT_FIELDS | {"ino"} if writer == reader else DEFAULT_FIELDS
    diffs = compare(
        written,
        read,
        fields=fields,
        # Directory inode numbers need not survive a remount.
        ignore={"ino@dir"},
        names=(writer, reader),
    )
    assert diffs == [], "\n".join(diffs) + "\n\nas read:\n" + render(read)
