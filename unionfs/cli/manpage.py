"""The man page unionfs(1), written from the command line's own help.

``python -m unionfs.cli.manpage DIR`` writes ``DIR/unionfs.1`` (scripts/setup
puts it in the venv's share/man/man1, where ``man unionfs`` finds it when the
venv's bin is on PATH). Every command and option appears, with the text that
``--help`` prints, so the page cannot drift from the program.
"""

from __future__ import annotations

import datetime as dt
import inspect
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from unionfs import __version__

_SEE_ALSO = (
    "fusermount3(1), mount.fuse3(8), podman(1), overlayfs (Documentation/filesystems/overlayfs.rst)"
)


def _escape(text: str) -> str:
    """Text safe in roff: backslashes doubled, no line starting with . or '."""
    out = []
    for line in text.replace("\\", "\\e").splitlines():
        guard = "\\&" if line.startswith((".", "'")) else ""
        out.append(guard + line.replace("-", "\\-"))
    return "\n".join(out)


def _commands(group: click.Group, prefix: str) -> Iterator[tuple[str, click.Command]]:
    """Every command under `group`, depth first, by name (an alias counts once)."""
    seen: set[int] = set()
    for name in sorted(group.commands):
        cmd = group.commands[name]
        path = f"{prefix} {name}"
        yield path, cmd
        if isinstance(cmd, click.Group) and id(cmd) not in seen:
            seen.add(id(cmd))
            yield from _commands(cmd, path)


def _help_text(cmd: click.Command) -> str:
    """The help as roff paragraphs: lines of a paragraph joined, a ``\\b``
    paragraph (click's "keep as is") kept line by line."""
    paragraphs = inspect.cleandoc(cmd.help or "").split("\n\n")
    out = []
    for para in paragraphs:
        lines = para.splitlines()
        if lines and lines[0].strip() == "\b":
            out.append(".nf\n" + _escape("\n".join(lines[1:])) + "\n.fi")
        else:
            out.append(_escape(" ".join(ln.strip() for ln in lines)))
    return "\n.PP\n".join(p for p in out if p)


def _options(ctx: click.Context, cmd: click.Command) -> list[str]:
    out = []
    for param in cmd.get_params(ctx):
        record = None if isinstance(param, click.Argument) else param.get_help_record(ctx)
        if record is None:
            continue
        names, text = record
        out += [".TP", f"\\fB{_escape(names)}\\fR", _escape(text) or "\\&"]
    return out


def render(cli: click.Group) -> str:
    """The roff source of unionfs(1)."""
    root = click.Context(cli, info_name="unionfs", **cli.context_settings)
    summary = inspect.cleandoc(cli.help or "").splitlines()[0].rstrip(".")
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    lines = [
        f'.TH UNIONFS 1 "{date}" "unionfs {__version__}" "User Commands"',
        ".SH NAME",
        "unionfs \\- " + _escape(summary[0].lower() + summary[1:]),
        ".SH SYNOPSIS",
        "\\fBunionfs\\fR [\\fB\\-\\-root\\fR \\fIDIR\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
        _help_text(cli),
        ".PP",
        "Exit status: 0 success, 1 an error (one line \\fBunionfs: error: ...\\fR on stderr), "
        "2 a usage error.",
        ".SH OPTIONS",
        *_options(root, cli),
        ".SH COMMANDS",
    ]
    for path, cmd in _commands(cli, "unionfs"):
        ctx = click.Context(cmd, info_name=path.rpartition(" ")[2], parent=root)
        usage = " ".join(cmd.collect_usage_pieces(ctx))
        lines += [".SS " + _escape(path), f"\\fB{_escape(path)}\\fR {_escape(usage)}", ".PP"]
        lines.append(_help_text(cmd) or "\\&")
        lines += _options(ctx, cmd)
    lines += [
        ".SH ENVIRONMENT",
        ".TP",
        "\\fBUNIONFS_ROOT\\fR",
        "The image and container store, as \\fB\\-\\-root\\fR.",
        ".SH SEE ALSO",
        _escape(_SEE_ALSO),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    from unionfs.cli.main import cli  # noqa: PLC0415 (main imports every command module)

    if len(argv) != 1:
        print("usage: python -m unionfs.cli.manpage DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    (out / "unionfs.1").write_text(render(cli))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
