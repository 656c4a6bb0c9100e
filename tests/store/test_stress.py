"""A short run of scripts/stress: store commands, writes in mounted containers and
kill -9 at once, then the store's invariants and a comparison with a clean import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import REPO
from tests.support.kernel import mountinfo

pytestmark = [
    pytest.mark.mount,
    pytest.mark.skipif(os.geteuid() != 0, reason="the soak mounts containers: needs root"),
]


def test_short_soak_keeps_the_store_whole(tmp_path: Path) -> None:
    work = tmp_path / "soak"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts/stress"), "--seconds", "20", "--seed", "7",
         "--keep", str(work)],
        cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "the store held" in proc.stdout
    assert "import ok" in proc.stdout  # the load did run
    # Nothing the soak mounted is left (mounts of other processes do not count).
    left = [m.mountpoint for m in mountinfo() if Path(m.mountpoint).is_relative_to(work)]
    assert not left, left
