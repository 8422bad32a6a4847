"""Cut a blocked DBAPI call short from another thread: the deadline of a sync call.

A sync driver blocks its thread in a socket read; nothing in Python can
cancel that. Shutting the connection's socket down makes the read return at
once (the driver reports a lost connection and SQLAlchemy discards it), and
a PostgreSQL cancel request ends the server's side of the work; ``sqlite3``
has ``interrupt()`` for the same purpose.
"""

from __future__ import annotations

import contextlib
import functools
import os
import select
import socket
import time
from collections.abc import Callable
from typing import Any

__all__ = ["cut", "shutdown"]


def shutdown(fd: int) -> None:
    """Shut the socket ``fd`` down from another thread: its blocked read returns EOF."""
    with contextlib.suppress(OSError):
        dup = socket.socket(fileno=os.dup(fd))
        try:
            dup.shutdown(socket.SHUT_RDWR)
        finally:
            dup.close()


def _socket_of(dbapi_connection: Any) -> int | None:
    pgconn = getattr(dbapi_connection, "pgconn", None)  # psycopg 3
    if pgconn is not None:
        with contextlib.suppress(Exception):
            return int(pgconn.socket)
    sock = getattr(dbapi_connection, "_sock", None)  # PyMySQL
    if sock is not None:
        with contextlib.suppress(Exception):
            return int(sock.fileno())
    fileno = getattr(dbapi_connection, "fileno", None)  # psycopg2
    if callable(fileno):
        with contextlib.suppress(Exception):
            return int(fileno())
    return None


def cut(dbapi_connection: Any) -> bool:
    """Make a call blocked on ``dbapi_connection`` return now; False when the driver offers no way.

    Example::

        timer = threading.Timer(5.0, cut, (dbapi_connection,))
    """
    interrupt = getattr(dbapi_connection, "interrupt", None)  # sqlite3
    if callable(interrupt):
        with contextlib.suppress(Exception):
            interrupt()
            return True
    fd = _socket_of(dbapi_connection)
    if fd is None:
        return False
    # Prepared while the connection is still open: once the socket is shut,
    # the blocked thread reads EOF and the driver marks the connection
    # closed, after which its own cancel() and cancel_safe() do nothing —
    # and the backend would wait on (a COMMIT's synchronous-replication wait
    # never notices a closed socket), its row invisible and its locks held.
    cancel = _server_cancel(dbapi_connection)
    shutdown(fd)
    if cancel is not None:
        with contextlib.suppress(Exception):
            cancel()
    return True


_CANCEL_TIMEOUT = 2.0


def _server_cancel(dbapi_connection: Any) -> Callable[[], None] | None:
    """A PostgreSQL cancel request for the connection's current work, sent on a connection of its own.

    The server does not notice a closed socket while the backend waits
    (pg_sleep, a lock, the synchronous-replication wait of a COMMIT): the
    cancel request ends the wait, as an async driver's cancellation does.
    Best effort, bounded where libpq allows (17 and later).
    """
    pgconn = getattr(dbapi_connection, "pgconn", None)  # psycopg 3
    if pgconn is not None:
        with contextlib.suppress(Exception):
            make_cancel_conn = getattr(pgconn, "cancel_conn", None)
            if callable(make_cancel_conn):
                with contextlib.suppress(Exception):  # libpq < 17: NotSupportedError
                    return functools.partial(_send_bounded, make_cancel_conn())
            send: Callable[[], None] = pgconn.get_cancel().cancel
            return send
        return None
    cancel = getattr(dbapi_connection, "cancel", None)  # psycopg2
    return cancel if callable(cancel) else None


def _send_bounded(cancel_conn: Any) -> None:
    # libpq's non-blocking cancel connection (PQcancelStart/PQcancelPoll),
    # polled here so that an unreachable server costs _CANCEL_TIMEOUT, not a
    # TCP timeout.
    from psycopg import pq

    deadline = time.monotonic() + _CANCEL_TIMEOUT
    try:
        cancel_conn.start()
        while True:
            status = cancel_conn.poll()
            if status in (pq.PollingStatus.OK, pq.PollingStatus.FAILED):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            fd = cancel_conn.socket
            if status == pq.PollingStatus.READING:
                select.select([fd], [], [], left)
            else:
                select.select([], [fd], [], left)
    finally:
        cancel_conn.finish()
