"""`unionfs browse`: driven by textual's pilot on an image, and in a real
terminal (tmux) on a live container that another process writes into."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from textual.widgets import OptionList, Static, Tree

from tests.inspect.test_analyze import L1, L2, L3, L4
from tests.store.test_store import APP, BASE, UPDATE
from tests.support import oci
from tests.support.cli import run_unionfs
from tests.support.kernel import TmpMounts, is_mountpoint
from unionfs.cli.browse_app import BrowseApp
from unionfs.image.refs import parse_reference
from unionfs.inspect.layertree import MarkedEntry
from unionfs.inspect.stack import Stack, image_stack
from unionfs.store.store import Store

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    layout = oci.oci_layout(tmp_path / "layout", [([L1, L2, L3, L4], "w")])
    store = Store(tmp_path / "store")
    store.import_path(layout, parse_reference("waste:1"))
    return image_stack(store, store.resolve_image("waste:1"))


def _lines(tree: Tree[MarkedEntry]) -> list[str]:
    """The labels of the tree's visible lines, as text."""
    out = []
    pending = [tree.root]
    while pending:
        node = pending.pop(0)
        label = node.label
        out.append(label if isinstance(label, str) else label.plain)
        if node.is_expanded:
            pending[:0] = node.children
    return out


def test_pilot_layers_marks_and_explain(stack: Stack) -> None:
    async def drive() -> None:
        app = BrowseApp(stack)
        async with app.run_test(size=(80, 24)) as pilot:
            tree: Tree[MarkedEntry] = app.query_one("#tree", Tree)
            layers = app.query_one("#layers", OptionList)
            assert layers.option_count == 4 and layers.has_focus
            assert str(tree.border_title) == "Merged tree as of layer 4"
            await pilot.press("down")  # layer 3
            await pilot.pause()
            assert app.index == 1 and str(tree.border_title) == "Merged tree as of layer 3"
            assert _lines(tree) == [
                "  /", "D cache/  [1]", "A conf.d/  [1]", "C etc/  [3]", "A keep  [1]",
                "A link -> keep  [1]", "A same  [1]", "A turns-dir  [1]",
            ]  # fmt: skip

            await pilot.press("tab")
            assert tree.has_focus
            while (
                tree.cursor_node is None
                or tree.cursor_node.data is None
                or (tree.cursor_node.data.path != "/etc")
            ):
                await pilot.press("down")
            await pilot.press("enter")  # open /etc
            await pilot.pause()
            assert "D app.conf  [2]" in _lines(tree)
            await pilot.press("down")
            await pilot.pause()
            explain = str(app.query_one("#explain", Static).render())
            assert explain.startswith("/etc/app.conf: not in the merged view\n")
            assert "hidden by the whiteout in layer 3 (char device 0/0)" in explain
            assert "file 0644, 800 bytes: hidden by the whiteout in layer 3" in explain

            await pilot.press("a")  # layer 3's changes alone; /etc stays open
            await pilot.pause()
            assert str(tree.border_title) == "Merged tree only layer 3's changes"
            assert _lines(tree) == ["  /", "D cache/  [1]", "C etc/  [3]", "D app.conf  [2]"]
            await pilot.press("a", "left_square_bracket")  # all changes, as of layer 4
            await pilot.pause()
            assert app.index == 0 and layers.highlighted == 0
            assert "O x  [1]" not in _lines(tree)  # /conf.d is closed
            await pilot.press("slash", *"conf.d/", "enter")  # a filter opens what it finds
            await pilot.pause()
            assert _lines(tree) == [
                "  /", "C conf.d/  [4] opaque in layer 4", "O x  [1]", "O y  [1]", "A z  [4]",
            ]  # fmt: skip
            assert "paths with 'conf.d/'" in str(tree.border_title)
            await pilot.press("escape")
            await pilot.pause()
            lines = _lines(tree)  # everything again; what the filter opened stays open
            assert "D cache/  [1]" in lines and "A z  [4]" in lines and len(lines) == 11

    asyncio.run(drive())


# -- in a real terminal, on a live container -------------------------------------------------


class Terminal:
    """A tmux session of 80x24 on a server of its own."""

    def __init__(self, command: str) -> None:
        self.server = f"unionfs-test-{uuid.uuid4().hex[:8]}"
        self._tmux("new-session", "-d", "-s", "t", "-x", "80", "-y", "24", command)

    def _tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.server, *args], capture_output=True, text=True, check=True,
            timeout=30,
        ).stdout  # fmt: skip

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "t")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def wait_for(self, ok: Callable[[str], bool], what: str, timeout: float = 60) -> str:
        """The screen once `ok` accepts it (a condition; `timeout` only ends a hang)."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if ok(screen):
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"the terminal never showed {what}; it shows:\n{screen}")
            time.sleep(0.2)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.server, "kill-server"], capture_output=True,
                       check=False, timeout=30)  # fmt: skip


@pytest.fixture
def terminal() -> Iterator[Callable[[str], Terminal]]:
    opened: list[Terminal] = []

    def start(command: str) -> Terminal:
        t = Terminal(command)
        opened.append(t)
        return t

    try:
        yield start
    finally:
        for t in opened:
            t.close()


@pytest.mark.mount
@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (scripts/setup --test)")
def test_live_container_in_a_terminal(
    tmp_path: Path, tmp_mounts: TmpMounts, terminal: Callable[[str], Terminal]
) -> None:
    root = tmp_path / "store"
    layout = oci.oci_layout(tmp_path / "layout", [([BASE, UPDATE, APP], None)])
    run_unionfs("image", "import", str(layout), "app:1", root=root)
    run_unionfs("create", "app:1", "--name", "live", root=root)
    mnt = tmp_mounts.mountpoint("live")
    run_unionfs("mount", "live", str(mnt), root=root)
    assert is_mountpoint(mnt)

    unionfs = REPO / ".venv" / "bin" / "unionfs"
    term = terminal(f"env UNIONFS_ROOT={root} {unionfs} browse live; sleep 600")
    screen = term.wait_for(lambda s: "Merged tree as of the upper layer" in s, "the browser")
    assert "[upper]" in screen and "[3]" in screen and "Copy-ups and whiteouts" in screen
    assert "A new-file" not in screen

    # another process writes into the container: a copy-up, a whiteout, a new file
    script = f"echo more >> {mnt}/etc/motd && rm {mnt}/bin/alias && echo hi > {mnt}/new-file"
    subprocess.run(["sh", "-c", script], check=True, timeout=60)
    screen = term.wait_for(
        lambda s: "A new-file  [upper]" in s and "whiteout  /bin/alias" in s, "the writes"
    )
    assert "copy-up   /etc/motd" in screen
    term.keys("a")  # the upper layer's changes alone
    screen = term.wait_for(lambda s: "only the upper layer's changes" in s, "the upper's changes")
    assert "C bin/  [upper]" in screen and "C etc/  [upper]" in screen
    assert "app/" not in screen
    term.keys("q")
    term.wait_for(lambda s: "Merged tree" not in s, "the browser ending")
    assert os.path.ismount(mnt)
