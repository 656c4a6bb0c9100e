"""The ``unionfs`` command line.

Exit codes: 0 success, 1 an error (one line on stderr), 2 a usage error.
Besides ``unionfs mount -o lowerdir=...,upperdir=...,workdir=... MOUNTPOINT``,
the bare forms that fuse-overlayfs drivers use are accepted:
``unionfs -o OPTIONS MOUNTPOINT`` (containers' ``mount_program``) and
``unionfs SOURCE MOUNTPOINT -o OPTIONS`` (``mount -t fuse.unionfs`` via
mount.fuse3).
"""

import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from unionfs import __version__
from unionfs.cli import commit as cmd_commit
from unionfs.cli import events as cmd_events
from unionfs.cli import export as cmd_export
from unionfs.cli import inspect as cmd_inspect
from unionfs.cli.images import get_store, register
from unionfs.errors import EXIT_USAGE, UnionfsError, UsageError
from unionfs.fuse import daemon
from unionfs.fuse.options import MountConfig, build_config
from unionfs.store.store import Store, mount_source

log = logging.getLogger(__name__)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="unionfs")
@click.option(
    "--root",
    envvar="UNIONFS_ROOT",
    metavar="DIR",
    help="The image and container store (default: /var/lib/unionfs for root, "
    "$XDG_DATA_HOME/unionfs for others; env UNIONFS_ROOT).",
)
def cli(root: str | None) -> None:
    """Mount container image layers as one filesystem, and keep images and containers."""


@cli.command("mount")
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
    help="Where the background daemon logs (default: syslog).",
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


@cli.command("umount")
@click.option("-l", "--lazy", is_flag=True, help="Detach now, clean up when no longer busy.")
@click.argument("mountpoint", type=click.Path(path_type=Path))
def umount_cmd(mountpoint: Path, lazy: bool) -> None:
    """Unmount a unionfs mount."""
    daemon.umount(mountpoint, lazy=lazy)


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


register(cli)
for _module in (cmd_commit, cmd_export, cmd_inspect, cmd_events):
    _module.register(cli)


def _log_to_stderr(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _rewrite_bare_mount(argv: list[str]) -> list[str]:
    """Turn the fuse-overlayfs/mount.fuse3 argument forms into ``mount ...``."""
    if not argv or "-o" not in argv:
        return argv
    first = argv[0]
    if first == "-o" or (not first.startswith("-") and first not in cli.commands):
        return ["mount", *argv]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    args = _rewrite_bare_mount(list(sys.argv[1:] if argv is None else argv))
    try:
        rv = cli.main(args=args, prog_name="unionfs", standalone_mode=False)
        if isinstance(rv, int):  # a command's click.exceptions.Exit(n), returned
            return rv
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.Abort:
        click.echo("unionfs: aborted", err=True)
        return 1
    except click.UsageError as e:
        click.echo(f"unionfs: error: {e.format_message()}", err=True)
        return EXIT_USAGE
    except click.ClickException as e:
        click.echo(f"unionfs: error: {e.format_message()}", err=True)
        return e.exit_code
    except UnionfsError as e:
        click.echo(f"unionfs: error: {e.message}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        # Not foreseen by a check of its own: still one line, with the path.
        where = f"{e.filename}: " if e.filename else ""
        click.echo(f"unionfs: error: {where}{e.strerror or e}", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
