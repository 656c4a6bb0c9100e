"""``unionfs mounts``: every live unionfs mount, and state files left by dead daemons.

Joins the mount table (`unionfs.fuse.mounttab`) with the state files the
daemons publish (`unionfs.fuse.runstate`): store containers and images,
``--lower`` and ``-o lowerdir=`` mounts alike. A normal user sees every
unionfs mount of its namespace but the details (layers, pid, log) only of its
own; root sees everyone's.
"""

from __future__ import annotations

import click

from unionfs.cli import display
from unionfs.cli.common import json_option
from unionfs.fuse import runstate


def _layers(report: runstate.MountReport) -> str:
    if report.lowers is None:
        return "-"
    return f"{len(report.lowers)}" + (" + upper" if report.upper else "")


@click.command("mounts")
@json_option
@click.option(
    "-l", "--long", "long_form", is_flag=True, help="Every layer, the work dir and the state file."
)
def mounts_cmd(as_json: bool, long_form: bool) -> None:
    """List unionfs mounts: source, mount point, layers, daemon, state, log.

    STATE is "live"; "daemon gone" (still mounted, every access fails: unmount
    it); "stale state file" (daemon and mount gone); "not in this mount
    namespace"; or "no state file" (another user's mount, details hidden).
    LOG says where the daemon logs: syslog, the journal, or a file.
    """
    reports = runstate.survey()
    if as_json:
        display.echo_json([r.as_json() for r in reports])
        return
    if long_form:
        _echo_long(reports)
        return
    rows = [
        [
            r.mountpoint,
            r.source or "-",
            r.state,
            str(r.pid) if r.pid is not None else "-",
            _layers(r),
            r.log or "-",
        ]
        for r in reports
    ]
    display.echo_table(["MOUNTPOINT", "SOURCE", "STATE", "PID", "LAYERS", "LOG"], rows)


def _echo_long(reports: list[runstate.MountReport]) -> None:
    for i, r in enumerate(reports):
        if i:
            click.echo()
        pid = f", daemon pid {r.pid}" if r.pid is not None else ""
        click.echo(f"{r.mountpoint} ({r.state}{pid})")
        fields: list[tuple[str, str]] = [("source", r.source or "-")]
        for n, lower in enumerate(r.lowers or []):
            fields.append(("lower" if n == 0 else "", f"{lower}" + (" (top)" if n == 0 else "")))
        fields += [("upper", r.upper or "-"), ("work", r.work or "-")]
        fields += [("log", r.log or "-"), ("state file", r.state_file or "-")]
        for name, value in fields:
            click.echo(f"  {name:<11}{value}")
