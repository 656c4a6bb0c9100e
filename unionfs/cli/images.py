"""The image commands: import, images, inspect, history, tag, rmi, and image export."""

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
from unionfs.cli.common import get_store, json_option
from unionfs.image.refs import Reference, parse_reference
from unionfs.inspect.history import history_rows
from unionfs.store.export import FORMATS, export_image
from unionfs.store.records import ImageRecord, LayerInfo, parse_time, short_id
from unionfs.store.store import Store

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


@click.group("image")
def image_group() -> None:
    """Manage images: import, ls, inspect, history, tag, rm, export."""


for _cmd in (import_cmd, images_cmd, inspect_cmd, history_cmd, tag_cmd, rmi_cmd):
    image_group.add_command(_cmd)


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
    store = get_store(ctx)
    done = export_image(store, image, fmt, path, tag=ref)
    name = f"{done.reference} " if done.reference else ""
    layers = len(done.image.layers)
    linked = f", {done.linked} blobs hard-linked" if done.linked else ""
    click.echo(
        f"Exported {name}({short_id(done.image.id)}) to {done.path} as {fmt}: "
        f"{layers} layer{'' if layers == 1 else 's'}, {display.human_size(done.size)}{linked}"
    )


def register(cli: click.Group) -> None:
    """Add ``image`` and its docker-style aliases to `cli`."""
    image_group.add_command(export_cmd)
    cli.add_command(image_group)
    cli.add_command(images_cmd, "images")
    cli.add_command(history_cmd, "history")
    cli.add_command(tag_cmd, "tag")
    cli.add_command(rmi_cmd, "rmi")
