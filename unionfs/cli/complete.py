"""``unionfs completion bash|zsh|fish``: the shell's completion script.

The script calls ``unionfs`` back with ``_UNIONFS_COMPLETE`` set (click's shell
completion, which `main` runs before anything else); commands, options, and
image and container names of the store (``--root``/``UNIONFS_ROOT`` honoured)
are completed.
"""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_UNIONFS_COMPLETE"

INSTALL = {
    "bash": "unionfs completion bash > /etc/bash_completion.d/unionfs",
    "zsh": 'unionfs completion zsh > "${fpath[1]}/_unionfs"',
    "fish": "unionfs completion fish > ~/.config/fish/completions/unionfs.fish",
}


def script(cli: click.Command, shell: str) -> str:
    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover (SHELLS are click's own)
        raise AssertionError(shell)
    return cls(cli, {}, "unionfs", COMPLETE_VAR).source()


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion_cmd(ctx: click.Context, shell: str) -> None:
    """Print the completion script of SHELL (commands, options, image and container names).

    \b
    bash: unionfs completion bash > /etc/bash_completion.d/unionfs
          (or: source <(unionfs completion bash) in ~/.bashrc)
    zsh:  unionfs completion zsh > "${fpath[1]}/_unionfs"
    fish: unionfs completion fish > ~/.config/fish/completions/unionfs.fish
    """
    click.echo(script(ctx.find_root().command, shell), nl=False)


def register(cli: click.Group) -> None:
    cli.add_command(completion_cmd)
