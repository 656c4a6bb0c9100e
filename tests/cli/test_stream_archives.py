"""``image import -`` reads an archive from standard input; ``image export IMAGE -``
writes one to standard output, and refuses a terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support import oci
from tests.support.cli import REPO, run_unionfs


def _unionfs(root: Path, *args: str, stdin: Any, stdout: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "unionfs", "--root", str(root), *args],
        stdin=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE,
        cwd=REPO,
        check=False,
        timeout=120,
    )


def test_import_from_stdin_and_export_to_stdout(tmp_path: Path) -> None:
    layers = [oci.Layer(oci.tar_bytes([oci.file("a", "hello")]))]
    archive = oci.tar_dir(oci.oci_layout(tmp_path / "lay", [(layers, "1")]), tmp_path / "in.tar")
    root = tmp_path / "store"
    with open(archive, "rb") as f:
        r = _unionfs(root, "image", "import", "-", "demo/x:1", stdin=f, stdout=subprocess.PIPE)
    assert r.returncode == 0, r.stderr
    assert b"Loaded image: demo/x:1" in r.stdout
    for fmt in ("oci-archive", "docker-archive"):
        out = tmp_path / f"out-{fmt}.tar"
        with open(out, "wb") as f:
            r = _unionfs(
                root,
                "image",
                "export",
                "--format",
                fmt,
                "demo/x:1",
                "-",
                stdin=subprocess.DEVNULL,
                stdout=f,
            )
        assert r.returncode == 0, r.stderr
        assert b"to standard output" in r.stderr
        # What went out comes back in as the same image.
        other = tmp_path / f"store-{fmt}"
        with open(out, "rb") as f:
            back = _unionfs(other, "image", "import", "-", stdin=f, stdout=subprocess.PIPE)
        assert back.returncode == 0, back.stderr
        assert (
            run_unionfs("image", "inspect", "demo/x:1", root=other).stdout.count(
                run_unionfs("image", "inspect", "demo/x:1", root=root).stdout.split('"Id": ')[1][
                    :73
                ]
            )
            == 1
        )
    assert not list((root / "tmp").glob("export-*")) and not list((root / "tmp").glob("stdin-*"))


def test_export_refuses_a_terminal_and_import_an_empty_stdin(tmp_path: Path) -> None:
    root = tmp_path / "store"
    layers = [oci.Layer(oci.tar_bytes([oci.file("a", "hello")]))]
    run_unionfs(
        "image",
        "import",
        str(oci.oci_layout(tmp_path / "lay", [(layers, "1")])),
        "demo/x:1",
        root=root,
    )
    primary, secondary = pty.openpty()
    try:
        r = _unionfs(
            root, "image", "export", "demo/x:1", "-", stdin=subprocess.DEVNULL, stdout=secondary
        )
    finally:
        os.close(secondary)
        os.close(primary)
    assert r.returncode == 1
    assert r.stderr.decode().strip() == (
        "unionfs: error: refusing to write an image archive to a terminal: redirect standard output"
    )
    r = _unionfs(root, "image", "import", "-", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert r.returncode == 1
    assert r.stderr.decode().strip() == "unionfs: error: image import -: standard input is empty"
