"""The textual app behind ``unionfs browse``: a full-screen browser of a stack's layers.

A textual app over `unionfs.inspect.layertree.LayerBrowser`: the layers, top
first (a container's upper layer on top), each with its size, digest and
history step; the merged tree as of the selected layer, collapsible, each
entry marked A (added), C (changed), D (removed: a whiteout, or a
non-directory over a directory) or O (cut off by an opaque directory) by the
layer that did it, either every change up to the selected layer or that
layer's changes alone; and, beside them, what ``unionfs explain`` says of the
entry under the cursor, as of the selected layer.

On a live mount of a container (a mount point, or a mounted container of the
store) it follows the daemon's event stream as ``unionfs events`` does: each
copy-up, whiteout, opaque directory and new entry goes to a log at the bottom,
and the upper layer's tree and size are read again. It only reads: nothing
in the mount, its layers or the daemon changes because it ran.

Keys are shown at the bottom of the screen; everything works with the
keyboard in 80x24 (over ssh), the mouse is optional.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, ClassVar

import click
from rich.markup import escape
from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.timer import Timer
from textual.widgets import Footer, Input, OptionList, RichLog, Static, Tree
from textual.widgets.option_list import Option
from textual.widgets.tree import TreeNode

from unionfs.cli.common import get_store
from unionfs.cli.display import human_size
from unionfs.cli.events import format_event
from unionfs.cli.inspect import explanation_text, layer_style, shown
from unionfs.errors import UnionfsError
from unionfs.fs.events import Event, as_event
from unionfs.fuse import control, runstate
from unionfs.inspect.layertree import (
    MARK_LETTERS,
    LayerBrowser,
    MarkedEntry,
    MarkedTree,
    path_filter,
    prune,
)
from unionfs.inspect.stack import Stack, StackLayer, mount_stack, store_stack
from unionfs.store.mounted import mounts_of_container

log = logging.getLogger(__name__)

MARK_STYLES = {"added": "green", "changed": "yellow", "removed": "red", "opaque": "magenta"}
#: How often a live mount's upper layer is read again, besides after each event
#: (a write to a file already in the upper layer, or an unlink of one, sends none).
POLL_SECONDS = 3.0
#: A filtered tree with at most this many entries opens every directory.
OPEN_ALL = 500


class Live:
    """A live mount to follow: its control socket, its mount point."""

    def __init__(self, control_path: str, mountpoint: str) -> None:
        self.control = control_path
        self.mountpoint = mountpoint


def _layer_prompt(la: StackLayer, size: int, key_width: int) -> Text:
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f"[{la.key}]", style=layer_style(la))
    text.append(" " * (key_width - len(la.key)) + f"{human_size(size):>7} ")
    if la.diff_id:
        text.append(la.diff_id.removeprefix("sha256:")[:12], style="dim")
        text.append(" ")
    if la.created_by:
        text.append(" ".join(la.created_by.split()))
    elif la.diff_id is None:
        text.append(la.label)
    return text


def entry_label(e: MarkedEntry, stack: Stack) -> Text:
    """One tree line: the mark, the name, the layer it is from (or hidden in)."""
    entry = e.entry
    label = Text(no_wrap=True, overflow="ellipsis")
    if e.mark is not None:
        label.append(MARK_LETTERS[e.mark], style=f"bold {MARK_STYLES[e.mark]}")
    else:
        label.append(" ")
    label.append(" ")
    name = shown(entry.name if entry.path != "/" else "/")
    if entry.type == "directory" and not name.endswith("/"):
        name += "/"
    label.append(name, style="strike dim" if entry.hidden_by is not None else "")
    if entry.target is not None:
        label.append(f" -> {shown(entry.target)}")
    if entry.path != "/":
        la = stack.layer(entry.layer)
        label.append(f"  [{la.key}]", style=layer_style(la))
    if entry.opaque is not None:
        label.append(f" opaque in {stack.layer(entry.opaque).short}", style="italic")
    return label


class BrowseApp(App[None]):
    """The browser; `stack` to show, `live` when it is a live container mount."""

    TITLE = "unionfs browse"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #main { width: 1fr; }
    #layers { height: auto; max-height: 35%; border: round $secondary;
              text-wrap: nowrap; text-overflow: ellipsis; }
    #tree { border: round $secondary; height: 1fr; }
    #explain-box { border: round $secondary; width: 40%; min-width: 28; }
    #events { height: 6; border: round $secondary; }
    #filter { dock: bottom; display: none; }
    #filter.shown { display: block; }
    OptionList:focus, Tree:focus, #explain-box:focus { border: round $accent; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit"),
        Binding("tab", "focus_next", "Pane", show=True),
        Binding("left_square_bracket", "layer(-1)", "Up", key_display="["),
        Binding("right_square_bracket", "layer(1)", "Down", key_display="]"),
        Binding("a", "toggle_only", "Only/All"),
        Binding("slash", "filter", "Filter", key_display="/"),
        Binding("e", "expand_all", "Open all"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self, stack: Stack, live: Live | None = None) -> None:
        super().__init__()
        self.stack = stack
        self.live = live
        self.browser = LayerBrowser(stack)
        self.index = 0
        self.only = False
        self.filter_text = ""
        self.shown_tree: MarkedTree | None = None
        self._refresh_timer: Timer | None = None
        self._upper_seen: object = None
        self._key_width = max(len(la.key) for la in stack.layers)

    def compose(self) -> ComposeResult:
        with Horizontal():
            with Vertical(id="main"):
                yield OptionList(id="layers")
                yield Tree[MarkedEntry]("/", id="tree")
            with VerticalScroll(id="explain-box"):
                yield Static(id="explain")
        if self.live is not None:
            yield RichLog(id="events", max_lines=500, wrap=False)
        yield Input(placeholder="filter by path (Enter: apply, Esc: clear)", id="filter")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.stack.what
        layers = self.query_one("#layers", OptionList)
        layers.border_title = "Layers, top first"
        self.query_one("#explain-box").border_title = "Explain"
        legend = "  ".join(
            f"[bold {MARK_STYLES[mark]}]{letter}[/] {mark}" for mark, letter in MARK_LETTERS.items()
        )
        self.query_one("#tree", Tree).border_subtitle = legend
        layers.add_options(self._layer_options())
        layers.highlighted = 0
        layers.border_subtitle = "Tab: next pane"
        self.show_layer(0)
        layers.focus()
        if self.live is not None:
            self.query_one("#events", RichLog).border_title = "Copy-ups and whiteouts"
            self._upper_seen = self.browser.changes(0)
            threading.Thread(target=self._follow, name="unionfs-events", daemon=True).start()
            self.set_interval(POLL_SECONDS, self._poll)

    def _layer_options(self) -> list[Option]:
        return [
            Option(
                _layer_prompt(la, self.browser.size(la.index), self._key_width),
                id=f"layer-{la.index}",
            )
            for la in self.stack.layers
        ]

    # -- the tree --------------------------------------------------------------------------

    def show_layer(self, index: int) -> None:
        """Read the tree as of layer `index` and show it, keeping what was open."""
        self.index = index
        tree = self.query_one("#tree", Tree)
        opened = {n.data.path for n in _nodes(tree.root) if n.is_expanded and n.data is not None}
        cursor = tree.cursor_node.data.path if tree.cursor_node and tree.cursor_node.data else None
        try:
            marked = self.browser.tree(index, only=self.only)
        except UnionfsError as e:
            self._set_explain(Text(f"unionfs: error: {e.message}", style="red"))
            return
        root = marked.root
        if self.filter_text:
            root = prune(root, path_filter(self.filter_text), context_marks=True) or MarkedEntry(
                root.entry, None, None, []
            )
        self.shown_tree = MarkedTree(marked.index, marked.stack, root)
        tree.reset(entry_label(root, marked.stack), root)
        self._populate(tree.root)
        tree.root.expand()
        open_all = bool(self.filter_text) and sum(1 for _ in root.walk()) <= OPEN_ALL
        for node in list(_nodes(tree.root)):
            if node.data is not None and (open_all or node.data.path in opened):
                self._populate(node)
                node.expand()
        target = next((n for n in _nodes(tree.root) if n.data and n.data.path == cursor), None)
        if target is not None:
            tree.move_cursor(target)
        self._status()
        self._explain_cursor()

    def _populate(self, node: TreeNode[MarkedEntry]) -> None:
        """Add `node`'s children, once (directories are read when opened)."""
        data = node.data
        if data is None or data.children is None or node.children:
            return
        assert self.shown_tree is not None
        stack = self.shown_tree.stack
        for child in data.children:
            label = entry_label(child, stack)
            if child.is_dir:
                node.add(label, data=child, allow_expand=bool(child.children))
            else:
                node.add_leaf(label, data=child)

    def _status(self) -> None:
        la = self.stack.layer(self.index)
        mode = f"only {la.short}'s changes" if self.only else f"as of {la.short}"
        if self.filter_text:
            mode += f", paths with {self.filter_text!r}"
        self.query_one("#tree", Tree).border_title = escape(f"Merged tree {mode}")

    def _set_explain(self, text: Text) -> None:
        self.query_one("#explain", Static).update(text)

    def _explain_cursor(self) -> None:
        tree = self.query_one("#tree", Tree)
        node = tree.cursor_node
        if node is None or node.data is None:
            self._set_explain(Text(""))
            return
        try:
            exp = self.browser.explain(self.index, node.data.path)
        except UnionfsError as e:
            self._set_explain(Text(f"unionfs: error: {e.message}", style="red"))
            return
        self._set_explain(Text(explanation_text(exp)))

    @on(Tree.NodeExpanded)
    def _expanded(self, event: Tree.NodeExpanded[MarkedEntry]) -> None:
        self._populate(event.node)

    @on(Tree.NodeHighlighted)
    def _highlighted(self, event: Tree.NodeHighlighted[MarkedEntry]) -> None:
        self._explain_cursor()

    @on(OptionList.OptionHighlighted, "#layers")
    def _layer_chosen(self, event: OptionList.OptionHighlighted) -> None:
        if event.option_index != self.index:
            self.show_layer(event.option_index)

    # -- actions -----------------------------------------------------------------------------

    def action_layer(self, step: int) -> None:
        index = min(max(self.index + step, 0), len(self.stack.layers) - 1)
        self.query_one("#layers", OptionList).highlighted = index
        if index != self.index:
            self.show_layer(index)

    def action_toggle_only(self) -> None:
        self.only = not self.only
        self.show_layer(self.index)

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.value = self.filter_text
        box.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.remove_class("shown")
        if self.filter_text:
            self.filter_text = ""
            self.show_layer(self.index)
        self.query_one("#tree", Tree).focus()

    @on(Input.Submitted, "#filter")
    def _filter_given(self, event: Input.Submitted) -> None:
        self.filter_text = event.value.strip()
        event.input.remove_class("shown")
        self.show_layer(self.index)
        self.query_one("#tree", Tree).focus()

    def action_expand_all(self) -> None:
        tree = self.query_one("#tree", Tree)
        pending = [tree.root]
        while pending:
            node = pending.pop()
            self._populate(node)
            node.expand()
            pending.extend(node.children)

    # -- a live mount --------------------------------------------------------------------------

    def _follow(self) -> None:
        """The daemon's events, as they come (in a thread of its own, which
        ends with the mount or with the app)."""
        assert self.live is not None
        request = {"op": "events", "follow": True, "since": 0}
        end = f"the mount on {self.live.mountpoint} ended"
        try:
            for _, obj in control.query(
                self.live.control, self.live.mountpoint, request, follow=True
            ):
                if not self._tell(self._event, as_event(obj)):
                    return
        except (UnionfsError, ValueError, OSError) as e:
            end = "unionfs: error: " + (e.message if isinstance(e, UnionfsError) else str(e))
        self._tell(self._log_line, end)

    def _tell(self, callback: Any, *args: Any) -> bool:
        """Run `callback` in the app's thread; False once the app has ended."""
        if not self.is_running:
            return False
        try:
            self.call_from_thread(callback, *args)
        except RuntimeError:  # the app ended meanwhile
            return False
        return True

    def _log_line(self, line: str) -> None:
        self.query_one("#events", RichLog).write(Text(line))

    def _event(self, event: Event) -> None:
        try:
            line = format_event(event, self.stack)
        except UnionfsError as e:
            line = f"unionfs: error: {e.message}"
        self._log_line(line)
        if self._refresh_timer is not None:
            self._refresh_timer.stop()
        self._refresh_timer = self.set_timer(0.2, self._poll)

    def _poll(self) -> None:
        """Read the upper layer again; show it again if it changed."""
        self.browser.forget(0)
        try:
            now: Any = self.browser.changes(0)
        except UnionfsError:
            return  # it changed while being read: the next poll reads it
        if now == self._upper_seen:
            return
        self._upper_seen = now
        self.query_one("#layers", OptionList).replace_option_prompt_at_index(
            0, _layer_prompt(self.stack.layer(0), self.browser.size(0), self._key_width)
        )
        if self.index == 0:
            self.show_layer(0)


def _nodes(root: TreeNode[MarkedEntry]) -> list[TreeNode[MarkedEntry]]:
    out: list[TreeNode[MarkedEntry]] = []
    pending = [root]
    while pending:
        node = pending.pop()
        out.append(node)
        pending.extend(node.children)
    return out


def resolve(ctx: click.Context, source: str) -> tuple[Stack, Live | None]:
    """The stack `source` names and, for a live container mount, what to follow."""
    found = runstate.find_mount_of(source) if os.path.lexists(source) else None
    if found is not None:
        state, rel = found
        if rel:
            raise UnionfsError(f"{source} is inside the mount on {state.mountpoint}: browse that")
        stack = mount_stack(state)
        return stack, Live(state.control, state.mountpoint) if stack.has_upper else None
    store = get_store(ctx)
    try:
        stack = store_stack(store, source)
    except UnionfsError as e:
        if e.message.startswith("no such container or image"):
            raise UnionfsError(f"no such container, image or unionfs mount: {source}") from None
        raise
    container = store.find_container(source)
    if container is not None:
        for mountpoint in mounts_of_container(container.id):
            live = runstate.read_state(mountpoint)
            if live is not None and live.upper is not None:
                return mount_stack(live), Live(live.control, live.mountpoint)
    return stack, None
