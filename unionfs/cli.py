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

from . import __version__, daemon
from .errors import EXIT_USAGE, UnionfsError
from .options import build_config

log = logging.getLogger(__name__)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="unionfs")
def cli() -> None:
    """Mount container image layers as one filesystem."""


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
@click.argument("source_or_mountpoint", metavar="MOUNTPOINT")
@click.argument("mountpoint_after_source", required=False, metavar="", default=None)
def mount_cmd(
    lowers: tuple[str, ...],
    option_strings: tuple[str, ...],
    upper: str | None,
    work: str | None,
    whiteout_format: str,
    foreground: bool,
    debug: bool,
    log_file: Path | None,
    cache_timeout: float,
    source_or_mountpoint: str,
    mountpoint_after_source: str | None,
) -> None:
    """Mount the union of layer directories on MOUNTPOINT (read-only unless --upper)."""
    # mount.fuse3 passes "SOURCE MOUNTPOINT"; the source names nothing here.
    mountpoint = mountpoint_after_source or source_or_mountpoint
    config = dataclasses.replace(
        build_config(
            lowers, mountpoint, option_strings, upper, work, oci_whiteouts=whiteout_format == "oci"
        ),
        cache_timeout=cache_timeout,
    )
    if foreground:
        _log_to_stderr(debug)
    daemon.mount(config, foreground=foreground, debug=debug, log_file=log_file)


@cli.command("umount")
@click.option("-l", "--lazy", is_flag=True, help="Detach now, clean up when no longer busy.")
@click.argument("mountpoint", type=click.Path(path_type=Path))
def umount_cmd(mountpoint: Path, lazy: bool) -> None:
    """Unmount a unionfs mount."""
    daemon.umount(mountpoint, lazy=lazy)


def _log_to_stderr(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _rewrite_bare_mount(argv: list[str]) -> list[str]:
    """Turn the fuse-overlayfs/mount.fuse3 argument forms into ``mount ...``."""
    if argv and argv[0] not in cli.commands and "-o" in argv:
        return ["mount", *argv]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    args = _rewrite_bare_mount(list(sys.argv[1:] if argv is None else argv))
    try:
        cli.main(args=args, prog_name="unionfs", standalone_mode=False)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
