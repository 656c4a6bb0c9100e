"""The ``unionfs`` command line.

Exit codes: 0 success, 1 an error (one line on stderr), 2 a usage error.
Besides ``unionfs mount -o lowerdir=...,upperdir=...,workdir=... MOUNTPOINT``,
the bare forms that fuse-overlayfs drivers use are accepted:
``unionfs -o OPTIONS MOUNTPOINT`` (containers' ``mount_program``) and
``unionfs SOURCE MOUNTPOINT -o OPTIONS`` (``mount -t fuse.unionfs`` via
mount.fuse3).
"""

import logging
import re
import sys
from collections.abc import Sequence

import click

from unionfs import __version__
from unionfs.cli import (
    analyze,
    browse,
    complete,
    containers,
    events,
    images,
    inspect,
    mount,
    registry,
)
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


for _module in (images, containers, mount, inspect, events, analyze, browse):
    _module.register(cli)
registry.register(cli)
complete.register(cli)


def _rewrite_bare_mount(argv: list[str]) -> list[str]:
    """Turn the fuse-overlayfs/mount.fuse3 argument forms into ``mount ...``."""
    if not argv or "-o" not in argv:
        return argv
    first = argv[0]
    if first == "-o" or (not first.startswith("-") and first not in cli.commands):
        return ["mount", *argv]
    return argv


def _command_path(args: list[str]) -> str:
    """``unionfs image ls`` for ``--root X image ls -q``: the command the
    arguments name, as far as they name one (for "see ... --help")."""
    words = ["unionfs"]
    command: click.Command = cli
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--root":
            skip = len(words) == 1
            continue
        if arg.startswith("-"):
            continue
        if not isinstance(command, click.Group) or arg not in command.commands:
            break
        command = command.commands[arg]
        words.append(arg)
    return " ".join(words)


def usage_line(message: str, command_path: str) -> str:
    """A usage error in unionfs's voice: lower case, no full stops, sentences
    joined by ``;``, and where to look (``unionfs: error: no such option '-q';
    see 'unionfs images --help'``)."""
    text = " ".join(message.split())
    sentences = [t for t in re.split(r"(?<=[.?!])\s+(?=[A-Z])", text) if t]
    out = [_lower_first(t.rstrip(".")) for t in sentences]
    return f"unionfs: error: {'; '.join(out)}; see '{command_path} --help'"


def _lower_first(text: str) -> str:
    """``No such option`` -> ``no such option``; ``IMAGE`` and ``OSError`` stay."""
    if len(text) > 1 and text[0].isupper() and not text[1].isupper():
        return text[0].lower() + text[1:]
    return text


def error_line(message: str) -> str:
    """An error in unionfs's voice: one line, starting in lower case."""
    return f"unionfs: error: {_lower_first(' '.join(message.split()).rstrip('.'))}"


def main(argv: Sequence[str] | None = None) -> int:
    args = _rewrite_bare_mount(list(sys.argv[1:] if argv is None else argv))
    try:
        rv = cli.main(args=args, prog_name="unionfs", standalone_mode=False)
        if isinstance(rv, int):  # a command's click.exceptions.Exit(n), returned
            return rv
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.Abort:
        click.echo("unionfs: error: aborted", err=True)
        return 1
    except click.exceptions.NoArgsIsHelpError as e:  # `unionfs`, `unionfs image`: the help
        click.echo(e.format_message(), err=True)
        return EXIT_USAGE
    except click.UsageError as e:
        path = e.ctx.command_path if e.ctx else _command_path(args)
        click.echo(usage_line(e.format_message(), path), err=True)
        return EXIT_USAGE
    except click.ClickException as e:
        click.echo(error_line(e.format_message()), err=True)
        return e.exit_code
    except UnionfsError as e:
        if e.exit_code == EXIT_USAGE:
            click.echo(usage_line(e.message, _command_path(args)), err=True)
        else:
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
