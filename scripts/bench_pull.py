#!/usr/bin/env python3
"""Pull of a big image from a local registry: ``unionfs pull`` against ``podman
pull`` and ``skopeo copy`` + ``unionfs image import``.

Builds an image of `--layers` gzip layers holding `--files` files and `--size`
bytes in all (incompressible content, so gzip costs what it would), puts it in a
``docker-registry`` on 127.0.0.1 (plain HTTP), then times each way of getting it
into a local store, each into a fresh store, `--runs` times (the median is
printed, with the CPU seconds, user and system, of the commands: on a shared
machine the wall-clock time depends on the load, printed too). Needs root
(podman's storage), docker-registry, podman, skopeo.

    sudo .venv/bin/python scripts/bench_pull.py                       # 1 GiB, 60k files
    sudo .venv/bin/python scripts/bench_pull.py --size 256M --files 15000 --runs 1
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.registry import run_registry  # noqa: E402


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return (
        int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)
    )


def build_layout(dest: Path, layers: int, files: int, size: int) -> Path:
    """An OCI layout of `layers` gzip layers; files of a few sizes, random bytes."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    per_file = max(1, size // files)
    diff_ids, descs = [], []
    made = 0
    for n in range(layers):
        count = files // layers + (1 if n < files % layers else 0)
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for i in range(count):
                info = tarfile.TarInfo(f"l{n}/d{i // 500}/f{i}")
                # sizes from a quarter to twice the mean, as source trees vary
                length = per_file // 4 + (made * 7919) % (per_file * 7 // 4 + 1)
                made += 1
                info.size, info.mode, info.mtime = length, 0o644, 1_700_000_000
                tar.addfile(info, io.BytesIO(os.urandom(length)))
        tar_bytes = raw.getvalue()
        blob = gzip.compress(tar_bytes, compresslevel=1, mtime=0)
        digest = hashlib.sha256(blob).hexdigest()
        (blobs / digest).write_bytes(blob)
        diff_ids.append("sha256:" + hashlib.sha256(tar_bytes).hexdigest())
        descs.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": f"sha256:{digest}",
                "size": len(blob),
            }
        )
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    (blobs / hashlib.sha256(config).hexdigest()).write_bytes(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                "size": len(config),
            },
            "layers": descs,
        }
    ).encode()
    (blobs / hashlib.sha256(manifest).hexdigest()).write_bytes(manifest)
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (dest / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
                        "size": len(manifest),
                        "annotations": {"org.opencontainers.image.ref.name": "big"},
                    }
                ],
            }
        )
    )
    return dest


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall-clock and CPU (user + system) seconds of `cmd`."""
    start, cpu = time.perf_counter(), _cpu()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    return time.perf_counter() - start, _cpu() - cpu


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G", help="total file bytes (default 1G)")
    ap.add_argument("--files", type=int, default=60_000, help="number of files (default 60000)")
    ap.add_argument("--layers", type=int, default=8, help="layers (default 8)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--work", type=Path, help="scratch dir (default: a temp dir, removed)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-pull-", dir=args.work))
    unionfs = [sys.executable, "-m", "unionfs"]
    try:
        size = _size(args.size)
        print(f"building {args.layers} layers, {args.files} files, {size >> 20} MiB ...")
        layout = build_layout(work / "layout", args.layers, args.files, size)
        blob_bytes = sum(p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir())
        with run_registry(work / "registry") as reg:
            ref = f"{reg.host}/big:1"
            subprocess.run(
                [
                    "skopeo",
                    "copy",
                    "--dest-tls-verify=false",
                    f"oci:{layout}:big",
                    f"docker://{ref}",
                ],
                check=True,
                capture_output=True,
            )
            results: dict[str, list[tuple[float, float]]] = {
                "unionfs pull": [],
                "podman pull": [],
                "skopeo copy + unionfs image import": [],
            }
            loads: list[float] = []
            for run in range(args.runs):
                d = work / f"run{run}"
                loads.append(os.getloadavg()[0])
                drop_caches()
                results["unionfs pull"].append(
                    timed(
                        [*unionfs, "--root", str(d / "unionfs"), "pull", "--tls-verify=false", ref]
                    )
                )
                conf = d / "storage.conf"
                d.mkdir(exist_ok=True)
                conf.write_text(
                    f'[storage]\ndriver = "overlay"\ngraphroot = "{d}/podman"\n'
                    f'runroot = "{d}/podman-run"\n'
                )
                env = {**os.environ, "CONTAINERS_STORAGE_CONF": str(conf)}
                drop_caches()
                results["podman pull"].append(
                    timed(
                        [
                            "podman",
                            "--events-backend",
                            "none",
                            "pull",
                            "-q",
                            "--tls-verify=false",
                            ref,
                        ],
                        env,
                    )
                )
                subprocess.run(
                    ["podman", "--events-backend", "none", "system", "reset", "-f"],
                    env=env,
                    capture_output=True,
                    check=False,
                )
                drop_caches()
                start, cpu = time.perf_counter(), _cpu()
                subprocess.run(
                    [
                        "skopeo",
                        "copy",
                        "--src-tls-verify=false",
                        f"docker://{ref}",
                        f"oci:{d}/oci:big",
                    ],
                    check=True,
                    capture_output=True,
                )
                subprocess.run(
                    [
                        *unionfs,
                        "--root",
                        str(d / "unionfs2"),
                        "image",
                        "import",
                        f"{d}/oci",
                        "bench/big:1",
                    ],
                    check=True,
                    capture_output=True,
                )
                results["skopeo copy + unionfs image import"].append(
                    (time.perf_counter() - start, _cpu() - cpu)
                )
                shutil.rmtree(d, ignore_errors=True)
        print(
            f"\nimage: {args.layers} layers, {args.files} files, {size >> 20} MiB of files, "
            f"{blob_bytes >> 20} MiB of gzip blobs; {args.runs} run(s), median seconds; "
            f"{os.cpu_count()} CPUs, load average (1 min) before each run: "
            + ", ".join(f"{x:.1f}" for x in loads)
            + "\n"
        )
        print(f"| {'way':<36} | {'seconds':>8} | {'MiB/s (blobs)':>13} | {'CPU seconds':>11} |")
        print(f"|{'-' * 38}|{'-' * 10}|{'-' * 15}|{'-' * 13}|")
        for way, times in results.items():
            t = statistics.median(w for w, _ in times)
            c = statistics.median(c for _, c in times)
            print(f"| {way:<36} | {t:8.1f} | {blob_bytes / t / (1 << 20):13.1f} | {c:11.1f} |")
        print(json.dumps({k: [round(w, 2) for w, _ in v] for k, v in results.items()}))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
