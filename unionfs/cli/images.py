"""The image commands: import, images, inspect, history, tag, rmi, and image export."""

from __future__ import annotations

import contextlib
import datetime as dt
import fnmatch
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from unionfs.cli import display
from unionfs.cli import format as format_
from unionfs.cli.common import complete_images, get_store, listing_options
from unionfs.cli.format import Row
from unionfs.errors import UnionfsError
from unionfs.image.refs import Reference, parse_reference
from unionfs.inspect.history import history_rows
from unionfs.store.export import FORMATS, export_image
from unionfs.store.records import SHA256, ImageRecord, LayerInfo, hex_of, parse_time, short_id
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
        with display.transfer_progress() as self._progress:
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

    PATH - reads an archive from standard input. NAME[:TAG] names the image
    (default: the names the archive gives it). Layers already in the store are
    not unpacked again.
    """
    ref = parse_reference(name) if name else None
    store = get_store(ctx)
    printer = _ImportPrinter()
    if str(path).startswith("docker:/"):  # (a Path has made docker:// docker:/)
        given = "docker://" + str(path).removeprefix("docker:/").lstrip("/")
        raise UnionfsError(f"{given} is a registry reference: use `unionfs pull {given}`")
    with contextlib.ExitStack() as stack:
        if str(path) == "-":
            path = _stdin_to_file(store, stack)
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


IMAGES = format_.listing(
    "images",
    [
        format_.Field("ID", "IMAGE ID", lambda r, full: format_.short(r["id"], full)),
        format_.Field("Repository", "REPOSITORY", lambda r, full: r["repository"] or "<none>"),
        format_.Field("Tag", "TAG", lambda r, full: r["tag"] or "<none>"),
        format_.Field("Digest", "DIGEST", lambda r, full: r["digest"]),
        format_.Field("Created", "CREATED", lambda r, full: format_.ago(r["created"])),
        format_.Field("CreatedSince", "CREATED", lambda r, full: format_.ago(r["created"])),
        format_.Field("CreatedAt", "CREATED AT", lambda r, full: r["created"] or "N/A"),
        format_.Field("Size", "SIZE", lambda r, full: display.human_size(r["size"])),
        format_.Field("Layers", "LAYERS", lambda r, full: str(r["layers"])),
        format_.Field("Containers", "CONTAINERS", lambda r, full: str(r["containers"])),
        format_.Field("Dangling", "DANGLING", lambda r, full: str(r["repository"] is None).lower()),
    ],
    table=["Repository", "Tag", "ID", "Created", "Size"],
    quiet="ID",
)

IMAGE_FILTERS = ("reference", "dangling", "before", "since", "id", "label")


def _reference_matches(pattern: str, ref: Reference) -> bool:
    """podman's reference=: a glob over NAME[:TAG]; a NAME alone also matches the
    last part of a longer name (``alpine`` matches ``docker.io/library/alpine``)."""
    if ":" in pattern.rpartition("/")[2]:
        name_pattern, _, tag_pattern = pattern.rpartition(":")
        if not fnmatch.fnmatchcase(ref.tag, tag_pattern):
            return False
    else:
        name_pattern = pattern
    return fnmatch.fnmatchcase(ref.name, name_pattern) or fnmatch.fnmatchcase(
        ref.name, f"*/{name_pattern}"
    )


def _label_matches(wanted: str, labels: dict[str, str]) -> bool:
    key, eq, value = wanted.partition("=")
    return key in labels and (not eq or labels[key] == value)


def _before(a: dt.datetime | None, b: dt.datetime | None) -> bool:
    """Whether `a` is known to be earlier than `b` (an unknown time never is)."""
    return a is not None and b is not None and a < b


def image_rows(store: Store, filters: dict[str, list[str]]) -> list[dict[str, Any]]:
    """One row per tag (untagged images: one row without one), newest first,
    of the images every filter lets through."""
    times: dict[str, dt.datetime | None] = {}
    for key in ("before", "since"):
        for text in filters.get(key, []):
            times[text] = parse_time(store.config(store.resolve_image(text)).get("created"))
    containers = store.containers()
    rows: list[dict[str, Any]] = []
    for image in store.images():
        config = store.config(image)
        created = parse_time(config.get("created"))
        labels = (config.get("config") or {}).get("Labels") or {}
        if "id" in filters and not any(
            hex_of(image.id).startswith(v.removeprefix(SHA256)) for v in filters["id"]
        ):
            continue
        if "label" in filters and not any(_label_matches(v, labels) for v in filters["label"]):
            continue
        if "before" in filters and not any(_before(created, times[v]) for v in filters["before"]):
            continue
        if "since" in filters and not any(_before(times[v], created) for v in filters["since"]):
            continue
        size = _image_size(store, image)
        tags: list[Reference | None] = list(store.tags_of(image.id)) or [None]
        if "dangling" in filters:
            want = [format_.boolean("dangling", v) for v in filters["dangling"]]
            if (tags == [None]) not in want:
                continue
        if "reference" in filters:
            tags = [
                t
                for t in tags
                if t is not None and any(_reference_matches(p, t) for p in filters["reference"])
            ]
        for t in tags:
            rows.append(
                {
                    "repository": t.name if t else None,
                    "tag": t.tag if t else None,
                    "id": image.id,
                    "digest": image.manifest_for(t),
                    "created": config.get("created"),
                    "size": size,
                    "layers": len(image.layers),
                    "containers": sum(c.image == image.id for c in containers),
                }
            )
    rows.sort(key=lambda r: (r["created"] or "", r["repository"] or ""), reverse=True)
    return rows


@click.command("ls")
@click.option(
    "-a",
    "--all",
    "all_",
    is_flag=True,
    help="Accepted as podman has it: the store keeps "
    "no intermediate images, so every image is always listed.",
)
@click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only the images that match: reference=NAME[:TAG] (a glob), dangling=true|false "
    "(untagged), before=IMAGE, since=IMAGE (created before/after it), id=PREFIX, "
    "label=KEY[=VALUE]. Repeated keys: any value; different keys: all.",
)
@listing_options(IMAGES, trunc_help="Show whole image IDs (sha256:...).")
@click.pass_context
def images_cmd(
    ctx: click.Context,
    all_: bool,
    filters: tuple[str, ...],
    fmt: str | None,
    quiet: bool,
    no_trunc: bool,
    as_json: bool,
) -> None:
    """List images: one line per tag, untagged images as <none>."""
    spec = format_.output(fmt, as_json=as_json, quiet=quiet, no_trunc=no_trunc)
    wanted = format_.parse_filters(filters, IMAGE_FILTERS)
    store = get_store(ctx)
    format_.echo(spec, IMAGES, image_rows(store, wanted))


def inspect_image(store: Store, image: ImageRecord) -> dict[str, Any]:
    """The image as ``docker image inspect`` describes one."""
    config = store.config(image)
    tags = store.tags_of(image.id)
    lowers = store.lowers(image.diff_ids)
    return {
        "Id": image.id,
        "RepoTags": [str(t) for t in tags],
        "RepoDigests": (
            list(dict.fromkeys(f"{t.name}@{image.manifest_for(t)}" for t in tags))
            if image.repo_digest
            else []
        ),
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
@click.argument(
    "images", nargs=-1, required=True, metavar="IMAGE...", shell_complete=complete_images
)
@click.option(
    "-f",
    "--format",
    "fmt",
    default="json",
    metavar="FORMAT",
    help="json (the default), or a template of fields: a dotted path into the JSON, "
    "such as '{{.Id}} {{.RootFS.Layers}}'.",
)
@click.pass_context
def inspect_cmd(ctx: click.Context, images: tuple[str, ...], fmt: str) -> None:
    """Show images as JSON: ID, tags, digests, config, layers, size."""
    format_.parse_template(fmt)  # a bad template fails before any work
    store = get_store(ctx)
    objects = [inspect_image(store, store.resolve_image(i)) for i in images]
    click.echo(format_.render_objects(fmt, objects))


def _created_by(r: Row, no_trunc: bool) -> str:
    by = " ".join(r["created_by"].split())
    if not no_trunc and len(by) > 60:
        by = by[:59] + "…"
    return by


def _layer(r: Row, no_trunc: bool) -> str:
    if not r["layer"]:
        return "(empty layer)"
    return f"{r['layer_index']} {format_.short(r['layer'], no_trunc)}"


HISTORY = format_.listing(
    "history steps",
    [
        format_.Field(
            "ID", "ID", lambda r, full: format_.short(r["id"], full) if r["id"] else "<missing>"
        ),
        format_.Field("Created", "CREATED", lambda r, full: format_.ago(r["created"])),
        format_.Field("CreatedSince", "CREATED", lambda r, full: format_.ago(r["created"])),
        format_.Field("CreatedAt", "CREATED AT", lambda r, full: r["created"] or "N/A"),
        format_.Field("CreatedBy", "CREATED BY", _created_by),
        format_.Field("Size", "SIZE", lambda r, full: display.human_size(r["size"])),
        format_.Field("Comment", "COMMENT", lambda r, full: r["comment"]),
        format_.Field("Layer", "LAYER", _layer),
        format_.Field("EmptyLayer", "EMPTY LAYER", lambda r, full: str(r["empty_layer"]).lower()),
    ],
    table=["Created", "CreatedBy", "Size", "Layer", "Comment"],
    quiet="ID",
)


@click.command("history")
@click.argument("image", shell_complete=complete_images)
@listing_options(
    HISTORY,
    trunc_help="Do not shorten the CREATED BY column or the IDs. (-q prints the image ID on "
    "the newest step and <missing> on the others, as podman does for imported images.)",
)
@click.pass_context
def history_cmd(
    ctx: click.Context, image: str, fmt: str | None, quiet: bool, no_trunc: bool, as_json: bool
) -> None:
    """Show the steps that made an image, newest first, and the layer each made.

    JSON lists the steps oldest first, as the image's config does.
    """
    spec = format_.output(fmt, as_json=as_json, quiet=quiet, no_trunc=no_trunc)
    store = get_store(ctx)
    record = store.resolve_image(image)
    rows = history_rows(store, record)
    for i, r in enumerate(rows):
        r["id"] = record.id if i == len(rows) - 1 else None
    format_.echo(spec, HISTORY, rows if spec.json else rows[::-1])


@click.command("tag")
@click.argument("source", metavar="IMAGE", shell_complete=complete_images)
@click.argument("target", metavar="NAME[:TAG]")
@click.pass_context
def tag_cmd(ctx: click.Context, source: str, target: str) -> None:
    """Give an image another name."""
    get_store(ctx).tag(source, parse_reference(target))


@click.command("rm")
@click.argument(
    "images", nargs=-1, required=True, metavar="IMAGE...", shell_complete=complete_images
)
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
@click.argument("image", shell_complete=complete_images)
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
    to_stdout = str(path) == "-"
    if to_stdout and fmt == "oci":
        raise UnionfsError("an oci layout is a directory: use --format oci-archive or "
                           "docker-archive to write to standard output")  # fmt: skip
    if to_stdout and sys.stdout.isatty():
        raise UnionfsError("refusing to write an image archive to a terminal: redirect "
                           "standard output")  # fmt: skip
    store = get_store(ctx)
    with contextlib.ExitStack() as stack:
        target = stack.enter_context(store.staging("export")) / "archive" if to_stdout else path
        done = export_image(store, image, fmt, target, tag=ref)
        if to_stdout:
            with open(target, "rb") as f:
                shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)
            sys.stdout.buffer.flush()
    name = f"{done.reference} " if done.reference else ""
    layers = len(done.image.layers)
    linked = f", {done.linked} blobs hard-linked" if done.linked else ""
    click.echo(
        f"Exported {name}({short_id(done.image.id)}) to "
        f"{'standard output' if to_stdout else done.path} as {fmt}: "
        f"{layers} layer{'' if layers == 1 else 's'}, {display.human_size(done.size)}{linked}",
        err=to_stdout,
    )


def _stdin_to_file(store: Store, stack: contextlib.ExitStack) -> Path:
    """Standard input, copied into a staging file of the store (an archive is read
    out of order); the file goes when `stack` closes."""
    if sys.stdin.isatty():
        raise UnionfsError("image import -: standard input is a terminal: pipe an archive in")
    dest = stack.enter_context(store.staging("stdin")) / "archive"
    with open(dest, "wb") as f:
        shutil.copyfileobj(sys.stdin.buffer, f, 1 << 20)
    if dest.stat().st_size == 0:
        raise UnionfsError("image import -: standard input is empty")
    return dest


def register(cli: click.Group) -> None:
    """Add ``image`` and its docker-style aliases to `cli`."""
    image_group.add_command(export_cmd)
    cli.add_command(image_group)
    cli.add_command(images_cmd, "images")
    cli.add_command(history_cmd, "history")
    cli.add_command(tag_cmd, "tag")
    cli.add_command(rmi_cmd, "rmi")
