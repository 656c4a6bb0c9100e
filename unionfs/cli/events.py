"""``unionfs events MOUNTPOINT`` and ``unionfs stats MOUNTPOINT``: what a live
mount is doing to its upper layer, from its daemon's control socket.

``events`` prints copy-ups, whiteouts, opaque directories and created entries
as they happen (first the ones the daemon kept, up to `events.RING_SIZE`), one
line each; ``--json`` prints them as JSON lines. ``stats`` prints the daemon's
counters. Both only read: nothing in the mount, its layers or its kernel caches
changes because they ran.

The daemon counts layers by their index in its stack (0 = the top, the upper
layer of a writable mount). Both commands name every layer as `unionfs tree`
and `unionfs explain` do instead, with the mount's `Stack` (`mount_stack`):
``upper``, or the layer's number counted from the bottom (``layer 4``,
``lower 1``); `layer_of` is the one place that translates, for text and JSON.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click

from unionfs.cli.display import echo_json, human_size, table
from unionfs.errors import UnionfsError
from unionfs.fs.events import Event, as_event, dumps, parse_time
from unionfs.fuse import control, runstate
from unionfs.fuse.mounttab import FSTYPE, find_mount
from unionfs.inspect.stack import Stack, StackLayer, mount_stack

EXIT_INTERRUPTED = 130  # as a shell reports a program ended by SIGINT


def register(cli: click.Group) -> None:
    """Add this module's commands to `cli`."""
    cli.add_command(events_cmd)
    cli.add_command(stats_cmd)


# -- formatting ----------------------------------------------------------------------------


def printable(path: str) -> str:
    """A path for a terminal: bytes that are not UTF-8 shown as ``\\xNN``."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def duration(seconds: float) -> str:
    """``0.4 ms``, ``12 ms``, ``1.25 s``."""
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def uptime(seconds: float) -> str:
    """``42s``, ``3m12s``, ``5h07m``, ``2d03h``."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def layer_of(stack: Stack, index: int) -> StackLayer:
    """The layer the daemon calls `index` (its position in the daemon's stack,
    top first). Every layer the daemon names reaches the user through here, to
    be shown by its `StackLayer.key` (``upper``, or its number from the bottom)
    or, in a sentence, its `StackLayer.short` (``layer 4``, ``lower 1``)."""
    if not 0 <= index < len(stack.layers):
        raise UnionfsError(f"the daemon named a layer {index} that {stack.what} does not have")
    return stack.layer(index)


def named_layers(answer: Mapping[str, Any], stack: Stack) -> dict[str, Any]:
    """An event or the counters as the daemon sent them, each layer index
    replaced by the layer's key (`layer_of`): what ``--json`` prints."""
    out = dict(answer)
    if isinstance(out.get("layer"), int):
        out["layer"] = layer_of(stack, out["layer"]).key
    if isinstance(out.get("lookups"), list):
        out["lookups"] = [
            {**row, "layer": layer_of(stack, row["layer"]).key} for row in out["lookups"]
        ]
    return out


def format_event(event: Event, stack: Stack, tz: dt.tzinfo | None = None) -> str:
    """One line for a person, at local time (or in `tz`)::

    22:14:03 copy-up   /etc/motd  (write, 1.23kB in 0.4 ms, from layer 2)

    `event` is as the daemon sent it; `stack`, the mount's, names its layer as
    `unionfs explain` and `tree` name it (`layer_of`)."""
    when = parse_time(event["time"]).astimezone(tz).strftime("%H:%M:%S")
    kind = event["event"]
    path = printable(event.get("path", ""))
    if kind == "copy-up":
        took = duration(event.get("seconds", 0.0))
        what = f"{human_size(event.get('bytes', 0))} in {took}" if event.get("data") else took
        index = event.get("layer")
        source = f"from {layer_of(stack, index).short}" if index is not None else "from layer ?"
        detail = f"{event.get('reason', '?')}, {what}, {source}"
    elif kind == "whiteout":
        detail = event.get("form", "")
    elif kind == "create":
        detail = event.get("type", "")
    elif kind == "dropped":
        return f"{when} {kind:<9} {event.get('count', 0)} events (this reader fell behind)"
    else:
        detail = ""
    return f"{when} {kind:<9} {path}" + (f"  ({detail})" if detail else "")


def format_stats(stats: Mapping[str, Any], stack: Stack) -> str:
    """The daemon's counters for a person; `stack`, the mount's, names the
    layers (`layer_of`), top first as `unionfs tree`'s legend lists them."""
    requests: dict[str, int] = stats["requests"]
    total = sum(requests.values())
    lines = [
        f"Mount:       {printable(stats['mountpoint'])} (pid {stats['pid']}, "
        f"up {uptime(stats['uptime_seconds'])})",
        f"Requests:    {total}",
    ]
    if requests:
        rows = [[name, str(n)] for name, n in sorted(requests.items(), key=lambda kv: -kv[1])]
        lines += ["  " + line for line in table(["TYPE", "COUNT"], rows).splitlines()]
    copy_ups = f"Copy-ups:    {stats['copy_ups']}"
    if stats["copy_ups"]:
        reasons = ", ".join(f"{r} {n}" for r, n in stats["copy_ups_by_reason"].items())
        copy_ups += (
            f" ({human_size(stats['copy_up_bytes'])} of data in "
            f"{duration(stats['copy_up_seconds'])}; {reasons})"
        )
    ev = stats["events"]
    lines += [
        copy_ups,
        f"Whiteouts:   {stats['whiteouts']}",
        f"Opaque dirs: {stats['opaque_dirs']}",
        f"Created:     {stats['creates']}",
        "Lookups answered, by the layer of the copy found:",
    ]
    rows = [
        [layer_of(stack, la["layer"]).key, str(la["answered"]), printable(la["path"])]
        for la in stats["lookups"]
    ]
    lines += ["  " + line for line in table(["LAYER", "LOOKUPS", "PATH"], rows).splitlines()]
    lines.append(
        f"Events:      {ev['recorded']} recorded, {ev['buffered']} kept (of {ev['capacity']}), "
        f"{ev['listeners']} followers, {ev['dropped']} dropped for slow followers"
    )
    return "\n".join(lines)


# -- talking to the daemon -------------------------------------------------------------------


def _daemon_of(mountpoint: Path) -> tuple[str, Stack]:
    """The control socket of the unionfs mount at `mountpoint` and the mount's
    layers as `unionfs tree` names them, or a clear error."""
    state = runstate.read_state(mountpoint)
    if state is not None:
        return state.control, mount_stack(state)
    if not mountpoint.is_dir():
        raise UnionfsError(f"{mountpoint}: no such directory")
    entry = find_mount(mountpoint)
    if entry is None:
        raise UnionfsError(f"{mountpoint} is not a mount point")
    if entry.fstype != FSTYPE:
        raise UnionfsError(f"{mountpoint} is not a unionfs mount (it is {entry.fstype})")
    raise UnionfsError(
        f"{mountpoint} is a unionfs mount, but its daemon left no state in "
        f"{runstate.run_dir()} (another user's mount?)"
    )


@contextlib.contextmanager
def _quiet_exit() -> Iterator[None]:
    """Ctrl-C and a closed stdout (``| head``) end the command without a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise click.exceptions.Exit(0) from None


@click.command("events")
@click.option("--json", "as_json", is_flag=True, help="Print each event as a JSON line.")
@click.option("--no-follow", is_flag=True, help="Print the events the daemon kept, then exit.")
@click.argument("mountpoint", type=click.Path(path_type=Path))
def events_cmd(mountpoint: Path, as_json: bool, no_follow: bool) -> None:
    """Show copy-ups, whiteouts, opaque dirs and new entries of a live mount as they happen.

    First come the most recent events the daemon kept; then, until Ctrl-C,
    every new one.
    """
    path, stack = _daemon_of(mountpoint)
    request = {"op": "events", "follow": not no_follow, "since": 0}
    with _quiet_exit():
        for _, obj in control.query(path, str(mountpoint), request, follow=not no_follow):
            try:
                event = as_event(obj)
            except ValueError:
                raise UnionfsError(f"the daemon of {mountpoint} sent something else") from None
            if as_json:
                sys.stdout.buffer.write(dumps(named_layers(event, stack)))
                sys.stdout.buffer.flush()
                continue
            click.echo(format_event(event, stack))
    if not no_follow:
        click.echo(f"unionfs: the mount on {mountpoint} ended", err=True)


@click.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print the counters as JSON.")
@click.argument("mountpoint", type=click.Path(path_type=Path))
def stats_cmd(mountpoint: Path, as_json: bool) -> None:
    """Show what a live mount has done: requests by type, copy-ups, whiteouts,
    lookups answered by each layer."""
    path, stack = _daemon_of(mountpoint)
    with _quiet_exit():
        answers = list(control.query(path, str(mountpoint), {"op": "stats"}))
        if len(answers) != 1:
            raise UnionfsError(f"the daemon of {mountpoint} sent {len(answers)} answers, not 1")
        stats = answers[0][1]
        if as_json:
            echo_json(named_layers(stats, stack))
        else:
            click.echo(format_stats(stats, stack))
