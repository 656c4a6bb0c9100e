"""The container commands: create, ps, rm, diff, commit, and df (disk use of the store)."""

from __future__ import annotations

from typing import Any

import click

from unionfs.cli import display
from unionfs.cli.common import get_store, json_option
from unionfs.image.decompress import Compression
from unionfs.image.refs import parse_reference
from unionfs.inspect.changes import container_changes
from unionfs.store.files import tree_size
from unionfs.store.mounted import mounts_of_container
from unionfs.store.records import parse_time, short_id
from unionfs.store.store import Store

# -- containers ---------------------------------------------------------------------------


@click.command("create")
@click.argument("image")
@click.option("--name", help="The container's name (default: a generated one).")
@click.pass_context
def create_cmd(ctx: click.Context, image: str, name: str | None) -> None:
    """Make a container: an empty upper layer over an image's layers."""
    c = get_store(ctx).create_container(image, name)
    click.echo(f"{c.name} {c.id}")


@click.command("ps")
@json_option
@click.pass_context
def ps_cmd(ctx: click.Context, as_json: bool) -> None:
    """List containers with their image, mount point and upper layer size."""
    store = get_store(ctx)
    tag_names = {i: str(r) for r, i in sorted(store.tags().items(), key=str)}
    rows: list[dict[str, Any]] = []
    for c in store.containers():
        mounted = mounts_of_container(c.id)
        rows.append(
            {
                "id": c.id,
                "name": c.name,
                "image": tag_names.get(c.image, c.image_ref),
                "image_id": c.image,
                "created": c.created,
                "mountpoints": mounted,
                "upper": str(store.container_upper(c)),
                "upper_size": tree_size(store.container_upper(c)),
            }
        )
    if as_json:
        display.echo_json(rows)
        return
    display.echo_table(
        ["CONTAINER ID", "NAME", "IMAGE", "CREATED", "UPPER SIZE", "MOUNTPOINT"],
        [
            [
                r["id"][:12],
                r["name"],
                r["image"],
                display.ago(parse_time(r["created"])),
                display.human_size(r["upper_size"]),
                ", ".join(r["mountpoints"]) or "-",
            ]
            for r in rows
        ],
    )


@click.command("rm")
@click.argument("containers", nargs=-1, required=True, metavar="CONTAINER...")
@click.pass_context
def rm_cmd(ctx: click.Context, containers: tuple[str, ...]) -> None:
    """Remove containers and their upper layers (refused while mounted)."""
    store = get_store(ctx)
    for text in containers:
        c = store.remove_container(text)
        click.echo(c.name)


@click.command("diff")
@click.argument("container")
@json_option
@click.pass_context
def diff_cmd(ctx: click.Context, container: str, as_json: bool) -> None:
    """List what a container changed in its image: A added, C changed, D deleted.

    Reads the container's upper layer, mounted or not (while mounted, the list
    is a snapshot of a filesystem in use).
    """
    store = get_store(ctx)
    c = store.resolve_container(container)
    changes = container_changes(store.container_upper(c), store.lowers(c.diff_ids))
    if as_json:
        display.echo_json([ch.to_json() for ch in changes])
        return
    for ch in changes:
        click.echo(ch.line())


# -- disk use ------------------------------------------------------------------------------


def disk_usage(store: Store) -> dict[str, Any]:
    images = store.images()
    containers = store.containers()
    layers: list[dict[str, Any]] = []
    for diff_id in store.layer_ids():
        info = store.layer_info(diff_id)
        layers.append(
            {
                "diff_id": diff_id,
                "size": info.size,
                "images": sum(diff_id in i.diff_ids for i in images),
                "containers": sum(diff_id in c.diff_ids for c in containers),
            }
        )
    size_of = {la["diff_id"]: la["size"] for la in layers}
    uppers = {c.name: tree_size(store.container_upper(c)) for c in containers}
    image_sizes = [sum(size_of.get(d, 0) for d in i.diff_ids) for i in images]
    container_sizes = [sum(size_of.get(d, 0) for d in c.diff_ids) for c in containers]
    logical = sum(image_sizes) + sum(container_sizes) + sum(uppers.values())
    on_disk = sum(size_of.values()) + sum(uppers.values())
    return {
        "layers": layers,
        "images": len(images),
        "containers": len(containers),
        "upper_sizes": uppers,
        "logical_size": logical,
        "disk_size": on_disk,
        "blobs_size": sum(p.stat().st_size for p in store.blobs.iterdir())
        if store.blobs.is_dir()
        else 0,
    }


@click.command("df")
@json_option
@click.pass_context
def df_cmd(ctx: click.Context, as_json: bool) -> None:
    """Show every layer, who uses it, and what sharing saves."""
    du = disk_usage(get_store(ctx))
    if as_json:
        display.echo_json(du)
        return
    display.echo_table(
        ["LAYER", "SIZE", "IMAGES", "CONTAINERS"],
        [
            [
                short_id(la["diff_id"]),
                display.human_size(la["size"]),
                str(la["images"]),
                str(la["containers"]),
            ]
            for la in du["layers"]
        ],
    )
    h = display.human_size
    uppers = sum(du["upper_sizes"].values())
    click.echo("")
    counts = [
        (du["images"], "image"),
        (du["containers"], "container"),
        (len(du["layers"]), "layer"),
    ]
    click.echo(", ".join(f"{n} {word}{'' if n == 1 else 's'}" for n, word in counts))
    click.echo(
        f"without sharing: {h(du['logical_size'])} "
        "(every image and every container with its own copy of its layers)"
    )
    saved = du["logical_size"] - du["disk_size"]
    pct = f", {100 * saved / du['logical_size']:.0f}% saved" if du["logical_size"] else ""
    click.echo(
        f"with sharing:    {h(du['disk_size'])} "
        f"(layers {h(du['disk_size'] - uppers)} + container uppers {h(uppers)}{pct})"
    )
    click.echo(f"layer blobs kept for export: {h(du['blobs_size'])}")


# -- commit --------------------------------------------------------------------------------

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
    """Add the container commands and ``df`` to `cli`."""
    for command in (create_cmd, ps_cmd, rm_cmd, diff_cmd, commit_cmd, df_cmd):
        cli.add_command(command)
