"""Running the ``unionfs`` command from tests."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_unionfs(
    *args: str,
    root: Path | None = None,
    check: bool = True,
    merge_stderr: bool = False,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """``python -m unionfs [--root ROOT] ARGS``, stdin closed. Output goes through
    files, not pipes: a mount's daemon keeps what it inherited open. With
    `merge_stderr`, stderr is in stdout (and stderr holds the same text).
    With `check`, a non-zero exit fails the test with what the command said."""
    cmd = [sys.executable, "-m", "unionfs", *(["--root", str(root)] if root else []), *args]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT if merge_stderr else err,
            stdin=subprocess.DEVNULL,
            cwd=REPO,
            timeout=timeout,
            check=False,
        )
        out.seek(0)
        err.seek(0)
        stdout = out.read()
        stderr = stdout if merge_stderr else err.read()
    if check and proc.returncode != 0:
        raise AssertionError(f"unionfs {' '.join(args)}: exit {proc.returncode}\n{stderr}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
