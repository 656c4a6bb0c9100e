#!/usr/bin/env python3
"""What the kernel caches buy a read-only unionfs mount.

Builds a three-layer stack of small files, then for each setting (the default
long entry/attribute timeouts with keep_cache, and --cache-timeout 0) mounts
it, walks it cold and warm with ``find -printf`` (lstat of every entry) and reads
every file warm with ``cat``. Runs alternate between the settings; medians of
several runs are printed as a markdown table. Timing lives here, never in tests.

    sudo .venv/bin/python scripts/bench_caches.py [--files 20000] [--runs 5]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {"cached (default)": [], "no kernel cache": ["--cache-timeout", "0"]}


def build_stack(root: Path, files: int) -> list[Path]:
    """Three layers: a base of `files` files, one rewriting 5%, one adding 5%."""
    layers = [root / "top", root / "mid", root / "base"]
    per_dir = 100
    for i in range(files):
        d = root / "base" / f"d{i // per_dir:04d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}").write_bytes(b"x" * (i % 4096))
    for i in range(0, files, 20):
        d = root / "mid" / f"d{i // per_dir:04d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}").write_bytes(b"y" * 100)
    for i in range(0, files, 20):
        d = root / "top" / f"d{i // per_dir:04d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"new{i:06d}").write_bytes(b"z" * 10)
    return layers


def timed(cmd: str) -> float:
    start = time.perf_counter()
    subprocess.run(["sh", "-c", cmd], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def run_once(layers: list[Path], mnt: Path, extra: list[str]) -> dict[str, float]:
    lowers = [a for layer in layers for a in ("--lower", str(layer))]
    cli = [sys.executable, "-m", "unionfs"]
    drop_caches()
    subprocess.run([*cli, "mount", *lowers, *extra, str(mnt)], check=True)
    try:
        walk = f"find {mnt} -printf '%s %m %u\\n'"
        out = {"walk cold": timed(walk), "walk warm": timed(walk)}
        read_all = f"find {mnt} -type f -exec cat {{}} + > /dev/null"
        timed(read_all)
        out["read warm"] = timed(read_all)
        return out
    finally:
        subprocess.run([*cli, "umount", str(mnt)], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="unionfs-bench-"))
    try:
        layers = build_stack(root, args.files)
        mnt = root / "mnt"
        mnt.mkdir()
        results: dict[str, dict[str, list[float]]] = {s: {} for s in SETTINGS}
        for _ in range(args.runs):
            for name, extra in SETTINGS.items():
                for k, v in run_once(layers, mnt, extra).items():
                    results[name].setdefault(k, []).append(v)
        columns = list(next(iter(results.values())))
        print(f"{args.files} base files, 3 layers, median of {args.runs} runs (seconds)\n")
        print("| setting | " + " | ".join(columns) + " |")
        print("|---|" + "---|" * len(columns))
        for name, res in results.items():
            cells = " | ".join(f"{statistics.median(res[c]):.3f}" for c in columns)
            print(f"| {name} | {cells} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
