#!/usr/bin/env python3
"""What enforcing POSIX ACLs (FUSE_POSIX_ACL) costs ``ls -l`` on a writable mount.

Builds one lower layer of small files in one directory, every tenth with an
ACL entry, then for each setting (ACLs enforced, the default; ``-o noacl``)
mounts it with a fresh upper, runs ``ls -l`` cold (caches dropped, fresh mount)
and warm, and reads the daemon's request counters (``unionfs stats --json``).
Runs alternate between the settings; medians are printed as a markdown table.
Timing lives here, never in tests.

    sudo .venv/bin/python scripts/bench_acl.py [--files 3000] [--runs 3]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {"ACLs enforced (default)": [], "-o noacl": ["-o", "noacl"]}
COUNTED = ("getxattr", "listxattr", "lookup", "getattr")


def build_layer(root: Path, files: int) -> Path:
    layer = root / "lower" / "d"
    layer.mkdir(parents=True)
    for i in range(files):
        (layer / f"f{i:06d}").write_bytes(b"x" * (i % 512))
    acl = [str(layer / f"f{i:06d}") for i in range(0, files, 10)]
    for start in range(0, len(acl), 500):
        subprocess.run(["setfacl", "-m", "u:nobody:r--", *acl[start : start + 500]], check=True)
    return root / "lower"


def timed(cmd: str) -> float:
    start = time.perf_counter()
    subprocess.run(["sh", "-c", cmd], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def requests(cli: list[str], mnt: Path) -> dict[str, int]:
    out = subprocess.run([*cli, "stats", "--json", str(mnt)], check=True, capture_output=True)
    counts: dict[str, int] = json.loads(out.stdout)["requests"]
    return counts


def run_once(lower: Path, root: Path, mnt: Path, extra: list[str]) -> dict[str, float]:
    cli = [sys.executable, "-m", "unionfs"]
    upper, work = root / "upper", root / "work"
    for d in (upper, work):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    drop_caches()
    subprocess.run(
        [*cli, "mount", "--lower", str(lower), "--upper", str(upper), "--work", str(work),
         *extra, str(mnt)],
        check=True,
    )  # fmt: skip
    try:
        before = requests(cli, mnt)
        cold = timed(f"ls -l {mnt}/d")
        after_cold = requests(cli, mnt)
        warm = timed(f"ls -l {mnt}/d")
        after_warm = requests(cli, mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    out = {"ls -l cold (s)": cold, "ls -l warm (s)": warm}
    for name in COUNTED:
        out[f"{name} cold"] = after_cold.get(name, 0) - before.get(name, 0)
        out[f"{name} warm"] = after_warm.get(name, 0) - after_cold.get(name, 0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (drops the page cache, mounts)")
    root = Path(tempfile.mkdtemp(prefix="unionfs-bench-acl-"))
    try:
        lower = build_layer(root, args.files)
        mnt = root / "mnt"
        mnt.mkdir()
        results: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
        for _ in range(args.runs):
            for name, extra in SETTINGS.items():
                results[name].append(run_once(lower, root, mnt, extra))
        keys = list(next(iter(results.values()))[0])
        print(f"{args.files} files, {args.runs} runs, medians\n")
        print("| | " + " | ".join(SETTINGS) + " |")
        print("|---|" + "---|" * len(SETTINGS))
        for key in keys:
            cells = []
            for name in SETTINGS:
                value = statistics.median(r[key] for r in results[name])
                cells.append(f"{value:.3f}" if key.endswith("(s)") else f"{value:.0f}")
            print(f"| {key} | " + " | ".join(cells) + " |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
