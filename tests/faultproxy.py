"""H3: an in-process TCP proxy with network toxics, in front of the test PostgreSQL.

It runs on its own thread with its own event loop (the asyncpg TCPFuzzingProxy
pattern), so a client loop that blocks cannot stall it. Toxics are switched
on and off from the test thread; each applies to connections open now and later.

Toxics: ``latency`` (+ jitter, per chunk, order kept), ``bandwidth`` (a
per-chunk delay of size/rate), ``slice_bytes``/``slice_delay`` (the slicer), ``blackhole`` (stop forwarding, keep sockets open), ``reset_peer``
(RST every connection), ``limit_data`` (close a connection after N bytes from
the server), ``down`` / ``up`` (listener closed: connects are refused),
``deaf`` (a listener that never accepts: connects hang), ``forget_flows``
(a NAT timeout: the connections open now are silently dropped both ways,
sockets left open, new connections work) and the
PostgreSQL-aware ``swallow_commit_reply`` (forward ``COMMIT`` to the server,
then reset the client instead of passing the server's reply on) and
``garble_messages`` / ``garble_commit`` (send the next N frontend messages, or
the next ``COMMIT``, with an invalid type byte: the server answers FATAL 08P01
"invalid frontend message type" and closes the session).

With ``protocol="mysql"`` it speaks MySQL's framing instead (a 3-byte length
and a sequence number per packet; ``COM_QUERY`` ``COMMIT``): ``swallow_commit_reply``
works the same, ``hold_commit_reply`` forwards ``COMMIT`` and drops the server's
answer while keeping the connection open, so a test can ``KILL`` the session
(its thread id is read from the server's greeting) that waits for its reply,
and the server's ERR packets are counted by error number (``errors_seen``), with
the connections that received each one, so a test can tell whether a client
went on using a connection after, say, a 1290 from a read-only server.
The garbling toxics are PostgreSQL's only.

Every connection attempt is recorded in ``attempts`` as ``[started, ended]``
(monotonic seconds): it ends when the server says the session is ready
(PostgreSQL's first ReadyForQuery; MySQL's greeting) or when the connection
closes without that, so :meth:`most_attempts_in_flight` can tell how many
connects a client had in flight at once while the database was unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from tests import waiting


class FaultProxy:
    """Forward 127.0.0.1:<port> to ``target``, with toxics."""

    def __init__(self, target_host: str, target_port: int, *, protocol: str = "postgres") -> None:
        if protocol not in ("postgres", "mysql"):
            raise ValueError(f"protocol must be 'postgres' or 'mysql', got {protocol!r}")
        self.protocol = protocol
        self.target = (target_host, target_port)
        self.latency = 0.0
        self.jitter = 0.0
        self.bandwidth: float | None = None  # bytes per second, server -> client
        self.slice_bytes: int | None = None  # split server -> client chunks into pieces...
        self.slice_delay = 0.0  # ...with this pause between them
        # Set while packets flow; the blackhole toxic clears it (see the property).
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.limit_data: int | None = None
        self.swallow_commit_reply = False
        self.swallow_commits = 0  # with swallow_commit_reply: how many more (0 = every one)
        self.garble_messages = 0  # how many more frontend messages to garble
        self.garble_commit = False  # garble the next COMMIT only
        self.garble_during_startup = False  # garble_messages also hits authentication
        self.hold_commit_reply = False  # MySQL: forward COMMIT, drop the reply, keep the socket
        self.held: list[int] = []  # MySQL: thread ids of the sessions whose reply was dropped
        # MySQL: error number -> how many ERR packets; and when the last of each came.
        self.errors_seen: dict[int, int] = {}
        self.last_error_at: dict[int, float] = {}
        # MySQL: commands (other than COM_QUIT) a client sent on a connection after
        # it had received one of these error numbers.
        self.watch_errors: frozenset[int] = frozenset()
        self.used_after_error = 0
        self.accepted = 0
        # [started, ended] per connection attempt; ended is inf until it ends.
        self.attempts: list[list[float]] = []
        self._attempt_of: dict[asyncio.StreamWriter, list[float]] = {}
        self.commits_swallowed = 0
        self.garbled = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="fault-proxy"
        )
        self._server: asyncio.base_events.Server | None = None
        self._deaf: socket.socket | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._states: dict[tuple[asyncio.StreamWriter, asyncio.StreamWriter], dict[str, bool]] = {}
        self.forgotten = 0
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self._thread.start()
        self._call(self._listen)

    # -- control (test thread) ------------------------------------------------

    def _call(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            result = fn()
            if asyncio.iscoroutine(result):
                result = await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=10)

    @property
    def blackhole(self) -> bool:
        """The blackhole toxic: True holds every packet both ways, sockets left open."""
        return not self._flowing.is_set()

    @blackhole.setter
    def blackhole(self, value: bool) -> None:
        # On the proxy's loop, done before this returns: the forwarders wait on the event.
        self._call(self._flowing.clear if value else self._flowing.set)

    def down(self) -> None:
        """Close the listener and every connection: new connects are refused."""
        self._call(self._down)

    def up(self) -> None:
        """Listen again (also ends ``deaf``)."""
        self._call(self._up)

    def deaf(self) -> None:
        """Listen but never accept: new connects hang (existing ones are closed)."""
        self._call(self._make_deaf)

    def forget_flows(self) -> int:
        """A NAT forgets its mappings: every open connection goes silent both ways, no RST.

        Returns how many connections were forgotten; new connections are unaffected.
        """
        return int(self._call(self._forget))

    def reset_peer(self) -> None:
        """Reset (RST) every open connection."""
        self._call(self._reset_all)

    def close(self) -> None:
        """Stop everything and the thread."""
        with contextlib.suppress(Exception):
            self._call(self._down)
        with contextlib.suppress(Exception):
            self._call(self._cancel_tasks)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def clear(self) -> None:
        """Remove every toxic (connections stay)."""
        self.latency = self.jitter = 0.0
        self.bandwidth = None
        self.slice_bytes = None
        self.slice_delay = 0.0
        self.blackhole = False
        self.limit_data = None
        self.swallow_commit_reply = False
        self.garble_messages = 0
        self.garble_commit = False
        self.garble_during_startup = False
        self.hold_commit_reply = False

    # -- loop side -------------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )

    async def _down(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self._deaf is not None:
            self._deaf.close()
            self._deaf = None
        await self._reset_all()

    async def _up(self) -> None:
        await self._down()
        await self._listen()

    async def _make_deaf(self) -> None:
        await self._down()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(0)
        self._deaf = sock

    async def _cancel_tasks(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _forget(self) -> int:
        for state in self._states.values():
            state["forgotten"] = True
        self.forgotten += len(self._states)
        return len(self._states)

    async def _reset_all(self) -> None:
        for client, upstream in list(self._conns):
            for writer in (client, upstream):
                _rst(writer)
        self._conns.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        attempt = [time.monotonic(), math.inf]
        self.attempts.append(attempt)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            attempt[1] = time.monotonic()
            _rst(writer)
            return
        self._attempt_of[writer] = attempt
        pair = (writer, up_writer)
        self._conns.add(pair)
        # per connection: drop the server's replies; the server said ReadyForQuery
        muted: dict[str, bool] = {"server": False, "ready": False, "forgotten": False}
        self._states[pair] = muted
        replied = asyncio.Event()  # the server answered while muted
        if self.protocol == "mysql":
            session = _MySQLSession()
            to_server = asyncio.ensure_future(
                self._mysql_client_to_server(reader, up_writer, writer, muted, replied, session)
            )
            scan: Callable[[bytes], None] | None = functools.partial(
                self._scan_mysql, session=session
            )
        else:
            to_server = asyncio.ensure_future(
                self._client_to_server(reader, up_writer, writer, muted, replied)
            )
            scan = None
        to_client = asyncio.ensure_future(
            self._server_to_client(up_reader, writer, muted, replied, scan)
        )
        try:
            await asyncio.wait({to_server, to_client}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (to_server, to_client):
                task.cancel()
            self._conns.discard(pair)
            self._states.pop(pair, None)
            self._established(writer)
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()

    async def _client_to_server(
        self,
        reader: asyncio.StreamReader,
        up: asyncio.StreamWriter,
        client: asyncio.StreamWriter,
        muted: dict[str, bool],
        replied: asyncio.Event,
    ) -> None:
        # The startup packet has no type byte; every later frontend message is
        # type (1 byte) + int32 length (including itself) + payload.
        while True:
            startup = await _read_startup(reader)
            if startup is None:
                return
            up.write(startup)
            await up.drain()
            (code,) = struct.unpack("!i", startup[4:8])
            if code not in _NEGOTIATION_CODES:
                break
        while True:
            header = await reader.readexactly(5)
            (length,) = struct.unpack("!i", header[1:])
            body = await reader.readexactly(length - 4)
            await self._flowing.wait()  # the blackhole toxic holds the message
            if muted["forgotten"]:
                continue  # the NAT drops it
            swallow = (
                self.swallow_commit_reply
                and header[:1] == b"Q"
                and body.lstrip().upper().startswith(b"COMMIT")
            )
            if swallow:
                muted["server"] = True  # before the server can answer
            is_commit = header[:1] == b"Q" and body.lstrip().upper().startswith(b"COMMIT")
            garble = self.garble_messages > 0 and (muted["ready"] or self.garble_during_startup)
            if garble or (self.garble_commit and is_commit):
                if self.garble_messages > 0:
                    self.garble_messages -= 1
                else:
                    self.garble_commit = False
                self.garbled += 1
                header = b"\x00" + header[1:]  # no frontend message has type 0
            up.write(header + body)
            await up.drain()
            if swallow:
                # COMMIT reached the server; the client never hears back.
                self.commits_swallowed += 1
                if self.swallow_commits:
                    self.swallow_commits -= 1
                    if self.swallow_commits == 0:
                        self.swallow_commit_reply = False
                # The server's answer, dropped, shows it has processed the COMMIT.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(replied.wait(), timeout=10)
                _rst(client)
                return

    async def _mysql_client_to_server(
        self,
        reader: asyncio.StreamReader,
        up: asyncio.StreamWriter,
        client: asyncio.StreamWriter,
        muted: dict[str, bool],
        replied: asyncio.Event,
        session: _MySQLSession,
    ) -> None:
        # Every packet: 3-byte little-endian length, 1-byte sequence number, payload.
        # A command starts a new sequence (number 0); the handshake's packets do not.
        while True:
            header = await reader.readexactly(4)
            payload = await reader.readexactly(int.from_bytes(header[:3], "little"))
            await self._flowing.wait()  # the blackhole toxic holds the packet
            if muted["forgotten"]:
                continue  # the NAT drops it
            command = header[3] == 0 and bool(payload)
            if command:
                muted["ready"] = True
                if session.errors and payload[:1] != _COM_QUIT:
                    self.used_after_error += 1
            is_commit = (
                command
                and payload[:1] == _COM_QUERY
                and payload[1:].lstrip().upper().startswith(b"COMMIT")
            )
            swallow = is_commit and self.swallow_commit_reply
            hold = is_commit and self.hold_commit_reply and not swallow
            if swallow or hold:
                muted["server"] = True  # before the server can answer
            up.write(header + payload)
            await up.drain()
            if hold:
                self.hold_commit_reply = False
                self.held.append(session.thread_id)
            if swallow:
                self.commits_swallowed += 1
                if self.swallow_commits:
                    self.swallow_commits -= 1
                    if self.swallow_commits == 0:
                        self.swallow_commit_reply = False
                # The server's answer, dropped, shows it has processed the COMMIT.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(replied.wait(), timeout=10)
                _rst(client)
                return

    def _scan_mysql(self, chunk: bytes, session: _MySQLSession) -> None:
        for payload in session.feed(chunk):
            if payload[:1] == b"\xff" and len(payload) >= 3:
                number = int.from_bytes(payload[1:3], "little")
                self.errors_seen[number] = self.errors_seen.get(number, 0) + 1
                self.last_error_at[number] = time.monotonic()
                if number in self.watch_errors:
                    session.errors.add(number)

    async def _server_to_client(
        self,
        up: asyncio.StreamReader,
        client: asyncio.StreamWriter,
        muted: dict[str, bool],
        replied: asyncio.Event,
        scan: Callable[[bytes], None] | None = None,
    ) -> None:
        sent = 0
        while True:
            chunk = await up.read(65536)
            if not chunk:
                return
            if scan is not None:
                scan(chunk)
            if muted["server"]:
                replied.set()
            if muted["server"] or muted["forgotten"]:
                continue
            if self.protocol == "mysql" or b"Z\x00\x00\x00\x05" in chunk:
                self._established(client)
            if not muted["ready"] and b"Z\x00\x00\x00\x05" in chunk:
                muted["ready"] = True
            await self._flowing.wait()  # the blackhole toxic holds the reply
            if self.latency or self.jitter:
                await asyncio.sleep(  # the latency toxic
                    max(0.0, self.latency + random.uniform(-self.jitter, self.jitter))
                )
            if self.bandwidth:
                await asyncio.sleep(len(chunk) / self.bandwidth)  # the bandwidth toxic
            if self.limit_data is not None and sent + len(chunk) > self.limit_data:
                client.write(chunk[: max(0, self.limit_data - sent)])
                _rst(client)
                return
            sent += len(chunk)
            if self.slice_bytes:
                for start in range(0, len(chunk), self.slice_bytes):
                    client.write(chunk[start : start + self.slice_bytes])
                    await client.drain()
                    if self.slice_delay:
                        await asyncio.sleep(self.slice_delay)  # the slicer toxic's delay
                continue
            client.write(chunk)
            await client.drain()

    def _established(self, client: asyncio.StreamWriter) -> None:
        attempt = self._attempt_of.pop(client, None)
        if attempt is not None and attempt[1] == math.inf:
            attempt[1] = time.monotonic()

    def most_attempts_in_flight(self, since: float, until: float, *, started: bool = False) -> int:
        """The most connection attempts in flight at once between ``since`` and ``until``
        (see :func:`most_in_flight`)."""
        return most_in_flight(self.attempts, since, until, started=started)


def most_in_flight(
    attempts: list[list[float]], since: float, until: float, *, started: bool = False
) -> int:
    """The most of ``attempts`` (``[started, ended]``, monotonic seconds) in flight at once
    between ``since`` and ``until``; with ``started``, only those that began in that time."""
    events: list[tuple[float, int]] = []
    for begun, ended in list(attempts):
        if started and not since <= begun < until:
            continue
        if begun < until and ended > since:
            events += [(max(begun, since), 1), (min(ended, until), -1)]
    most = current = 0
    # At equal times an end is counted before a start: back to back is not at once.
    for _, step in sorted(events):
        current += step
        most = max(most, current)
    return most


class _MySQLSession:
    """One MySQL connection as the proxy sees it: the server's packets reassembled."""

    def __init__(self) -> None:
        self.thread_id = 0  # from the server's greeting
        self.errors: set[int] = set()  # watched error numbers it has received
        self._buffer = bytearray()
        self._greeted = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """The complete server packets' payloads in ``chunk`` (with what came before)."""
        self._buffer += chunk
        payloads: list[bytes] = []
        while len(self._buffer) >= 4:
            length = int.from_bytes(self._buffer[:3], "little")
            if len(self._buffer) < 4 + length:
                break
            payload = bytes(self._buffer[4 : 4 + length])
            del self._buffer[: 4 + length]
            if not self._greeted:
                # Protocol 10 greeting: version byte, NUL-terminated server
                # version, then the 4-byte connection (thread) id.
                self._greeted = True
                end = payload.index(b"\x00", 1)
                self.thread_id = int.from_bytes(payload[end + 1 : end + 5], "little")
                continue
            payloads.append(payload)
        return payloads


_COM_QUIT = b"\x01"
_COM_QUERY = b"\x03"

# SSLRequest and GSSENCRequest come before the real startup packet.
_NEGOTIATION_CODES = (80877103, 80877104)


async def _read_startup(reader: asyncio.StreamReader) -> bytes | None:
    try:
        head = await reader.readexactly(4)
    except asyncio.IncompleteReadError:
        return None
    (length,) = struct.unpack("!i", head)
    return head + await reader.readexactly(length - 4)


def _rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(Exception):
        writer.transport.abort()


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll every 5 ms (FAULTS.md H2) until ``predicate`` holds."""
    waiting.wait_until(predicate, timeout=timeout)
