"""What a writable mount does to its upper layer, counted and kept as events.

An `EventLog` lives as long as the mount. The filesystem core records into it
on the request path, so recording is only in-memory bookkeeping: an integer
bumped, a small dict appended to a bounded ring (`collections.deque`), and one
call per listener (the control socket's queues, which never block). No I/O,
no formatting beyond the event's ISO-8601 time and a whiteout's form.

Counters: requests by type (counted by the FUSE adapter, failed ones included),
copy-ups (by reason, data bytes, seconds), whiteouts written, opaque dirs made,
entries created in the upper layer, and, per layer index, the successful
lookups whose visible (top) copy that layer held.

This module also holds the words every command uses for what it shows:
`file_type` names kinds of entry (``file``, ``directory``, ``char device``,
...) and `whiteout_form` the ways a whiteout is written (``char device 0/0``,
``OCI .wh.NAME entry``), for the events here as for `unionfs explain` and
`unionfs tree`.

Events, each one dict and one JSON line (``seq`` counts from 1; ``time`` is
UTC; ``path`` is mount-relative, absolute-style; names that are not UTF-8 keep
their bytes as surrogate escapes, which JSON carries as ``\\udcXX``)::

    {"time": "...", "seq": 7, "event": "copy-up", "path": "/etc/motd",
     "reason": "write", "layer": 2, "data": true, "bytes": 1234, "seconds": 0.0004}
    {"time": "...", "seq": 8, "event": "whiteout", "path": "/etc/old", "form": "char device 0/0"}
    {"time": "...", "seq": 9, "event": "opaque", "path": "/var/cache"}
    {"time": "...", "seq": 10, "event": "create", "path": "/tmp/x", "type": "file"}

Every copy-up is one event. ``reason`` is what asked for it (see `REASONS`);
directories copied up on the way to the entry that was asked for get their own
events, with reason ``parent``, before it. ``layer`` is the index of the layer
the copy came from in the mount's stack, top first (0 is the upper layer, so
lower layers start at 1 on a writable mount); the lookup counters are kept by
the same index. That index is the daemon's own: ``unionfs events`` and
``unionfs stats`` show every layer as `unionfs tree` and `unionfs explain`
name it (``upper``, or the layer's number: a store image's layers count from
the bottom), translating it in one place (`unionfs.cli.events.layer_of`).
``data`` is true for regular files, whose content is copied:
``bytes`` is then the file's size (its apparent size, however the copy was
made: reflink, extents or read/write). Directories, symlinks and special files
are metadata-only copies: ``data`` false, ``bytes`` 0. ``seconds`` is the time
from the source being opened to the copy being in place (for a file copied in a
worker thread, it includes the wait for that thread). A whiteout's ``form`` is
`whiteout_form`'s; a created entry's ``type`` is `file_type`'s, or
``hardlink`` for a new name of an existing file.

A stream of events may also carry ``{"time": ..., "event": "dropped",
"count": N}``: N events were not delivered to this reader because it fell
behind (they are still in the ring, and counted in the statistics).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import stat
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any, Required, TypedDict, cast

from unionfs.fs import whiteout as wh

log = logging.getLogger(__name__)

#: How many recent events a mount keeps for readers that connect later.
RING_SIZE = 1000

#: What asks for a copy-up: the change about to be made to a lower entry, or
#: ``parent`` for a directory copied up because something inside it changes.
REASONS = (
    "write",
    "truncate",
    "chmod",
    "chown",
    "utimens",
    "setxattr",
    "removexattr",
    "link",
    "rename",
    "parent",
)

#: The kinds of event.
KINDS = ("copy-up", "whiteout", "opaque", "create")

# The kind of an entry, by file type (see `file_type`).
_TYPES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "directory",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "char device",
    stat.S_IFBLK: "block device",
}


class Event(TypedDict, total=False):
    """One event (see the module docstring for each kind's fields)."""

    time: Required[str]
    seq: int
    event: Required[str]
    path: str
    reason: str
    layer: int
    data: bool
    bytes: int
    seconds: float
    form: str
    type: str
    count: int


#: Takes one event; returns False when it had to drop it (its reader is behind).
Listener = Callable[[Event], bool]


def file_type(mode: int) -> str:
    """The kind of entry `mode` says, in the words every command shows: ``file``,
    ``directory``, ``symlink``, ``fifo``, ``socket``, ``char device`` or
    ``block device`` (``unknown`` for anything else)."""
    return _TYPES.get(stat.S_IFMT(mode), "unknown")


def whiteout_form(fmt: str, name: str) -> str:
    """How a whiteout of `name` is written, in the words the events and
    `unionfs explain` both show. `fmt` is the filesystem's name of the format:
    ``chardev`` (overlayfs's character device: ``char device 0/0``), ``oci``
    (an entry next to the hidden name: ``OCI .wh.NAME entry``), or the
    attribute of an overlayfs xattr whiteout (``xattr trusted.overlay.whiteout``)."""
    if fmt == "chardev":
        return "char device 0/0"
    if fmt == "oci":
        return f"OCI {os.fsdecode(wh.OCI_PREFIX)}{name} entry"
    return f"xattr {fmt}"


def setattr_reason(*, size: bool, owner: bool, mode: bool, times: bool) -> str:
    """The copy-up reason of a setattr that changes these fields. A request
    that changes several is named by the first that applies of truncate,
    chown, chmod, utimens (``chmod`` when it names none)."""
    if size:
        return "truncate"
    if owner:
        return "chown"
    if mode:
        return "chmod"
    return "utimens" if times else "chmod"


def iso_time(t: float) -> str:
    """`t` (seconds since the epoch) as ISO-8601 UTC with milliseconds."""
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds")


def parse_time(text: str) -> dt.datetime:
    """The aware datetime of an event's ``time``."""
    return dt.datetime.fromisoformat(text)


def dumps(obj: Event | dict[str, Any]) -> bytes:
    """One JSON line (ASCII, so that surrogate-escaped names travel intact)."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def loads(line: bytes | str) -> dict[str, Any]:
    """A JSON line back; ValueError if it is not one JSON object."""
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


def as_event(obj: dict[str, Any]) -> Event:
    """A parsed line as an event; ValueError if it lacks ``time`` or ``event``."""
    if not isinstance(obj.get("time"), str) or not isinstance(obj.get("event"), str):
        raise ValueError("not an event: no time or no event kind")
    return cast(Event, obj)


def dropped_notice(count: int, t: float) -> Event:
    """The stream line that says `count` events were not delivered."""
    return {"time": iso_time(t), "event": "dropped", "count": count}


class EventLog:
    """Counters and recent events of one mount (see the module docstring)."""

    def __init__(self, capacity: int = RING_SIZE, clock: Callable[[], float] = time.time) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.clock = clock
        self.started = clock()
        self.recent: deque[Event] = deque(maxlen=capacity)
        self.requests: Counter[str] = Counter()
        self.lookups: Counter[int] = Counter()  # by the layer of the visible copy
        self.copy_ups = 0
        self.copy_ups_by_reason: Counter[str] = Counter()
        self.copy_up_bytes = 0
        self.copy_up_seconds = 0.0
        self.whiteouts = 0
        self.opaque_dirs = 0
        self.creates = 0
        self.recorded = 0  # also the seq of the last event
        self.dropped = 0  # events some listener could not take
        self._listeners: dict[int, Listener] = {}
        self._next_listener = 0

    # -- counting (the request path) ---------------------------------------------

    def count_request(self, name: str) -> None:
        self.requests[name] += 1

    def count_lookup(self, layer: int) -> None:
        """A lookup succeeded and `layer` holds the copy it shows."""
        self.lookups[layer] += 1

    def copy_up(
        self, path: str, reason: str, *, layer: int, data: bool, nbytes: int, seconds: float
    ) -> None:
        """One entry was copied up from `layer` (see the module docstring)."""
        self.copy_ups += 1
        self.copy_ups_by_reason[reason] += 1
        self.copy_up_bytes += nbytes
        self.copy_up_seconds += seconds
        event = self._new("copy-up", path)
        event["reason"] = reason
        event["layer"] = layer
        event["data"] = data
        event["bytes"] = nbytes
        event["seconds"] = round(seconds, 6)
        self._publish(event)

    def whiteout(self, path: str, fmt: str) -> None:
        """A whiteout was written in the format `fmt` (``chardev`` or ``oci``);
        the event names its form as `whiteout_form` does."""
        self.whiteouts += 1
        event = self._new("whiteout", path)
        event["form"] = whiteout_form(fmt, path.rpartition("/")[2])
        self._publish(event)

    def opaque(self, path: str) -> None:
        """An upper directory was made opaque."""
        self.opaque_dirs += 1
        self._publish(self._new("opaque", path))

    def create(self, path: str, kind: str) -> None:
        """An entry was created in the upper layer (`kind`: `file_type`, or
        ``hardlink`` for a new name of an existing file)."""
        self.creates += 1
        event = self._new("create", path)
        event["type"] = kind
        self._publish(event)

    def _new(self, kind: str, path: str) -> Event:
        self.recorded += 1
        return {"time": iso_time(self.clock()), "seq": self.recorded, "event": kind, "path": path}

    def _publish(self, event: Event) -> None:
        self.recent.append(event)
        for key, listener in list(self._listeners.items()):
            try:
                if not listener(event):
                    self.dropped += 1
            except Exception:  # a broken listener must not fail a filesystem request
                log.exception("event listener failed; removed")
                self._listeners.pop(key, None)

    # -- reading -----------------------------------------------------------------------

    def buffered(self, since: int = 0) -> list[Event]:
        """The kept events with a ``seq`` above `since`, oldest first."""
        return [e for e in self.recent if e.get("seq", 0) > since]

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call `listener` with every event from now on; returns the function
        that stops it. Listeners run on the request path: they must not block."""
        key = self._next_listener
        self._next_listener += 1
        self._listeners[key] = listener

        def stop() -> None:
            self._listeners.pop(key, None)

        return stop

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    def stats(self, layer_paths: Sequence[str]) -> dict[str, Any]:
        """Every counter as JSON-ready data; `layer_paths` names the layers by index
        (the lookups are listed by index, top first, as the daemon counts them)."""
        now = self.clock()
        return {
            "started": iso_time(self.started),
            "uptime_seconds": round(now - self.started, 3),
            "requests": dict(self.requests.most_common()),
            "copy_ups": self.copy_ups,
            "copy_ups_by_reason": dict(self.copy_ups_by_reason.most_common()),
            "copy_up_bytes": self.copy_up_bytes,
            "copy_up_seconds": round(self.copy_up_seconds, 6),
            "whiteouts": self.whiteouts,
            "opaque_dirs": self.opaque_dirs,
            "creates": self.creates,
            "lookups": [
                {"layer": i, "path": path, "answered": self.lookups.get(i, 0)}
                for i, path in enumerate(layer_paths)
            ],
            "events": {
                "recorded": self.recorded,
                "buffered": len(self.recent),
                "capacity": self.recent.maxlen,
                "listeners": self.listeners,
                "dropped": self.dropped,
            },
        }
