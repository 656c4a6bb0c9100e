"""``unionfs commit``: a container's changes become a new image (see `Store.commit_container`)."""

from __future__ import annotations

import click

from unionfs.cli.images import get_store
from unionfs.image.refs import parse_reference
from unionfs.image.unpack import Compression
from unionfs.store.store import short_id

_COMPRESSIONS: dict[str, Compression] = {"gzip": "gzip", "zstd": "zstd", "none": "none"}


@click.command("commit")
@click.argument("container")
@click.argument("name", required=False, metavar="[NAME[:TAG]]")
@click.option("-m", "--message", default="", help="A comment for the new history step.")
@click.option("-a", "--author", default="", help='The image\'s author ("Name <email>").')
@click.option(
    "--compression",
    type=click.Choice(list(_COMPRESSIONS)),
    default="gzip",
    show_default=True,
    help="How the new layer blob is compressed.",
)
@click.pass_context
def commit_cmd(
    ctx: click.Context,
    container: str,
    name: str | None,
    message: str,
    author: str,
    compression: str,
) -> None:
    """Make a new image of CONTAINER: its image's layers plus one new layer holding
    what the container changed (its upper layer, whiteouts as OCI .wh. entries).

    The container must not be mounted writable (unmount it first); it is left as
    it is. Prints the new image ID.
    """
    ref = parse_reference(name) if name else None
    store = get_store(ctx)
    result = store.commit_container(
        container, ref, message=message, author=author, compression=_COMPRESSIONS[compression]
    )
    for line in result.warnings:
        click.echo(f"warning: {line}", err=True)
    for tag, old in result.untagged_from:
        click.echo(f"tag {tag} moved from image {short_id(old)}", err=True)
    click.echo(result.image.id)


def register(cli: click.Group) -> None:
    """Add ``commit`` to `cli`."""
    cli.add_command(commit_cmd)
