"""The container commands: create, ps, rm, diff, commit; inspect (containers and images);
and df (disk use of the store)."""

from __future__ import annotations

import re
from typing import Any

import click

from unionfs.cli import display
from unionfs.cli import format as format_
from unionfs.cli.common import (
    complete_containers,
    complete_images,
    complete_objects,
    get_store,
    json_option,
    listing_options,
)
from unionfs.cli.format import Row
from unionfs.cli.images import inspect_image
from unionfs.errors import UnionfsError, UsageError
from unionfs.fuse.runstate import read_state
from unionfs.image.decompress import Compression
from unionfs.image.refs import parse_reference
from unionfs.inspect.changes import container_changes
from unionfs.store.files import tree_size
from unionfs.store.mounted import mounts_of_container
from unionfs.store.records import ContainerRecord, short_id
from unionfs.store.store import Store

# -- containers ---------------------------------------------------------------------------


@click.command("create")
@click.argument("image", shell_complete=complete_images)
@click.option("--name", help="The container's name (default: a generated one).")
@click.pass_context
def create_cmd(ctx: click.Context, image: str, name: str | None) -> None:
    """Make a container: an empty upper layer over an image's layers.

    Prints the new container's ID, as podman does (`unionfs ps` shows its name).
    """
    c = get_store(ctx).create_container(image, name)
    click.echo(c.id)


def _mounts(r: Row, no_trunc: bool) -> str:
    return ", ".join(r["mountpoints"]) or "-"


PS = format_.listing(
    "containers",
    [
        format_.Field("ID", "CONTAINER ID", lambda r, full: format_.short(r["id"], full)),
        format_.Field("Names", "NAME", lambda r, full: r["name"]),
        format_.Field("Image", "IMAGE", lambda r, full: r["image"]),
        format_.Field("ImageID", "IMAGE ID", lambda r, full: format_.short(r["image_id"], full)),
        format_.Field("Created", "CREATED", lambda r, full: format_.ago(r["created"])),
        format_.Field("CreatedAt", "CREATED AT", lambda r, full: r["created"]),
        format_.Field("Status", "STATUS", lambda r, full: r["status"]),
        format_.Field("Size", "UPPER SIZE", lambda r, full: display.human_size(r["upper_size"])),
        format_.Field("Mounts", "MOUNTPOINT", _mounts),
        format_.Field("UpperDir", "UPPER DIR", lambda r, full: r["upper"]),
    ],
    table=["ID", "Names", "Image", "Created", "Size", "Mounts"],
    quiet="ID",
)

PS_FILTERS = ("ancestor", "name", "id", "status")


def _tag_names(store: Store) -> dict[str, list[str]]:
    """Each image's tags, sorted."""
    out: dict[str, list[str]] = {}
    for ref, image_id in sorted(store.tags().items(), key=str):
        out.setdefault(image_id, []).append(str(ref))
    return out


def _image_name(c: ContainerRecord, tag_names: dict[str, list[str]]) -> str:
    """The name a container's image goes by: the one it was created from while
    that still names it, else its first tag, else what it was created from."""
    names = tag_names.get(c.image, [])
    try:
        given: str | None = str(parse_reference(c.image_ref))
    except UnionfsError:  # created from NAME@DIGEST
        given = None
    if given in names:
        return given
    return names[0] if names else c.image_ref


def _keep_container(
    store: Store, c: ContainerRecord, mounted: bool, f: dict[str, list[str]]
) -> bool:
    if "id" in f and not any(c.id.startswith(v) for v in f["id"]):
        return False
    # podman's name= is a regular expression searched in the name
    if "name" in f and not any(re.search(v, c.name) for v in f["name"]):
        return False
    if "status" in f and ("mounted" if mounted else "unmounted") not in f["status"]:
        return False
    if "ancestor" in f:
        ancestors = set()
        for v in f["ancestor"]:
            try:
                ancestors.add(store.resolve_image(v).id)
            except UnionfsError:  # no such image (any more): its name may still match
                ancestors.add(v)
        if c.image not in ancestors and c.image_ref not in ancestors:
            return False
    return True


def container_rows(store: Store, filters: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Every container (oldest first) that the filters let through."""
    tag_names = _tag_names(store)
    rows: list[dict[str, Any]] = []
    for c in store.containers():
        mounted = mounts_of_container(c.id)
        if not _keep_container(store, c, bool(mounted), filters):
            continue
        rows.append(
            {
                "id": c.id,
                "name": c.name,
                "image": _image_name(c, tag_names),
                "image_id": c.image,
                "created": c.created,
                "status": "mounted" if mounted else "unmounted",
                "mountpoints": mounted,
                "upper": str(store.container_upper(c)),
                "upper_size": tree_size(store.container_upper(c)),
            }
        )
    return rows


@click.command("ps")
@click.option(
    "-a",
    "--all",
    "all_",
    is_flag=True,
    help="Accepted as podman has it: every container is listed, mounted or not "
    "(status=mounted shows only the mounted ones).",
)
@click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only the containers that match: ancestor=IMAGE (name or ID), name=REGEX, "
    "id=PREFIX, status=mounted|unmounted. Repeated keys: any value; different keys: all.",
)
@listing_options(PS, trunc_help="Show whole container and image IDs.")
@click.pass_context
def ps_cmd(
    ctx: click.Context,
    all_: bool,
    filters: tuple[str, ...],
    fmt: str | None,
    quiet: bool,
    no_trunc: bool,
    as_json: bool,
) -> None:
    """List containers with their image, mount point and upper layer size."""
    spec = format_.output(fmt, as_json=as_json, quiet=quiet, no_trunc=no_trunc)
    wanted = format_.parse_filters(filters, PS_FILTERS)
    for v in wanted.get("status", []):
        if v not in {"mounted", "unmounted"}:
            raise UsageError(f"--filter status={v}: expected mounted or unmounted")
    for v in wanted.get("name", []):
        try:
            re.compile(v)
        except re.error as e:
            raise UsageError(f"--filter name={v}: not a regular expression ({e})") from None
    format_.echo(spec, PS, container_rows(get_store(ctx), wanted))


@click.command("rm")
@click.argument(
    "containers",
    nargs=-1,
    required=True,
    metavar="CONTAINER...",
    shell_complete=complete_containers,
)
@click.pass_context
def rm_cmd(ctx: click.Context, containers: tuple[str, ...]) -> None:
    """Remove containers and their upper layers (refused while mounted)."""
    store = get_store(ctx)
    for text in containers:
        c = store.remove_container(text)
        click.echo(c.name)


@click.command("diff")
@click.argument("container", shell_complete=complete_containers)
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


# -- inspect (containers and images) -------------------------------------------------------


def inspect_container(store: Store, c: ContainerRecord) -> dict[str, Any]:
    """A container as ``podman container inspect`` describes one, in part: its
    image, its layers, its upper and work dirs, and each live mount of it with
    the pid of the daemon that serves it."""
    lowers = store.lowers(c.diff_ids)
    mounts = []
    for mountpoint in mounts_of_container(c.id):
        state = read_state(mountpoint)
        mounts.append(
            {
                "Path": mountpoint,
                "DaemonPid": state.pid if state else None,
                "ReadOnly": state.upper is None if state else None,
            }
        )
    return {
        "Id": c.id,
        "Name": c.name,
        "Created": c.created,
        "Image": c.image,
        "ImageName": _image_name(c, _tag_names(store)),
        "State": {"Status": "mounted" if mounts else "unmounted", "Mounted": bool(mounts)},
        "RootFS": {"Type": "layers", "Layers": list(c.diff_ids)},
        "GraphDriver": {
            "Name": "unionfs",
            "Data": {
                "LowerDir": ":".join(str(p) for p in lowers),
                "UpperDir": str(store.container_upper(c)),
                "WorkDir": str(store.container_work(c)),
                "MergedDir": mounts[0]["Path"] if mounts else "",
            },
        },
        "MountPoints": mounts,
        "UpperSize": tree_size(store.container_upper(c)),
    }


@click.command("inspect")
@click.argument(
    "names", nargs=-1, required=True, metavar="NAME...", shell_complete=complete_objects
)
@click.option(
    "-t",
    "--type",
    "kind",
    type=click.Choice(["all", "container", "image"]),
    default="all",
    show_default=True,
    help="Which kind of object NAME is; all: a container if there is one of that name "
    "or ID, else an image (as podman looks).",
)
@click.option(
    "-f",
    "--format",
    "fmt",
    default="json",
    metavar="FORMAT",
    help="json (the default), or a template of fields: a dotted path into the JSON, "
    "such as '{{.Name}} {{.GraphDriver.Data.UpperDir}}'.",
)
@click.pass_context
def inspect_cmd(ctx: click.Context, names: tuple[str, ...], kind: str, fmt: str) -> None:
    """Show containers and images as JSON.

    A container: its image, layers, upper and work dirs, and its mount points
    with the pid of the daemon serving each. An image: as `image inspect`.
    What is found is printed; a NAME that is nothing then fails the command.
    """
    format_.parse_template(fmt)  # a bad template fails before any work
    store = get_store(ctx)
    objects: list[dict[str, Any]] = []
    missing: list[str] = []
    for name in names:
        if kind in {"all", "container"}:
            c = store.find_container(name)
            if c is not None:
                objects.append(inspect_container(store, c))
                continue
        if kind in {"all", "image"}:
            try:
                objects.append(inspect_image(store, store.resolve_image(name)))
                continue
            except UnionfsError as e:
                if not e.message.startswith("no such image"):
                    raise
        missing.append(name)
    if objects:
        click.echo(format_.render_objects(fmt, objects))
    if missing:
        what = {"all": "object", "container": "container", "image": "image"}[kind]
        raise UnionfsError(f"no such {what}: {', '.join(missing)}")


# -- disk use ------------------------------------------------------------------------------


def disk_usage(store: Store) -> dict[str, Any]:
    images = store.images()
    containers = store.containers()
    layers: list[dict[str, Any]] = []
    for diff_id in store.layer_ids():
        layers.append(
            {
                "diff_id": diff_id,
                # bytes on disk (allocated blocks: a sparse file counts what it holds)
                "size": tree_size(store.layer_path(diff_id)),
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
@click.argument("container", shell_complete=complete_containers)
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
    """Add the container commands, ``inspect`` and ``df`` to `cli`."""
    for command in (create_cmd, ps_cmd, rm_cmd, diff_cmd, commit_cmd, df_cmd, inspect_cmd):
        cli.add_command(command)
