"""``unionfs mount`` and ``unionfs umount``: layer dirs, or a store's container or image.

``umount --all`` unmounts every unionfs mount the caller may unmount;
``unionfs mounts`` (`unionfs.cli.mounts`) lists them.

The options are parsed into a `unionfs.fuse.options.MountConfig` (both the
``--lower`` form and fuse-overlayfs's ``-o lowerdir=`` form); the daemon in
`unionfs.fuse.daemon` does the mounting.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

import click

from unionfs.cli import mounts
from unionfs.cli.common import get_store
from unionfs.errors import UnionfsError, UsageError
from unionfs.fuse import daemon, mounttab
from unionfs.fuse.options import MountConfig, build_config
from unionfs.store.mounted import mount_source
from unionfs.store.store import Store


@click.command("mount")
@click.option(
    "--lower",
    "lowers",
    multiple=True,
    metavar="DIR",
    help="A read-only layer; repeat it, top layer first.",
)
@click.option(
    "-o",
    "option_strings",
    multiple=True,
    metavar="OPTS",
    help="Comma-separated options as fuse-overlayfs takes them: lowerdir=TOP:...:BOTTOM "
    "(colons in paths escaped as \\:), upperdir=DIR, workdir=DIR, and generic mount flags.",
)
@click.option("--upper", metavar="DIR", help="The writable upper layer: makes the mount writable.")
@click.option("--work", metavar="DIR", help="Work dir on the upper's filesystem (with --upper).")
@click.option(
    "--whiteout-format",
    type=click.Choice(["overlay", "oci"]),
    default="overlay",
    show_default=True,
    help="How deletions are written: overlayfs char devices 0/0 (OCI .wh. files when not "
    "root), or always OCI .wh. files.",
)
@click.option(
    "--read-only",
    is_flag=True,
    help="Mount a container (or an image) from the store without its upper layer writable.",
)
@click.option("-f", "--foreground", is_flag=True, help="Serve in front and log to stderr.")
@click.option("--debug", is_flag=True, help="Log every request (implies verbose logs).")
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where the background daemon logs (default: syslog, else the journal, else a "
    "file beside the mount's state file; `unionfs mounts` says which).",
)
@click.option(
    "--cache-timeout",
    type=click.FloatRange(min=0),
    default=86400.0,
    show_default=True,
    help="Seconds the kernel may cache names and attributes (layers are immutable; "
    "0 turns kernel caching off, for measurements).",
)
@click.argument("source_or_mountpoint", metavar="[CONTAINER|IMAGE] MOUNTPOINT")
@click.argument("mountpoint_after_source", required=False, metavar="", default=None)
@click.pass_context
def mount_cmd(
    ctx: click.Context,
    lowers: tuple[str, ...],
    option_strings: tuple[str, ...],
    upper: str | None,
    work: str | None,
    whiteout_format: str,
    read_only: bool,
    foreground: bool,
    debug: bool,
    log_file: Path | None,
    cache_timeout: float,
    source_or_mountpoint: str,
    mountpoint_after_source: str | None,
) -> None:
    """Mount layer directories, or a container or image of the store, on MOUNTPOINT.

    With --lower/-o lowerdir=: the union of those dirs (read-only unless --upper).
    With CONTAINER MOUNTPOINT: the container, writable, over its image's layers.
    With IMAGE MOUNTPOINT --read-only: the image's layers.
    """
    mountpoint = mountpoint_after_source or source_or_mountpoint
    source = source_or_mountpoint if mountpoint_after_source is not None else None
    oci = whiteout_format == "oci"
    if not lowers and not any("lowerdir=" in o for o in option_strings):
        if source is None:
            raise UsageError(
                "no layers: give --lower DIR (top first) or -o lowerdir=TOP:...:BOTTOM, "
                "or a store's CONTAINER (or IMAGE with --read-only) before MOUNTPOINT"
            )
        if upper is not None or work is not None:
            raise UsageError("--upper and --work are for layer dirs, not for store objects")
        config = store_mount_config(
            get_store(ctx), source, mountpoint, option_strings, read_only=read_only,
            oci_whiteouts=oci,
        )  # fmt: skip
    else:
        # mount.fuse3 passes "SOURCE MOUNTPOINT"; with layers given the source names nothing.
        if read_only and upper is not None:
            raise UsageError("--read-only and --upper contradict each other")
        config = build_config(lowers, mountpoint, option_strings, upper, work, oci_whiteouts=oci)
    config = dataclasses.replace(config, cache_timeout=cache_timeout)
    if foreground:
        _log_to_stderr(debug)
    daemon.mount(config, foreground=foreground, debug=debug, log_file=log_file)


@click.command("umount")
@click.option("-l", "--lazy", is_flag=True, help="Detach now, clean up when no longer busy.")
@click.option("-a", "--all", "every", is_flag=True, help="Every unionfs mount you may unmount.")
@click.argument("mountpoint", type=click.Path(path_type=Path), required=False)
def umount_cmd(mountpoint: Path | None, lazy: bool, every: bool) -> None:
    """Unmount a unionfs mount (or, with --all, every one you may unmount).

    With --all, a mount that cannot be unmounted (busy) is reported and the
    others are still unmounted; the exit status is then 1.
    """
    if every:
        if mountpoint is not None:
            raise UsageError("give a MOUNTPOINT or --all, not both")
        _umount_all(lazy=lazy)
    elif mountpoint is None:
        raise UsageError("give the MOUNTPOINT to unmount, or --all")
    else:
        daemon.umount(mountpoint, lazy=lazy)


def _umount_all(*, lazy: bool) -> None:
    """Unmount every unionfs mount the caller owns (all for root), newest first
    (so that a mount inside another goes before it)."""
    uid = os.geteuid()
    entries = [m for m in mounttab.unionfs_mounts() if uid in (0, m.fuse_owner)]
    failed = []
    for entry in sorted(entries, key=lambda m: m.mount_id, reverse=True):
        try:
            daemon.umount(Path(entry.mountpoint), lazy=lazy)
        except UnionfsError as e:
            click.echo(f"unionfs: error: {e.message}", err=True)
            failed.append(entry.mountpoint)
        else:
            click.echo(entry.mountpoint)
    if failed:
        raise UnionfsError(
            f"{len(failed)} of {len(entries)} mounts not unmounted: {', '.join(failed)}"
        )


def store_mount_config(
    store: Store,
    source: str,
    mountpoint: str,
    option_strings: tuple[str, ...],
    *,
    read_only: bool,
    oci_whiteouts: bool,
) -> MountConfig:
    """What `unionfs mount CONTAINER|IMAGE MOUNTPOINT` mounts."""
    container = store.find_container(source)
    if container is not None:
        lowers = [str(p) for p in store.lowers(container.diff_ids)]
        upper, work = store.container_upper(container), store.container_work(container)
        name = mount_source("container", container.id)
        if read_only:
            lowers.insert(0, str(upper))
        config = build_config(
            lowers,
            mountpoint,
            (*option_strings, f"fsname={name}"),
            None if read_only else str(upper),
            None if read_only else str(work),
            oci_whiteouts=oci_whiteouts,
        )
        return config
    try:
        image = store.resolve_image(source)
    except UnionfsError:
        raise UnionfsError(f"no such container or image: {source}") from None
    if not read_only:
        raise UnionfsError(
            f"{source} is an image: mount it with --read-only, or make a container of it "
            f"(unionfs create {source}) and mount that"
        )
    lowers = [str(p) for p in store.lowers(image.diff_ids)]
    name = mount_source("image", image.id)
    return build_config(lowers, mountpoint, (*option_strings, f"fsname={name}"))


def _log_to_stderr(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def register(cli: click.Group) -> None:
    """Add ``mount``, ``umount`` and ``mounts`` to `cli`."""
    cli.add_command(mount_cmd)
    cli.add_command(umount_cmd)
    cli.add_command(mounts.mounts_cmd)
