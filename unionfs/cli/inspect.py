"""``unionfs explain`` and ``unionfs tree``: why every file of a merged view is where it is.

Both read a live mount's layers (found through its published state, see
`unionfs.fuse.runstate`) or a store's image or container without mounting it; the
answers come from `unionfs.inspect.view`, which asks the mount's own merge code,
and name layers as `unionfs.inspect.stack` numbers them.
"""

from __future__ import annotations

import os
import stat
import sys

import click
from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from unionfs.cli import display
from unionfs.cli.common import complete_objects_or_paths, get_store, json_option
from unionfs.errors import UnionfsError, UsageError
from unionfs.fuse import runstate
from unionfs.inspect.answers import Blocked, Cause, CopyInfo, Explanation, TreeEntry, UpperInfo
from unionfs.inspect.stack import Stack, StackLayer, mount_stack, store_stack
from unionfs.inspect.view import StackView

#: Colours of the lower layers, by layer number; the upper layer is bold red.
PALETTE = (
    "cyan", "green", "yellow", "magenta", "blue",
    "bright_cyan", "bright_green", "bright_yellow", "bright_magenta", "bright_blue",
)  # fmt: skip
#: Output that is not a terminal is not wrapped (rich would wrap at 80 columns).
PLAIN_WIDTH = 200


def shown(text: str) -> str:
    """A name fit to print: bytes that are not UTF-8 as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# -- explain, as text -----------------------------------------------------------------------


def cause_text(cause: Cause, stack: Stack, path: str) -> str:
    """What hides a copy at `path`, in words (``hidden by the whiteout in layer 3``)."""
    who = stack.layer(cause.layer).short
    form = f" ({cause.form})" if cause.form else ""
    here = cause.path == path
    where = shown(cause.path)
    if cause.kind == "whiteout":
        of = "" if here else f" of {where}"
        return f"hidden by the whiteout{of} in {who}{form}"
    if cause.kind == "opaque":
        dir_name = "" if here else f" {where}"
        return f"cut off by the opaque directory{dir_name} in {who}{form}"
    if cause.kind == "nondir":
        if here:
            return f"cut off by the non-directory in {who}, which ends the merge of the directories"
        return f"cut off: {where} is not a directory in {who}"
    if cause.kind == "above":
        return f"shadowed by the copy in {who}"
    return "never shown: names starting with .wh. are reserved for OCI whiteouts"


def _mode_text(mode: int, type_bits: int) -> str:
    return f"mode {mode:04o} ({stat.filemode(type_bits | mode)})"


def _entry_text(exp: Explanation) -> str:
    e = exp.entry
    assert e is not None
    bits = {
        "file": stat.S_IFREG, "directory": stat.S_IFDIR, "symlink": stat.S_IFLNK,
        "char device": stat.S_IFCHR, "block device": stat.S_IFBLK, "fifo": stat.S_IFIFO,
        "socket": stat.S_IFSOCK,
    }.get(e.type, 0)  # fmt: skip
    parts = [e.type]
    if e.target is not None:
        parts[0] += f" -> {shown(e.target)}"
    if e.rdev is not None:
        parts[0] += f" {e.rdev[0]},{e.rdev[1]}"
    if e.type != "symlink":
        parts.append(_mode_text(e.mode, bits))
    parts.append(f"owner {e.uid}:{e.gid}")
    if e.type == "file":
        parts.append(f"{e.size} byte{'s' if e.size != 1 else ''}")
    return ", ".join(parts)


def _copy_text(c: CopyInfo) -> str:
    if c.type == "whiteout":
        return f"whiteout ({c.form})" if c.form else "whiteout"
    text = c.type
    if c.mode is not None and c.type != "symlink":
        text += f" {c.mode:04o}"
    if c.type == "file" and c.size is not None:
        text += f", {c.size} byte{'s' if c.size != 1 else ''}"
    if c.opaque:
        text += f", opaque ({c.opaque})"
    return text


def _fate_text(c: CopyInfo, exp: Explanation) -> str:
    def hides(kind: str) -> bool:
        return any(
            o.by is not None
            and o.by.kind == kind
            and o.by.layer == c.layer
            and o.by.path == exp.path
            for o in exp.copies
        )

    if c.status == "whiteout":
        return (
            "hides the copies below"
            if hides("whiteout")
            else "hides nothing: no layer below has it"
        )
    if c.status in ("visible", "merged"):
        text = "visible" if c.status == "visible" else "merged into the directory"
        if c.opaque and hides("opaque"):
            text += "; it cuts off the layers below"
        return text
    assert c.by is not None
    return cause_text(c.by, exp.stack, exp.path)


def _upper_text(u: UpperInfo, stack: Stack) -> str:
    upper = stack.layer(0).short
    if u.relation == "created":
        text = f"created in {upper}: no layer below shows this path"
        if u.origin != "none":
            text += (
                "; it records a copy-up origin (trusted.overlay.unionfs.origin): "
                "copied up elsewhere, then renamed or linked here"
            )
        return text
    assert u.layer is not None
    below = stack.layer(u.layer).label
    if u.relation == "replaced":
        return f"replaces the copy in {below}"
    text = f"copied up from {below}"
    if u.origin == "matches":
        text += "; its recorded origin (trusted.overlay.unionfs.origin) is that copy"
    elif u.origin == "other":
        text += "; it records an origin (trusted.overlay.unionfs.origin) that is another file"
    return text


def _blocked_text(b: Blocked, stack: Stack) -> str:
    where = shown(b.path)
    if b.status == "absent":
        return f"no layer has {where}"
    assert b.layer is not None
    who = stack.layer(b.layer).short
    if b.status == "nondir":
        return f"{where} is a {b.type} from {who}: nothing can be under it"
    if b.status == "deleted":
        form = f" ({b.form})" if b.form else ""
        return f"{where} is whited out in {who}{form} and no layer below has it"
    assert b.by is not None
    return f"{where} is not in the merged view: its {b.type} in {who} is " + cause_text(
        b.by, stack, b.path
    )


def explanation_text(exp: Explanation) -> str:
    """An explanation for people, a few lines."""
    s = exp.stack
    path = shown(exp.path)
    lines: list[str] = []
    if exp.status == "visible":
        assert exp.layer is not None
        lines.append(f"{path}: {_entry_text(exp)}")
        lines.append(f"  from {s.layer(exp.layer).label}")
        if exp.renamed is not None:
            content = ", ".join(s.layer(i).short for i in exp.renamed.layers)
            lines.append(f"  renamed from {shown(exp.renamed.source)}, content from {content}")
        merged = exp.merged_layers
        if len(merged) > 1:
            names = ", ".join(s.layer(i).short for i in merged)
            lines.append(f"  a merged directory: {names} (top first)")
        if exp.upper is not None:
            lines.append(f"  {_upper_text(exp.upper, s)}")
    else:
        lines.append(f"{path}: not in the merged view")
        if exp.reserved:
            lines.append("  names starting with .wh. are reserved for OCI whiteouts: never shown")
        elif exp.blocked is not None:
            lines.append(f"  {_blocked_text(exp.blocked, s)}")
        elif exp.reason is not None:
            lines.append(f"  {cause_text(exp.reason, s, exp.path)}")
        else:
            lines.append("  no layer has it")
    if exp.copies:
        lines.append(f"  layers that hold {path}, top first:")
        for c in exp.copies:
            lines.append(f"    {s.layer(c.layer).label}")
            lines.append(f"      {_copy_text(c)}: {_fate_text(c, exp)}")
    return "\n".join(lines)


# -- tree, with rich -------------------------------------------------------------------------


def layer_style(la: StackLayer) -> str:
    if la.key == "upper":
        return "bold red"
    return PALETTE[(int(la.key) - 1) % len(PALETTE)] if la.key.isdigit() else "white"


def _tag(stack: Stack, layers: tuple[int, ...]) -> Text:
    style = layer_style(stack.layer(layers[0]))
    return Text("[" + "+".join(stack.layer(i).key for i in layers) + "]", style=style)


def _tree_label(entry: TreeEntry, stack: Stack, *, full: bool = False) -> Text:
    name = shown(entry.path if full else entry.name)
    if entry.type == "directory" and not name.endswith("/"):
        name += "/"
    if entry.hidden_by is not None:
        label = Text(name, style="strike dim")
        label.append("  ")
        label.append_text(_tag(stack, (entry.layer,)))
        label.append(" " + cause_text(entry.hidden_by, stack, entry.path), style="dim")
        return label
    label = Text(name)
    if entry.target is not None:
        label.append(f" -> {shown(entry.target)}")
    label.append("  ")
    label.append_text(_tag(stack, entry.layers or (entry.layer,)))
    if entry.opaque is not None:
        label.append(f" opaque in {stack.layer(entry.opaque).short}", style="italic")
    if entry.renamed_from is not None:
        label.append(f" renamed from {shown(entry.renamed_from)}", style="italic")
    return label


def render_tree(root: TreeEntry, stack: Stack, console: Console) -> None:
    """The legend of layers, then the tree (colours only on a terminal)."""
    console.print(Text(f"{stack.what}: layers, top first"))
    for la in stack.layers:
        line = Text("  ")
        line.append(f"[{la.key}]", style=layer_style(la))
        line.append(f" {la.label}")
        console.print(line)
    console.print()
    tree = Tree(_tree_label(root, stack, full=True))
    pending: list[tuple[Tree, TreeEntry]] = [(tree, root)]
    while pending:
        branch, entry = pending.pop()
        for child in entry.children or ():
            pending.append((branch.add(_tree_label(child, stack)), child))
    console.print(tree)


def make_console() -> Console:
    """Terminal width and colours on a terminal; elsewhere plain text, unwrapped."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else PLAIN_WIDTH)


# -- commands ----------------------------------------------------------------------------------


def _on_mount(path: str) -> tuple[Stack, str]:
    found = runstate.find_mount_of(path)
    if found is None:
        raise UnionfsError(
            f"{path} is not on a live unionfs mount (for an image or a container: "
            "unionfs explain IMAGE|CONTAINER /PATH)"
        )
    state, rel = found
    return mount_stack(state), "/" + rel


@click.command("explain")
@click.argument(
    "args",
    nargs=-1,
    required=True,
    metavar="[IMAGE|CONTAINER] PATH",
    shell_complete=complete_objects_or_paths,
)
@json_option
@click.pass_context
def explain_cmd(ctx: click.Context, args: tuple[str, ...], as_json: bool) -> None:
    """Say which layer PATH comes from, what it shadows, and what hides it.

    PATH alone: a path on a live unionfs mount (a symlink there is explained,
    not followed). IMAGE|CONTAINER PATH: a store object, PATH absolute inside it.
    Exit 0 when the stack explains PATH (visible, hidden, or absent under an
    existing parent); 1 when no layer holds PATH's first missing parent, not
    even as a whiteout.
    """
    if len(args) == 1:
        stack, inner = _on_mount(args[0])
    elif len(args) == 2:
        stack, inner = store_stack(get_store(ctx), args[0]), args[1]
    else:
        raise UsageError("give PATH on a mount, or IMAGE|CONTAINER and a PATH inside it")
    with StackView(stack) as view:
        exp = view.explain(inner)
    if exp.unknown:
        assert exp.blocked is not None
        raise UnionfsError(f"{shown(exp.path)}: no layer has {shown(exp.blocked.path)}")
    if as_json:
        display.echo_json(exp.to_json())
        return
    click.echo(explanation_text(exp))


@click.command("tree")
@click.argument(
    "source", metavar="IMAGE|CONTAINER|MOUNTPOINT", shell_complete=complete_objects_or_paths
)
@click.argument("path", required=False, default="/")
@click.option(
    "--show-hidden", is_flag=True, help="Also show what whiteouts and opaque directories hide."
)
@click.option(
    "--layer",
    "layer_key",
    metavar="N",
    help="Only what layer N contributes, with its parent directories (N as the legend "
    "numbers layers, or 'upper').",
)
@click.option("--depth", type=click.IntRange(min=1), metavar="N", help="Show N levels below PATH.")
@json_option
@click.pass_context
def tree_cmd(
    ctx: click.Context,
    source: str,
    path: str,
    show_hidden: bool,
    layer_key: str | None,
    depth: int | None,
    as_json: bool,
) -> None:
    """Show the merged tree under PATH, each entry labelled by its layer.

    Layers are numbered from the bottom, as docker numbers an image's layers
    (1 = the bottom layer; of a plain mount, the last --lower); a writable
    layer is 'upper'. A mount point (or a path on a mount) is read through its
    layers.
    """
    found = runstate.find_mount_of(source) if os.path.lexists(source) else None
    if found is not None:
        state, rel = found
        stack, inner = mount_stack(state), f"/{rel}/{path}"
    else:
        try:
            stack = store_stack(get_store(ctx), source)
        except UnionfsError as e:
            if e.message.startswith("no such container or image"):
                raise UnionfsError(f"no such container, image or unionfs mount: {source}") from None
            raise
        inner = path
    only = stack.by_key(layer_key).index if layer_key is not None else None
    with StackView(stack) as view:
        root = view.tree(inner, depth=depth, show_hidden=show_hidden, layer=only)
    if as_json:
        display.echo_json(
            {
                "what": stack.what,
                "layers": [la.to_json() for la in stack.layers],
                "tree": root.to_json(stack),
            }
        )
        return
    render_tree(root, stack, make_console())


def register(cli: click.Group) -> None:
    """Add ``explain`` and ``tree`` to `cli`."""
    cli.add_command(explain_cmd)
    cli.add_command(tree_cmd)
