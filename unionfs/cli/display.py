"""How the store's commands print: docker-like tables, sizes and ages, JSON."""

import contextlib
import datetime as dt
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn


def human_size(n: float) -> str:
    """Decimal units as docker prints them: 0B, 512B, 1.23kB, 45.6MB, 7.89GB."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            if unit == "B":
                return f"{int(n)}B"
            return f"{n:.3g}{unit}"
        n /= 1000
    raise AssertionError("unreachable")


def ago(when: dt.datetime | None, now: dt.datetime | None = None) -> str:
    """``3 seconds ago``, ``2 hours ago``, ``5 weeks ago``; ``N/A`` when unknown."""
    if when is None:
        return "N/A"
    now = now or dt.datetime.now(dt.UTC)
    secs = (now - when).total_seconds()
    if secs < 0:
        return "in the future"
    for size, unit in (
        (365 * 86400, "year"),
        (30 * 86400, "month"),
        (7 * 86400, "week"),
        (86400, "day"),
        (3600, "hour"),
        (60, "minute"),
        (1, "second"),
    ):
        if secs >= size:
            n = int(secs // size)
            if unit == "second" and n < 60 and secs < 2:
                return "Less than a second ago"
            return f"{n} {unit}{'s' if n != 1 else ''} ago"
    return "Less than a second ago"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to width, separated by three spaces, as docker prints them."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = []
    for row in [list(headers), *rows]:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def echo_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    click.echo(table(headers, rows))


def echo_json(data: Any) -> None:
    for chunk in iter_json(data):
        sys.stdout.write(chunk)
    sys.stdout.write("\n")


_END = object()


def iter_json(data: Any, indent: int = 2) -> Iterator[str]:
    """The text ``json.dump(data, indent=indent)`` writes, in pieces, without
    recursion: a tree read from a layer may nest deeper than Python's stack."""
    frames: list[tuple[str, Iterator[Any], int, list[bool]]] = []
    pending: list[Any] = [data]
    while True:
        if pending:
            value = pending.pop()
            level = len(frames)
            if isinstance(value, dict) and value:
                yield "{"
                frames.append(("}", iter(value.items()), level + 1, [True]))
            elif isinstance(value, (list, tuple)) and value:
                yield "["
                frames.append(("]", iter(value), level + 1, [True]))
            else:
                yield json.dumps(value)
        if not frames:
            return
        closer, items, level, first = frames[-1]
        item: Any = next(items, _END)
        if item is _END:
            frames.pop()
            yield "\n" + " " * (indent * (level - 1)) + closer
            continue
        yield ("" if first[0] else ",") + "\n" + " " * (indent * level)
        first[0] = False
        if closer == "}":
            key, item = item
            yield json.dumps(str(key)) + ": "
        pending.append(item)


@contextlib.contextmanager
def transfer_progress() -> Iterator[Progress | None]:
    """Transfer bars (size, bytes done, rate) on stderr while it is a terminal;
    None otherwise, where the commands print plain lines instead."""
    if not sys.stderr.isatty():
        yield None
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with progress:
        yield progress
