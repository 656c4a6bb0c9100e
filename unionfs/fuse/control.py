"""The daemon's control socket: statistics and a live stream of events.

Each mount's daemon listens on a unix stream socket, the ``control`` path of
its state file (`runstate`), next to that file: outside the mount and outside
every layer, so nothing a reader of the filesystem sees changes. The socket is
made under a temporary name, set to mode 0600 and renamed into place (the
daemon runs with umask 0); only its owner can connect, and the directory that
holds it is private too.

The protocol is JSON lines (`events.dumps`). The client sends one request
line; the daemon answers with lines and closes the connection when it is done:

* ``{"op": "stats"}``: one object, `events.EventLog.stats` plus the mount
  point and the daemon's pid.
* ``{"op": "events", "follow": true, "since": 0}``: the kept events with a
  ``seq`` above ``since``, then (with ``follow``) every new event as it
  happens, until the client closes its end or the mount ends.
* anything else: one ``{"error": "..."}`` line.

The server runs in the daemon's trio loop, next to the FUSE request handlers,
and never slows them down: an event reaches a follower through a bounded
queue filled without blocking (`trio.MemoryReceiveChannel`); when a follower
reads too slowly its queue fills, further events are dropped for it and
counted, and the stream tells it how many with an ``{"event": "dropped"}``
line. Encoding and sending happen in the follower's own task.

`query` is the client side, for the ``events`` and ``stats`` commands.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import time
from collections.abc import Iterator, Sequence
from typing import Any

import trio

from unionfs.errors import UnionfsError
from unionfs.fs.events import Event, EventLog, dropped_notice, dumps, loads

log = logging.getLogger(__name__)

#: Events waiting for one follower before further ones are dropped for it.
QUEUE_SIZE = 4096
#: Longest request line the daemon reads.
MAX_REQUEST = 64 * 1024
#: How long the daemon waits for a client's request line.
REQUEST_TIMEOUT = 10.0
#: How long a client waits for the daemon's answer (not for followed events).
ANSWER_TIMEOUT = 10.0
_BATCH = 256  # events sent in one write


class _Follower:
    """One client's queue of live events, filled from the request path."""

    def __init__(self, send: trio.MemorySendChannel[Event]) -> None:
        self.send = send
        self.dropped = 0

    def deliver(self, event: Event) -> bool:
        try:
            self.send.send_nowait(event)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.dropped += 1
            return False
        return True


class ControlServer:
    """The listening control socket of one mount."""

    def __init__(
        self,
        sock: socket.socket,
        events: EventLog,
        *,
        mountpoint: str,
        layer_paths: Sequence[str],
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        """`sock` is bound and listening; `layer_paths` name the layers by index."""
        self._sock = sock
        self.events = events
        self.mountpoint = mountpoint
        self.layer_paths = list(layer_paths)
        self.queue_size = queue_size

    @classmethod
    def bind(
        cls, path: str, events: EventLog, *, mountpoint: str, layer_paths: Sequence[str]
    ) -> ControlServer:
        """Create the socket at `path` (mode 0600, replacing a stale one)."""
        directory = os.path.dirname(path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        temp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(temp)
            try:
                os.chmod(temp, 0o600)
                os.rename(temp, path)
            except BaseException:
                os.unlink(temp)
                raise
            sock.listen(16)
        except BaseException:
            sock.close()
            raise
        return cls(sock, events, mountpoint=mountpoint, layer_paths=layer_paths)

    def close(self) -> None:
        """Stop listening (the socket file is removed with the mount's state)."""
        self._sock.close()

    async def serve(self) -> None:
        """Answer clients until cancelled. A failure here is logged and ends
        only the control socket, never the mount."""
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self._sock))
        try:
            await trio.serve_listeners(self._handle, [listener])
        except Exception:
            log.exception("the control socket failed; events and stats are unavailable")

    # -- one connection ----------------------------------------------------------------

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                request = await _read_request(stream)
                if request is not None:
                    await self._answer(stream, request)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("a control client left")
        except Exception:
            log.exception("control request failed")

    async def _answer(self, stream: trio.SocketStream, request: dict[str, Any]) -> None:
        op = request.get("op")
        if op == "stats":
            stats = {"mountpoint": self.mountpoint, "pid": os.getpid()}
            stats |= self.events.stats(self.layer_paths)
            await stream.send_all(dumps(stats))
        elif op == "events":
            since, follow = request.get("since", 0), request.get("follow", True)
            if not isinstance(since, int) or isinstance(since, bool) or since < 0:
                await stream.send_all(dumps({"error": "since: expected a count >= 0"}))
            elif not isinstance(follow, bool):
                await stream.send_all(dumps({"error": "follow: expected true or false"}))
            elif follow:
                await self._follow(stream, since)
            else:
                await _send_events(stream, self.events.buffered(since))
        else:
            await stream.send_all(dumps({"error": f"unknown op: {op!r}"}))

    async def _follow(self, stream: trio.SocketStream, since: int) -> None:
        send, receive = trio.open_memory_channel[Event](self.queue_size)
        follower = _Follower(send)
        # No await between the two: the backlog and the live events meet
        # without a gap or a repeat.
        stop = self.events.listen(follower.deliver)
        backlog = self.events.buffered(since)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_cancel_at_eof, stream, nursery.cancel_scope)
                if await _send_events(stream, backlog):
                    await _send_live(stream, receive, follower)
                nursery.cancel_scope.cancel()
        finally:
            stop()
            send.close()
            receive.close()


async def _read_request(stream: trio.SocketStream) -> dict[str, Any] | None:
    """The client's request line as an object; None (after an error line,
    when the client can still read one) if there is none."""
    data = b""
    with trio.move_on_after(REQUEST_TIMEOUT):
        while b"\n" not in data and len(data) <= MAX_REQUEST:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
    line, newline, _ = data.partition(b"\n")
    if not newline:
        if data:
            await stream.send_all(dumps({"error": "expected one JSON line"}))
        return None
    try:
        return loads(line)
    except ValueError as e:
        await stream.send_all(dumps({"error": f"not a JSON object: {e}"}))
        return None


async def _send_events(stream: trio.SocketStream, events: Sequence[Event]) -> bool:
    """Send `events` in batches; False when the client is gone."""
    try:
        for i in range(0, len(events), _BATCH):
            await stream.send_all(b"".join(dumps(e) for e in events[i : i + _BATCH]))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True


async def _send_live(
    stream: trio.SocketStream, receive: trio.MemoryReceiveChannel[Event], follower: _Follower
) -> None:
    """Send events as they come, with a ``dropped`` line after any were lost."""
    reported = 0
    while True:
        batch = [await receive.receive()]
        with contextlib.suppress(trio.WouldBlock):
            while len(batch) < _BATCH:
                batch.append(receive.receive_nowait())
        if follower.dropped > reported:
            batch.append(dropped_notice(follower.dropped - reported, time.time()))
            reported = follower.dropped
        if not await _send_events(stream, batch):
            return


async def _cancel_at_eof(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    """Wait for the client to close its end (it sends nothing more), then end
    the conversation: a follower that left stops costing anything."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while await stream.receive_some(4096):
            pass
    scope.cancel()


# -- the client --------------------------------------------------------------------------


def connect(path: str, what: str) -> socket.socket:
    """A connection to the control socket at `path`, that of the mount `what`
    (named in errors)."""
    no_socket = UnionfsError(
        f"the daemon of {what} has no control socket ({path}): it was started "
        f"by an older unionfs, or could not create it"
    )
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise no_socket from None
    if not stat.S_ISSOCK(st.st_mode):
        raise no_socket
    if st.st_uid not in (os.geteuid(), 0):
        raise UnionfsError(f"{path} belongs to uid {st.st_uid}, not to you: not used")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(ANSWER_TIMEOUT)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            raise no_socket from None
        raise UnionfsError(f"cannot connect to {path}: {e.strerror}") from None
    return sock


def query(
    path: str, what: str, request: dict[str, Any], *, follow: bool = False
) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Send `request` to the control socket at `path` (of the mount `what`);
    yields each answer line as it arrives, raw and parsed, until the daemon
    closes the connection. With `follow`, waits for lines as long as it takes
    (else at most `ANSWER_TIMEOUT` for each)."""
    with connect(path, what) as sock:
        try:
            sock.sendall(dumps(request))
            if follow:
                sock.settimeout(None)
            with sock.makefile("rb") as lines:
                for line in lines:
                    try:
                        obj = loads(line)
                    except ValueError:
                        raise UnionfsError(f"the daemon of {what} sent a malformed line") from None
                    if "error" in obj:
                        raise UnionfsError(f"the daemon of {what}: {obj['error']}")
                    yield line, obj
        except TimeoutError:
            raise UnionfsError(
                f"the daemon of {what} did not answer within {ANSWER_TIMEOUT:g}s"
            ) from None
        except (ConnectionResetError, BrokenPipeError):
            raise UnionfsError(f"the daemon of {what} closed the connection") from None
