"""How listings print on request: ``--format``, ``-q/--quiet``, ``--no-trunc`` and ``--filter``.

A listing (``images``, ``ps``, ``history``) is a list of rows (dicts, what
``--json`` prints) and a table of named fields, podman's names for them
(``ID``, ``Repository``, ...). ``--format`` takes:

- ``json``: the rows as JSON, as ``--json`` prints them;
- ``table``: the default table;
- a template: text with ``{{.Field}}`` placeholders, printed once per row
  (``\\t`` and ``\\n`` in it stand for a tab and a newline, as podman reads
  them); ``table`` before a template prints a header and aligns the columns.

Only ``{{.Field}}`` is read, never evaluated: Go's template language (pipes,
functions, ``range``) is not there, and anything else between ``{{ }}`` is
one usage error, as is a field the listing does not have. For ``inspect``,
a field is a dotted path into the JSON object (``{{.GraphDriver.Data.UpperDir}}``).

A filter is ``KEY=VALUE``; each listing says which keys it knows. Filters of
different keys must all match; several values of one key match when any does
(podman's rule).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import click

from unionfs.cli import display
from unionfs.errors import UsageError
from unionfs.store.records import parse_time

Row = Mapping[str, Any]


@dataclass(frozen=True)
class Field:
    """One field of a listing: its template name, its table header, its text."""

    name: str
    header: str
    text: Callable[[Row, bool], str]  # (row, no_trunc) -> the printed value
    help: str = ""


@dataclass(frozen=True)
class Listing:
    """The fields of one listing, and which of them the plain table shows."""

    what: str  # "images", for messages
    fields: Mapping[str, Field]
    table: Sequence[str]  # field names of the default table, in order
    quiet: str  # the field -q prints

    def field(self, name: str) -> Field:
        found = self.fields.get(name)
        if found is None:
            raise UsageError(
                f"--format: {self.what} have no field .{name} (they have {field_names(self)})"
            )
        return found


def field_names(listing: Listing) -> str:
    return ", ".join(f".{n}" for n in listing.fields)


def listing(what: str, fields: Iterable[Field], table: Sequence[str], quiet: str) -> Listing:
    return Listing(what, {f.name: f for f in fields}, table, quiet)


# -- templates -----------------------------------------------------------------------------

_ACTION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_FIELD = re.compile(r"\s*\.([A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z][A-Za-z0-9_]*)*)\s*")

Part = str | tuple[str]  # literal text, or (field path,)


def parse_template(text: str) -> list[Part]:
    """Literal text and ``(path,)`` for each ``{{.Path}}``; anything else in
    ``{{ }}`` is a usage error. ``\\t`` and ``\\n`` become a tab and a newline."""
    text = text.replace("\\t", "\t").replace("\\n", "\n")
    parts: list[Part] = []
    pos = 0
    for m in _ACTION.finditer(text):
        parts.append(text[pos : m.start()])
        field = _FIELD.fullmatch(m.group(1))
        if field is None:
            raise UsageError(
                f"--format: {{{{{m.group(1)}}}}} is not a field: only {{{{.Field}}}} "
                "placeholders are read (no Go template functions)"
            )
        parts.append((field.group(1),))
        pos = m.end()
    rest = text[pos:]
    if "{{" in rest or "}}" in rest:
        raise UsageError("--format: an unmatched {{ or }} in the template")
    parts.append(rest)
    return [p for p in parts if p != ""]


def _table_template(fmt: str) -> tuple[bool, str]:
    """(whether a header is wanted, the template) of a ``table ...`` format."""
    if fmt == "table" or fmt.startswith(("table ", "table\t")):
        return True, fmt[len("table") :].lstrip(" ")
    return False, fmt


@dataclass(frozen=True)
class Output:
    """What ``--format``, ``-q`` and ``--no-trunc`` asked of a listing."""

    json: bool = False
    quiet: bool = False
    no_trunc: bool = False
    header: bool = True
    template: tuple[Part, ...] | None = None  # None: the default table


def output(fmt: str | None, *, as_json: bool, quiet: bool, no_trunc: bool) -> Output:
    """Check the options' combination and the template, before any work."""
    chosen = [name for name, on in (("--json", as_json), ("--quiet", quiet)) if on]
    if fmt is not None:
        chosen.append("--format")
    if len(chosen) > 1:
        raise UsageError(f"{' and '.join(chosen)} cannot be given together")
    if as_json or fmt == "json":
        return Output(json=True, no_trunc=no_trunc)
    if quiet:
        return Output(quiet=True, no_trunc=no_trunc)
    if fmt is None:
        return Output(no_trunc=no_trunc)
    header, template = _table_template(fmt)
    if not template:
        return Output(no_trunc=no_trunc, header=header)
    return Output(no_trunc=no_trunc, header=header, template=tuple(parse_template(template)))


def render(spec: Output, lst: Listing, rows: Sequence[Row]) -> str:
    """The listing as `spec` asks; "" for no rows without a header."""
    if spec.json:
        return json.dumps(list(rows), indent=2)
    if spec.quiet:
        f = lst.fields[lst.quiet]
        return "\n".join(dict.fromkeys(f.text(r, spec.no_trunc) for r in rows))
    if spec.template is None:
        fields = [lst.fields[n] for n in lst.table]
        return display.table(
            [f.header for f in fields], [[f.text(r, spec.no_trunc) for f in fields] for r in rows]
        )
    template = spec.template
    used = {p[0]: lst.field(p[0]) for p in template if isinstance(p, tuple)}

    def line(r: Row) -> str:
        return "".join(
            used[p[0]].text(r, spec.no_trunc) if isinstance(p, tuple) else p for p in template
        )

    if not spec.header:
        return "\n".join(line(r) for r in rows)
    # A header row, and columns aligned at the template's tabs (podman's table).
    header = "".join(used[p[0]].header if isinstance(p, tuple) else p for p in template)
    grid = [c.split("\t") for c in [header, *(line(r) for r in rows)]]
    width = max(len(cells) for cells in grid)
    grid = [cells + [""] * (width - len(cells)) for cells in grid]
    return display.table(grid[0], grid[1:])


def echo(spec: Output, lst: Listing, rows: Sequence[Row]) -> None:
    text = render(spec, lst, rows)
    if text:
        click.echo(text)


def lookup(obj: Any, path: str) -> str:
    """A dotted path into an inspect object, as text (JSON for lists and objects)."""
    value = obj
    for key in path.split("."):
        if not isinstance(value, Mapping) or key not in value:
            have = ", ".join(f".{k}" for k in value) if isinstance(value, Mapping) else "none"
            raise UsageError(f"--format: no field .{path} (at .{key}; there: {have})")
        value = value[key]
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def render_objects(fmt: str, objects: Sequence[Any]) -> str:
    """``inspect --format``: a template over each object, or ``json``. A field
    that one object lacks prints ``<no value>`` there (containers and images have
    different fields); a field that none has is the usage error."""
    if fmt == "json":
        return json.dumps(list(objects), indent=2)
    parts = parse_template(fmt)
    for p in parts:
        if isinstance(p, tuple) and objects:
            errors = []
            for o in objects:
                try:
                    lookup(o, p[0])
                except UsageError as e:
                    errors.append(e)
            if len(errors) == len(objects):
                raise errors[0]

    def text(o: Any, path: str) -> str:
        try:
            return lookup(o, path)
        except UsageError:
            return "<no value>"

    return "\n".join(
        "".join(text(o, p[0]) if isinstance(p, tuple) else p for p in parts) for o in objects
    )


# -- filters -------------------------------------------------------------------------------


def parse_filters(given: Sequence[str], known: Sequence[str]) -> dict[str, list[str]]:
    """``KEY=VALUE`` texts grouped by key; an unknown key is a usage error."""
    out: dict[str, list[str]] = {}
    for text in given:
        key, eq, value = text.partition("=")
        if not eq or not key:
            raise UsageError(f"--filter {text!r}: expected KEY=VALUE (keys: {', '.join(known)})")
        if key not in known:
            raise UsageError(f"--filter: unknown key {key!r} (keys: {', '.join(known)})")
        out.setdefault(key, []).append(value)
    return out


def boolean(key: str, value: str) -> bool:
    if value.lower() in {"true", "1", "yes"}:
        return True
    if value.lower() in {"false", "0", "no"}:
        return False
    raise UsageError(f"--filter {key}={value}: expected true or false")


def short(text: str, no_trunc: bool) -> str:
    """An ID as listings show it: 12 hex digits, or all of it with --no-trunc."""
    if no_trunc:
        return text
    return text.removeprefix("sha256:")[:12]


def ago(text: str | None) -> str:
    return display.ago(parse_time(text))
