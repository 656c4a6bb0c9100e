"""The writable mount under real use: a daemon killed in the middle of a copy-up,
a long copy-up next to other requests, a root filesystem that programs write to
through chroot, and files created as the calling user.

Every test snapshots its lower layers first and checks at the end that nothing in
them changed (content, metadata, inode numbers).
"""

import errno
import fcntl
import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cli import run_unionfs
from tests.support.kernel import (
    WAIT_LIMIT,
    TmpMounts,
    is_mountpoint,
    process_gone,
    unionfs_daemon_pids,
    wait_for,
)
from tests.support.stack import Dir, File, Layer, Symlink, build_stack
from tests.support.tree import ALL_FIELDS, Node, compare, render, snapshot
from unionfs.fuse import runstate

pytestmark = pytest.mark.mount

MIB = 1 << 20
#: Copying it up takes from a quarter of a second (ext4, data in the page cache) to
#: a few seconds (a busy machine): long enough to interrupt or to overlap requests.
BIG_SIZE = 512 * MIB
BIG_NAME = "data/big.bin"
SMALL_FILES = 3000
WORK_SUBDIR = "unionfs-work"  # where the daemon builds copies, under --work


# --------------------------------------------------------------------------- helpers


def lower_snapshots(lowers: Sequence[Path]) -> list[dict[str, Node]]:
    return [snapshot(p) for p in lowers]


def assert_lowers_unchanged(lowers: Sequence[Path], before: list[dict[str, Node]]) -> None:
    for layer, old in zip(lowers, before, strict=True):
        diffs = compare(old, snapshot(layer), fields=ALL_FIELDS, names=("before", "after"))
        assert diffs == [], f"lower layer {layer} changed:\n" + "\n".join(diffs)


def writable(
    tmp_mounts: TmpMounts, lowers: Sequence[Path], upper: Path, work: Path, *args: str
) -> Path:
    upper.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    return tmp_mounts.unionfs(lowers, args=["--upper", str(upper), "--work", str(work), *args])


def ends_hash(path: Path, size: int) -> str:
    """sha256 of the first and the last MiB of a file of ``size`` bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(MIB))
        f.seek(size - MIB)
        h.update(f.read(MIB))
    return h.hexdigest()


def prefix_hash(path: Path, size: int) -> str:
    """sha256 of the first ``size`` bytes of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = size
        while left:
            chunk = f.read(min(left, 8 * MIB))
            assert chunk, f"{path} is shorter than {size} bytes"
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def work_temps(work: Path) -> list[os.DirEntry[str]]:
    """Regular files in the daemon's private work dir (copies being built)."""
    try:
        with os.scandir(work / WORK_SUBDIR) as it:
            return [e for e in it if e.is_file(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def growing_temp(work: Path, at_least: int) -> tuple[str, int] | None:
    """A copy being built in the work dir that holds ``at_least`` bytes: its
    name and the size seen; None if there is none (yet)."""
    for entry in work_temps(work):
        try:
            size = entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
        if size >= at_least:
            return entry.name, size
    return None


def wait_for_growing_temp(work: Path, at_least: int) -> tuple[str, int]:
    """Wait until a copy being built in the work dir holds ``at_least`` bytes."""
    return wait_for(
        lambda: growing_temp(work, at_least),
        f"no copy grew to {at_least} bytes in {work / WORK_SUBDIR}",
    )


def wait_gone(pid: int) -> None:
    wait_for(lambda: process_gone(pid), f"process {pid} did not die")


def upper_tree(upper: Path) -> dict[str, str]:
    """Every path of an upper dir with its kind; whiteouts as ``whiteout``."""
    out = {}
    for path, node in snapshot(upper, xattrs=False, content=False).items():
        kind = node.type
        if kind == "chardev" and node.rdev == (0, 0):
            kind = "whiteout"
        out[path] = kind
    return out


# --------------------------------------------------------------------------- big file


@dataclass(frozen=True)
class BigLayer:
    path: Path
    size: int
    sha256: str
    ends: str


FICLONE = 0x40049409


def reflinks(directory: Path) -> bool:
    """Whether the filesystem of ``directory`` clones files instead of copying."""
    src, dst = directory / "clone-src", directory / "clone-dst"
    src.write_bytes(b"x" * 4096)
    try:
        with open(src, "rb") as s, open(dst, "wb") as d:
            fcntl.ioctl(d.fileno(), FICLONE, s.fileno())
    except OSError:
        return False
    finally:
        src.unlink()
        dst.unlink(missing_ok=True)
    return True


@pytest.fixture(scope="module")
def big_layer(tmp_path_factory: pytest.TempPathFactory) -> BigLayer:
    """One lower layer, shared read-only by the tests below (each checks that it
    stays unchanged): a big file of incompressible data and many small files."""
    root = tmp_path_factory.mktemp("big") / "layer"
    if reflinks(root.parent):
        pytest.skip(f"{root.parent} clones files (FICLONE): a copy-up is instant there")
    (root / "data").mkdir(parents=True)
    block = os.urandom(MIB)
    h = hashlib.sha256()
    with open(root / BIG_NAME, "wb") as f:
        for i in range(BIG_SIZE // MIB):
            chunk = block[i:] + block[:i]  # every MiB differs
            f.write(chunk)
            h.update(chunk)
    small = root / "small"
    small.mkdir()
    for i in range(SMALL_FILES):
        (small / f"f{i:04}").write_bytes(b"small file %d\n" % i)
    (root / "data/other.txt").write_bytes(b"other\n")
    return BigLayer(root, BIG_SIZE, h.hexdigest(), ends_hash(root / BIG_NAME, BIG_SIZE))


APPEND_EXIT_ERRNO = """
import sys
try:
    with open(sys.argv[1], "ab") as f:
        f.write(b"never")
except OSError as e:
    sys.exit(e.errno)
"""


def test_daemon_killed_during_copy_up_leaves_no_partial_file(
    tmp_path: Path, tmp_mounts: TmpMounts, big_layer: BigLayer
) -> None:
    lowers = [big_layer.path]
    before = lower_snapshots(lowers)
    upper, work = tmp_path / "upper", tmp_path / "work"
    mnt = writable(tmp_mounts, lowers, upper, work)
    (pid,) = unionfs_daemon_pids(mnt)

    # Opening for append copies the file up; the open blocks until the copy is done.
    writer = subprocess.Popen(
        [sys.executable, "-c", APPEND_EXIT_ERRNO, str(mnt / BIG_NAME)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        temp, seen = wait_for_growing_temp(work, 2 * MIB)
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid)
        _, err = writer.communicate(timeout=WAIT_LIMIT)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    # The open fails once the connection is gone (ENOTCONN, or ECONNABORTED when
    # the kernel aborts the requests in flight).
    assert writer.returncode in (errno.ENOTCONN, errno.ECONNABORTED), (writer.returncode, err)

    # A killed daemon leaves a dead FUSE mount behind, and its state file;
    # `unionfs umount` removes both.
    assert is_mountpoint(mnt)
    with pytest.raises(OSError) as dead:
        os.statvfs(mnt)
    assert dead.value.errno == errno.ENOTCONN
    assert runstate.read_state(mnt) is None  # its daemon is gone: not a live mount
    run_unionfs("umount", str(mnt))
    assert not is_mountpoint(mnt)
    assert not runstate.withdraw_stale(mnt), "umount left the killed daemon's state"

    # The copy was interrupted in the work dir; nothing of it reached the upper.
    leftovers = {e.name: e.stat().st_size for e in work_temps(work)}
    assert temp in leftovers, f"the copy being built ({temp}) is gone: {leftovers}"
    assert leftovers[temp] >= seen
    assert not (upper / BIG_NAME).exists() and not (upper / BIG_NAME).is_symlink()
    files_in_upper = {p: k for p, k in upper_tree(upper).items() if k != "dir"}
    assert files_in_upper == {}, f"the upper dir holds more than directories: {files_in_upper}"
    assert_lowers_unchanged(lowers, before)

    # Remount on the same upper and work dirs: the old content shows, the leftover
    # is cleared, and copy-up works again.
    mnt2 = writable(tmp_mounts, lowers, upper, work)
    assert os.listdir(work / WORK_SUBDIR) == []
    assert sorted(os.listdir(mnt2)) == ["data", "small"]
    assert sorted(os.listdir(mnt2 / "data")) == ["big.bin", "other.txt"]
    assert os.stat(mnt2 / BIG_NAME).st_size == big_layer.size
    assert ends_hash(mnt2 / BIG_NAME, big_layer.size) == big_layer.ends

    tail = b"appended after the crash\n"
    with open(mnt2 / BIG_NAME, "ab") as f:
        f.write(tail)
    new_size = big_layer.size + len(tail)
    assert os.stat(mnt2 / BIG_NAME).st_size == new_size
    with open(mnt2 / BIG_NAME, "rb") as f:
        f.seek(big_layer.size - 10)
        assert f.read() == (big_layer.path / BIG_NAME).read_bytes()[-10:] + tail
    copied = upper / BIG_NAME
    assert copied.stat().st_size == new_size
    assert prefix_hash(copied, big_layer.size) == big_layer.sha256
    assert copied.read_bytes()[-len(tail) :] == tail
    assert os.listdir(work / WORK_SUBDIR) == []
    assert_lowers_unchanged(lowers, before)


def test_copy_up_of_a_big_file_does_not_stall_other_requests(
    tmp_path: Path, tmp_mounts: TmpMounts, big_layer: BigLayer
) -> None:
    lowers = [big_layer.path]
    before = lower_snapshots(lowers)
    upper, work = tmp_path / "upper", tmp_path / "work"
    mnt = writable(tmp_mounts, lowers, upper, work)

    opened = threading.Event()
    open_took: list[float] = []
    failure: list[BaseException] = []

    def copy_up() -> None:
        start = time.monotonic()
        try:
            fd = os.open(mnt / BIG_NAME, os.O_WRONLY | os.O_APPEND)
            os.close(fd)
        except BaseException as exc:
            failure.append(exc)
        finally:
            open_took.append(time.monotonic() - start)
            opened.set()

    writer = threading.Thread(target=copy_up, daemon=True)
    writer.start()
    try:
        temp, _ = wait_for_growing_temp(work, MIB)
        # Each probe names a file nothing has looked up yet, so the lookup, open and
        # read all go to the daemon, not to the kernel's caches.
        during: list[float] = []
        i = 0
        while not opened.is_set() and i < SMALL_FILES:
            path = mnt / f"small/f{i:04}"
            start = time.monotonic()
            assert os.stat(path).st_size == len(b"small file %d\n" % i)
            assert path.read_bytes() == b"small file %d\n" % i
            took = time.monotonic() - start
            # Served while the copy was still being built (it is renamed away when done)?
            if any(e.name == temp for e in work_temps(work)):
                during.append(took)
            i += 1
    finally:
        writer.join(timeout=WAIT_LIMIT)
    assert not writer.is_alive(), "the copy-up did not finish"
    assert failure == []
    (copy_time,) = open_took
    assert len(during) >= 5, (
        f"only {len(during)} of {i} requests for other files were answered during a"
        f" {copy_time:.2f}s copy-up: requests wait for the copy"
    )
    # How long those requests took is a measurement (scripts/), not a pass/fail
    # condition: a loaded machine may pause any request.
    assert os.stat(upper / BIG_NAME).st_size == big_layer.size
    assert_lowers_unchanged(lowers, before)


# --------------------------------------------------------------------------- chroot

BUSYBOX = Path("/bin/busybox")
APPLETS = (
    "sh",
    "ls",
    "cat",
    "echo",
    "mkdir",
    "rm",
    "mv",
    "cp",
    "touch",
    "chmod",
    "ln",
    "sed",
    "readlink",
    "stat",
    "dpkg",
    "tar",
    "gzip",
    "ar",
    "id",
)

#: What a small system does to its root filesystem. busybox has no apt, but its
#: dpkg applet installs a real .deb (unpack, status database, maintainer script).
ROOTFS_SCRIPT = r"""
set -eu
cd /
echo created > /root/new.txt
echo appended >> /etc/motd
sed -i 's/^name=old$/name=new/' /etc/app.conf
mkdir -p /srv/www/html/assets
echo '<html>' > /srv/www/html/index.html
mv /etc/rename-me /etc/renamed
rm -r /usr/share/doc
ln -s /etc/renamed /etc/renamed.link
chmod 600 /etc/secret
chmod 700 /root
cp /etc/motd /tmp/motd.copy
touch /var/log/boot.log
dpkg -i /root/hello.deb > /tmp/dpkg.out
cat /usr/share/hello/greeting
"""

HELLO_CONTROL = b"""Package: hello-union
Version: 1.0
Architecture: all
Maintainer: Test <test@example.org>
Description: a package installed in a union mount
"""
HELLO_POSTINST = b"#!/bin/sh\necho postinst ran > /var/log/hello-postinst.log\n"

STATUS = b"""Package: base-files
Status: install ok installed
Version: 12
Architecture: all
Description: base

"""


def build_deb(tmp_path: Path) -> bytes:
    root = tmp_path / "deb"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_bytes(HELLO_CONTROL)
    (root / "DEBIAN/postinst").write_bytes(HELLO_POSTINST)
    (root / "DEBIAN/postinst").chmod(0o755)
    (root / "usr/share/hello").mkdir(parents=True)
    (root / "usr/share/hello/greeting").write_bytes(b"hello from a package\n")
    out = tmp_path / "hello.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(out)],
        check=True,
        capture_output=True,
    )
    return out.read_bytes()


def busybox_rootfs(deb: bytes) -> list[Layer]:
    base: Layer = [
        File("bin/busybox", BUSYBOX.read_bytes(), mode=0o755),
        *[Symlink(f"bin/{a}", "busybox") for a in APPLETS],
        Dir("tmp", mode=0o1777),
        Dir("var/log"),
        Dir("var/lib/dpkg/info"),
        File("var/lib/dpkg/status", STATUS),
        File("etc/motd", b"welcome\n"),
        File("etc/app.conf", b"name=old\nport=80\n"),
        File("etc/rename-me", b"rename me\n"),
        File("etc/secret", b"secret\n"),
        File("usr/share/doc/base/README", b"readme\n"),
        File("usr/share/doc/base/copyright", b"copyright\n"),
        File("usr/share/doc/other/notes", b"notes\n"),
        File("usr/share/misc/magic", b"magic\n"),
    ]
    top: Layer = [Dir("root", mode=0o755), File("root/hello.deb", deb)]
    return [top, base]


#: Exactly what the script leaves in the upper dir.
ROOTFS_UPPER = {
    ".": "dir",
    "etc": "dir",
    "etc/app.conf": "file",
    "etc/motd": "file",
    "etc/rename-me": "whiteout",
    "etc/renamed": "file",
    "etc/renamed.link": "symlink",
    "etc/secret": "file",
    "root": "dir",
    "root/new.txt": "file",
    "srv": "dir",
    "srv/www": "dir",
    "srv/www/html": "dir",
    "srv/www/html/assets": "dir",
    "srv/www/html/index.html": "file",
    "tmp": "dir",
    "tmp/dpkg.out": "file",
    "tmp/motd.copy": "file",
    "usr": "dir",
    "usr/share": "dir",
    "usr/share/doc": "whiteout",
    "usr/share/hello": "dir",
    "usr/share/hello/greeting": "file",
    "var": "dir",
    "var/lib": "dir",
    "var/lib/dpkg": "dir",
    "var/lib/dpkg/info": "dir",
    "var/lib/dpkg/info/hello-union.list": "file",
    "var/lib/dpkg/info/hello-union.postinst": "file",
    "var/lib/dpkg/status": "file",
    "var/lib/dpkg/status.udeb.bak": "file",
    "var/log": "dir",
    "var/log/boot.log": "file",
    "var/log/hello-postinst.log": "file",
}


def run_in_chroot(root: Path, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["chroot", str(root), "/bin/sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=WAIT_LIMIT,
        env={"PATH": "/bin:/usr/bin:/sbin:/usr/sbin", "HOME": "/root"},
        check=False,
    )


def test_programs_in_a_chroot_write_a_busybox_root_filesystem(
    tmp_path: Path, tmp_mounts: TmpMounts
) -> None:
    if not BUSYBOX.exists():
        pytest.skip("busybox-static is not installed")
    lowers = build_stack(busybox_rootfs(build_deb(tmp_path)), tmp_path / "layers", "chardev")
    before = lower_snapshots(lowers)
    upper, work = tmp_path / "upper", tmp_path / "work"
    mnt = writable(tmp_mounts, lowers, upper, work)

    proc = run_in_chroot(mnt, ROOTFS_SCRIPT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello from a package\n"

    # What the programs see afterwards.
    assert (mnt / "root/new.txt").read_bytes() == b"created\n"
    assert (mnt / "etc/motd").read_bytes() == b"welcome\nappended\n"
    assert (mnt / "tmp/motd.copy").read_bytes() == b"welcome\nappended\n"
    assert (mnt / "etc/app.conf").read_bytes() == b"name=new\nport=80\n"
    assert not (mnt / "etc/rename-me").exists()
    assert (mnt / "etc/renamed").read_bytes() == b"rename me\n"
    assert os.readlink(mnt / "etc/renamed.link") == "/etc/renamed"
    assert not (mnt / "usr/share/doc").exists()
    assert sorted(os.listdir(mnt / "usr/share")) == ["hello", "misc"]
    assert stat.S_IMODE(os.stat(mnt / "etc/secret").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(mnt / "root").st_mode) == 0o700
    assert os.listdir(mnt / "srv/www/html/assets") == []
    assert (mnt / "var/log/hello-postinst.log").read_bytes() == b"postinst ran\n"
    status = (mnt / "var/lib/dpkg/status").read_bytes()
    assert b"Package: base-files" in status
    assert b"Package: hello-union\n" in status and b"Status: install ok installed" in status
    again = run_in_chroot(mnt, "dpkg -l; echo; cat /etc/renamed.link; ls /usr/share")
    assert again.returncode == 0, again.stderr
    assert "ii  hello-union    1.0" in again.stdout
    assert "ii  base-files     12" in again.stdout
    assert again.stdout.endswith("rename me\nhello\nmisc\n")

    # The upper dir holds exactly the changes, deletions as 0/0 char devices.
    got = upper_tree(upper)
    assert got == ROOTFS_UPPER, render(snapshot(upper, xattrs=False))
    assert (upper / "etc/motd").read_bytes() == b"welcome\nappended\n"
    assert (upper / "etc/app.conf").read_bytes() == b"name=new\nport=80\n"
    assert stat.S_IMODE(os.stat(upper / "etc/secret").st_mode) == 0o600

    # Copy-up keeps metadata: a renamed lower file keeps its mode, owner and mtime.
    lower_renamed = os.stat(lowers[1] / "etc/rename-me")
    for path in (mnt / "etc/renamed", upper / "etc/renamed"):
        st = os.stat(path)
        assert (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns) == (
            lower_renamed.st_mode,
            lower_renamed.st_uid,
            lower_renamed.st_gid,
            lower_renamed.st_mtime_ns,
        ), path

    # The same programs on kernel overlayfs over the same lowers: the same merged
    # tree (times of changed files aside) and the same upper layer.
    kupper, kwork = tmp_path / "kernel-upper", tmp_path / "kernel-work"
    kupper.mkdir()
    kwork.mkdir()
    kmnt = tmp_mounts.overlay(lowers, upper=kupper, work=kwork)
    kproc = run_in_chroot(kmnt, ROOTFS_SCRIPT)
    assert (kproc.returncode, kproc.stdout) == (proc.returncode, proc.stdout), kproc.stderr
    diffs = compare(
        snapshot(kmnt),
        snapshot(mnt),
        ignore={"ino", "d_ino", "dev", "size@dir", "nlink@dir", "mtime_ns"},
        names=("overlayfs", "unionfs"),
    )
    assert diffs == [], "\n".join(diffs)
    tmp_mounts.unmount(kmnt)
    assert upper_tree(kupper) == got

    # Kernel overlayfs reads the upper layer unionfs wrote the same way unionfs does.
    tmp_mounts.unmount(mnt)
    ours = snapshot(writable(tmp_mounts, lowers, upper, work))
    kernel = snapshot(tmp_mounts.overlay([upper, *lowers], extra_opts=["ro"]))
    diffs = compare(
        kernel,
        ours,
        ignore={"ino", "d_ino", "dev", "size@dir", "nlink@dir"},
        names=("overlayfs", "unionfs"),
    )
    assert diffs == [], "\n".join(diffs)
    assert_lowers_unchanged(lowers, before)


# --------------------------------------------------------------------------- owners


def run_as(
    cwd: Path, script: str, uid: int = 1000, gid: int = 1000
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` as uid:gid with no supplementary groups, in ``cwd`` (entered
    as root first, so the test's private temp dirs above it need not be open)."""
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            "/bin/sh",
            "-c",
            f"umask 022; {script}",
        ],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=WAIT_LIMIT,
        check=False,
    )


def as_user(cwd: Path, script: str) -> None:
    proc = run_as(cwd, script)
    assert proc.returncode == 0, proc.stderr


def owner(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


#: Each directory has lower entries that get deleted first, so new names land
#: both on free names (created in place) and over whiteouts (built in the work dir).
OWNERS_STACK: list[Layer] = [
    [
        File("shared/lower-file", b"x"),
        File("shared/lower-dir/inner", b"x"),
        File("group/lower-file", b"x"),
        File("group/lower-dir/inner", b"x"),
    ]
]


def test_files_are_created_as_the_calling_user(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    lowers = build_stack(OWNERS_STACK, tmp_path / "layers", "chardev")
    before = lower_snapshots(lowers)
    upper, work = tmp_path / "upper", tmp_path / "work"
    mnt = writable(tmp_mounts, lowers, upper, work)
    shared = mnt / "shared"
    os.chmod(shared, 0o1777)
    os.unlink(shared / "lower-file")
    shutil.rmtree(shared / "lower-dir")
    as_user(
        shared,
        "echo mine > file; mkdir -p dir/sub; echo x > dir/sub/f;"
        " echo mine > lower-file; mkdir lower-dir",
    )
    expected = {
        "shared/file": (1000, 1000, 0o644),
        "shared/dir": (1000, 1000, 0o755),
        "shared/dir/sub": (1000, 1000, 0o755),
        "shared/dir/sub/f": (1000, 1000, 0o644),
        "shared/lower-file": (1000, 1000, 0o644),
        "shared/lower-dir": (1000, 1000, 0o755),
    }
    for path, want in expected.items():
        assert owner(mnt / path) == want, path
        assert owner(upper / path) == want, path
    assert owner(upper / "shared") == (0, 0, 0o1777)
    assert os.listdir(shared / "lower-dir") == []
    # The sticky bit works: another user cannot remove the file, its owner can.
    other = run_as(shared, "rm -f file", uid=1001, gid=1001)
    assert other.returncode != 0 and "Operation not permitted" in other.stderr
    assert (shared / "file").read_bytes() == b"mine\n"
    as_user(shared, "rm file")
    assert not (upper / "shared/file").exists()
    assert_lowers_unchanged(lowers, before)


def test_setgid_directory_passes_its_group_on(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    lowers = build_stack(OWNERS_STACK, tmp_path / "layers", "chardev")
    before = lower_snapshots(lowers)
    upper, work = tmp_path / "upper", tmp_path / "work"
    mnt = writable(tmp_mounts, lowers, upper, work)
    group = mnt / "group"
    os.chown(group, -1, 50)
    os.chmod(group, 0o2777)
    assert owner(group) == (0, 50, 0o2777)
    os.unlink(group / "lower-file")
    shutil.rmtree(group / "lower-dir")
    as_user(
        group,
        "echo x > file; mkdir sub; echo y > sub/inner; mkdir sub/deeper;"
        " echo x > lower-file; mkdir lower-dir; echo y > lower-dir/inner",
    )
    expected = {
        "group/file": (1000, 50, 0o644),
        "group/sub": (1000, 50, 0o2755),
        "group/sub/inner": (1000, 50, 0o644),
        "group/sub/deeper": (1000, 50, 0o2755),
        "group/lower-file": (1000, 50, 0o644),
        "group/lower-dir": (1000, 50, 0o2755),
        "group/lower-dir/inner": (1000, 50, 0o644),
    }
    for path, want in expected.items():
        assert owner(mnt / path) == want, path
        assert owner(upper / path) == want, path
    assert owner(upper / "group") == (0, 50, 0o2777)
    assert_lowers_unchanged(lowers, before)
