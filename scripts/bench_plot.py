#!/usr/bin/env python3
"""Chart the results of scripts/bench: how many times slower than kernel overlayfs.

Reads the JSON that scripts/bench writes and draws, per workload, one bar per
implementation: its median's cost relative to the kernel's (time / kernel time,
or kernel throughput / throughput), on a log scale, so 1 is as fast as the
kernel and 10 is ten times slower whichever way the metric runs. Needs
matplotlib, which scripts/bench installs into .venv.

    .venv/bin/python scripts/bench_plot.py [--json PATH] [--out PNG]
"""

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

# matplotlib is only installed by scripts/bench; without it the checks of this
# file still pass (the ignore is then used, and unused when it is installed).
import matplotlib  # type: ignore[import-not-found, unused-ignore]

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

DEFAULT_JSON = Path("/var/tmp/unionfs-bench/results-full.json")  # noqa: S108  (bench's output)
KERNEL = "kernel"
COLORS = {"unionfs": "tab:blue", "fuse-overlayfs": "tab:orange", "unionfs-fuse": "tab:green"}


def slowdowns(report: dict[str, Any]) -> tuple[list[str], dict[str, list[float]]]:
    """The metrics the kernel has numbers for, and per other implementation its slowdowns.

    A slowdown is the median's time (or size) over the kernel's, or the kernel's
    rate over the median's rate; NaN where the implementation has no number.
    """
    results: dict[str, dict[str, list[float]]] = report["results"]
    metrics: dict[str, dict[str, Any]] = report["metrics"]
    kernel = results.get(KERNEL, {})
    names = [m for m in metrics if kernel.get(m)]
    out: dict[str, list[float]] = {}
    for impl, res in results.items():
        if impl == KERNEL:
            continue
        row = []
        for m in names:
            if not res.get(m):
                row.append(math.nan)
                continue
            ratio = statistics.median(res[m]) / statistics.median(kernel[m])
            row.append(1 / ratio if metrics[m]["higher_is_better"] else ratio)
        out[impl] = row
    return names, out


def draw(report: dict[str, Any], out: Path) -> None:
    """Write the bar chart of `report` to out (PNG)."""
    names, rows = slowdowns(report)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.75 * len(names) + 2), 6.5))
    width = 0.8 / max(1, len(rows))
    for i, (impl, vals) in enumerate(rows.items()):
        xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(names))]
        bars = ax.bar(xs, vals, width, label=impl, color=COLORS.get(impl))
        for bar, v in zip(bars, vals, strict=True):
            if not math.isnan(v):
                ax.annotate(
                    f"{v:.1f}" if v < 100 else f"{v:.0f}",
                    (bar.get_x() + bar.get_width() / 2, v),
                    ha="center",
                    va="bottom",
                    fontsize=6,
                )
    ax.set_yscale("log")
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=9)
    ax.set_ylabel("times slower than kernel overlayfs (log scale; 1 = kernel)")
    size = report.get("size", {}).get("name", "?")
    when = str(report.get("machine", {}).get("date", ""))[:10]
    ax.set_title(
        f"unionfs and its peers against kernel overlayfs\n"
        f"{size} dataset, medians of {report['runs']} runs, {when}",
        fontsize=11,
    )
    ax.legend()
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    """Read the JSON, write the PNG, print its path."""
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help="(default %(default)s)")
    ap.add_argument("--out", type=Path, help="default: the JSON path with .png")
    args = ap.parse_args()
    out = args.out or args.json.with_suffix(".png")
    draw(json.loads(args.json.read_text()), out)
    print(out)


if __name__ == "__main__":
    main()
