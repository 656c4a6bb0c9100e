"""images, ps and history as podman users call them (-q, --format, --filter,
--no-trunc, -a), top-level inspect, create's output, completion and the man page.

The store holds three images of known creation times (old:1, app:1 also tagged
reg.example/team/app:2, and one untagged) and two containers. Most commands
run in this process through `main` (the same entry point as the installed
command); completion, the man page and error lines run as a real process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import oci
from tests.support.cli import run_unionfs
from tests.support.oci import Layer, directory, file
from unionfs.cli import manpage
from unionfs.cli.main import cli, main
from unionfs.image.refs import parse_reference
from unionfs.store.store import Store

BASE = Layer(oci.tar_bytes([directory("etc"), file("etc/motd", "base\n")]))
APP = Layer(oci.tar_bytes([directory("app"), file("app/main", "print('hi')\n")]))
OTHER = Layer(oci.tar_bytes([file("other", "o\n")]))
HEX64 = re.compile(r"^[0-9a-f]{64}$")


class Env:
    def __init__(self, root: Path, store: Store, ids: dict[str, str]) -> None:
        self.root, self.store, self.ids = root, store, ids


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    tmp = tmp_path_factory.mktemp("listings")
    store = Store(tmp / "store")
    ids = {}
    for name, layers, ref, created, labels in [
        ("old", [BASE], parse_reference("old:1"), "2023-01-01T00:00:00Z", {"tier": "base"}),
        ("app", [BASE, APP], parse_reference("app:1"), "2024-01-01T00:00:00Z", {"tier": "app"}),
        ("none", [OTHER], None, "2025-01-01T00:00:00Z", {}),
    ]:
        layout = oci.oci_layout(
            tmp / name, [(layers, None)], created=created, config={"Labels": labels}
        )
        [imported] = store.import_path(layout, ref)
        ids[name] = imported.image.id
    store.tag("app:1", parse_reference("reg.example/team/app:2"))
    ids["c-app"] = store.create_container("app:1", "c-app").id
    ids["c-old"] = store.create_container("old:1", "c-old").id
    return Env(tmp / "store", store, ids)


def run(env: Env, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--root", str(env.root), *args])
    out, err = capsys.readouterr()
    return code, out, err


def out_lines(env: Env, capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    code, out, err = run(env, capsys, *args)
    assert code == 0, err
    return out.splitlines()


def usage_error(env: Env, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code, out, err = run(env, capsys, *args)
    assert code == 2, (out, err)
    [line] = err.splitlines()
    assert line.startswith("unionfs: error: ")
    return line


# -- images ------------------------------------------------------------------------------


def test_images_quiet_lists_each_image_once(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    short = {k: v.removeprefix("sha256:")[:12] for k, v in env.ids.items()}
    assert out_lines(env, capsys, "images", "-q") == [short["none"], short["app"], short["old"]]
    whole = out_lines(env, capsys, "images", "-q", "--no-trunc")
    assert whole == [env.ids["none"], env.ids["app"], env.ids["old"]]


def test_images_template_and_table(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    lines = out_lines(env, capsys, "images", "--format", "{{.Repository}}:{{.Tag}} {{.Layers}}")
    assert lines == ["<none>:<none> 1", "reg.example/team/app:2 2", "app:1 2", "old:1 1"]
    table = out_lines(env, capsys, "images", "--format", "table {{.Repository}}\\t{{.Tag}}")
    assert table[0].split() == ["REPOSITORY", "TAG"]
    assert table[3].split() == ["app", "1"]
    assert re.match(r"^app {3,}1$", table[3])
    rows = json.loads("\n".join(out_lines(env, capsys, "images", "--format", "json")))
    assert {r["id"] for r in rows} == {env.ids["none"], env.ids["app"], env.ids["old"]}
    assert rows == json.loads("\n".join(out_lines(env, capsys, "images", "--json")))
    assert out_lines(env, capsys, "images", "-a", "-q") == out_lines(env, capsys, "images", "-q")


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["reference=app"], ["reg.example/team/app:2", "app:1"]),  # the last part of a name
        (["reference=app:1"], ["app:1"]),
        (["reference=reg.example/*"], ["reg.example/team/app:2"]),
        (["reference=o*", "reference=app:1"], ["app:1", "old:1"]),  # one key: any
        (["dangling=true"], ["<none>:<none>"]),
        (["dangling=false"], ["reg.example/team/app:2", "app:1", "old:1"]),
        (["before=app:1"], ["old:1"]),
        (["since=old:1"], ["<none>:<none>", "reg.example/team/app:2", "app:1"]),
        (["since=old:1", "dangling=false"], ["reg.example/team/app:2", "app:1"]),  # keys: all
        (["label=tier"], ["reg.example/team/app:2", "app:1", "old:1"]),
        (["label=tier=base"], ["old:1"]),
    ],
)
def test_images_filters(
    env: Env, capsys: pytest.CaptureFixture[str], filters: list[str], expected: list[str]
) -> None:
    args = [a for f in filters for a in ("--filter", f)]
    lines = out_lines(env, capsys, "images", *args, "--format", "{{.Repository}}:{{.Tag}}")
    assert lines == expected


def test_images_filter_by_id(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    prefix = env.ids["old"].removeprefix("sha256:")[:8]
    assert out_lines(env, capsys, "images", "-f", f"id={prefix}", "--format", "{{.Tag}}") == ["1"]


def test_listing_usage_errors(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    line = usage_error(env, capsys, "images", "--format", "{{.Nope}}")
    assert "images have no field .Nope (they have .ID, .Repository, .Tag" in line
    assert line.endswith("; see 'unionfs images --help'")
    assert "unknown key 'color'" in usage_error(env, capsys, "images", "-f", "color=red")
    assert "cannot be given together" in usage_error(env, capsys, "ps", "-q", "--json")
    line = usage_error(env, capsys, "ps", "-f", "status=running")
    assert "expected mounted or unmounted" in line
    line = usage_error(env, capsys, "history", "old:1", "--format", "{{.ID | json}}")
    assert line.endswith("see 'unionfs history --help'")


# -- ps, history, create --------------------------------------------------------------------


def test_ps_quiet_format_and_filters(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    app, old = env.ids["c-app"], env.ids["c-old"]
    assert out_lines(env, capsys, "ps", "-q") == [app[:12], old[:12]]
    assert out_lines(env, capsys, "ps", "-a", "-q", "--no-trunc") == [app, old]
    fmt = ("--format", "{{.Names}} {{.Image}} {{.Status}} {{.Mounts}}")
    assert out_lines(env, capsys, "ps", *fmt) == [
        "c-app app:1 unmounted -",
        "c-old old:1 unmounted -",
    ]
    by_name = ("--format", "{{.Names}}")
    assert out_lines(env, capsys, "ps", "-f", "ancestor=old:1", *by_name) == ["c-old"]
    assert out_lines(env, capsys, "ps", "-f", f"ancestor={env.ids['app']}", *by_name) == ["c-app"]
    assert out_lines(env, capsys, "ps", "-f", "name=app$", *by_name) == ["c-app"]
    assert out_lines(env, capsys, "ps", "-f", f"id={old[:6]}", *by_name) == ["c-old"]
    assert out_lines(env, capsys, "ps", "-f", "status=mounted", *by_name) == []
    assert out_lines(env, capsys, "ps", "-f", "status=unmounted", *by_name) == ["c-app", "c-old"]
    table = out_lines(env, capsys, "ps")
    assert table[0].split()[:4] == ["CONTAINER", "ID", "NAME", "IMAGE"]


def test_history_quiet_and_template(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    short = env.ids["app"].removeprefix("sha256:")[:12]
    assert out_lines(env, capsys, "history", "-q", "app:1") == [short, "<missing>"]
    lines = out_lines(env, capsys, "history", "app:1", "--format", "{{.CreatedBy}}|{{.Layer}}")
    assert [ln.split("|")[0] for ln in lines] == ["step 2", "step 1"]
    assert lines[1].startswith("step 1|1 ")
    full = out_lines(env, capsys, "history", "--no-trunc", "app:1", "--format", "{{.Layer}}")
    assert full[1] == f"1 {env.store.image(env.ids['app']).diff_ids[0]}"  # type: ignore[union-attr]


def test_create_prints_the_id(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    [line] = out_lines(env, capsys, "create", "old:1", "--name", "printed")
    try:
        assert HEX64.match(line)
        assert env.store.resolve_container("printed").id == line
    finally:
        env.store.remove_container("printed")


# -- inspect ----------------------------------------------------------------------------------


def test_inspect_a_container_and_an_image(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    objects = json.loads("\n".join(out_lines(env, capsys, "inspect", "c-app", "old:1")))
    container, image = objects
    assert container["Id"] == env.ids["c-app"]
    assert container["Image"] == env.ids["app"]
    assert container["ImageName"] == "app:1"
    assert container["State"] == {"Status": "unmounted", "Mounted": False}
    assert container["MountPoints"] == []
    data = container["GraphDriver"]["Data"]
    assert data["UpperDir"].endswith(f"{env.ids['c-app']}/upper")
    assert data["WorkDir"].endswith(f"{env.ids['c-app']}/work")
    assert len(data["LowerDir"].split(":")) == 2
    assert container["RootFS"]["Layers"] == list(env.store.resolve_image("app:1").diff_ids)
    assert image["Id"] == env.ids["old"]
    assert image["RepoTags"] == ["old:1"]


def test_inspect_container_first_then_type(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    # a container named as an image: inspect finds the container, --type image the image
    env.store.tag("old:1", parse_reference("both"))
    cid = env.store.create_container("app:1", "both").id
    try:
        assert out_lines(env, capsys, "inspect", "both", "--format", "{{.Name}}") == ["both"]
        ids = out_lines(env, capsys, "inspect", "--type", "image", "both", "-f", "{{.Id}}")
        assert ids == [env.ids["old"]]
        line = out_lines(env, capsys, "inspect", "-t", "container", "both", "-f", "{{.Id}}")
        assert line == [cid]
    finally:
        env.store.remove_container("both")
        env.store.remove_image("both")
    # an image template field a container lacks prints <no value>
    lines = out_lines(env, capsys, "inspect", "c-app", "app:1", "-f", "{{.RepoTags}}")
    assert lines == ["<no value>", '["app:1", "reg.example/team/app:2"]']


def test_inspect_of_nothing(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(env, capsys, "inspect", "c-old", "nothing")
    assert code == 1
    assert json.loads(out)[0]["Name"] == "c-old"  # what is found is printed
    assert err == "unionfs: error: no such object: nothing\n"
    code, out, err = run(env, capsys, "inspect", "--type", "image", "c-old")
    assert (code, out, err) == (1, "", "unionfs: error: no such image: c-old\n")
    code, out, err = run(env, capsys, "inspect", "--type", "container", "old:1")
    assert (code, out, err) == (1, "", "unionfs: error: no such container: old:1\n")


# -- errors as a process ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("images", "--jsn"), "unionfs: error: no such option '--jsn'; did you mean '--json'?; "
                              "see 'unionfs images --help'"),
        (("image", "ls", "-x"), "unionfs: error: no such option '-x'; "
                                "see 'unionfs image ls --help'"),
        (("frobnicate",), "unionfs: error: no such command 'frobnicate'; see 'unionfs --help'"),
        (("history",), "unionfs: error: missing argument 'IMAGE'; see 'unionfs history --help'"),
        (("inspect", "-t", "volume", "x"), "unionfs: error: invalid value for '-t' / '--type': "
                                           "'volume' is not one of 'all', 'container', 'image'; "
                                           "see 'unionfs inspect --help'"),
    ],
)  # fmt: skip
def test_usage_errors_are_one_line_in_one_voice(env: Env, args: tuple[str, ...], line: str) -> None:
    proc = run_unionfs(*args, root=env.root, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [line]


def test_usage_error_of_unionfs_itself_says_where_help_is(env: Env) -> None:
    proc = run_unionfs("mount", "/nonexistent-mountpoint", root=env.root, check=False)
    assert proc.returncode == 2
    [line] = proc.stderr.splitlines()
    assert line.startswith("unionfs: error: ")
    assert line.endswith("; see 'unionfs mount --help'")


# -- completion and the man page ------------------------------------------------------------------


def _complete(env: Env, words: list[str]) -> list[str]:
    """What bash completion offers for the last of `words` (click's protocol:
    ``TYPE,VALUE`` lines; ``file,...`` hands over to the shell's own)."""
    proc = subprocess.run(
        [sys.executable, "-m", "unionfs"],
        env={
            **os.environ,
            "_UNIONFS_COMPLETE": "bash_complete",
            "COMP_WORDS": " ".join(["unionfs", *words]),
            "COMP_CWORD": str(len(words)),
            "UNIONFS_ROOT": str(env.root),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [ln.removeprefix("plain,") for ln in proc.stdout.splitlines()]


def test_completion_of_names(env: Env) -> None:
    assert _complete(env, ["rm", "c-"]) == ["c-app", "c-old"]
    assert _complete(env, ["history", "ap"]) == ["app:1"]
    assert "reg.example/team/app:2" in _complete(env, ["inspect", ""])
    assert _complete(env, ["inspect", "c-o"]) == ["c-old"]
    assert _complete(env, ["ima"]) == ["image", "images"]
    # tree and explain take a name or a path: names, else the shell's paths
    assert _complete(env, ["tree", "c-a"]) == ["file,c-a", "c-app"]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts(env: Env, shell: str) -> None:
    text = run_unionfs("completion", shell, root=env.root).stdout
    assert "_UNIONFS_COMPLETE" in text
    assert f"{shell}_complete" in text
    if shell == "bash" and shutil.which("bash"):
        subprocess.run(["bash", "-n"], input=text, text=True, check=True)


def test_man_page_covers_every_command(tmp_path: Path) -> None:
    assert manpage.main([str(tmp_path)]) == 0
    text = (tmp_path / "unionfs.1").read_text()
    for name, cmd in cli.commands.items():
        assert f".SS unionfs {name}\n" in text
        for param in cmd.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert opt.replace("-", "\\-") in text, (name, opt)
    assert ".SS unionfs image ls\n" in text
    if shutil.which("man") is None:
        pytest.skip("man is not installed")
    proc = subprocess.run(
        ["man", "-l", str(tmp_path / "unionfs.1")],
        capture_output=True,
        text=True,
        env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "100", "LANG": "C.UTF-8"},
        check=True,
        timeout=60,
    )
    assert "unionfs images" in proc.stdout
    assert "--no-trunc" in proc.stdout
    assert "warning" not in proc.stderr.lower(), proc.stderr
