"""The merge rules, with no I/O: every whiteout/opaque combination over 1-4 layers."""

import itertools
from collections.abc import Iterator

import pytest

from unionfs.fs.merge import NOT_FOUND, Copy, Kind, Resolution, Stop, resolve

# One layer's copy of a name, in the table's shorthand.
SHAPES = {
    "-": Kind.ABSENT,
    "w": Kind.WHITEOUT,
    "d": Kind.DIR,
    "o": Kind.DIR,  # opaque directory
    "f": Kind.NONDIR,
}


def run(stack: str) -> tuple[Resolution, list[int]]:
    """Resolve a stack written top first, e.g. "dwf"; also return the layers asked
    about opacity."""
    copies = [Copy(i, SHAPES[c]) for i, c in enumerate(stack)]
    asked: list[int] = []

    def is_opaque(copy: Copy) -> bool:
        asked.append(copy.layer)
        return stack[copy.layer] == "o"

    return resolve(iter(copies), is_opaque), asked


# (stack top first, visible layers, stop reason, layer that stopped the search)
TABLE = [
    ("", (), None, None),
    ("-", (), None, None),
    ("f", (0,), None, None),
    ("d", (0,), None, None),
    ("w", (), Stop.WHITEOUT, 0),
    ("o", (0,), Stop.OPAQUE, 0),
    ("ff", (0,), None, None),  # upper file hides lower file
    ("fd", (0,), None, None),  # a file hides a directory
    ("df", (0,), Stop.NONDIR, 1),  # a file below a directory is ignored
    ("dd", (0, 1), None, None),  # directories merge
    ("od", (0,), Stop.OPAQUE, 0),  # opaque cuts off the lower directory
    ("wf", (), Stop.WHITEOUT, 0),
    ("wd", (), Stop.WHITEOUT, 0),
    ("-f", (1,), None, None),
    ("-w", (), Stop.WHITEOUT, 1),
    ("dw", (0,), Stop.WHITEOUT, 1),  # whiteout below a directory ends the merge
    ("dwd", (0,), Stop.WHITEOUT, 1),
    ("d-d", (0, 2), None, None),
    ("ddd", (0, 1, 2), None, None),
    ("dod", (0, 1), Stop.OPAQUE, 1),
    ("d-od", (0, 2), Stop.OPAQUE, 2),
    ("fwd", (0,), None, None),
    ("-wf", (), Stop.WHITEOUT, 1),
    ("--dw", (2,), Stop.WHITEOUT, 3),
    ("ddfd", (0, 1), Stop.NONDIR, 2),
    ("---f", (3,), None, None),
    ("----", (), None, None),
]


@pytest.mark.parametrize(("stack", "visible", "stop", "stopped_at"), TABLE)
def test_table(
    stack: str, visible: tuple[int, ...], stop: Stop | None, stopped_at: int | None
) -> None:
    res, _ = run(stack)
    assert tuple(c.layer for c in res.visible) == visible
    assert res.stop is stop
    assert (res.stopped_by.layer if res.stopped_by else None) == stopped_at
    assert res.exists == bool(visible)


def oracle(stack: str) -> tuple[int, ...]:
    """The visible layers, by the rules stated the other way round: the topmost
    non-absent copy decides; a directory then gathers the directories directly
    below it (absent layers skipped) unless it is opaque."""
    present = [(i, c) for i, c in enumerate(stack) if c != "-"]
    if not present or present[0][1] == "w":
        return ()
    first, shape = present[0]
    if shape == "f":
        return (first,)
    layers = [first]
    if shape == "o":
        return tuple(layers)
    for i, c in present[1:]:
        if c not in "do":
            break
        layers.append(i)
        if c == "o":
            break
    return tuple(layers)


ALL_STACKS = ["".join(p) for n in range(1, 5) for p in itertools.product("-wdof", repeat=n)]


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_every_combination(stack: str) -> None:
    res, asked = run(stack)
    assert tuple(c.layer for c in res.visible) == oracle(stack)
    # Opacity is asked about directories only, never about layers below the answer.
    assert all(stack[layer] in "do" for layer in asked)
    deepest = res.stopped_by.layer if res.stopped_by else len(stack)
    assert all(layer <= deepest for layer in asked)


def test_resolution_flags() -> None:
    merged, _ = run("dd")
    assert merged.is_dir
    assert merged.is_merged
    single, _ = run("d-")
    assert single.is_dir
    assert not single.is_merged
    file_, _ = run("f")
    assert not file_.is_dir
    assert NOT_FOUND.exists is False


def test_lazy_consumption_stops_at_the_answer() -> None:
    consumed: list[int] = []

    def gen() -> Iterator[Copy]:
        for i, kind in enumerate([Kind.NONDIR, Kind.DIR, Kind.DIR]):
            consumed.append(i)
            yield Copy(i, kind)

    resolve(gen(), lambda c: False)
    assert consumed == [0]
