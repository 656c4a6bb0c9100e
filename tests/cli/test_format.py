"""--format templates, -q, --no-trunc and --filter parsing, without a store."""

from __future__ import annotations

import json

import pytest

from unionfs.cli import format as format_
from unionfs.cli.format import Field, Output, output, parse_filters, parse_template, render
from unionfs.cli.main import usage_line
from unionfs.errors import UsageError

ROWS = [
    {"id": "sha256:" + "ab" * 32, "name": "one", "size": "1"},
    {"id": "sha256:" + "cd" * 32, "name": "two-long-name", "size": "22"},
    {"id": "sha256:" + "ab" * 32, "name": "alias", "size": "1"},
]
LISTING = format_.listing(
    "things",
    [
        Field("ID", "THING ID", lambda r, full: format_.short(r["id"], full)),
        Field("Name", "NAME", lambda r, full: r["name"]),
        Field("Size", "SIZE", lambda r, full: r["size"]),
    ],
    table=["ID", "Name"],
    quiet="ID",
)


def test_template_fields_and_escapes() -> None:
    assert parse_template("{{.ID}}\\t{{ .Name }}!") == [("ID",), "\t", ("Name",), "!"]
    assert parse_template("{{.GraphDriver.Data.UpperDir}}") == [("GraphDriver.Data.UpperDir",)]
    assert parse_template("plain\\n") == ["plain\n"]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{.ID | upper}}", "only {{.Field}} placeholders"),
        ("{{range .}}", "is not a field"),
        ("{{.ID}", "unmatched"),
        ("}}", "unmatched"),
        ("{{json .}}", "is not a field"),
    ],
)
def test_template_refuses_what_is_not_a_field(template: str, message: str) -> None:
    with pytest.raises(UsageError, match=r"^--format: ") as e:
        parse_template(template)
    assert message in e.value.message
    assert e.value.exit_code == 2


def test_template_rows() -> None:
    spec = output("{{.ID}} {{.Name}}", as_json=False, quiet=False, no_trunc=False)
    assert render(spec, LISTING, ROWS).splitlines() == [
        "abababababab one",
        "cdcdcdcdcdcd two-long-name",
        "abababababab alias",
    ]


def test_unknown_field_names_the_known_ones() -> None:
    spec = output("{{.Nope}}", as_json=False, quiet=False, no_trunc=False)
    with pytest.raises(UsageError) as e:
        render(spec, LISTING, ROWS)
    assert e.value.message == "--format: things have no field .Nope (they have .ID, .Name, .Size)"


def test_table_template_has_a_header_and_aligned_columns() -> None:
    spec = output("table {{.Name}}\\t{{.Size}}", as_json=False, quiet=False, no_trunc=False)
    assert render(spec, LISTING, ROWS).splitlines() == [
        "NAME            SIZE",
        "one             1",
        "two-long-name   22",
        "alias           1",
    ]


def test_plain_table_json_and_quiet() -> None:
    table = render(output("table", as_json=False, quiet=False, no_trunc=False), LISTING, ROWS)
    assert table.splitlines()[0].split() == ["THING", "ID", "NAME"]
    assert render(Output(json=True), LISTING, ROWS) == json.dumps(ROWS, indent=2)
    assert output("json", as_json=False, quiet=False, no_trunc=False).json
    # -q: each ID once, in order; --no-trunc: whole
    assert render(Output(quiet=True), LISTING, ROWS) == "abababababab\ncdcdcdcdcdcd"
    whole = render(Output(quiet=True, no_trunc=True), LISTING, ROWS).splitlines()
    assert whole == [ROWS[0]["id"], ROWS[1]["id"]]


def test_exclusive_options() -> None:
    with pytest.raises(UsageError, match="--json and --quiet cannot be given together"):
        output(None, as_json=True, quiet=True, no_trunc=False)
    with pytest.raises(UsageError, match="--quiet and --format"):
        output("json", as_json=False, quiet=True, no_trunc=False)


def test_filters_group_by_key_and_refuse_unknown_keys() -> None:
    assert parse_filters(["a=1", "b=x=y", "a=2"], ["a", "b"]) == {"a": ["1", "2"], "b": ["x=y"]}
    with pytest.raises(UsageError, match=r"unknown key 'c' \(keys: a, b\)"):
        parse_filters(["c=1"], ["a", "b"])
    with pytest.raises(UsageError, match="expected KEY=VALUE"):
        parse_filters(["a"], ["a", "b"])
    assert format_.boolean("dangling", "TRUE") is True
    with pytest.raises(UsageError):
        format_.boolean("dangling", "maybe")


def test_inspect_lookup() -> None:
    obj = {"Id": "x", "State": {"Mounted": False, "Pid": None}, "Layers": ["a", "b"]}
    assert format_.render_objects("{{.Id}} {{.State.Mounted}} {{.Layers}}", [obj]) == (
        'x false ["a", "b"]'
    )
    assert format_.lookup(obj, "State.Pid") == "<no value>"
    with pytest.raises(UsageError, match=r"no field \.State\.Nope \(at \.Nope; there: "):
        format_.lookup(obj, "State.Nope")


@pytest.mark.parametrize(
    ("message", "line"),
    [
        (
            "No such option '-q'.",
            "unionfs: error: no such option '-q'; see 'unionfs x --help'",
        ),
        (
            "No such option '--jsn'. Did you mean '--json'?",
            "unionfs: error: no such option '--jsn'; did you mean '--json'?; "
            "see 'unionfs x --help'",
        ),
        (
            "Missing argument 'IMAGE'.",
            "unionfs: error: missing argument 'IMAGE'; see 'unionfs x --help'",
        ),
        ("IMAGE is wrong", "unionfs: error: IMAGE is wrong; see 'unionfs x --help'"),
    ],
)
def test_usage_errors_in_one_voice(message: str, line: str) -> None:
    assert usage_line(message, "unionfs x") == line
