"""SQLite done right: WAL, ``busy_timeout``, and a real ``BEGIN`` -- ``IMMEDIATE`` for writes.

Python's ``sqlite3`` (and aiosqlite on top of it) runs in "legacy transaction
control": it sends no ``BEGIN`` before a ``SELECT`` or a ``SAVEPOINT``, so a
read-then-write transaction reads outside the transaction (lost updates) and a
savepoint is not part of the enclosing transaction. The fix SQLAlchemy's SQLite
documentation gives is to emit ``BEGIN`` from the engine's ``begin`` event.
This module emits ``BEGIN IMMEDIATE`` for write transactions: the write lock
is taken at ``BEGIN``, where ``busy_timeout`` can wait for it, instead of at
the first write, where a transaction that has already read gets
``SQLITE_BUSY_SNAPSHOT`` (WAL) or a deadlock ``SQLITE_BUSY`` (rollback
journal) at once -- errors no timeout can wait out. Rails and Django (5.1,
``transaction_mode="IMMEDIATE"``) made the same choice.

Nothing here runs unless asked: :func:`configure_sqlite` or
``instrument(engine, sqlite=SQLiteSettings())`` installs it on an engine, and
:func:`~sqlalchemy_resilience.transaction` applies the ``BEGIN`` part to its
own transactions on any SQLite engine.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from sqlalchemy_resilience._util.seconds import to_seconds
from sqlalchemy_resilience.core.engines import is_async_engine

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "BEGIN_OPTION",
    "BeginRequest",
    "SQLiteConfiguration",
    "SQLiteSettings",
    "configure_sqlite",
    "ensure_begin",
    "restore_busy_timeout",
]

_log = logging.getLogger("sqlalchemy_resilience.transaction")

#: The execution option through which ``transaction()`` tells the ``begin`` hook
#: how to begin (a :class:`BeginRequest`).
BEGIN_OPTION = "sqlalchemy_resilience_begin"

# Where the busy_timeout to restore at the end of a transaction is kept.
_RESTORE_KEY = "sqlalchemy_resilience.busy_timeout_restore"

JournalMode = Literal["wal", "delete", "truncate", "persist", "memory"]
Synchronous = Literal["off", "normal", "full", "extra"]
BeginMode = Literal["immediate", "deferred"]

_JOURNAL_MODES = ("wal", "delete", "truncate", "persist", "memory")
_SYNCHRONOUS = ("off", "normal", "full", "extra")
_BEGIN_MODES = ("immediate", "deferred")

# Fixed statements: PRAGMA takes no bound parameters, so every value is chosen
# from these tables or is an int this module computed -- never caller text.
_BEGIN_SQL = {"immediate": "BEGIN IMMEDIATE", "deferred": "BEGIN DEFERRED"}
_JOURNAL_SQL = {mode: f"PRAGMA journal_mode = {mode.upper()}" for mode in _JOURNAL_MODES}
_SYNCHRONOUS_SQL = {mode: f"PRAGMA synchronous = {mode.upper()}" for mode in _SYNCHRONOUS}


def _busy_timeout_sql(milliseconds: int) -> str:
    return f"PRAGMA busy_timeout = {int(milliseconds)}"


def milliseconds(seconds: float) -> int:
    """Seconds as whole milliseconds, rounded up so a positive time never becomes 0 (off)."""
    return math.ceil(seconds * 1000)


@dataclass(frozen=True)
class BeginRequest:
    """How one transaction asks to begin: the mode, and a busy_timeout for its lifetime."""

    mode: BeginMode
    busy_timeout_ms: int | None = None


@dataclass(frozen=True, kw_only=True)
class SQLiteSettings:
    """How :func:`configure_sqlite` sets up SQLite connections. Frozen and validated.

    Args:
        journal_mode: ``"wal"`` (default: readers never block the writer nor
            it them; persistent in the database file) or another SQLite journal
            mode; None leaves the file's mode alone. ``:memory:`` databases stay
            ``memory``.
        busy_timeout: how long a connection waits for another's lock before
            ``SQLITE_BUSY`` (seconds or ``timedelta``; default 5.0, the
            ``sqlite3`` module's own default); None leaves the driver's.
        synchronous: ``"normal"`` is the usual pairing with WAL (a commit may be
            lost on power failure or an OS crash, never on an application
            crash); None (default) keeps SQLite's ``FULL``.
        foreign_keys: True turns on foreign-key enforcement (off in SQLite by
            default); None (default) leaves it.
        begin: ``"immediate"`` (default) begins every transaction that is not
            declared read-only with ``BEGIN IMMEDIATE``; ``"deferred"`` emits a
            plain ``BEGIN`` (the savepoint fix without the early write lock).

    Example::

        engine = create_async_engine("sqlite+aiosqlite:///app.db")
        configure_sqlite(engine, SQLiteSettings(synchronous="normal", foreign_keys=True))
    """

    journal_mode: JournalMode | None = "wal"
    busy_timeout: float | timedelta | None = 5.0
    synchronous: Synchronous | None = None
    foreign_keys: bool | None = None
    begin: BeginMode = "immediate"

    def __post_init__(self) -> None:
        _choice("journal_mode", self.journal_mode, _JOURNAL_MODES, optional=True)
        _choice("synchronous", self.synchronous, _SYNCHRONOUS, optional=True)
        _choice("begin", self.begin, _BEGIN_MODES, optional=False)
        if self.busy_timeout is not None:
            seconds = to_seconds("busy_timeout", self.busy_timeout)
            if seconds > 2**31 / 1000:
                raise ValueError(
                    f"busy_timeout must be at most {2**31 // 1000} seconds, got {self.busy_timeout!r}"
                )
            object.__setattr__(self, "busy_timeout", seconds)
        if self.foreign_keys is not None and not isinstance(self.foreign_keys, bool):
            raise TypeError(f"foreign_keys must be True, False or None, got {self.foreign_keys!r}")

    def pragmas(self) -> tuple[str, ...]:
        """The statements run once on each new connection, in order."""
        statements: list[str] = []
        if self.busy_timeout is not None:
            # First, so that switching the journal mode waits for a busy file.
            seconds = self.busy_timeout
            assert isinstance(seconds, float)  # __post_init__ made it one
            statements.append(_busy_timeout_sql(milliseconds(seconds)))
        if self.journal_mode is not None:
            statements.append(_JOURNAL_SQL[self.journal_mode])
        if self.synchronous is not None:
            statements.append(_SYNCHRONOUS_SQL[self.synchronous])
        if self.foreign_keys is not None:
            statements.append(f"PRAGMA foreign_keys = {'ON' if self.foreign_keys else 'OFF'}")
        return tuple(statements)


def _choice(name: str, value: object, allowed: tuple[str, ...], *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or value not in allowed:
        extra = " or None" if optional else ""
        raise ValueError(f"{name} must be one of {list(allowed)}{extra}, got {value!r}")


def _driver_state(conn: Connection) -> tuple[bool, bool]:
    """``(autocommit, in_transaction)`` as the sqlite3 / aiosqlite connection reports them."""
    driver: Any = conn.connection.driver_connection
    return driver.isolation_level is None, bool(driver.in_transaction)


def ensure_begin(conn: Connection, request: BeginRequest | None, default: BeginMode) -> bool:
    """Emit ``BEGIN [IMMEDIATE|DEFERRED]`` on ``conn`` unless the driver began or autocommits.

    Returns whether this call began the transaction. A driver in
    ``autocommit=False`` mode (Python 3.12+) has always begun already, and one in
    AUTOCOMMIT (SQLAlchemy's isolation level) must not begin: both are left alone.
    """
    autocommit, began = _driver_state(conn)
    if autocommit or began:
        return False
    mode = request.mode if request is not None else default
    if request is not None and request.busy_timeout_ms is not None:
        # Before BEGIN, so that BEGIN IMMEDIATE itself waits this long for the lock.
        set_busy_timeout(conn, request.busy_timeout_ms)
    try:
        conn.exec_driver_sql(_BEGIN_SQL[mode])
    except BaseException:
        try:
            restore_busy_timeout(conn)
        except Exception:
            _log.debug("could not restore busy_timeout after a failed BEGIN", exc_info=True)
        raise
    return True


def set_busy_timeout(conn: Connection, busy_timeout_ms: int) -> None:
    """Set ``busy_timeout`` now (inside a transaction) and remember the value to restore."""
    previous = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
    conn.exec_driver_sql(_busy_timeout_sql(busy_timeout_ms))
    conn.info.setdefault(_RESTORE_KEY, int(previous or 0))


def restore_busy_timeout(conn: Connection) -> None:
    """Put back the ``busy_timeout`` a transaction's ``lock_timeout`` replaced, if any."""
    previous = conn.info.pop(_RESTORE_KEY, None)
    if previous is not None:
        conn.exec_driver_sql(_busy_timeout_sql(previous))


# Engines configured by configure_sqlite, so a second call is refused.
_configured: weakref.WeakKeyDictionary[Engine, SQLiteSettings] = weakref.WeakKeyDictionary()


def settings_of(engine: Engine) -> SQLiteSettings | None:
    """The settings :func:`configure_sqlite` installed on ``engine``, or None."""
    return _configured.get(engine)


class SQLiteConfiguration:
    """The SQLite settings attached to one engine; :meth:`detach` removes them.

    Returned by :func:`configure_sqlite` (never constructed directly), the same
    verb pair as :func:`~sqlalchemy_resilience.instrument` and its handle.

    Example::

        configured = configure_sqlite(engine)
        ...
        configured.detach()   # new transactions begin as SQLAlchemy's default again
    """

    def __init__(
        self, engine: Engine, settings: SQLiteSettings, remove: Callable[[], None]
    ) -> None:
        self.engine = engine
        self.settings = settings
        self._remove: Callable[[], None] | None = remove

    @property
    def attached(self) -> bool:
        """Whether the settings are still installed on the engine."""
        return self._remove is not None

    def detach(self) -> None:
        """Remove the listeners (idempotent); connections keep the pragmas already set."""
        remove, self._remove = self._remove, None
        if remove is not None:
            remove()

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return f"<SQLiteConfiguration {self.settings.pragmas()} {state}>"


def configure_sqlite(
    engine: Engine | AsyncEngine, settings: SQLiteSettings | None = None
) -> SQLiteConfiguration:
    """Install the SQLite settings on ``engine``; ``.detach()`` on the result removes them.

    Each connection gets the pragmas once, when the pool first hands it out
    (also connections opened before this call), and every transaction begins
    with ``BEGIN IMMEDIATE`` -- or ``BEGIN DEFERRED`` when declared read-only
    (``transaction(..., read_only=True)``, ``run_transaction(..., read_only=True)``)
    or ``settings.begin == "deferred"``. AUTOCOMMIT connections are left alone.

    Raises:
        TypeError: ``engine`` is not an engine or ``settings`` not a :class:`SQLiteSettings`.
        ValueError: the engine is not SQLite.
        RuntimeError: the engine is already configured (detach that configuration first).

    Example::

        engine = create_engine("sqlite:///app.db")
        configured = configure_sqlite(engine)    # WAL, busy_timeout 5 s, BEGIN IMMEDIATE
        with Session(engine) as session, session.begin():
            ...                                  # no "database is locked" from a read-then-write
    """
    if is_async_engine(engine):
        engine = engine.sync_engine
    if not isinstance(engine, Engine):
        raise TypeError(
            f"engine must be a sqlalchemy Engine or AsyncEngine, got {type(engine).__name__}"
        )
    settings = SQLiteSettings() if settings is None else settings
    if not isinstance(settings, SQLiteSettings):
        raise TypeError(f"settings must be a SQLiteSettings, got {type(settings).__name__}")
    if engine.dialect.name != "sqlite":
        raise ValueError(f"configure_sqlite needs a SQLite engine, not {engine.dialect.name!r}")
    if engine in _configured:
        raise RuntimeError("this engine is already configured; detach that configuration first")
    pragmas = settings.pragmas()
    token = object()  # marks the connections this configuration has set up
    default_mode: BeginMode = settings.begin

    def on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if record.info.get(_PRAGMAS_KEY) is token:
            return
        cursor = dbapi_connection.cursor()
        try:
            for statement in pragmas:
                cursor.execute(statement)
                cursor.fetchall()
        finally:
            cursor.close()
        record.info[_PRAGMAS_KEY] = token

    def on_begin(conn: Connection) -> None:
        ensure_begin(conn, conn.get_execution_options().get(BEGIN_OPTION), default_mode)

    # Listening on the engine (not its pool) survives engine.dispose().
    event.listen(engine, "checkout", on_checkout)
    event.listen(engine, "begin", on_begin)
    _configured[engine] = settings
    _log.debug("SQLite settings installed: %s", ", ".join(pragmas) or "no pragmas")

    def remove() -> None:
        if _configured.get(engine) is not settings:
            return
        event.remove(engine, "checkout", on_checkout)
        event.remove(engine, "begin", on_begin)
        del _configured[engine]

    return SQLiteConfiguration(engine, settings, remove)


_PRAGMAS_KEY = "sqlalchemy_resilience.sqlite_pragmas"
