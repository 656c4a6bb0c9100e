"""What every command of the store shares: the --json option and opening the store."""

from __future__ import annotations

from pathlib import Path

import click

from unionfs.store.base import default_root
from unionfs.store.store import Store

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for programs.")


def get_store(ctx: click.Context) -> Store:
    root = ctx.find_root().params.get("root")
    store = Store(Path(root) if root else default_root())
    store.check_version()
    return store
