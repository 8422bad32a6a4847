"""Fault injection on any engine: the Nth matching statement fails as a real database would.

Fault injection makes the Nth matching statement of an engine fail the way
a real database would, through the driver, so SQLAlchemy's own handling
(disconnect detection, invalidation, ``handle_error``) and this package's
translation see a genuine failure::

    with inject_fault(engine, "serialization_failure", nth=1):
        await run_transaction(Session, work)   # attempt 1 fails with 40001, attempt 2 runs

Faults: ``disconnect`` (the driver connection is really closed before the
statement is sent), ``serialization_failure`` (40001), ``deadlock`` (40P01),
``query_canceled`` (57014), ``lock_not_available`` (55P03), and for SQLite
``busy`` (SQLITE_BUSY) and ``busy_snapshot`` (SQLITE_BUSY_SNAPSHOT). On MySQL
and MariaDB (PyMySQL, aiomysql, asyncmy, mysqlclient) the error numbers:
``deadlock`` 1213, ``lock_not_available`` 1205 (lock wait timeout),
``query_canceled`` 1317 and ``read_only`` 1290 (what a demoted writer answers).
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any, Literal

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from sqlalchemy_resilience.core.engines import sync_engine

__all__ = ["FaultInjector", "FaultKind", "inject_fault"]

FaultKind = Literal[
    "disconnect",
    "serialization_failure",
    "deadlock",
    "query_canceled",
    "lock_not_available",
    "busy",
    "busy_snapshot",
    "read_only",
]

_PG_FAULTS: dict[str, tuple[str, str, str]] = {
    # kind: (SQLSTATE, asyncpg class, message)
    "serialization_failure": (
        "40001",
        "SerializationError",
        "could not serialize access due to concurrent update (injected)",
    ),
    "deadlock": ("40P01", "DeadlockDetectedError", "deadlock detected (injected)"),
    "query_canceled": (
        "57014",
        "QueryCanceledError",
        "canceling statement due to statement timeout (injected)",
    ),
    "lock_not_available": (
        "55P03",
        "LockNotAvailableError",
        "canceling statement due to lock timeout (injected)",
    ),
}

_SQLITE_FAULTS: dict[str, tuple[int, str, str]] = {
    "busy": (5, "SQLITE_BUSY", "database is locked"),
    "busy_snapshot": (517, "SQLITE_BUSY_SNAPSHOT", "database is locked"),
    "serialization_failure": (517, "SQLITE_BUSY_SNAPSHOT", "database is locked"),
}


_MYSQL_FAULTS: dict[str, tuple[int, str]] = {
    "deadlock": (1213, "Deadlock found when trying to get lock; try restarting transaction"),
    "lock_not_available": (1205, "Lock wait timeout exceeded; try restarting transaction"),
    "query_canceled": (1317, "Query execution was interrupted (injected)"),
    "read_only": (
        1290,
        "The server is running with the --read-only option so it cannot execute this statement",
    ),
}
_MYSQL_FAMILY = ("mysql", "mariadb")


def _mysql_error(dialect: Any, kind: str) -> BaseException:
    errno, message = _MYSQL_FAULTS[kind]
    # Every MySQL driver's errors take (number, message), as the server's do.
    return dialect.loaded_dbapi.OperationalError(errno, message)  # type: ignore[no-any-return]


def _pg_error(dialect: Any, kind: str) -> BaseException:
    sqlstate, asyncpg_name, message = _PG_FAULTS[kind]
    if dialect.driver == "asyncpg":
        import asyncpg

        native = getattr(asyncpg.exceptions, asyncpg_name)(message)
        native.severity = "ERROR"
        err: BaseException = dialect.loaded_dbapi.Error(message, native)
        err.__cause__ = native
        return err
    import psycopg

    cls = psycopg.errors.lookup(sqlstate)
    return cls(message)


def _sqlite_error(dialect: Any, kind: str) -> BaseException:
    code, name, message = _SQLITE_FAULTS[kind]
    err = dialect.loaded_dbapi.OperationalError(message)
    err.sqlite_errorcode = code
    err.sqlite_errorname = name
    return err  # type: ignore[no-any-return]


def _close_driver_connection(pooled: Any) -> None:
    driver = pooled.driver_connection
    terminate = getattr(driver, "terminate", None)  # asyncpg: drop the socket now
    if callable(terminate):
        terminate()
        return
    pgconn = getattr(driver, "pgconn", None)  # psycopg, sync or async
    if pgconn is not None:
        pgconn.finish()
        return
    # sqlite3, or aiosqlite through SQLAlchemy's adapter (which awaits for us).
    pooled.dbapi_connection.close()


class FaultInjector:
    """Makes matching statements of one engine fail; see :func:`inject_fault`.

    Attributes:
        seen: matching statements so far.
        fired: faults injected so far.

    Example::

        with inject_fault(engine, "deadlock", match="UPDATE accounts") as injector:
            ...
        print(injector.fired)
    """

    def __init__(
        self,
        engine: Engine | AsyncEngine,
        fault: FaultKind,
        *,
        nth: int = 1,
        times: int = 1,
        match: str | None = None,
    ) -> None:
        sync = sync_engine(engine)
        name = sync.dialect.name
        kinds: list[str] = list(
            _PG_FAULTS
            if name == "postgresql"
            else _SQLITE_FAULTS
            if name == "sqlite"
            else _MYSQL_FAULTS
        )
        allowed = ["disconnect", *kinds]
        if name not in ("postgresql", "sqlite", *_MYSQL_FAMILY) or fault not in allowed:
            raise ValueError(
                f"fault {fault!r} is not available on {name}; choose one of {sorted(allowed)}"
            )
        counts: tuple[tuple[str, object], ...] = (("nth", nth), ("times", times))
        for label, value in counts:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be an int >= 1, got {value!r}")
        if match is not None and not isinstance(match, str):
            raise TypeError(f"match must be a string or None, got {match!r}")
        self.engine = sync
        self.fault = fault
        self.nth = nth
        self.times = times
        self.match = match
        self.seen = 0
        self.fired = 0
        self._lock = threading.Lock()
        # The dialect's do_execute hooks run inside SQLAlchemy's error handling
        # on every version (before_cursor_execute does not on 2.0), so a fault
        # raised there is wrapped, checked for disconnect and translated.
        self._hooks = (
            ("do_execute", self._on_execute),
            ("do_executemany", self._on_execute),
            ("do_execute_no_params", self._on_execute_no_params),
        )
        for name, fn in self._hooks:
            event.listen(sync, name, fn)

    def _due(self, statement: str) -> bool:
        if self.match is not None and self.match.lower() not in statement.lower():
            return False
        with self._lock:
            self.seen += 1
            if self.nth <= self.seen < self.nth + self.times:
                self.fired += 1
                return True
        return False

    def _on_execute(self, cursor: Any, statement: str, parameters: Any, context: Any) -> None:
        self._maybe_fail(statement, context)

    def _on_execute_no_params(self, cursor: Any, statement: str, context: Any) -> None:
        self._maybe_fail(statement, context)

    def _maybe_fail(self, statement: str, context: Any) -> None:
        if not self._due(statement):
            return
        dialect = context.dialect
        if self.fault == "disconnect":
            _close_driver_connection(context.root_connection.connection)
            return  # the statement now fails in the driver, as on a real disconnect
        if dialect.name == "postgresql":
            raise _pg_error(dialect, self.fault)
        if dialect.name in _MYSQL_FAMILY:
            raise _mysql_error(dialect, self.fault)
        raise _sqlite_error(dialect, self.fault)

    def detach(self) -> None:
        """Stop injecting (idempotent)."""
        for name, fn in self._hooks:
            if event.contains(self.engine, name, fn):
                event.remove(self.engine, name, fn)

    def __enter__(self) -> FaultInjector:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.detach()


def inject_fault(
    engine: Engine | AsyncEngine,
    fault: FaultKind,
    *,
    nth: int = 1,
    times: int = 1,
    match: str | None = None,
) -> FaultInjector:
    """Make the ``nth`` matching statement of ``engine`` (and the ``times - 1`` after it) fail.

    Args:
        engine: any ``Engine`` or ``AsyncEngine`` on PostgreSQL (asyncpg, psycopg),
            MySQL/MariaDB or SQLite.
        fault: see the module docstring.
        nth: the first matching statement to fail (1 = the next one).
        times: how many consecutive matching statements fail.
        match: only statements containing this text (case-insensitive) count.

    Returns:
        A :class:`FaultInjector`; use it as a context manager or call ``detach()``.

    Example::

        with inject_fault(engine, "disconnect", match="UPDATE accounts"):
            await run_transaction(Session, transfer)
    """
    return FaultInjector(engine, fault, nth=nth, times=times, match=match)
