"""The ``unionfs`` command line.

Exit codes: 0 success, 1 an error (one line on stderr), 2 a usage error.
Besides ``unionfs mount -o lowerdir=...,upperdir=...,workdir=... MOUNTPOINT``,
the bare forms that fuse-overlayfs drivers use are accepted:
``unionfs -o OPTIONS MOUNTPOINT`` (containers' ``mount_program``) and
``unionfs SOURCE MOUNTPOINT -o OPTIONS`` (``mount -t fuse.unionfs`` via
mount.fuse3).
"""

import logging
import sys
from collections.abc import Sequence

import click

from unionfs import __version__
from unionfs.cli import containers, events, images, inspect, mount
from unionfs.errors import EXIT_USAGE, UnionfsError

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


for _module in (images, containers, mount, inspect, events):
    _module.register(cli)


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
