"""Store commands at the same time: none corrupts the store, whatever the interleaving.

The store lock orders every change; what an import or a commit puts in the
store before its image record exists is kept by its lease
(`unionfs.store.leases`). The first test stops an import exactly in that
window and removes an image meanwhile; the second runs many commands at once on
a randomized schedule (seeded: ``UNIONFS_TEST_SEED`` picks another,
``UNIONFS_TEST_STEPS`` a longer one) and checks
the store's invariants after every command that ends
(`tests.support.store_invariants`).
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import IO

from tests.support import oci
from tests.support.cli import REPO, run_unionfs
from tests.support.kernel import wait_for
from tests.support.oci import Layer, directory, file
from tests.support.store_invariants import problems, quiescent_problems
from unionfs.image.refs import parse_reference
from unionfs.store.layers import QuietReport
from unionfs.store.records import LayerInfo
from unionfs.store.store import Store

SEED = int(os.environ.get("UNIONFS_TEST_SEED", "1307"))
STEPS = int(os.environ.get("UNIONFS_TEST_STEPS", "12"))


def _layer(tag: str, files: int = 40, size: int = 2048) -> Layer:
    rnd = random.Random(tag)  # noqa: S311 (replayable test data, not secrets)
    return Layer(
        oci.tar_bytes(
            [directory(tag)] + [file(f"{tag}/f{i}", rnd.randbytes(size)) for i in range(files)]
        )
    )


class _RemoveOtherWhenLayerLands(QuietReport):
    """Runs ``unionfs rmi OTHER`` (another process) right after the import put a layer
    in place, before its image record exists."""

    def __init__(self, root: Path, other: str) -> None:
        self.root, self.other, self.output = root, other, ""

    def layer_done(self, diff_id: str, *, reused: bool, info: LayerInfo) -> None:
        if not self.output:
            self.output = run_unionfs("rmi", self.other, root=self.root).stdout


def test_rmi_while_an_import_is_between_layer_and_record(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    shared = _layer("shared")
    other = oci.oci_layout(tmp_path / "other", [([shared], None)])
    two = oci.oci_layout(tmp_path / "two", [([shared, _layer("own")], None)])
    run_unionfs("image", "import", str(other), "other:1", root=store.root)
    # "two" reuses the layer that only "other" uses; "other" goes while "two" is at work,
    # once after the shared layer was found in place, once after a new one was unpacked
    report = _RemoveOtherWhenLayerLands(store.root, "other:1")
    (imported,) = store.import_path(two, parse_reference("two:1"), report=report)
    assert "Deleted: " in report.output
    assert problems(store.root) == []
    assert [i.id for i in store.images()] == [imported.image.id]
    out = run_unionfs("images", root=store.root).stdout
    assert "two" in out
    assert quiescent_problems(store.root) == []
    # and a fresh layer, unpacked (not found) by the import, in the same window
    store2 = Store(tmp_path / "store2")
    run_unionfs("image", "import", str(other), "other:1", root=store2.root)
    fresh = oci.oci_layout(tmp_path / "fresh", [([_layer("new"), _layer("top")], None)])
    report = _RemoveOtherWhenLayerLands(store2.root, "other:1")
    store2.import_path(fresh, parse_reference("fresh:1"), report=report)
    assert "Deleted: " in report.output
    assert problems(store2.root) == []
    assert quiescent_problems(store2.root) == []


def test_many_commands_at_once_keep_the_store_whole(tmp_path: Path) -> None:
    """Steps of two to five commands started together (so that one's garbage
    collection meets another's import or commit half-way), the invariants
    checked after each step; at the end, nothing left over."""
    rnd = random.Random(SEED)  # noqa: S311 (a replayable schedule, not secrets)
    root = tmp_path / "store"
    # five images: a bottom layer shared with others, then two of their own, the top one
    # larger, so that an import spends a while between its first layer and its record
    pool = [_layer(f"l{i}") for i in range(3)]
    layouts = []
    for k in range(5):
        layers = [rnd.choice(pool), _layer(f"mid{k}"), _layer(f"top{k}", 1000, 512)]
        layouts.append(oci.oci_layout(tmp_path / f"img{k}", [(layers, None)]))
    names = [f"img{k}:1" for k in range(5)]

    def command() -> list[str]:
        kind = rnd.choices(["import", "rmi", "tag", "create", "rm", "commit"], [6, 6, 1, 2, 2, 2])
        box = f"c{rnd.randrange(3)}"
        match kind[0]:
            case "import":
                k = rnd.randrange(5)
                return ["image", "import", str(layouts[k]), names[k]]
            case "rmi":
                return ["rmi", rnd.choice([*names, "extra:1", "saved:1"])]
            case "tag":
                return ["tag", rnd.choice(names), "extra:1"]
            case "create":
                return ["create", "--name", box, rnd.choice(names)]
            case "rm":
                return ["rm", box]
        return ["commit", box, "saved:1"]

    outcomes: dict[str, int] = {}
    for step in range(STEPS):
        batch = [command() for _ in range(rnd.randint(2, 5))]
        # some commands start once an import of the step is unpacking a layer
        late = [args[0] != "image" and rnd.random() < 0.6 for args in batch]
        errors = [tempfile.TemporaryFile() for _ in batch]  # noqa: SIM115 (closed below)
        procs: list[subprocess.Popen[bytes] | None] = [None] * len(batch)

        for i in range(len(batch)):
            if not late[i]:
                procs[i] = _start(root, batch[i], errors[i])
        imports = [p for p, args in zip(procs, batch, strict=True) if args[0] == "image"]
        if imports and any(late):
            wait_for(partial(_unpacking_or_ended, root, imports), "an import to unpack or end")
        for i in range(len(batch)):
            if late[i]:
                procs[i] = _start(root, batch[i], errors[i])
        failures = []
        for args, proc, err in zip(batch, procs, errors, strict=True):
            assert proc is not None
            rc = proc.wait()
            err.seek(0)
            stderr = err.read().decode(errors="replace")
            err.close()
            outcome = f"{args[0] if args[0] != 'image' else 'import'} {'ok' if rc == 0 else 'no'}"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            lines = stderr.strip().splitlines()
            # refused (no such image, in use, ...) is fine; a traceback is not
            if rc != 0 and not (
                rc == 1 and len(lines) == 1 and lines[0].startswith("unionfs: error: ")
            ):
                failures.append(f"{' '.join(args)}: exit {rc}\n{stderr}")
            if rc == 0 and args[0] == "create":
                _write_into_upper(root, args[2], step)
        failures += problems(root)
        assert not failures, f"step {step} (seed {SEED}): {batch}\n" + "\n".join(failures)
    assert quiescent_problems(root) == [], f"seed {SEED}"
    # the schedule did what it is for: imports and removals both succeeded
    assert outcomes.get("import ok", 0) > 5 and outcomes.get("rmi ok", 0) > 3, outcomes


def _start(root: Path, args: list[str], err: IO[bytes]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "unionfs", "--root", str(root), *args],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
    )  # fmt: skip


def _unpacking_or_ended(root: Path, imports: list[subprocess.Popen[bytes] | None]) -> bool:
    try:
        staged = [n for n in os.listdir(root / "tmp") if n.startswith("layer-")]
    except FileNotFoundError:
        staged = []
    return bool(staged) or any(p is not None and p.poll() is not None for p in imports)


def _write_into_upper(root: Path, name: str, n: int) -> None:
    """Give a new container something to commit (as a process in it would)."""
    store = Store(root)
    c = store.find_container(name)
    if c is None:
        return
    with contextlib.suppress(FileNotFoundError):  # removed meanwhile
        (store.container_upper(c) / f"file{n}").write_text(f"written {n}\n")
