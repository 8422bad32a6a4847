"""SQLite's extended result code on Python 3.10, whose ``sqlite3`` exceptions carry none.

From Python 3.11 on, ``sqlite3.Error`` has ``sqlite_errorcode`` and
``sqlite_errorname``. On 3.10 the message is all there is, and SQLite's
message for ``SQLITE_BUSY_SNAPSHOT`` is the same "database is locked" as for
``SQLITE_BUSY``: a serialization failure would be reported as a lock wait.
SQLite keeps the last result code on the connection until its next call, so
right after the failure (in ``handle_error``, before SQLAlchemy rolls back)
``sqlite3_extended_errcode()`` still tells it. This module asks it through
ctypes, from the SQLite library the ``_sqlite3`` extension is linked to, and
writes the code onto the exception as Python 3.11 would have.

It does so only on CPython 3.10, whose ``sqlite3.Connection`` object starts
with the ``sqlite3 *`` handle right after the object header, and only once a
self-check on a private in-memory connection confirmed that layout (SQLite's
change counter read through the handle must equal ``total_changes``);
anything unexpected leaves the exception as it was.
"""

from __future__ import annotations

import ctypes
import functools
import sqlite3
import sys
from typing import Any

__all__ = ["ENABLED", "annotate_sqlite_error"]

#: Whether this interpreter needs the annotation (CPython 3.10).
ENABLED = sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 10)


def _handle(conn: sqlite3.Connection) -> int | None:
    address = ctypes.c_void_p.from_address(id(conn) + object.__basicsize__).value
    return address or None


@functools.lru_cache(maxsize=1)
def _library() -> Any:
    """SQLite's functions as ``_sqlite3`` links them, once the handle layout checked out."""
    try:
        import _sqlite3

        lib = ctypes.CDLL(_sqlite3.__file__)
        for name in ("sqlite3_extended_errcode", "sqlite3_total_changes"):
            fn = getattr(lib, name)
            fn.argtypes = [ctypes.c_void_p]
            fn.restype = ctypes.c_int
        probe = sqlite3.connect(":memory:")
        try:
            probe.execute("CREATE TABLE t (i INTEGER)")
            probe.executemany("INSERT INTO t VALUES (?)", [(1,), (2,), (3,)])
            handle = _handle(probe)
            if probe.total_changes != 3 or handle is None or lib.sqlite3_total_changes(handle) != 3:
                return None
        finally:
            probe.close()
    except (ImportError, OSError, AttributeError, sqlite3.Error):
        return None
    return lib


def _sqlite_connection(driver_connection: Any) -> sqlite3.Connection | None:
    if isinstance(driver_connection, sqlite3.Connection):
        return driver_connection
    # aiosqlite: its worker thread owns the connection; the handle is read
    # without calling into the sqlite3 module, which would refuse the thread.
    inner = getattr(driver_connection, "_connection", None)
    return inner if isinstance(inner, sqlite3.Connection) else None


def annotate_sqlite_error(exc: BaseException, driver_connection: Any) -> None:
    """Give a Python 3.10 ``sqlite3.Error`` the ``sqlite_errorcode`` 3.11 would have.

    Call it right after the failure, before anything else runs on the
    connection. A no-op on other Pythons, for other exceptions, and whenever
    the handle layout could not be confirmed.

    Example::

        annotate_sqlite_error(err.orig, conn.connection.driver_connection)
        err.orig.sqlite_errorcode  # 517 for SQLITE_BUSY_SNAPSHOT
    """
    if not ENABLED or not isinstance(exc, sqlite3.Error):
        return
    if getattr(exc, "sqlite_errorcode", None) is not None:
        return
    conn = _sqlite_connection(driver_connection)
    lib = _library() if conn is not None else None
    if conn is None or lib is None:
        return
    handle = _handle(conn)
    if handle is None:  # closed
        return
    code = int(lib.sqlite3_extended_errcode(handle))
    if code:
        exc.sqlite_errorcode = code  # type: ignore[attr-defined]
