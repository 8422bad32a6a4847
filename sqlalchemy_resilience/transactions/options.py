"""A transaction's options: validated once, then applied to its connection in one place.

:class:`TransactionOptions` checks what the caller asked for (types, ranges,
combinations PostgreSQL would silently ignore, what a savepoint cannot change,
what the database cannot do). :func:`prepare` applies it to the connection
after the transaction began and returns what must be undone before it ends:

* PostgreSQL: ``SET TRANSACTION READ ONLY [DEFERRABLE]`` and
  ``set_config(name, value, is_local => true)`` -- ``SET LOCAL`` with bound
  values -- so the settings end with the transaction and the pooled connection
  comes back clean. A savepoint restores the values it replaced when it is
  released (PostgreSQL itself restores them when it rolls back).
* SQLite: the transaction begins with ``BEGIN IMMEDIATE`` (``BEGIN DEFERRED``
  when read-only); ``lock_timeout`` is ``busy_timeout`` for the transaction's
  lifetime and ``read_only`` is ``PRAGMA query_only``, both put back before the
  transaction ends; ``statement_timeout`` and ``idle_in_transaction_timeout``
  have no SQLite equivalent and raise :class:`NotSupported`.
* MySQL and MariaDB: ``SET TRANSACTION READ ONLY`` before the (implicit)
  transaction's first statement; the timeouts are session variables --
  ``innodb_lock_wait_timeout``, ``max_statement_time`` (MariaDB) or
  ``max_execution_time`` (MySQL, SELECTs only), ``idle_transaction_timeout``
  (MariaDB) -- since MySQL has no ``SET LOCAL``: read first, set with bound
  values, and put back when the transaction ends, on rollback too, so the
  pooled connection comes back as it was.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

from sqlalchemy_resilience._util.seconds import Seconds, to_seconds
from sqlalchemy_resilience.errors.hierarchy import NotSupported

from .sqlite import (
    BEGIN_OPTION,
    BeginMode,
    BeginRequest,
    ensure_begin,
    milliseconds,
    restore_busy_timeout,
    set_busy_timeout,
    settings_of,
)

__all__ = ["READ_ONLY_TRANSACTION_KEY", "TransactionOptions", "prepare"]

#: ``Connection.info`` key set while a MySQL transaction() is READ ONLY.
READ_ONLY_TRANSACTION_KEY = "sqlalchemy_resilience.read_only_transaction"

_log = logging.getLogger("sqlalchemy_resilience.transaction")

ISOLATION_LEVELS = ("SERIALIZABLE", "REPEATABLE READ", "READ COMMITTED", "READ UNCOMMITTED")

# PostgreSQL's setting for each timeout option.
_PG_SETTINGS = {
    "statement_timeout": "statement_timeout",
    "lock_timeout": "lock_timeout",
    "idle_in_transaction_timeout": "idle_in_transaction_session_timeout",
}
_SQLITE_HINTS = {
    "statement_timeout": "SQLite has no statement timeout; bound the whole unit of work "
    "with run_transaction(..., attempt_timeout=)",
    "idle_in_transaction_timeout": "SQLite holds no server session to time out",
}
_MAX_TIMEOUT = 2**31 / 1000  # PostgreSQL's and SQLite's limit, in seconds

# The session variable for each timeout option, and its unit, per flavour.
_MARIADB_SETTINGS = {
    "lock_timeout": ("innodb_lock_wait_timeout", "whole seconds"),
    "statement_timeout": ("max_statement_time", "seconds"),
    "idle_in_transaction_timeout": ("idle_transaction_timeout", "whole seconds"),
}
_MYSQL_SETTINGS = {
    "lock_timeout": ("innodb_lock_wait_timeout", "whole seconds"),
    "statement_timeout": ("max_execution_time", "milliseconds"),
}
_MYSQL_FAMILY = ("mysql", "mariadb")

#: Run just before the transaction or savepoint ends: ``undo(conn, committing)``.
Undo = Callable[[Connection, bool], None]


@dataclass(frozen=True)
class TransactionOptions:
    """The validated options of one ``transaction()`` call (times in float seconds)."""

    isolation_level: str | None = None
    read_only: bool = False
    deferrable: bool = False
    statement_timeout: float | None = None
    lock_timeout: float | None = None
    idle_in_transaction_timeout: float | None = None
    durable: bool = False

    @classmethod
    def build(
        cls,
        *,
        isolation_level: str | None,
        read_only: bool,
        deferrable: bool,
        statement_timeout: Seconds | None,
        lock_timeout: Seconds | None,
        idle_in_transaction_timeout: Seconds | None,
        durable: bool,
    ) -> TransactionOptions:
        """Validate the caller's values; a clear TypeError/ValueError names the bad one."""
        for name, flag in (
            ("read_only", read_only),
            ("deferrable", deferrable),
            ("durable", durable),
        ):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        if isolation_level is not None and isolation_level not in ISOLATION_LEVELS:
            raise ValueError(
                f"isolation_level must be one of {list(ISOLATION_LEVELS)} or None, "
                f"got {isolation_level!r}"
                + ("; a transaction() cannot autocommit" if isolation_level == "AUTOCOMMIT" else "")
            )
        if deferrable and not (read_only and isolation_level == "SERIALIZABLE"):
            raise ValueError(
                "deferrable=True needs read_only=True and isolation_level='SERIALIZABLE' "
                "(PostgreSQL ignores DEFERRABLE otherwise)"
            )
        timeouts = {
            name: None if value is None else _timeout(name, value)
            for name, value in (
                ("statement_timeout", statement_timeout),
                ("lock_timeout", lock_timeout),
                ("idle_in_transaction_timeout", idle_in_transaction_timeout),
            )
        }
        return cls(
            isolation_level=isolation_level,
            read_only=read_only,
            deferrable=deferrable,
            durable=durable,
            **timeouts,
        )

    def timeouts(self) -> dict[str, float]:
        """The timeout options that were given, by option name."""
        given = {
            "statement_timeout": self.statement_timeout,
            "lock_timeout": self.lock_timeout,
            "idle_in_transaction_timeout": self.idle_in_transaction_timeout,
        }
        return {name: value for name, value in given.items() if value is not None}

    def check(self, dialect: str, *, nested: bool) -> None:
        """Refuse, before anything runs, what a savepoint or this database cannot do."""
        if nested:
            for name, value in (
                ("isolation_level", self.isolation_level),
                ("read_only", self.read_only or None),
            ):
                if value is not None:
                    raise ValueError(
                        f"{name} cannot change inside a transaction: this transaction() is "
                        "nested, so it is a savepoint; set it on the outermost one"
                    )
        if dialect == "postgresql":
            return
        if dialect in _MYSQL_FAMILY:
            if self.deferrable:
                raise NotSupported("deferrable", dialect, "DEFERRABLE is PostgreSQL's")
            return
        if dialect == "sqlite":
            for name in self.timeouts():
                if name in _SQLITE_HINTS:
                    raise NotSupported(name, dialect, _SQLITE_HINTS[name])
            return
        for name in self.timeouts():
            raise NotSupported(name, dialect, "timeouts are supported on postgresql and sqlite")
        if self.read_only:
            raise NotSupported("read_only", dialect, "supported on postgresql and sqlite")

    def needs_connection(self, dialect: str) -> bool:
        """Whether the transaction must open its connection now (to prepare it)."""
        if dialect == "sqlite":
            return True  # to BEGIN IMMEDIATE before the first statement
        return self.isolation_level is not None or self.read_only or bool(self.timeouts())

    def execution_options(self, engine: Engine) -> dict[str, Any]:
        """The execution options the transaction's connection needs before it begins."""
        options: dict[str, Any] = {}
        if self.isolation_level is not None:
            options["isolation_level"] = self.isolation_level
        if engine.dialect.name == "sqlite":
            options[BEGIN_OPTION] = self.begin_request(engine)
        return options

    def begin_request(self, engine: Engine) -> BeginRequest:
        """How a SQLite transaction with these options begins."""
        configured = settings_of(engine)
        mode: BeginMode = "immediate" if configured is None else configured.begin
        if self.read_only:
            mode = "deferred"
        busy = None if self.lock_timeout is None else milliseconds(self.lock_timeout)
        return BeginRequest(mode, busy)


def _timeout(name: str, value: object) -> float:
    seconds = to_seconds(name, value)
    if seconds > _MAX_TIMEOUT:
        raise ValueError(f"{name} must be at most {int(_MAX_TIMEOUT)} seconds, got {value!r}")
    return seconds


def prepare(
    conn: Connection, options: TransactionOptions, *, nested: bool, engine: Engine
) -> Undo | None:
    """Apply ``options`` to the transaction that just began on ``conn``.

    Returns what to run on ``conn`` just before the transaction (or savepoint)
    commits or rolls back, or None when nothing needs undoing.
    """
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return _prepare_postgresql(conn, options, nested=nested)
    if dialect == "sqlite":
        return _prepare_sqlite(conn, options, nested=nested, engine=engine)
    if dialect in _MYSQL_FAMILY:
        return _prepare_mysql(conn, options, nested=nested)
    return None


def _mysql_value(seconds: float, unit: str) -> float | int:
    if unit == "whole seconds":
        return max(1, math.ceil(seconds))  # innodb_lock_wait_timeout's minimum is 1
    if unit == "milliseconds":
        return max(1, math.ceil(seconds * 1000))
    return seconds


def _prepare_mysql(conn: Connection, options: TransactionOptions, *, nested: bool) -> Undo | None:
    mariadb = bool(getattr(conn.dialect, "is_mariadb", False))
    table = _MARIADB_SETTINGS if mariadb else _MYSQL_SETTINGS
    timeouts = options.timeouts()
    for name in timeouts:
        if name not in table:
            raise NotSupported(
                name, "mysql", "MySQL has no idle-transaction timeout (MariaDB has one)"
            )
    read_only = options.read_only and not nested
    if read_only:
        # Fixed text; it applies to the implicit transaction the next statement begins.
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        # Error translation reads this: a 1792 here is the application's READ
        # ONLY transaction, not a server demoted in a failover.
        conn.info[READ_ONLY_TRANSACTION_KEY] = True
    if not timeouts:
        if not read_only:
            return None

        def forget(c: Connection, committing: bool) -> None:
            c.info.pop(READ_ONLY_TRANSACTION_KEY, None)

        return forget
    variables = [
        (table[name][0], _mysql_value(value, table[name][1])) for name, value in timeouts.items()
    ]
    # The variable names are this module's constants; the values are bound.
    previous = conn.exec_driver_sql(
        "SELECT " + ", ".join(f"@@SESSION.{variable}" for variable, _ in variables)
    ).one()
    for variable, value in variables:
        conn.exec_driver_sql(f"SET SESSION {variable} = %s", (value,))

    def undo(c: Connection, committing: bool) -> None:
        # Session variables are not transactional: put them back either way.
        c.info.pop(READ_ONLY_TRANSACTION_KEY, None)
        for (variable, _), old in zip(variables, previous, strict=True):
            c.exec_driver_sql(f"SET SESSION {variable} = %s", (old,))

    return undo


def _prepare_postgresql(
    conn: Connection, options: TransactionOptions, *, nested: bool
) -> Undo | None:
    if options.read_only and not nested:
        # Fixed text: SET TRANSACTION takes no parameters.
        conn.exec_driver_sql(
            "SET TRANSACTION READ ONLY DEFERRABLE"
            if options.deferrable
            else "SET TRANSACTION READ ONLY"
        )
    timeouts = options.timeouts()
    if not timeouts:
        return None
    settings = [
        (_PG_SETTINGS[name], str(math.ceil(value * 1000))) for name, value in timeouts.items()
    ]
    if not nested:
        conn.execute(select(*(func.set_config(name, value, True) for name, value in settings)))
        return None
    # A savepoint puts back what it replaced when released; read it first
    # (the select list is evaluated left to right).
    columns = []
    for name, value in settings:
        columns.append(func.current_setting(name))
        columns.append(func.set_config(name, value, True))
    row = conn.execute(select(*columns)).one()
    previous = [(name, row[2 * i]) for i, (name, _) in enumerate(settings)]

    def undo(c: Connection, committing: bool) -> None:
        if committing:  # on rollback PostgreSQL restores them itself
            c.execute(select(*(func.set_config(name, value, True) for name, value in previous)))

    return undo


def _prepare_sqlite(
    conn: Connection, options: TransactionOptions, *, nested: bool, engine: Engine
) -> Undo | None:
    steps: list[Callable[[Connection], None]] = []
    if nested:
        if options.lock_timeout is not None:
            set_busy_timeout(conn, milliseconds(options.lock_timeout))
            steps.append(restore_busy_timeout)
    else:
        request = options.begin_request(engine)
        # The engine's begin hook (configure_sqlite) may have begun already;
        # then this is a no-op.
        ensure_begin(conn, request, request.mode)
        if options.lock_timeout is not None:
            steps.append(restore_busy_timeout)
        if options.read_only:
            conn.exec_driver_sql("PRAGMA query_only = ON")
            steps.append(_query_only_off)
    if not steps:
        return None

    def undo(c: Connection, committing: bool) -> None:
        # PRAGMAs are not transactional: put them back on rollback too.
        for step in steps:
            step(c)

    return undo


def _query_only_off(conn: Connection) -> None:
    conn.exec_driver_sql("PRAGMA query_only = OFF")
