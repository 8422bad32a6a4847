"""Cut a blocked DBAPI call short from another thread: the deadline of a sync call.

A sync driver blocks its thread in a socket read; nothing in Python can
cancel that. Shutting the connection's socket down makes the read return at
once (the driver reports a lost connection and SQLAlchemy discards it), and
a PostgreSQL cancel request ends the server's side of the work; ``sqlite3``
has ``interrupt()`` for the same purpose.
"""

from __future__ import annotations

import contextlib
import os
import socket
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
    shutdown(fd)
    _cancel_on_server(dbapi_connection)
    return True


def _cancel_on_server(dbapi_connection: Any) -> None:
    # The server does not notice a closed socket while the backend waits
    # (pg_sleep, a lock, the synchronous-replication wait of a COMMIT): a
    # cancel request, sent on a connection of its own, ends the wait, as an
    # async driver's cancellation does. Best effort, bounded.
    cancel_safe = getattr(dbapi_connection, "cancel_safe", None)  # psycopg >= 3.2
    with contextlib.suppress(Exception):
        if callable(cancel_safe):
            cancel_safe(timeout=2.0)
            return
        cancel = getattr(dbapi_connection, "cancel", None)  # psycopg2, older psycopg
        if callable(cancel):
            cancel()
