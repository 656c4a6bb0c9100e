"""``unionfs image export``: write an image for other tools (see unionfs.export)."""

from __future__ import annotations

from pathlib import Path

import click

from unionfs.cli import display
from unionfs.cli import images as commands
from unionfs.image.export import FORMATS, export_image
from unionfs.image.refs import parse_reference
from unionfs.store.store import short_id


@click.command("export")
@click.argument("image")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="docker-archive",
    show_default=True,
    help="oci: an OCI layout dir (blobs hard-linked from the store where possible); "
    "oci-archive: that layout as a tar; docker-archive: what docker save writes "
    "(plain layers), for docker load, podman load and skopeo.",
)
@click.option(
    "--tag",
    metavar="NAME[:TAG]",
    help="The name the export gives the image (default: the tag IMAGE names, else "
    "the image's first tag).",
)
@click.pass_context
def export_cmd(ctx: click.Context, image: str, path: Path, fmt: str, tag: str | None) -> None:
    """Write IMAGE to PATH as an OCI layout, an oci-archive or a docker archive.

    PATH must not exist (an oci layout may also go into an empty dir); it appears
    only once the export is complete. Every form carries the store's config, so
    the image ID stays the same; the OCI forms carry its manifest too (the same
    manifest digest).
    """
    ref = parse_reference(tag) if tag else None
    store = commands.get_store(ctx)
    done = export_image(store, image, fmt, path, tag=ref)
    name = f"{done.reference} " if done.reference else ""
    layers = len(done.image.layers)
    linked = f", {done.linked} blobs hard-linked" if done.linked else ""
    click.echo(
        f"Exported {name}({short_id(done.image.id)}) to {done.path} as {fmt}: "
        f"{layers} layer{'' if layers == 1 else 's'}, {display.human_size(done.size)}{linked}"
    )


def register(cli: click.Group) -> None:
    """Add ``export`` to the ``image`` group."""
    del cli  # the command belongs to ``unionfs image``, not the top level
    commands.image_group.add_command(export_cmd)
