"""The store's commands: images, containers and disk use (see unionfs.store)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from unionfs.cli import display
from unionfs.image.refs import Reference, parse_reference
from unionfs.inspect.changes import container_changes
from unionfs.inspect.history import history_rows
from unionfs.store.store import (
    ImageRecord,
    LayerInfo,
    Store,
    default_root,
    mounts_of_container,
    parse_time,
    short_id,
    tree_size,
)

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for programs.")


def get_store(ctx: click.Context) -> Store:
    root = ctx.find_root().params.get("root")
    store = Store(Path(root) if root else default_root())
    store.check_version()
    return store


# -- import ---------------------------------------------------------------------------


class _ImportPrinter:
    """Prints a line per layer on stdout, and a progress bar on a terminal's stderr."""

    def __init__(self) -> None:
        self._index = 0
        self._count = 0
        self._progress: Any = None
        self._task: Any = None

    @contextlib.contextmanager
    def running(self) -> Iterator[_ImportPrinter]:
        if sys.stderr.isatty():
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            with self._progress:
                yield self
        else:
            yield self

    def layer_start(self, index: int, count: int, diff_id: str, size: int | None) -> None:
        self._index, self._count = index, count
        if self._progress is not None:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task(
                f"layer {index + 1}/{count} {short_id(diff_id)}", total=size
            )

    def layer_progress(self, done: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=done)

    def layer_done(self, diff_id: str, *, reused: bool, info: LayerInfo) -> None:
        head = f"layer {self._index + 1}/{self._count} {short_id(diff_id)}"
        if reused:
            self._echo(f"{head}: already in the store ({display.human_size(info.size)})")
        else:
            self._echo(
                f"{head}: unpacked {info.entries} entries, {display.human_size(info.size)} "
                f"({info.compression})"
            )

    def warning(self, text: str) -> None:
        self._echo(f"warning: {text}", err=True)

    def _echo(self, text: str, err: bool = False) -> None:
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            click.echo(text, err=err)


@click.command("import")
@click.argument("path", type=click.Path(path_type=Path))
@click.argument("name", required=False)
@click.pass_context
def import_cmd(ctx: click.Context, path: Path, name: str | None) -> None:
    """Import a docker save archive, an OCI layout dir or an oci-archive.

    NAME[:TAG] names the image (default: the names the archive gives it).
    Layers already in the store are not unpacked again.
    """
    ref = parse_reference(name) if name else None
    store = get_store(ctx)
    printer = _ImportPrinter()
    with printer.running():
        results = store.import_path(path, ref, printer)
    for r in results:
        for tag, old in r.untagged_from:
            click.echo(f"tag {tag} moved from image {short_id(old)}")
        if r.tags:
            for t in r.tags:
                click.echo(f"Loaded image: {t} ({short_id(r.image.id)})")
        else:
            click.echo(f"Loaded image ID: {r.image.id}")


# -- listing and inspecting images ------------------------------------------------------


def _image_size(store: Store, image: ImageRecord) -> int:
    return sum(store.layer_info(d).size for d in image.diff_ids)


@click.command("ls")
@json_option
@click.pass_context
def images_cmd(ctx: click.Context, as_json: bool) -> None:
    """List images: one line per tag, untagged images as <none>."""
    store = get_store(ctx)
    rows: list[dict[str, Any]] = []
    for image in store.images():
        config = store.config(image)
        size = _image_size(store, image)
        tags: list[Reference | None] = list(store.tags_of(image.id)) or [None]
        for t in tags:
            rows.append(
                {
                    "repository": t.name if t else None,
                    "tag": t.tag if t else None,
                    "id": image.id,
                    "digest": image.manifest_digest,
                    "created": config.get("created"),
                    "size": size,
                    "layers": len(image.layers),
                }
            )
    rows.sort(key=lambda r: (r["created"] or "", r["repository"] or ""), reverse=True)
    if as_json:
        display.echo_json(rows)
        return
    display.echo_table(
        ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
        [
            [
                r["repository"] or "<none>",
                r["tag"] or "<none>",
                short_id(r["id"]),
                display.ago(parse_time(r["created"])),
                display.human_size(r["size"]),
            ]
            for r in rows
        ],
    )


def inspect_image(store: Store, image: ImageRecord) -> dict[str, Any]:
    """The image as ``docker image inspect`` describes one."""
    config = store.config(image)
    tags = store.tags_of(image.id)
    repos = dict.fromkeys(t.name for t in tags)
    lowers = store.lowers(image.diff_ids)
    return {
        "Id": image.id,
        "RepoTags": [str(t) for t in tags],
        "RepoDigests": [f"{r}@{image.manifest_digest}" for r in repos] if image.repo_digest else [],
        "ManifestDigest": image.manifest_digest,
        "Created": config.get("created"),
        "Author": config.get("author", ""),
        "Architecture": config.get("architecture"),
        "Os": config.get("os"),
        "Config": config.get("config", {}),
        "RootFS": {"Type": "layers", "Layers": list(image.diff_ids)},
        "Size": _image_size(store, image),
        "GraphDriver": {
            "Name": "unionfs",
            "Data": {"LowerDir": ":".join(str(p) for p in lowers)},
        },
        "Metadata": {"Imported": image.imported},
    }


@click.command("inspect")
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@click.pass_context
def inspect_cmd(ctx: click.Context, images: tuple[str, ...]) -> None:
    """Show images as JSON: ID, tags, digests, config, layers, size."""
    store = get_store(ctx)
    display.echo_json([inspect_image(store, store.resolve_image(i)) for i in images])


@click.command("history")
@click.argument("image")
@click.option("--no-trunc", is_flag=True, help="Do not shorten the CREATED BY column.")
@json_option
@click.pass_context
def history_cmd(ctx: click.Context, image: str, no_trunc: bool, as_json: bool) -> None:
    """Show the steps that made an image, newest first, and the layer each made."""
    store = get_store(ctx)
    rows = history_rows(store, store.resolve_image(image))
    if as_json:
        display.echo_json(rows)
        return
    table = []
    for r in reversed(rows):
        by = " ".join(r["created_by"].split())
        if not no_trunc and len(by) > 60:
            by = by[:59] + "…"
        layer = f"{r['layer_index']} {short_id(r['layer'])}" if r["layer"] else "(empty layer)"
        table.append(
            [
                display.ago(parse_time(r["created"])),
                by,
                display.human_size(r["size"]),
                layer,
                r["comment"],
            ]
        )
    display.echo_table(["CREATED", "CREATED BY", "SIZE", "LAYER", "COMMENT"], table)


@click.command("tag")
@click.argument("source", metavar="IMAGE")
@click.argument("target", metavar="NAME[:TAG]")
@click.pass_context
def tag_cmd(ctx: click.Context, source: str, target: str) -> None:
    """Give an image another name."""
    get_store(ctx).tag(source, parse_reference(target))


@click.command("rm")
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@click.option("-f", "--force", is_flag=True, help="Remove even if containers use it.")
@click.pass_context
def rmi_cmd(ctx: click.Context, images: tuple[str, ...], force: bool) -> None:
    """Remove images (a tag of several: only the tag). Layers go when unused."""
    store = get_store(ctx)
    for image in images:
        for line in store.remove_image(image, force=force):
            click.echo(line)


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


@click.group("image")
def image_group() -> None:
    """Manage images: import, ls, inspect, history, tag, rm, export."""


for _cmd in (import_cmd, images_cmd, inspect_cmd, history_cmd, tag_cmd, rmi_cmd):
    image_group.add_command(_cmd)


def register(cli: click.Group) -> None:
    """Add the store commands, with the docker-style top-level aliases."""
    cli.add_command(image_group)
    cli.add_command(images_cmd, "images")
    cli.add_command(history_cmd, "history")
    cli.add_command(tag_cmd, "tag")
    cli.add_command(rmi_cmd, "rmi")
    cli.add_command(create_cmd)
    cli.add_command(ps_cmd)
    cli.add_command(rm_cmd)
    cli.add_command(diff_cmd)
    cli.add_command(df_cmd)
