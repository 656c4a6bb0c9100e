"""What every command of the store shares: the --json option, the listing options,
opening the store, and completing image and container names."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from click.shell_completion import CompletionItem

from unionfs.cli.format import Listing, field_names
from unionfs.errors import UnionfsError
from unionfs.store.base import default_root
from unionfs.store.records import short_id
from unionfs.store.store import Store

F = TypeVar("F", bound=Callable[..., Any])

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for programs.")


def get_store(ctx: click.Context) -> Store:
    root = ctx.find_root().params.get("root")
    store = Store(Path(root) if root else default_root())
    store.check_version()
    return store


def listing_options(lst: Listing, *, trunc_help: str) -> Callable[[F], F]:
    """``--format``, ``-q/--quiet``, ``--no-trunc`` and ``--json`` of a listing."""

    def decorate(f: F) -> F:
        f = click.option(
            "--format",
            "fmt",
            metavar="FORMAT",
            help="json, table, or a template of fields such as "
            f"'{{{{.{lst.quiet}}}}}\\t{{{{.{list(lst.fields)[1]}}}}}' ('table TEMPLATE' adds "
            f"a header). Fields: {field_names(lst)}.",
        )(f)
        f = click.option(
            "-q", "--quiet", is_flag=True, help=f"Print only the {lst.quiet} field, one a line."
        )(f)
        f = click.option("--no-trunc", is_flag=True, help=trunc_help)(f)
        return json_option(f)

    return decorate


# -- completion (never fails: a shell must not print a traceback on TAB) --------------------


def _store_for_completion(ctx: click.Context) -> Store | None:
    try:
        return get_store(ctx)
    except (UnionfsError, OSError, ValueError):
        return None


def _items(names: list[tuple[str, str]], incomplete: str) -> list[CompletionItem]:
    seen: dict[str, str] = {}
    for value, helptext in names:
        if value.startswith(incomplete) and value not in seen:
            seen[value] = helptext
    return [CompletionItem(v, help=h) for v, h in seen.items()]


def image_names(store: Store) -> list[tuple[str, str]]:
    """Every tag, then every short image ID, with what it is."""
    try:
        tags = [(str(r), f"image {short_id(i)}") for r, i in sorted(store.tags().items(), key=str)]
        ids = [(short_id(i.id), "image") for i in store.images()]
    except (UnionfsError, OSError, ValueError):
        return []
    return tags + ids


def container_names(store: Store) -> list[tuple[str, str]]:
    try:
        return [(c.name, f"container {c.id[:12]}") for c in store.containers()]
    except (UnionfsError, OSError, ValueError):
        return []


def complete_images(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    store = _store_for_completion(ctx)
    return _items(image_names(store), incomplete) if store else []


def complete_containers(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    store = _store_for_completion(ctx)
    return _items(container_names(store), incomplete) if store else []


def complete_objects(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Containers, then images (as ``inspect`` looks them up)."""
    store = _store_for_completion(ctx)
    if store is None:
        return []
    return _items(container_names(store) + image_names(store), incomplete)


def complete_objects_or_paths(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[Any]:
    """Containers and images, and paths (a mount point, a path in a mount): in
    bash, the names that match, else the shell's own completion of paths."""
    return [CompletionItem(incomplete, type="file"), *complete_objects(ctx, param, incomplete)]
