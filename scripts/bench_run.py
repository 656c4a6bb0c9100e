#!/usr/bin/env python3
"""Benchmark unionfs against kernel overlayfs, fuse-overlayfs and unionfs-fuse.

All four serve the same three-layer stack: a base layer of real files (copies of
the Python standard library and /usr/share), a layer that rewrites about 5% of
them and deletes about 1% (and two directories) with overlayfs whiteouts
(character devices 0/0), and a top layer that adds files, an opaque directory
and one large file of random data. The stack is built once under
<root>/<size>/layers and reused by later runs.

Every workload of every run gets a fresh mount (and a fresh upper and work dir
when it writes); the order of the implementations rotates from run to run.
Cold measurements sync and drop the page cache, dentries and inodes first.
Kernel overlayfs is the limit the others are compared with: the table gives the
median, min-max and the median's ratio to the kernel's; a second table checks
unionfs against its targets. The raw numbers go to a JSON file, and
scripts/bench_plot.py charts them when matplotlib is installed.

    sudo scripts/bench [--quick] [--runs N] [--impl NAME ...] [--workload NAME ...]

Note: unionfs-fuse does not understand overlayfs whiteouts or opaque directories;
it shows the deleted files as character devices. Its numbers are those of that
view.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from io import BytesIO
from pathlib import Path
from types import FrameType
from typing import ClassVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuse_requests import RequestCounter  # beside this script

DEFAULT_ROOT = Path("/var/tmp/unionfs-bench")  # noqa: S108  (a fixed cache, run as root)
SOURCES = [Path("/usr/lib/python3.11"), Path("/usr/share")]
MIB = 1024 * 1024
DATASET_VERSION = 3
PLOT_SCRIPT = Path(__file__).resolve().with_name("bench_plot.py")


# ---------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Size:
    """How big the dataset and the workloads are."""

    name: str
    base_files: int  # this many files and symlinks copied into the base layer
    big_mib: int  # the large random file in the top layer
    copyup_mib: int  # the lower file that a 1-byte write copies up
    fio_seconds: int  # how long each random-read run lasts
    chmod_files: int
    untar_files: int
    write_mib: int


FULL = Size("full", 50_000, 1024, 256, 10, 5000, 10_000, 1024)
QUICK = Size("quick", 5000, 128, 32, 3, 500, 1000, 128)


# ---------------------------------------------------------------- dataset


@dataclass(frozen=True)
class Dataset:
    """The layer stack on disk and the inputs the workloads use."""

    root: Path
    layers: list[Path]  # top first
    big: str  # union path of the big file (top layer)
    copyup: str  # union path of the lower file copied up by a 1-byte write
    chmod_list: Path  # union paths (one a line) of lower files to chmod
    untar_archive: Path
    size: Size


def _copy_tree_subset(dest: Path, limit: int) -> list[str]:
    """Copy `limit` files (spread evenly, or all if fewer) of SOURCES into dest.

    Symbolic links are copied as links and count towards `limit`; the regular
    files copied are returned.
    """
    entries: list[tuple[Path, str]] = []
    for src in SOURCES:
        if not src.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if path.is_symlink() or path.is_file():
                    entries.append((path, str(path).lstrip("/")))
    if len(entries) > limit:
        entries = [entries[i * len(entries) // limit] for i in range(limit)]
    files: list[str] = []
    for path, rel in entries:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            if path.is_symlink():
                os.symlink(os.readlink(path), target)
            else:
                shutil.copy2(path, target)
                files.append(rel)
        except OSError:
            continue
    return files


def _random_file(path: Path, mib: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))


def _untar_archive(path: Path, files: int) -> None:
    """A tar of `files` small files (64 B to 16 KiB) in directories of 100."""
    rng = random.Random(7)  # noqa: S311  (reproducible test data)
    with tarfile.open(path, "w") as tar:
        for i in range(files):
            data = rng.randbytes(rng.randrange(64, 16384))
            info = tarfile.TarInfo(f"untar/d{i // 100:03d}/f{i:05d}")
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 1_700_000_000
            tar.addfile(info, BytesIO(data))


def _whiteout(path: Path) -> None:
    """An overlayfs whiteout: a character device 0/0."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, 0o600 | 0o020000, os.makedev(0, 0))


def _small_dirs(files: list[str], rng: random.Random, count: int) -> list[str]:
    """`count` directories holding 5 to 50 of `files` each, none inside another."""
    per_dir: dict[str, int] = {}
    for rel in files:
        parent = str(Path(rel).parent)
        per_dir[parent] = per_dir.get(parent, 0) + 1
    candidates = sorted(d for d, n in per_dir.items() if 5 <= n <= 50 and d.count("/") >= 3)
    picked: list[str] = []
    for d in rng.sample(candidates, min(len(candidates), 20 * count)):
        if all(not d.startswith(p + "/") and not p.startswith(d + "/") for p in picked):
            picked.append(d)
        if len(picked) == count:
            break
    return picked


def build_dataset(root: Path, size: Size, rebuild: bool) -> Dataset:
    """Build the layer stack for `size` under root (unless already complete)."""
    root = root / size.name
    base, mid, top = root / "layers" / "base", root / "layers" / "mid", root / "layers" / "top"
    ds = Dataset(
        root=root,
        layers=[top, mid, base],
        big="big/big.bin",
        copyup="big/copyup.bin",
        chmod_list=root / "chmod.list",
        untar_archive=root / "untar.tar",
        size=size,
    )
    stamp = root / "complete.json"
    want = {"version": DATASET_VERSION, "size": asdict(size), "sources": [str(s) for s in SOURCES]}
    if not rebuild and stamp.exists() and json.loads(stamp.read_text()) == want:
        return ds
    print(f"building the {size.name} dataset under {root} ...", file=sys.stderr, flush=True)
    shutil.rmtree(root, ignore_errors=True)
    for layer in ds.layers:
        layer.mkdir(parents=True)
    rng = random.Random(42)  # noqa: S311  (reproducible test data)
    files = _copy_tree_subset(base, size.base_files)
    _random_file(base / ds.copyup, size.copyup_mib)

    # mid: delete two whole directories, rewrite ~5% of the files, delete ~1%
    gone_dirs = _small_dirs(files, rng, 3)
    opaque_dir, gone_dirs = gone_dirs[0], gone_dirs[1:]
    for d in gone_dirs:
        _whiteout(mid / d)
    under = tuple(d + "/" for d in [opaque_dir, *gone_dirs])
    visible = [f for f in files if not f.startswith(under)]
    picked = rng.sample(visible, len(visible) * 6 // 100)
    cut = len(visible) * 5 // 100
    modified, deleted = picked[:cut], picked[cut:]
    for rel in modified:
        target = mid / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((base / rel).read_bytes() + b"\n# changed in the mid layer\n")
    for rel in deleted:
        _whiteout(mid / rel)

    # top: ~5% new files next to existing ones, an opaque dir, a new dir, the big file
    for i, rel in enumerate(rng.sample(visible, len(visible) * 5 // 100)):
        target = top / Path(rel).parent / f"added{i:05d}.txt"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(rng.randbytes(rng.randrange(16, 8192)))
    (top / opaque_dir).mkdir(parents=True, exist_ok=True)
    os.setxattr(top / opaque_dir, "trusted.overlay.opaque", b"y")
    (top / opaque_dir / "replaced.txt").write_bytes(b"the only file left here\n")
    for i in range(100):
        target = top / "added" / f"file{i:03d}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(rng.randbytes(1024))
    _random_file(top / ds.big, size.big_mib)

    gone = set(deleted)
    alive = [f for f in visible if f not in gone]
    ds.chmod_list.write_text("".join(f + "\n" for f in rng.sample(alive, size.chmod_files)))
    _untar_archive(ds.untar_archive, size.untar_files)
    os.sync()
    stamp.write_text(json.dumps(want))
    return ds


def count_files(layers: list[Path]) -> int:
    """How many entries (of any type) the layer directories hold together."""
    return sum(len(dirs) + len(files) for layer in layers for _, dirs, files in os.walk(layer))


# ---------------------------------------------------------------- implementations


def _unionfs_fuse_binary() -> str:
    """The unionfs-fuse binary by absolute path (its Debian name clashes with ours)."""
    for candidate in ("/usr/bin/unionfs-fuse", "/usr/bin/unionfs"):
        out = subprocess.run(
            ["dpkg", "-S", candidate], capture_output=True, text=True, check=False
        ).stdout
        if out.startswith("unionfs-fuse:"):
            return candidate
    return "/usr/bin/unionfs-fuse"


@dataclass(frozen=True)
class Impl:
    """One union filesystem implementation: how to mount, unmount and name it.

    `tree` (unionfs only) is a source tree to run unionfs from instead of the
    installed package, to compare two versions with the same harness.
    """

    name: str
    is_fuse: bool
    tree: Path | None = None

    def run(self, cmd: list[str]) -> subprocess.CompletedProcess[str]:
        """Run one of the implementation's commands, capturing its output.

        Python commands run from / (or the source tree): ``python -m`` puts
        the working directory first on the module path, and a unionfs there
        must not shadow the one measured.
        """
        env, cwd = None, "/"
        if self.tree is not None:
            env = {**os.environ, "PYTHONPATH": str(self.tree)}
            cwd = str(self.tree)
        return subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, cwd=cwd)

    def mount_cmd(
        self, layers: list[Path], upper: Path | None, work: Path | None, mnt: Path
    ) -> list[str]:
        """The command that mounts `layers` (top first) on mnt, default options."""
        lowers = ":".join(str(p) for p in layers)
        rw = f",upperdir={upper},workdir={work}" if upper and work else ""
        if self.name == "unionfs":
            cmd = [sys.executable, "-m", "unionfs", "mount"]
            cmd += [a for p in layers for a in ("--lower", str(p))]
            if upper and work:
                cmd += ["--upper", str(upper), "--work", str(work)]
            return [*cmd, str(mnt)]
        if self.name == "kernel":
            return ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lowers}{rw}", str(mnt)]
        if self.name == "fuse-overlayfs":
            return ["fuse-overlayfs", "-o", f"lowerdir={lowers}{rw}", str(mnt)]
        if self.name == "unionfs-fuse":
            branches = ":".join(f"{p}=RO" for p in layers)
            opts = "allow_other"
            if upper:
                branches = f"{upper}=RW:{branches}"
                opts = "cow," + opts
            return [_unionfs_fuse_binary(), "-o", opts, branches, str(mnt)]
        raise ValueError(self.name)

    def umount_cmd(self, mnt: Path) -> list[str]:
        """The command that unmounts mnt the way the implementation documents."""
        if self.name == "unionfs":
            return [sys.executable, "-m", "unionfs", "umount", str(mnt)]
        if self.name == "fuse-overlayfs":
            return ["fusermount3", "-u", str(mnt)]
        return ["umount", str(mnt)]

    def version(self) -> str:
        """The implementation's version, for the record."""
        if self.name == "kernel":
            return os.uname().release
        if self.name != "unionfs":  # the Debian package's version
            proc = self.run(["dpkg-query", "-W", "-f", "${Version}", self.name])
            return proc.stdout.strip() or "?"
        proc = self.run([sys.executable, "-m", "unionfs", "--version"])
        lines = proc.stdout.strip().splitlines()
        version = lines[0] if lines else "?"
        return f"{version} from {self.tree}" if self.tree else version

    def available(self) -> bool:
        """Whether the implementation is installed."""
        if self.name == "fuse-overlayfs":
            return shutil.which("fuse-overlayfs") is not None
        if self.name == "unionfs-fuse":
            return Path(_unionfs_fuse_binary()).exists()
        return True


IMPLS = {
    "kernel": Impl("kernel", is_fuse=False),
    "unionfs": Impl("unionfs", is_fuse=True),
    "fuse-overlayfs": Impl("fuse-overlayfs", is_fuse=True),
    "unionfs-fuse": Impl("unionfs-fuse", is_fuse=True),
}


# ---------------------------------------------------------------- measuring


def drop_caches() -> None:
    """Write back dirty data, then drop the page cache, dentries and inodes."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


class Requests:
    """The FUSE requests behind each metric of the workload being run: `timed`
    counts them when it is given the metric and a FUSE mount is being measured
    (`Mount` sets `mnt`)."""

    counter: ClassVar[RequestCounter | None] = None
    mnt: ClassVar[Path | None] = None
    counts: ClassVar[dict[str, Counter[str]]] = {}


def timed(cmd: str, cwd: Path | None = None, metric: str | None = None) -> float:
    """Seconds a shell command takes; it must succeed. With `metric`, the FUSE
    requests it causes go to ``Requests.counts[metric]``."""
    with counting(metric):
        start = time.perf_counter()
        subprocess.run(["sh", "-c", cmd], check=True, stdout=subprocess.DEVNULL, cwd=cwd)
        return time.perf_counter() - start


@contextlib.contextmanager
def counting(metric: str | None) -> Iterator[None]:
    """Count the FUSE requests of what runs inside into ``Requests.counts[metric]``
    (nothing without a metric, a counter or a FUSE mount being measured)."""
    counter, mnt = Requests.counter, Requests.mnt
    if metric is None or counter is None or mnt is None:
        yield
        return
    counter.start(mnt)
    try:
        yield
    finally:
        counts = counter.stop()
        if counts is not None:
            Requests.counts[metric] = counts


def daemon_pid(mnt: Path) -> int | None:
    """The process serving a FUSE mount: the one whose arguments name the mount point."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if os.fsencode(mnt) in args:
            return int(entry.name)
    return None


def rss_mib(pid: int) -> float:
    """The resident set size of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _wait(pred: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def answers_stat(mnt: Path) -> bool:
    """Whether a filesystem other than the parent's answers a stat of mnt."""
    try:
        return os.stat(mnt).st_dev != os.stat(mnt.parent).st_dev
    except OSError:
        return False


ACTIVE: set[Path] = set()


class Mount:
    """A fresh mount of one implementation; `seconds` is how long mounting took.

    Mount time runs from starting the mount command until a stat of the mount
    point is answered by the new filesystem. Leaving unmounts, waits for the
    daemon to exit and removes the upper and work dirs, so that nothing of one
    measurement is left running or unwritten during the next.
    """

    def __init__(self, impl: Impl, ds: Dataset, scratch: Path, writable: bool) -> None:
        self.impl, self.ds, self.scratch, self.writable = impl, ds, scratch, writable
        self.mnt = scratch / "mnt"
        self.upper = scratch / "upper"
        self.seconds = 0.0
        self.pid: int | None = None

    def __enter__(self) -> Mount:
        upper = work = None
        self._clear()
        if self.writable:
            upper, work = self.upper, self.scratch / "work"
            upper.mkdir(parents=True)
            work.mkdir(parents=True)
        self.mnt.mkdir(parents=True, exist_ok=True)
        if os.path.ismount(self.mnt):
            raise RuntimeError(f"{self.mnt} is still mounted")
        os.sync()
        cmd = self.impl.mount_cmd(self.ds.layers, upper, work, self.mnt)
        ACTIVE.add(self.mnt)
        start = time.perf_counter()
        proc = self.impl.run(cmd)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {proc.returncode} {proc.stderr.strip()}")
        try:
            if not _wait(lambda: answers_stat(self.mnt), 10, interval=0.001):
                raise RuntimeError(f"{self.impl.name} did not come up on {self.mnt}")
            self.seconds = time.perf_counter() - start
            if self.impl.is_fuse:
                self.pid = daemon_pid(self.mnt)
                if self.pid is None:
                    raise RuntimeError(f"no {self.impl.name} process serves {self.mnt}")
                Requests.mnt = self.mnt
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        Requests.mnt = None
        unmount(self.mnt, self.impl)
        pid = self.pid
        if pid is not None:
            _wait(lambda: not Path(f"/proc/{pid}").exists(), 10)
        if not os.path.ismount(self.mnt):
            self._clear()

    def _clear(self) -> None:
        for name in ("upper", "work"):
            shutil.rmtree(self.scratch / name, ignore_errors=True)


def unmount(mnt: Path, impl: Impl | None) -> None:
    """Unmount mnt: the implementation's way, then umount, then lazily."""
    if os.path.ismount(mnt):
        cmds = [impl.umount_cmd(mnt)] if impl else []
        cmds += [["umount", str(mnt)], ["umount", "-l", str(mnt)]]
        for cmd in cmds:
            (impl or IMPLS["kernel"]).run(cmd)
            if _wait(lambda: not os.path.ismount(mnt), 5):
                break
    if not os.path.ismount(mnt):
        ACTIVE.discard(mnt)


# ---------------------------------------------------------------- workloads

Result = dict[str, float]


@dataclass(frozen=True)
class Metric:
    """What one number measures: its unit and which way is better."""

    unit: str
    higher_is_better: bool = False


METRICS: dict[str, Metric] = {}


def metric(name: str, unit: str, higher_is_better: bool = False) -> str:
    """Register a metric (in table order) and return its name."""
    METRICS[name] = Metric(unit, higher_is_better)
    return name


M_MOUNT = metric("mount time", "s")
M_FIND_COLD = metric("walk (find) cold", "s")
M_FIND_WARM = metric("walk (find) warm", "s")
M_RSS = metric("daemon RSS after walk", "MiB")
M_LS_COLD = metric("walk (ls -lR) cold", "s")
M_LS_WARM = metric("walk (ls -lR) warm", "s")
M_READ_COLD = metric("read small files cold", "s")
M_READ_WARM = metric("read small files warm", "s")
M_BIG_COLD = metric("sequential read cold", "MB/s", higher_is_better=True)
M_BIG_WARM = metric("sequential read warm", "MB/s", higher_is_better=True)
M_RAND_COLD = metric("random 4k read cold", "IOPS", higher_is_better=True)
M_RAND_WARM = metric("random 4k read warm", "IOPS", higher_is_better=True)
M_COPYUP = metric("copy-up by 1-byte write", "s")
M_CHMOD = metric("chmod lower files", "s")
M_UNTAR = metric("untar", "s")
M_RM = metric("rm -rf untarred", "s")
M_WRITE = metric("sequential write + fsync", "MB/s", higher_is_better=True)


def w_mount(m: Mount) -> Result:
    """Mount time of the full stack with an upper layer (measured by Mount)."""
    return {M_MOUNT: m.seconds}


def w_walk(m: Mount) -> Result:
    """find printing size, mode and owner of every entry; cold, warm; then the RSS."""
    walk = f"find {m.mnt} -printf '%s %m %u\\n'"
    drop_caches()
    out = {
        M_FIND_COLD: timed(walk, metric=M_FIND_COLD),
        M_FIND_WARM: timed(walk, metric=M_FIND_WARM),
    }
    if m.pid is not None:
        out[M_RSS] = rss_mib(m.pid)
    return out


def w_ls(m: Mount) -> Result:
    """ls -lR of the whole mount (lstat, and the xattrs ls asks for); cold, warm."""
    walk = f"ls -lR {m.mnt}"
    drop_caches()
    return {M_LS_COLD: timed(walk, metric=M_LS_COLD), M_LS_WARM: timed(walk, metric=M_LS_WARM)}


def w_read(m: Mount) -> Result:
    """cat every regular file except the big ones; cold, warm."""
    read = f"find {m.mnt} -path {m.mnt}/big -prune -o -type f -exec cat {{}} + > /dev/null"
    drop_caches()
    return {
        M_READ_COLD: timed(read, metric=M_READ_COLD),
        M_READ_WARM: timed(read, metric=M_READ_WARM),
    }


def w_bigread(m: Mount) -> Result:
    """dd of the big file in 1 MiB blocks; cold, warm (MB/s)."""
    path = m.mnt / m.ds.big
    mb = path.stat().st_size / 1e6
    cmd = f"dd if={path} of=/dev/null bs=1M status=none"
    drop_caches()
    return {
        M_BIG_COLD: mb / timed(cmd, metric=M_BIG_COLD),
        M_BIG_WARM: mb / timed(cmd, metric=M_BIG_WARM),
    }


def _fio_iops(path: Path, seconds: int, invalidate: bool) -> float:
    """IOPS of fio random 4 KiB buffered reads (psync, one job) of path."""
    proc = subprocess.run(
        [
            "fio", "--name=randread", f"--filename={path}", "--readonly",
            "--rw=randread", "--bs=4k", "--ioengine=psync", "--direct=0",
            f"--invalidate={int(invalidate)}", "--time_based", f"--runtime={seconds}",
            "--output-format=json",
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(json.loads(proc.stdout)["jobs"][0]["read"]["iops"])


def w_randread(m: Mount) -> Result:
    """fio random 4 KiB reads of the big file: cold, then with the file in cache."""
    path = m.mnt / m.ds.big
    seconds = m.ds.size.fio_seconds
    drop_caches()
    cold = _fio_iops(path, seconds, invalidate=True)
    timed(f"cat {path} > /dev/null")
    return {M_RAND_COLD: cold, M_RAND_WARM: _fio_iops(path, seconds, invalidate=False)}


def w_copyup(m: Mount) -> Result:
    """open for write, write 1 byte, close: the whole copy-up of a lower file.

    The lower file is read into the page cache first (directly from its layer),
    so the number is the cost of copying, not of reading the disk. The file's
    size is checked afterwards.
    """
    _read_lower(m.ds, [m.ds.copyup])
    path = m.mnt / m.ds.copyup
    with counting(M_COPYUP):
        start = time.perf_counter()
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, b"x", 0)
        finally:
            os.close(fd)
        seconds = time.perf_counter() - start
    expect = m.ds.size.copyup_mib * MIB
    if path.stat().st_size != expect:
        raise RuntimeError(f"{path} has {path.stat().st_size} bytes after copy-up, not {expect}")
    return {M_COPYUP: seconds}


def _read_lower(ds: Dataset, rels: list[str]) -> None:
    """Read the topmost layer's copy of each union path (not through a mount).

    Puts the data a copy-up reads into the page cache, so that every
    implementation starts from the same state whatever ran before it.
    """
    for rel in rels:
        for layer in ds.layers:
            path = layer / rel
            if path.exists():
                path.read_bytes()
                break


def w_chmod(m: Mount) -> Result:
    """chmod 600 of lower files (a metadata change that copies each file up)."""
    _read_lower(m.ds, m.ds.chmod_list.read_text().splitlines())
    chmod = f"xargs -d '\\n' chmod 600 < {m.ds.chmod_list}"
    return {M_CHMOD: timed(chmod, cwd=m.mnt, metric=M_CHMOD)}


def w_untar(m: Mount) -> Result:
    """tar x of an archive of small files into the mount, then rm -rf of them."""
    m.ds.untar_archive.read_bytes()  # in the page cache, as for every implementation
    untar = timed(f"tar xf {m.ds.untar_archive} -C {m.mnt}", metric=M_UNTAR)
    return {M_UNTAR: untar, M_RM: timed(f"rm -rf {m.mnt}/untar", metric=M_RM)}


def w_write(m: Mount) -> Result:
    """dd of zeros in 1 MiB blocks into a new file, fsync included (MB/s)."""
    mib = m.ds.size.write_mib
    cmd = f"dd if=/dev/zero of={m.mnt}/written bs=1M count={mib} conv=fsync status=none"
    return {M_WRITE: mib * MIB / 1e6 / timed(cmd, metric=M_WRITE)}


@dataclass(frozen=True)
class Workload:
    """A measurement on one fresh mount; `writable` mounts get an upper layer."""

    run: Callable[[Mount], Result]
    writable: bool


WORKLOADS: dict[str, Workload] = {
    "mount": Workload(w_mount, writable=True),
    "walk": Workload(w_walk, writable=False),
    "ls": Workload(w_ls, writable=False),
    "read": Workload(w_read, writable=False),
    "bigread": Workload(w_bigread, writable=False),
    "randread": Workload(w_randread, writable=False),
    "copyup": Workload(w_copyup, writable=True),
    "chmod": Workload(w_chmod, writable=True),
    "untar": Workload(w_untar, writable=True),
    "write": Workload(w_write, writable=True),
}


# ---------------------------------------------------------------- targets

KERNEL, PEER = "kernel", "fuse-overlayfs"


@dataclass(frozen=True)
class Target:
    """A goal for unionfs: a bound on its median, relative to a reference or absolute.

    With a reference the bound is on unionfs / reference (medians): at most
    `bound` for times and sizes, at least `bound` for rates. Without one the
    bound is on the value itself (at most).
    """

    metric: str
    bound: float
    reference: str | None = None

    def describe(self) -> str:
        """The target in words, such as "<= 2x kernel"."""
        unit = METRICS[self.metric].unit
        if self.reference is None:
            return f"< {self.bound:g} {unit}"
        op = ">=" if METRICS[self.metric].higher_is_better else "<="
        return f"{op} {self.bound:g}x {self.reference}"

    def check(self, results: dict[str, dict[str, list[float]]]) -> tuple[float, bool] | None:
        """(ratio or value, met), or None when a number is missing."""
        ours = results.get("unionfs", {}).get(self.metric)
        if not ours:
            return None
        value = statistics.median(ours)
        if self.reference is None:
            return value, value < self.bound
        theirs = results.get(self.reference, {}).get(self.metric)
        if not theirs:
            return None
        ratio = value / statistics.median(theirs)
        met = ratio >= self.bound if METRICS[self.metric].higher_is_better else ratio <= self.bound
        return ratio, met


TARGETS = [
    Target(M_FIND_WARM, 2.0, KERNEL),
    Target(M_LS_WARM, 2.0, KERNEL),
    Target(M_FIND_COLD, 1.5, PEER),
    Target(M_LS_COLD, 1.5, PEER),
    Target(M_READ_WARM, 3.0, KERNEL),
    Target(M_READ_COLD, 1.5, PEER),
    Target(M_BIG_COLD, 0.9, PEER),
    Target(M_BIG_WARM, 0.8, KERNEL),
    Target(M_RAND_WARM, 1.0, PEER),
    Target(M_WRITE, 1.3, PEER),
    Target(M_COPYUP, 1.0, PEER),
    Target(M_CHMOD, 1.5, PEER),
    Target(M_UNTAR, 1.5, PEER),
    Target(M_RM, 1.5, PEER),
    Target(M_MOUNT, 0.5),
    Target(M_RSS, 60.0),
]


# ---------------------------------------------------------------- report


TIMES, DASH = "\u00d7", "\u2013"  # for the markdown tables


def fmt(v: float) -> str:
    """A number with about three significant digits."""
    if v >= 100:
        return f"{v:.0f}"
    if v >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def table(results: dict[str, dict[str, list[float]]], impls: list[str]) -> str:
    """Markdown: per metric and implementation, median (min-max) and ratio to the kernel."""
    lines = [
        "| workload | unit | " + " | ".join(impls) + " |",
        "|---|---|" + "---|" * len(impls),
    ]
    kernel = results.get(KERNEL, {})
    for name, m in METRICS.items():
        if not any(results[i].get(name) for i in impls):
            continue
        cells = []
        for impl in impls:
            vals = results[impl].get(name)
            if not vals:
                cells.append("—")
                continue
            med = statistics.median(vals)
            cell = f"{fmt(med)} ({fmt(min(vals))}{DASH}{fmt(max(vals))})"
            if impl != KERNEL and kernel.get(name):
                cell += f" {TIMES}{med / statistics.median(kernel[name]):.2f}"
            cells.append(cell)
        arrow = "↑" if m.higher_is_better else "↓"
        lines.append(f"| {name} | {m.unit} {arrow} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def requests_table(requests: dict[str, dict[str, list[dict[str, int]]]], impls: list[str]) -> str:
    """Markdown: per metric and FUSE implementation, the median number of
    requests and the opcodes that make up most of them."""
    lines = [
        "| workload | " + " | ".join(impls) + " |",
        "|---|" + "---|" * len(impls),
    ]
    for name in METRICS:
        if not any(requests[i].get(name) for i in impls):
            continue
        cells = []
        for impl in impls:
            runs = requests[impl].get(name)
            if not runs:
                cells.append("—")
                continue
            mid = sorted(runs, key=lambda c: sum(c.values()))[len(runs) // 2]
            total = sum(v for k, v in mid.items() if k != "lost")
            top = sorted(((v, k) for k, v in mid.items() if k != "lost"), reverse=True)[:3]
            parts = ", ".join(f"{v:,} {k}" for v, k in top)
            lost = f", {mid['lost']:,} lost" if mid.get("lost") else ""
            cells.append(f"{total:,} ({parts}{lost})" if total else "0")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_table(results: dict[str, dict[str, list[float]]]) -> str:
    """Markdown: each target of unionfs, the measured ratio (or value) and whether it holds."""
    lines = ["| target | unionfs | met |", "|---|---|---|"]
    for t in TARGETS:
        if not results.get("unionfs", {}).get(t.metric):
            continue  # its workload did not run
        got = t.check(results)
        what = f"{t.metric} {t.describe()}"
        if got is None:
            lines.append(f"| {what} | not measured | — |")
            continue
        value, met = got
        shown = (
            f"{fmt(value)} {METRICS[t.metric].unit}"
            if t.reference is None
            else f"{TIMES}{value:.3g}"
        )
        lines.append(f"| {what} | {shown} | {'met' if met else 'not met'} |")
    return "\n".join(lines)


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "kernel": os.uname().release,
        "cpu": cpu,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "loadavg_at_start": os.getloadavg(),
    }


def source_revision() -> str:
    """The commit of the repository this script is in, "+dirty" with local changes."""
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        ["git", "-C", str(repo), "describe", "--always", "--dirty=+dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() or "?"


def disk(path: Path) -> str:
    """The device and filesystem that hold path, as findmnt shows them."""
    proc = subprocess.run(
        ["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return " ".join(proc.stdout.split()) or "?"


# ---------------------------------------------------------------- main


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def cleanup(scratch: Path) -> Iterator[None]:
    """Unmount whatever is still mounted when the run ends, however it ends,
    then remove the scratch dir."""
    try:
        yield
    finally:
        for mnt in list(ACTIVE):
            unmount(mnt, None)
            if os.path.ismount(mnt):
                print(f"could not unmount {mnt}", file=sys.stderr)
        if not ACTIVE:
            shutil.rmtree(scratch, ignore_errors=True)


def plot(json_path: Path, png: Path) -> None:
    """Chart the results with scripts/bench_plot.py, if matplotlib is installed."""
    if importlib.util.find_spec("matplotlib") is None:
        print("matplotlib is not installed: no chart", file=sys.stderr)
        return
    cmd = [sys.executable, str(PLOT_SCRIPT), "--json", str(json_path), "--out", str(png)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def parse_args() -> argparse.Namespace:
    """The command line (see the module docstring)."""
    lines = [f"  {n:9} {(w.run.__doc__ or '').splitlines()[0]}" for n, w in WORKLOADS.items()]
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog="workloads (each on a fresh mount):\n" + "\n".join(lines),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"small dataset ({QUICK.base_files} files, {QUICK.big_mib} MiB big file): minutes",
    )
    ap.add_argument("--runs", type=int, help="runs per workload and implementation (5; quick 3)")
    ap.add_argument("--impl", action="append", choices=list(IMPLS), help="only these (repeat)")
    ap.add_argument(
        "--workload", action="append", choices=list(WORKLOADS), help="only these (repeat)"
    )
    ap.add_argument(
        "--root", type=Path, default=DEFAULT_ROOT, help="dataset and scratch dir (%(default)s)"
    )
    ap.add_argument("--rebuild", action="store_true", help="build the dataset again")
    ap.add_argument(
        "--unionfs-tree",
        type=Path,
        metavar="DIR",
        help="run unionfs from this source tree (holding unionfs/), e.g. another commit's "
        "`git archive`, instead of the installed package",
    )
    ap.add_argument("--json", type=Path, help="raw results (default <root>/results-<size>.json)")
    ap.add_argument("--no-plot", action="store_true", help="do not chart (default: <json>.png)")
    ap.add_argument(
        "--no-requests",
        action="store_true",
        help="do not count FUSE requests (kernel tracepoint fuse:fuse_request_send)",
    )
    args = ap.parse_args()
    if args.runs is not None and args.runs < 1:
        ap.error("--runs must be at least 1")
    if args.unionfs_tree is not None and not (args.unionfs_tree / "unionfs").is_dir():
        ap.error(f"--unionfs-tree: {args.unionfs_tree} holds no unionfs/ package")
    if os.geteuid() != 0:
        ap.error("must run as root (it mounts filesystems and drops the page cache)")
    return args


def main() -> int:
    """Build the dataset, run every workload on every implementation, report."""
    args = parse_args()
    size = QUICK if args.quick else FULL
    runs = args.runs or (3 if args.quick else 5)
    json_path = args.json or args.root / f"results-{size.name}.json"
    if args.unionfs_tree is not None:
        IMPLS["unionfs"] = replace(IMPLS["unionfs"], tree=args.unionfs_tree.resolve())
    impls = [i for i in IMPLS if i in (args.impl or list(IMPLS))]
    workloads = [w for w in WORKLOADS if w in (args.workload or list(WORKLOADS))]
    for impl in [i for i in impls if not IMPLS[i].available()]:
        print(f"{impl} is not installed; skipped", file=sys.stderr)
        impls.remove(impl)
    if "randread" in workloads and shutil.which("fio") is None:
        print("fio is not installed; randread skipped", file=sys.stderr)
        workloads.remove("randread")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)

    info = machine()
    started = time.monotonic()
    ds = build_dataset(args.root, size, args.rebuild)
    built = time.monotonic() - started
    scratch = args.root / "scratch"
    results: dict[str, dict[str, list[float]]] = {i: {} for i in impls}
    # FUSE requests per implementation, metric and run, by opcode
    requests: dict[str, dict[str, list[dict[str, int]]]] = {i: {} for i in impls}
    if not args.no_requests and any(IMPLS[i].is_fuse for i in impls):
        Requests.counter = RequestCounter()
        if Requests.counter.problem:
            print(f"FUSE requests not counted: {Requests.counter.problem}", file=sys.stderr)
    errors: list[str] = []
    wall: dict[str, list[float]] = {}  # seconds per workload step, mounting included
    with cleanup(scratch):
        for run in range(runs):
            order = impls[run % len(impls) :] + impls[: run % len(impls)]
            for wname in workloads:
                workload = WORKLOADS[wname]
                for impl in order:
                    clock = f"{(time.monotonic() - started) / 60:5.1f} min"
                    print(f"{clock}  run {run + 1}/{runs} {wname} {impl}", file=sys.stderr)
                    step = time.monotonic()
                    try:
                        with Mount(IMPLS[impl], ds, scratch, workload.writable) as m:
                            res = workload.run(m)
                    except (subprocess.CalledProcessError, RuntimeError, OSError) as e:
                        errors.append(f"run {run + 1} {wname} {impl}: {e}")
                        print(f"  failed: {e}", file=sys.stderr)
                        continue
                    finally:
                        wall.setdefault(wname, []).append(time.monotonic() - step)
                    for k, v in res.items():
                        results[impl].setdefault(k, []).append(v)
                    for k, c in Requests.counts.items():
                        requests[impl].setdefault(k, []).append(dict(c))
                    Requests.counts = {}
    if Requests.counter is not None:
        Requests.counter.close()
    elapsed = time.monotonic() - started
    info["loadavg_at_end"] = os.getloadavg()
    info["disk"] = disk(args.root)

    report = {
        "machine": info,
        "size": asdict(size),
        "entries_in_layers": count_files(ds.layers),
        "runs": runs,
        "versions": {i: IMPLS[i].version() for i in impls},
        "source_revision": source_revision(),
        "dataset_seconds": built,
        "elapsed_seconds": elapsed,
        "workload_seconds": {w: sum(t) for w, t in wall.items()},
        "metrics": {k: asdict(m) for k, m in METRICS.items()},
        "results": results,
        "requests": {i: r for i, r in requests.items() if r},
        "errors": errors,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    print(
        f"\n{size.name} dataset ({report['entries_in_layers']} entries in the layers), "
        f"{runs} runs; median (min{DASH}max) {TIMES}ratio of the median to kernel overlayfs; "
        "↑ higher is better, ↓ lower is better\n"
    )
    print(table(results, impls))
    if any(requests.values()):
        print("\nFUSE requests the kernel sent per measurement (median of the runs)\n")
        print(requests_table(requests, [i for i in impls if requests[i]]))
    print("\nunionfs targets (ratios of medians)\n")
    print(targets_table(results))
    for err in errors:
        print(f"\nerror: {err}")
    if not args.no_plot:
        png = json_path.with_suffix(".png")
        plot(json_path, png)
        print(f"\nchart: {png}")
    print(f"\n{elapsed:.0f} s ({built:.0f} s building the dataset); raw numbers in {json_path}")
    return 1 if errors else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP; the mounts are gone
        print("interrupted", file=sys.stderr)
        sys.exit(130)
