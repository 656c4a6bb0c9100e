"""``unionfs browse IMAGE|CONTAINER|MOUNTPOINT``: the command; the app is in `browse_app`.

textual is imported only when the command runs, so that every other command
(and every mount's daemon, which starts as this process) starts without it.
"""

from __future__ import annotations

import os

import click

from unionfs.errors import UnionfsError


@click.command("browse")
@click.argument("source", metavar="IMAGE|CONTAINER|MOUNTPOINT")
@click.pass_context
def browse_cmd(ctx: click.Context, source: str) -> None:
    """Browse a stack's layers full-screen: each layer's changes, the merged tree, explain.

    Layers are listed top first (a container's upper layer on top); the tree is
    the merged view as of the selected layer, each entry marked A (added),
    C (changed), D (removed) or O (cut off by an opaque directory) by the
    layer that did it. On a mounted container the tree follows its writes.
    Keys are shown at the bottom; q quits.
    """
    from unionfs.cli.browse_app import BrowseApp, resolve  # noqa: PLC0415 (textual, only to browse)

    stack, live = resolve(ctx, source)
    if not os.isatty(1) or not os.isatty(0):
        raise UnionfsError("unionfs browse needs a terminal (for a report: unionfs tree, diff)")
    BrowseApp(stack, live).run()


def register(cli: click.Group) -> None:
    """Add ``browse`` to `cli`."""
    cli.add_command(browse_cmd)
