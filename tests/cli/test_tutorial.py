"""docs/tutorial.md runs: every command in its ``console`` blocks is run in
order, and what it prints must be what the tutorial shows.

In a block, a line starting with ``$ `` is a command (run with bash in a fresh
work dir, with ``unionfs`` on PATH and ``UNIONFS_ROOT`` set to a fresh store);
lines right after it that start with ``> `` continue it (as the shell's
prompt shows a here-document); the lines after that, up to the next command,
are its output. In the shown
output ``…`` stands for any text within a line (IDs, sizes and times change
from run to run), and a line that is just ``…`` stands for any number of lines.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.images import image_tools_problem
from tests.support.kernel import TmpMounts, mounts_under

pytestmark = [pytest.mark.mount, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TUTORIAL = REPO / "docs" / "tutorial.md"


@dataclass
class Step:
    command: str
    expected: list[str]
    line: int  # in the tutorial, for messages


def steps(text: str) -> list[Step]:
    out: list[Step] = []
    in_block = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            in_block = line.strip() == "```console" if not in_block else False
            continue
        if not in_block:
            continue
        if line.startswith("$ "):
            out.append(Step(line[2:], [], number))
        elif line.startswith("> ") and out and not out[-1].expected:
            out[-1].command += "\n" + line[2:]  # a command's continuation lines
        elif out:
            out[-1].expected.append(line.rstrip())
    return out


def _line_matches(pattern: str, line: str) -> bool:
    regex = "^" + ".*".join(re.escape(part) for part in pattern.split("…")) + "$"
    return re.match(regex, line) is not None


def output_matches(expected: list[str], actual: list[str]) -> bool:
    """`expected` lines (with … wildcards) against `actual`, all of it."""
    if not expected:
        return not actual
    head, rest = expected[0], expected[1:]
    if head == "…":
        return any(output_matches(rest, actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and _line_matches(head, actual[0]) and output_matches(rest, actual[1:])


def test_tutorial_parses() -> None:
    parsed = steps(TUTORIAL.read_text())
    assert len(parsed) > 20
    assert output_matches(["a … c", "…", "end"], ["a b c", "x", "y", "end"])
    assert not output_matches(["a … c"], ["a b d"])
    assert not output_matches(["x"], ["x", "more"])


@pytest.mark.skipif(image_tools_problem() is not None, reason=str(image_tools_problem()))
def test_tutorial_commands_print_what_it_shows(tmp_path: Path, tmp_mounts: TmpMounts) -> None:
    work = tmp_path / "tutorial"
    work.mkdir()
    venv_bin = REPO / ".venv" / "bin"
    env = {
        "PATH": f"{venv_bin}:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(tmp_path),
        "UNIONFS_ROOT": str(tmp_path / "store"),
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "COLUMNS": "200",
        "TMPDIR": str(tmp_path),
    }
    tmp_mounts.register(work)  # every mount below it is undone at the end
    try:
        for step in steps(TUTORIAL.read_text()):
            proc = subprocess.run(
                ["bash", "-c", step.command],
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=300,
                check=False,
            )
            actual = [line.rstrip() for line in proc.stdout.splitlines()]
            assert proc.returncode == 0, (
                f"docs/tutorial.md line {step.line}: {step.command!r} exited with "
                f"{proc.returncode}:\n{proc.stdout}"
            )
            assert output_matches(step.expected, actual), (
                f"docs/tutorial.md line {step.line}: {step.command!r} printed:\n"
                + "\n".join(actual)
                + "\n--- but the tutorial shows:\n"
                + "\n".join(step.expected)
            )
    finally:
        for info in sorted(mounts_under(work), key=lambda m: -len(m.mountpoint)):
            subprocess.run(["umount", "-l", info.mountpoint], check=False)
        shutil.rmtree(work / "podman", ignore_errors=True)
        os.sync()
