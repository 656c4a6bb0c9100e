"""``unionfs image analyze IMAGE``: an image's efficiency and wasted bytes, for people and CI.

The numbers are dive's (see `unionfs.inspect.analyze`). The thresholds fail
the command (exit 1, one ``unionfs: error:`` line per failed threshold on
stderr, after the report) as dive's ``--ci`` rules do: ``--fail-under`` is
dive's ``lowestEfficiency``, ``--max-wasted`` its ``highestWastedBytes``,
``--max-wasted-percent`` its ``highestUserWastedPercent`` (of the bytes above
the base layer, as a percentage).
"""

from __future__ import annotations

import math
import re
import sys

import click

from unionfs.cli import display
from unionfs.cli.common import get_store, json_option
from unionfs.cli.inspect import shown
from unionfs.errors import UnionfsError
from unionfs.inspect.analyze import Analysis, Wasteful, analyze
from unionfs.inspect.stack import Stack, image_stack

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")
#: How many wasteful paths the text report lists (--all: every one).
LISTED = 20


def parse_size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """``1000``, ``20MB``, ``1.5GiB``: bytes, in docker's decimal units or binary ones."""
    if value is None:
        return None
    m = _SIZE.match(value.lower())
    if m is None or m.group(2) not in _UNITS:
        raise click.BadParameter(f"{value!r} is not a size (such as 1000, 20MB or 1.5GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def parse_ratio(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """``0.95`` or ``95%``: a ratio between 0 and 1."""
    if value is None:
        return None
    text = value.strip()
    try:
        ratio = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a ratio (such as 0.95 or 95%)") from None
    if not 0 <= ratio <= 1:
        raise click.BadParameter(f"{value!r} is not between 0 and 1 (or 0% and 100%)")
    return ratio


def _copies_text(w: Wasteful, stack: Stack) -> str:
    parts = []
    for c in w.copies:
        what = "deleted" if c.kind == "deleted" else display.human_size(c.size)
        parts.append(f"{stack.layer(c.layer).short}: {what}")
    return ", ".join(parts)


def _percent(ratio: float) -> str:
    """``99.99%``: rounded down, so that only no waste at all shows as 100%."""
    return f"{math.floor(ratio * 10000) / 100:.2f}%"


def report_text(a: Analysis, listed: int | None = LISTED) -> str:
    """The analysis for people: the totals, then the wasteful paths, most bytes first."""
    s = a.stack
    n = len(s.layers)
    lines = [
        f"{s.what}: {n} layer{'s' if n != 1 else ''}",
        f"Total size:  {display.human_size(a.total_bytes)} ({a.total_bytes} bytes)",
        f"Efficiency:  {_percent(a.efficiency)}",
        f"Wasted:      {display.human_size(a.wasted_bytes)} ({a.wasted_bytes} bytes, "
        f"{a.wasted_user_percent:.2f}% of the {display.human_size(a.user_bytes)} above "
        "the base layer)",
    ]
    if not a.wasteful:
        lines.append("No wasteful paths: no layer overwrites, deletes or duplicates a file.")
        return "\n".join(lines)
    count = len(a.wasteful)
    lines += [
        "",
        f"{count} wasteful path{'s' if count != 1 else ''}: held by more than one layer "
        "(bytes of every copy; layers bottom first):",
    ]
    shown_rows = a.wasteful if listed is None else a.wasteful[:listed]
    rows = [[display.human_size(w.bytes), shown(w.path), _copies_text(w, s)] for w in shown_rows]
    lines.append(display.table(["WASTED", "PATH", "COPIES"], rows))
    if len(shown_rows) < count:
        lines.append(f"... and {count - len(shown_rows)} more (--all lists every one)")
    return "\n".join(lines)


def failed_checks(
    a: Analysis,
    fail_under: float | None,
    max_wasted: int | None,
    max_wasted_percent: float | None,
) -> list[str]:
    """Why the analysis fails the thresholds given, one sentence each."""
    reasons = []
    if fail_under is not None and a.efficiency < fail_under:
        reasons.append(
            f"efficiency {_percent(a.efficiency)} is under {_percent(fail_under)} (--fail-under)"
        )
    if max_wasted is not None and a.wasted_bytes > max_wasted:
        reasons.append(f"{a.wasted_bytes} bytes wasted, over {max_wasted} bytes (--max-wasted)")
    if max_wasted_percent is not None and a.wasted_user_percent > max_wasted_percent:
        reasons.append(
            f"{a.wasted_user_percent:.2f}% of the bytes above the base layer wasted, over "
            f"{max_wasted_percent:g}% (--max-wasted-percent)"
        )
    return reasons


@click.command("analyze")
@click.argument("image", metavar="IMAGE")
@click.option(
    "--fail-under",
    callback=parse_ratio,
    metavar="EFFICIENCY",
    help="Exit 1 when the efficiency is under EFFICIENCY (0.95 or 95%).",
)
@click.option(
    "--max-wasted",
    callback=parse_size,
    metavar="BYTES",
    help="Exit 1 when more than BYTES are wasted (20MB, 1000).",
)
@click.option(
    "--max-wasted-percent",
    type=click.FloatRange(min=0),
    metavar="P",
    help="Exit 1 when the wasted bytes are more than P percent of the bytes above the base layer.",
)
@click.option("--all", "list_all", is_flag=True, help=f"List every wasteful path (not {LISTED}).")
@json_option
@click.pass_context
def analyze_cmd(
    ctx: click.Context,
    image: str,
    fail_under: float | None,
    max_wasted: int | None,
    max_wasted_percent: float | None,
    list_all: bool,
    as_json: bool,
) -> None:
    """Show IMAGE's size, efficiency and wasted bytes, and the paths that waste them.

    A path is wasteful when more than one layer holds it: a later layer
    overwrites or deletes a file, or holds it again. Its wasted bytes are
    those of every copy; the efficiency is the bytes of each path's smallest
    copy over the bytes of all copies (1 = nothing wasted), as dive counts
    them. With a threshold, exit 1 when it fails, and say why.
    """
    store = get_store(ctx)
    stack = image_stack(store, store.resolve_image(image))
    result = analyze(stack)
    reasons = failed_checks(result, fail_under, max_wasted, max_wasted_percent)
    if as_json:
        display.echo_json({**result.to_json(), "failed": reasons})
    else:
        click.echo(report_text(result, None if list_all else LISTED))
    if reasons:
        sys.stdout.flush()  # the report first, then why it fails, also on one pipe
        for reason in reasons[:-1]:
            click.echo(f"unionfs: error: {reason}", err=True)
        raise UnionfsError(reasons[-1])


def register(cli: click.Group) -> None:
    """Add ``image analyze`` to the ``image`` group of `cli` (registered before)."""
    group = cli.commands.get("image")
    if not isinstance(group, click.Group):
        raise RuntimeError("the image group is registered after image analyze")
    group.add_command(analyze_cmd)
