"""Copy-on-write events and statistics: the counters and their JSON lines, what
the filesystem core records for each kind of change, the control socket, and
``unionfs events`` / ``unionfs stats`` against a real mount."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import select
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.support.cli import run_unionfs
from tests.support.kernel import WAIT_LIMIT, TmpMounts, wait_for
from tests.support.stack import Dir, File, Layer, Symlink, build_stack
from tests.support.tree import compare, snapshot
from unionfs.cli.events import (
    duration,
    format_event,
    format_stats,
    layer_of,
    named_layers,
    printable,
    uptime,
)
from unionfs.errors import UnionfsError
from unionfs.fs.events import (
    KINDS,
    REASONS,
    Event,
    EventLog,
    as_event,
    dumps,
    file_type,
    loads,
    setattr_reason,
    whiteout_form,
)
from unionfs.fs.inodes import ROOT_INO, Node
from unionfs.fs.layer import Layer as FsLayer
from unionfs.fs.upper import Upper
from unionfs.fs.vfs import UnionFS
from unionfs.fuse import control, runstate
from unionfs.fuse.control import ControlServer
from unionfs.inspect.stack import Stack, StackLayer, dir_stack

REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    """A clock the test moves by hand (EventLog takes any callable)."""

    def __init__(self, t: float = 1_700_000_000.25) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# --------------------------------------------------------------------------- the log


def test_events_carry_seq_time_and_their_fields() -> None:
    clock = FakeClock()
    log = EventLog(clock=clock)
    log.copy_up("/etc/motd", "write", layer=2, data=True, nbytes=1234, seconds=0.0004)
    clock.t += 1
    log.whiteout("/etc/old", "chardev")
    log.opaque("/var/cache")
    log.create("/tmp/x", "file")
    assert log.buffered() == [
        {
            "time": "2023-11-14T22:13:20.250+00:00",
            "seq": 1,
            "event": "copy-up",
            "path": "/etc/motd",
            "reason": "write",
            "layer": 2,
            "data": True,
            "bytes": 1234,
            "seconds": 0.0004,
        },
        {"time": "2023-11-14T22:13:21.250+00:00", "seq": 2, "event": "whiteout",
         "path": "/etc/old", "form": "char device 0/0"},
        {"time": "2023-11-14T22:13:21.250+00:00", "seq": 3, "event": "opaque",
         "path": "/var/cache"},
        {"time": "2023-11-14T22:13:21.250+00:00", "seq": 4, "event": "create",
         "path": "/tmp/x", "type": "file"},
    ]  # fmt: skip
    assert (log.copy_ups, log.copy_up_bytes, log.whiteouts, log.opaque_dirs, log.creates) == (
        1,
        1234,
        1,
        1,
        1,
    )


def test_each_kind_has_its_recorder() -> None:
    log = EventLog()
    log.copy_up("/a", "write", layer=1, data=True, nbytes=1, seconds=0.0)
    log.whiteout("/b", "oci")
    log.opaque("/c")
    log.create("/d", "directory")
    assert tuple(e["event"] for e in log.buffered()) == KINDS
    assert log.buffered()[1].get("form") == "OCI .wh.b entry"  # as `unionfs explain` says


def test_the_ring_keeps_the_newest_and_since_skips_the_seen() -> None:
    log = EventLog(capacity=3)
    for i in range(5):
        log.create(f"/f{i}", "file")
    assert [e.get("seq") for e in log.buffered()] == [3, 4, 5]
    assert [e.get("path") for e in log.buffered(since=4)] == ["/f4"]
    assert log.buffered(since=5) == []
    assert log.recorded == 5


def test_listeners_get_every_event_and_drops_are_counted() -> None:
    log = EventLog()
    got: list[Event] = []

    def take(event: Event) -> bool:
        got.append(event)
        return True

    stop = log.listen(take)
    full = log.listen(lambda e: False)  # a reader whose queue is full
    log.create("/a", "file")
    log.opaque("/b")
    assert [e.get("path") for e in got] == ["/a", "/b"]
    assert (log.listeners, log.dropped) == (2, 2)
    stop()
    full()
    log.create("/c", "file")
    assert len(got) == 2
    assert (log.listeners, log.dropped) == (0, 2)


@pytest.mark.allow_warnings(r"event listener failed")
def test_a_failing_listener_is_removed_and_the_change_still_recorded() -> None:
    log = EventLog()

    def broken(event: Event) -> bool:
        raise RuntimeError("boom")

    log.listen(broken)
    log.create("/a", "file")
    log.create("/b", "file")
    assert log.listeners == 0
    assert log.creates == 2


def test_stats_are_json_ready() -> None:
    clock = FakeClock()
    log = EventLog(clock=clock)
    for name in ["lookup", "lookup", "getattr", "lookup", "open", "getattr"]:
        log.count_request(name)
    log.count_lookup(2)
    log.count_lookup(2)
    log.count_lookup(0)
    log.copy_up("/d", "parent", layer=1, data=False, nbytes=0, seconds=0.001)
    log.copy_up("/d/f", "chmod", layer=2, data=True, nbytes=10, seconds=0.002)
    log.copy_up("/d/g", "chmod", layer=2, data=True, nbytes=5, seconds=0.003)
    log.listen(lambda e: True)
    clock.t += 90
    stats = log.stats(["/up", "/l1", "/l2"])
    assert json.loads(json.dumps(stats)) == stats
    assert list(stats["requests"].items()) == [("lookup", 3), ("getattr", 2), ("open", 1)]
    assert stats["copy_ups"] == 3
    assert stats["copy_ups_by_reason"] == {"chmod": 2, "parent": 1}
    assert stats["copy_up_bytes"] == 15
    assert stats["copy_up_seconds"] == pytest.approx(0.006)
    assert stats["lookups"] == [
        {"layer": 0, "path": "/up", "answered": 1},
        {"layer": 1, "path": "/l1", "answered": 0},
        {"layer": 2, "path": "/l2", "answered": 2},
    ]
    assert stats["uptime_seconds"] == 90
    assert stats["events"] == {
        "recorded": 3,
        "buffered": 3,
        "capacity": 1000,
        "listeners": 1,
        "dropped": 0,
    }


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"size": True}, "truncate"),
        ({"size": True, "mode": True, "times": True}, "truncate"),
        ({"owner": True}, "chown"),
        ({"owner": True, "mode": True}, "chown"),
        ({"mode": True}, "chmod"),
        ({"mode": True, "times": True}, "chmod"),
        ({"times": True}, "utimens"),
        ({}, "chmod"),
    ],
)
def test_setattr_reason(fields: dict[str, bool], reason: str) -> None:
    given = {"size": False, "owner": False, "mode": False, "times": False} | fields
    assert setattr_reason(**given) == reason


def test_file_types() -> None:
    """The words `unionfs explain` and `tree` use too."""
    assert file_type(stat.S_IFREG | 0o644) == "file"
    assert file_type(stat.S_IFDIR) == "directory"
    assert file_type(stat.S_IFLNK) == "symlink"
    assert file_type(stat.S_IFIFO) == "fifo"
    assert file_type(stat.S_IFSOCK) == "socket"
    assert file_type(stat.S_IFCHR) == "char device"
    assert file_type(stat.S_IFBLK) == "block device"


def test_whiteout_forms() -> None:
    assert whiteout_form("chardev", "old") == "char device 0/0"
    assert whiteout_form("oci", "old") == "OCI .wh.old entry"
    assert whiteout_form("trusted.overlay.whiteout", "old") == "xattr trusted.overlay.whiteout"


def test_json_lines_round_trip_names_that_are_not_utf8() -> None:
    log = EventLog()
    name = os.fsdecode(b"/caf\xe9")
    log.create(name, "file")
    line = dumps(log.buffered()[0])
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert line.isascii()
    event = as_event(loads(line))
    assert os.fsencode(event.get("path", "")) == b"/caf\xe9"
    assert printable(event.get("path", "")) == "/caf\\xe9"
    with pytest.raises(ValueError, match="JSON object"):
        loads(b"[1]")
    with pytest.raises(ValueError, match="not an event"):
        as_event({"op": "stats"})


# --------------------------------------------------------------------------- for a person

#: The daemon's stack of a container: index 0 its upper layer, 1 and 2 its
#: image's layers (2 = the bottom: ``layer 1``).
CONTAINER = Stack(
    (
        StackLayer(0, Path("/up"), "upper", "the upper layer", "the container's upper layer"),
        StackLayer(1, Path("/l2"), "2", "layer 2", "layer 2 of 2 (sha256:2222)"),
        StackLayer(2, Path("/l1"), "1", "layer 1", "layer 1 of 2 (sha256:1111)"),
    ),
    "container c (app:1)",
)


def at(offset: float, **fields: Any) -> Event:
    """An event `offset` seconds after 2024-05-01 22:14:03 UTC."""
    base = dt.datetime(2024, 5, 1, 22, 14, 3, tzinfo=dt.UTC).timestamp()
    return as_event({"time": dt.datetime.fromtimestamp(base + offset, dt.UTC).isoformat(),
                     **fields})  # fmt: skip


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (
            at(0, event="copy-up", path="/etc/motd", reason="write", layer=2, data=True,
               bytes=1234, seconds=0.0004),
            "22:14:03 copy-up   /etc/motd  (write, 1.23kB in 0.4 ms, from layer 1)",
        ),
        (
            at(1, event="copy-up", path="/etc", reason="parent", layer=1, data=False,
               bytes=0, seconds=0.25),
            "22:14:04 copy-up   /etc  (parent, 250 ms, from layer 2)",
        ),
        (at(0, event="whiteout", path="/a b", form="OCI .wh.a b entry"),
         "22:14:03 whiteout  /a b  (OCI .wh.a b entry)"),
        (at(0, event="opaque", path="/var/x"), "22:14:03 opaque    /var/x"),
        (at(0, event="create", path="/n", type="symlink"), "22:14:03 create    /n  (symlink)"),
        (at(0, event="dropped", count=12),
         "22:14:03 dropped   12 events (this reader fell behind)"),
    ],
)  # fmt: skip
def test_format_event(event: Event, line: str) -> None:
    assert format_event(event, CONTAINER, dt.UTC) == line


def test_layers_are_named_as_tree_names_them() -> None:
    """The daemon's indexes (top first) become `unionfs tree`'s keys, in JSON as in text."""
    log = EventLog()
    log.copy_up("/f", "write", layer=2, data=True, nbytes=1, seconds=0.0)
    log.count_lookup(0)
    log.count_lookup(1)
    [event] = log.buffered()
    assert named_layers(event, CONTAINER)["layer"] == "1"
    assert event["layer"] == 2  # the daemon's own is left alone
    stats = named_layers(log.stats(["/up", "/l2", "/l1"]), CONTAINER)
    assert stats["lookups"] == [
        {"layer": "upper", "path": "/up", "answered": 1},
        {"layer": "2", "path": "/l2", "answered": 1},
        {"layer": "1", "path": "/l1", "answered": 0},
    ]
    plain = dir_stack([Path("/top"), Path("/bottom")], Path("/up"))
    assert [layer_of(plain, i).key for i in range(3)] == ["upper", "2", "1"]
    assert layer_of(plain, 1).short == "lower 2"
    with pytest.raises(UnionfsError, match="a layer 3 that"):
        layer_of(plain, 3)


def test_durations_and_uptimes() -> None:
    assert [duration(s) for s in (0.00004, 0.0123, 0.5, 2.5)] == [
        "0.0 ms",
        "12 ms",
        "500 ms",
        "2.50 s",
    ]
    assert [uptime(s) for s in (5, 192, 18420, 183600)] == ["5s", "3m12s", "5h07m", "2d03h"]


def test_format_stats_names_every_counter() -> None:
    log = EventLog()
    log.count_request("lookup")
    log.count_request("lookup")
    log.count_request("open")
    log.count_lookup(1)
    log.copy_up("/f", "write", layer=1, data=True, nbytes=2000, seconds=0.001)
    log.whiteout("/g", "oci")
    stats = {"mountpoint": "/mnt", "pid": 42} | log.stats(["/up", "/low"])
    text = format_stats(stats, dir_stack([Path("/low")], Path("/up")))
    assert "Mount:       /mnt (pid 42, up 0s)" in text
    assert "Requests:    3" in text
    assert text.index("lookup") < text.index("open")
    assert "Copy-ups:    1 (2kB of data in 1.0 ms; write 1)" in text
    assert "Whiteouts:   1" in text
    assert [
        line.split() for line in text.splitlines() if line.strip().startswith(("upper ", "1 "))
    ] == [
        ["upper", "0", "/up"],
        ["1", "1", "/low"],
    ]


# --------------------------------------------------------------------------- the core


VFS_LOWER: list[Layer] = [
    [File("etc/motd", b"top motd\n"), Dir("var")],
    [
        File("etc/hosts", b"hosts\n"),
        *(File(f"files/{n}", b"x" * (100 + i), xattrs={"user.tag": b"t"})
          for i, n in enumerate(["a", "b"])),
        Dir("var/lib", mode=0o750),
        File("var/lib/db", b"db"),
        Symlink("link", "etc/motd"),
    ],
]  # fmt: skip


class Core:
    """A writable `UnionFS` over `VFS_LOWER`, with no mount."""

    def __init__(self, root: Path) -> None:
        self.lowers = build_stack(VFS_LOWER, root / "lower", "chardev")
        upper, work = root / "upper", root / "work"
        upper.mkdir()
        work.mkdir()
        layers = [FsLayer.open(i, p) for i, p in enumerate([upper, *self.lowers])]
        self.fs = UnionFS(layers, upper=Upper.open(layers[0], work, oci_whiteouts=False))

    def close(self) -> None:
        self.fs.close()
        assert self.fs.upper is not None
        self.fs.upper.close()
        for la in self.fs.layers:
            la.close()

    def walk(self, path: str) -> Node:
        node = self.fs.inodes.root
        for part in path.split("/"):
            node = self.fs.lookup(node.ino, part.encode())
        return node

    def events(self, kind: str | None = None) -> list[tuple[Any, ...]]:
        """The recorded events, short: (kind, path, the kind's own fields...)."""
        out: list[tuple[Any, ...]] = []
        for e in self.fs.events.buffered():
            if kind is not None and e["event"] != kind:
                continue
            if e["event"] == "copy-up":
                out.append((e["event"], e.get("path"), e.get("reason"), e.get("layer"),
                            e.get("data"), e.get("bytes")))  # fmt: skip
            elif e["event"] == "whiteout":
                out.append((e["event"], e.get("path"), e.get("form")))
            elif e["event"] == "create":
                out.append((e["event"], e.get("path"), e.get("type")))
            else:
                out.append((e["event"], e.get("path")))
        return out


@pytest.fixture
def core(tmp_path: Path) -> Iterator[Core]:
    c = Core(tmp_path)
    yield c
    c.close()


def _write(c: Core, n: Node) -> None:
    c.fs.release(c.fs.open(n.ino, os.O_WRONLY))


TRIGGERS: dict[str, Callable[[Core, Node], object]] = {
    "write": _write,
    "truncate": lambda c, n: c.fs.setattr(n.ino, None, size=3),
    "chmod": lambda c, n: c.fs.setattr(n.ino, None, mode=0o600),
    "chown": lambda c, n: c.fs.setattr(n.ino, None, uid=os.getuid(), gid=os.getgid()),
    "utimens": lambda c, n: c.fs.setattr(n.ino, None, atime_ns=10**18, mtime_ns=10**18),
    "setxattr": lambda c, n: c.fs.setxattr(n.ino, b"user.new", b"1"),
    "removexattr": lambda c, n: c.fs.removexattr(n.ino, b"user.tag"),
    "link": lambda c, n: c.fs.link(n.ino, c.walk("files").ino, b"linked"),
    "rename": lambda c, n: c.fs.rename(c.walk("files").ino, b"a", c.walk("files").ino, b"z", 0),
}


def test_the_triggers_cover_every_reason() -> None:
    assert {*TRIGGERS, "parent"} == set(REASONS)


REPEATABLE = {"write", "truncate", "chmod", "chown", "utimens", "setxattr"}


@pytest.mark.parametrize("reason", list(TRIGGERS))
def test_each_trigger_records_one_copy_up_and_its_parent(core: Core, reason: str) -> None:
    a = core.walk("files/a")
    TRIGGERS[reason](core, a)
    if reason in REPEATABLE:
        TRIGGERS[reason](core, a)  # already in the upper layer: no second copy-up
    assert core.events("copy-up") == [
        ("copy-up", "/files", "parent", 2, False, 0),
        ("copy-up", "/files/a", reason, 2, True, 100),
    ]
    assert core.fs.events.copy_ups_by_reason == {"parent": 1, reason: 1}
    assert core.fs.events.copy_up_bytes == 100


def test_link_and_rename_record_what_they_leave(core: Core) -> None:
    a, b = core.walk("files/a"), core.walk("files/b")
    files = core.walk("files")
    core.fs.link(a.ino, files.ino, b"a2")
    core.fs.rename(files.ino, b"b", files.ino, b"b2", 0)
    assert core.events() == [
        ("copy-up", "/files", "parent", 2, False, 0),
        ("copy-up", "/files/a", "link", 2, True, 100),
        ("create", "/files/a2", "hardlink"),
        ("copy-up", "/files/b", "rename", 2, True, 101),
        ("whiteout", "/files/b", "char device 0/0"),
    ]
    assert b.name == b"b2"


def test_metadata_only_copy_ups_of_dirs_and_symlinks(core: Core) -> None:
    core.fs.setattr(core.walk("var/lib").ino, None, mode=0o700)
    core.fs.setattr(core.walk("link").ino, None, uid=os.getuid())
    assert core.events() == [
        ("copy-up", "/var", "parent", 1, False, 0),  # layer 1 has the top copy of /var
        ("copy-up", "/var/lib", "chmod", 2, False, 0),
        ("copy-up", "/link", "chown", 2, False, 0),
    ]


def test_unlink_of_a_lower_file_records_one_whiteout(core: Core) -> None:
    core.fs.unlink(core.walk("etc").ino, b"hosts")
    assert core.events() == [
        ("copy-up", "/etc", "parent", 1, False, 0),
        ("whiteout", "/etc/hosts", "char device 0/0"),
    ]
    assert core.fs.events.whiteouts == 1


def test_removing_and_recreating_a_lower_dir_makes_it_opaque(core: Core) -> None:
    lib = core.walk("var/lib")
    core.fs.unlink(lib.ino, b"db")
    var = core.walk("var")
    core.fs.rmdir(var.ino, b"lib")
    core.fs.mkdir(var.ino, b"lib", 0o755, os.getuid(), os.getgid())
    assert core.events() == [
        ("copy-up", "/var", "parent", 1, False, 0),
        ("copy-up", "/var/lib", "parent", 2, False, 0),
        ("whiteout", "/var/lib/db", "char device 0/0"),
        ("whiteout", "/var/lib", "char device 0/0"),
        ("create", "/var/lib", "directory"),
        ("opaque", "/var/lib"),
    ]
    assert (core.fs.events.opaque_dirs, core.fs.events.creates) == (1, 1)


def test_creates_name_their_type(core: Core) -> None:
    root = ROOT_INO
    fh, _ = core.fs.create(root, b"new", 0o644, os.O_WRONLY, os.getuid(), os.getgid())
    core.fs.release(fh)
    core.fs.symlink(root, b"sym", b"new", os.getuid(), os.getgid())
    core.fs.mknod(root, b"fifo", stat.S_IFIFO | 0o600, 0, os.getuid(), os.getgid())
    assert core.events() == [
        ("create", "/new", "file"),
        ("create", "/sym", "symlink"),
        ("create", "/fifo", "fifo"),
    ]


def test_oci_whiteouts_are_named_so(tmp_path: Path) -> None:
    lower = build_stack([[File("f", b"x")]], tmp_path / "lower", "chardev")
    (tmp_path / "upper").mkdir()
    (tmp_path / "work").mkdir()
    layers = [FsLayer.open(i, p) for i, p in enumerate([tmp_path / "upper", *lower])]
    fs = UnionFS(layers, upper=Upper.open(layers[0], tmp_path / "work", oci_whiteouts=True))
    try:
        fs.unlink(ROOT_INO, b"f")
        assert [(e.get("event"), e.get("form")) for e in fs.events.buffered()] == [
            ("whiteout", "OCI .wh.f entry")
        ]
    finally:
        fs.close()
        assert fs.upper is not None
        fs.upper.close()
        for la in layers:
            la.close()


def test_lookups_are_counted_by_the_layer_that_answered(core: Core) -> None:
    core.walk("etc/motd")  # /etc: top copy in layer 1; motd: layer 1
    core.walk("etc/hosts")  # layer 2
    core.walk("link")  # layer 2
    with pytest.raises(FileNotFoundError):
        core.walk("etc/nothing")
    assert dict(core.fs.events.lookups) == {1: 4, 2: 2}  # "etc" was looked up 3 times
    core.fs.setattr(core.walk("etc/hosts").ino, None, mode=0o600)
    core.walk("etc/hosts")  # now both /etc and hosts have their top copy in the upper layer
    assert core.fs.events.lookups[0] == 2


# --------------------------------------------------------------------------- the socket


async def read_lines(stream: trio.abc.ReceiveStream, n: int | None = None) -> list[dict[str, Any]]:
    """`n` lines (or all until EOF) from `stream`, parsed."""
    data = b""
    while n is None or data.count(b"\n") < n:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        data += chunk
    return [loads(line) for line in data.splitlines()]


@pytest.fixture
def sock_path(tmp_path: Path) -> Iterator[str]:
    # A socket's path must fit in sun_path (108 bytes): pytest's tmp_path may not.
    short = Path(f"/tmp/uevt-{os.getpid()}-{tmp_path.name[-20:]}")
    short.mkdir(mode=0o700)
    yield str(short / "control.sock")
    for p in short.iterdir():
        p.unlink()
    short.rmdir()


def bind(path: str, log: EventLog) -> ControlServer:
    return ControlServer.bind(path, log, mountpoint="/mnt", layer_paths=["/up", "/low"])


def test_the_socket_is_private_even_with_umask_0(sock_path: str) -> None:
    old = os.umask(0)
    try:
        server = bind(sock_path, EventLog())
    finally:
        os.umask(old)
    try:
        st = os.stat(sock_path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.geteuid()
        assert [p.name for p in Path(sock_path).parent.iterdir()] == ["control.sock"]
    finally:
        server.close()


async def test_stats_and_buffered_events_over_the_socket(sock_path: str) -> None:
    log = EventLog()
    log.count_request("lookup")
    log.create("/a", "file")
    log.whiteout("/b", "chardev")
    server = bind(sock_path, log)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        async with await trio.open_unix_socket(sock_path) as s:
            await s.send_all(b'{"op": "stats"}\n')
            [stats] = await read_lines(s)
        assert stats["mountpoint"] == "/mnt"
        assert stats["pid"] == os.getpid()
        assert stats["requests"] == {"lookup": 1}
        assert stats["lookups"][1] == {"layer": 1, "path": "/low", "answered": 0}
        async with await trio.open_unix_socket(sock_path) as s:
            await s.send_all(b'{"op": "events", "follow": false, "since": 1}\n')
            assert [e["path"] for e in await read_lines(s)] == ["/b"]
        nursery.cancel_scope.cancel()
    server.close()


async def test_a_follower_gets_new_events_and_leaving_unsubscribes(sock_path: str) -> None:
    log = EventLog()
    log.create("/old", "file")
    server = bind(sock_path, log)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        s = await trio.open_unix_socket(sock_path)
        await s.send_all(b'{"op": "events", "follow": true}\n')
        assert [e["path"] for e in await read_lines(s, 1)] == ["/old"]
        await trio.testing.wait_all_tasks_blocked()
        assert log.listeners == 1
        log.create("/new", "directory")
        [event] = await read_lines(s, 1)
        assert (event["event"], event["path"], event["type"], event["seq"]) == (
            "create",
            "/new",
            "directory",
            2,
        )
        await s.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert log.listeners == 0
        nursery.cancel_scope.cancel()
    server.close()


async def test_a_slow_follower_loses_events_and_is_told(sock_path: str) -> None:
    log = EventLog()
    server = bind(sock_path, log)
    server.queue_size = 2
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        s = await trio.open_unix_socket(sock_path)
        await s.send_all(b'{"op": "events"}\n')
        await trio.testing.wait_all_tasks_blocked()
        for i in range(10):  # no checkpoint: the follower cannot take any meanwhile
            log.create(f"/f{i}", "file")
        lines: list[dict[str, Any]] = []
        while (
            sum(1 for e in lines if e["event"] == "create")
            + sum(e.get("count", 0) for e in lines if e["event"] == "dropped")
            < 10
        ):
            lines += await read_lines(s, 1)
        dropped = sum(e["count"] for e in lines if e["event"] == "dropped")
        assert dropped == log.dropped > 0
        paths = [e["path"] for e in lines if e["event"] == "create"]
        assert paths == sorted(paths)  # in order, the lost ones missing
        await s.aclose()
        nursery.cancel_scope.cancel()
    server.close()
    assert len(log.buffered()) == 10  # the ring kept them all


@pytest.mark.parametrize(
    ("request_line", "error"),
    [
        (b"nonsense\n", "not a JSON object"),
        (b'{"op": "reboot"}\n', "unknown op: 'reboot'"),
        (b'{"op": "events", "since": -1}\n', "since:"),
        (b'{"op": "events", "follow": "yes"}\n', "follow:"),
        (b'{"op": "stats"}', "expected one JSON line"),  # no newline, then EOF
    ],
)
async def test_bad_requests_get_an_error_line(
    sock_path: str, request_line: bytes, error: str
) -> None:
    server = bind(sock_path, EventLog())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        async with await trio.open_unix_socket(sock_path) as s:
            await s.send_all(request_line)
            await s.send_eof()
            [answer] = await read_lines(s)
        assert error in answer["error"]
        nursery.cancel_scope.cancel()
    server.close()


async def test_the_client_reads_answers_and_reports_errors(sock_path: str) -> None:
    log = EventLog()
    log.create("/a", "file")
    server = bind(sock_path, log)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)

        def ask(request: dict[str, Any]) -> list[dict[str, Any]]:
            return [obj for _, obj in control.query(sock_path, "/mnt", request)]

        answers = await trio.to_thread.run_sync(ask, {"op": "events", "follow": False})
        assert [a["path"] for a in answers] == ["/a"]
        with pytest.raises(UnionfsError, match=r"the daemon of /mnt: unknown op"):
            await trio.to_thread.run_sync(ask, {"op": "what"})
        nursery.cancel_scope.cancel()
    server.close()


def test_the_client_names_a_missing_socket(tmp_path: Path) -> None:
    with pytest.raises(UnionfsError, match=r"the daemon of /mnt has no control socket"):
        control.connect(str(tmp_path / "none.sock"), "/mnt")
    (tmp_path / "file").write_text("")
    with pytest.raises(UnionfsError, match=r"no control socket"):
        control.connect(str(tmp_path / "file"), "/mnt")


# --------------------------------------------------------------------------- mounted

MOUNT_LOWER: list[Layer] = [
    [File(f"top{i}", b"t") for i in range(7)] + [File("etc/top.conf", b"top\n")],
    [
        *(File(f"files/{r}", b"d" * (100 + 37 * i), xattrs={"user.tag": b"v"})
          for i, r in enumerate(["write", "truncate", "chmod", "chown", "utimens", "touch",
                                 "setxattr", "removexattr", "link", "rename"])),
        *(File(f"low{i}", b"l") for i in range(3)),
        File("etc/hosts", b"hosts\n"),
        File("tree/a", b"a"),
        File("tree/sub/b", b"b", xattrs={"user.note": b"x"}),
        Dir("tree/empty", xattrs={"user.d": b"1"}),
        Symlink("tree/link", "a"),
    ],
]  # fmt: skip

SIZE = {r: 100 + 37 * i for i, r in enumerate(["write", "truncate", "chmod", "chown", "utimens",
        "touch", "setxattr", "removexattr", "link", "rename"])}  # fmt: skip


def unionfs(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_unionfs(*args, check=check, timeout=WAIT_LIMIT)


def mount_events(mnt: Path) -> list[dict[str, Any]]:
    out = unionfs("events", "--no-follow", "--json", str(mnt)).stdout
    return [json.loads(line) for line in out.splitlines()]


def mount_stats(mnt: Path) -> dict[str, Any]:
    stats = json.loads(unionfs("stats", "--json", str(mnt)).stdout)
    assert isinstance(stats, dict)
    return stats


@pytest.fixture
def lowers(tmp_path: Path) -> list[Path]:
    return build_stack(MOUNT_LOWER, tmp_path / "lower", "chardev")


def writable(tmp_mounts: TmpMounts, lowers: list[Path], tmp_path: Path) -> Path:
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir(exist_ok=True)
    work.mkdir(exist_ok=True)
    return tmp_mounts.unionfs(lowers, args=("--upper", str(upper), "--work", str(work)))


@pytest.mark.mount
def test_every_copy_up_trigger_through_the_kernel(
    tmp_mounts: TmpMounts, lowers: list[Path], tmp_path: Path
) -> None:
    mnt = writable(tmp_mounts, lowers, tmp_path)
    f = mnt / "files"
    with open(f / "write", "ab") as out:
        out.write(b"more")
    os.truncate(f / "truncate", 1)
    os.chmod(f / "chmod", 0o600)
    os.chown(f / "chown", 1234, 1234)
    os.utime(f / "utimens", ns=(10**18, 10**18))
    subprocess.run(["touch", "-c", str(f / "touch")], check=True)
    os.setxattr(f / "setxattr", "user.new", b"1")
    os.removexattr(f / "removexattr", "user.tag")
    os.link(f / "link", f / "linked")
    os.rename(f / "rename", f / "renamed")
    copy_ups = [e for e in mount_events(mnt) if e["event"] == "copy-up"]
    assert [(e["path"], e["reason"], e["layer"], e["data"], e["bytes"]) for e in copy_ups] == [
        ("/files", "parent", "1", False, 0),  # lower 1: the bottom layer, as `tree` says
        *((f"/files/{r}", "utimens" if r == "touch" else r, "1", True, SIZE[r]) for r in SIZE),
    ]
    events = mount_events(mnt)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert [(e["event"], e["path"]) for e in events if e["event"] != "copy-up"] == [
        ("create", "/files/linked"),
        ("whiteout", "/files/rename"),
    ]
    stats = mount_stats(mnt)
    assert stats["copy_ups"] == 11
    assert stats["copy_up_bytes"] == sum(SIZE.values())
    assert stats["whiteouts"] == 1
    assert stats["creates"] == 1
    assert stats["requests"]["setattr"] >= 5


@pytest.mark.mount
def test_deleting_and_recreating_lower_entries(
    tmp_mounts: TmpMounts, lowers: list[Path], tmp_path: Path
) -> None:
    mnt = writable(tmp_mounts, lowers, tmp_path)
    os.unlink(mnt / "etc/hosts")
    assert [(e["event"], e["path"], e.get("form")) for e in mount_events(mnt)] == [
        ("copy-up", "/etc", None),
        ("whiteout", "/etc/hosts", "char device 0/0"),
    ]
    subprocess.run(["rm", "-r", str(mnt / "tree")], check=True)
    os.mkdir(mnt / "tree")
    later = mount_events(mnt)[2:]
    whiteouts = sorted(e["path"] for e in later if e["event"] == "whiteout")
    assert whiteouts == [
        "/tree",
        "/tree/a",
        "/tree/empty",
        "/tree/link",
        "/tree/sub",
        "/tree/sub/b",
    ]
    assert [e["path"] for e in later if e["event"] == "opaque"] == ["/tree"]
    assert [(e["path"], e["type"]) for e in later if e["event"] == "create"] == [
        ("/tree", "directory")
    ]
    assert mount_stats(mnt)["opaque_dirs"] == 1


@pytest.mark.mount
def test_lookups_per_layer(tmp_mounts: TmpMounts, lowers: list[Path], tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    for i in range(4):
        (upper / f"up{i}").write_text("u")
    mnt = writable(tmp_mounts, lowers, tmp_path)
    before = mount_stats(mnt)
    names = [f"up{i}" for i in range(4)] + [f"top{i}" for i in range(7)]
    names += [f"low{i}" for i in range(3)]
    for name in names:
        os.lstat(mnt / name)
    for name in names:  # answered by the kernel's cache: no more lookups
        os.lstat(mnt / name)
    after = mount_stats(mnt)
    answered = [
        a["answered"] - b["answered"]
        for a, b in zip(after["lookups"], before["lookups"], strict=True)
    ]
    assert answered == [4, 7, 3]
    assert [la["path"] for la in after["lookups"]] == [str(upper), *map(str, lowers)]
    assert [la["layer"] for la in after["lookups"]] == ["upper", "2", "1"]  # as `tree` says
    assert after["requests"]["lookup"] - before["requests"].get("lookup", 0) == len(names)


def read_line(proc: subprocess.Popen[bytes], what: str) -> bytes:
    """The next line of `proc`'s stdout, as soon as it comes; fails saying `what`
    was awaited if the process ends first, or (a safety net, not a measure of
    speed) if nothing comes within WAIT_LIMIT seconds."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + WAIT_LIMIT
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            pytest.fail(f"no line from {proc.args!r} within {WAIT_LIMIT:g}s: {what}")
        chunk = os.read(fd, 1)
        if not chunk:
            pytest.fail(f"{proc.args!r} ended (exit {proc.wait()}) before {what}: {data!r}")
        data += chunk
    return data


@pytest.mark.mount
def test_following_sees_what_happens_after_it_connected(
    tmp_mounts: TmpMounts, lowers: list[Path], tmp_path: Path
) -> None:
    mnt = writable(tmp_mounts, lowers, tmp_path)
    (mnt / "before").write_text("b")
    with subprocess.Popen(
        [sys.executable, "-m", "unionfs", "events", "--json", str(mnt)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    ) as proc:
        try:
            kept = json.loads(read_line(proc, "the kept event"))
            assert kept["path"] == "/before"
            wait_for(
                lambda: mount_stats(mnt)["events"]["listeners"] == 1,
                "the follower never connected",
            )
            (mnt / "after").write_text("a")
            event = json.loads(read_line(proc, "the event of a new file"))
            assert (event["event"], event["path"], event["type"]) == ("create", "/after", "file")
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                _, err = proc.communicate(timeout=WAIT_LIMIT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                pytest.fail(f"`unionfs events` ignored SIGINT for {WAIT_LIMIT:g}s")
    assert proc.returncode in (0, 130)
    assert b"Traceback" not in err
    assert err == b""


@pytest.mark.mount
def test_events_for_a_person(tmp_mounts: TmpMounts, lowers: list[Path], tmp_path: Path) -> None:
    mnt = writable(tmp_mounts, lowers, tmp_path)
    os.chmod(mnt / "etc/hosts", 0o600)
    lines = unionfs("events", "--no-follow", str(mnt)).stdout.splitlines()
    took = r"[\d.]+ m?s"  # a duration: not predictable
    assert len(lines) == 2
    assert re.fullmatch(
        rf"\d\d:\d\d:\d\d copy-up   /etc  \(parent, {took}, from lower 2\)", lines[0]
    )
    assert re.fullmatch(
        rf"\d\d:\d\d:\d\d copy-up   /etc/hosts  \(chmod, 6B in {took}, from lower 1\)", lines[1]
    )
    text = unionfs("stats", str(mnt)).stdout
    assert "Copy-ups:    2 " in text
    assert str(lowers[1]) in text


@pytest.mark.mount
def test_commands_name_what_is_not_a_unionfs_mount(tmp_path: Path) -> None:
    for command in ("events", "stats"):
        proc = unionfs(command, str(tmp_path), check=False)
        assert (proc.returncode, proc.stderr) == (
            1,
            f"unionfs: error: {tmp_path} is not a mount point\n",
        )
    proc = unionfs("stats", "/proc", check=False)
    assert proc.stderr == "unionfs: error: /proc is not a unionfs mount (it is proc)\n"
    proc = unionfs("stats", str(tmp_path / "nothing"), check=False)
    assert proc.stderr == f"unionfs: error: {tmp_path / 'nothing'}: no such directory\n"


def getfattr(root: Path) -> dict[str, list[str]]:
    """``getfattr -R -d -m -`` of `root`: each path's attributes, in any walk order."""
    out = subprocess.run(
        ["getfattr", "-R", "-h", "-d", "-m", "-", "."],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    blocks: dict[str, list[str]] = {}
    for block in out.strip().split("\n\n"):
        if block:
            head, *attrs = block.splitlines()
            blocks[head.removeprefix("# file: ")] = sorted(attrs)
    return blocks


@pytest.mark.mount
def test_the_control_socket_changes_nothing_readers_see(
    tmp_mounts: TmpMounts, lowers: list[Path], tmp_path: Path
) -> None:
    mnt = tmp_mounts.unionfs(lowers)
    ref = tmp_mounts.overlay(lowers)
    unionfs("stats", str(mnt))
    unionfs("events", "--no-follow", str(mnt))
    state = runstate.read_state(mnt)
    assert state is not None
    for inside in (mnt, *lowers):
        assert not Path(state.control).is_relative_to(inside)
    assert sorted(os.listdir(mnt)) == sorted(os.listdir(ref))
    assert getfattr(mnt) == getfattr(ref)
    assert getfattr(mnt)  # the layers do have xattrs to compare
    assert (
        compare(snapshot(ref), snapshot(mnt), ignore={"size@dir"}, names=("kernel", "ours")) == []
    )
