"""The migrating connection's session: timeouts set and put back, and SQLite's DDL made transactional.

Timeouts are session settings (PostgreSQL ``lock_timeout``/``statement_timeout``,
SQLite's ``busy_timeout``, MySQL/MariaDB's lock-wait and statement-time
variables), so they also hold inside ``op.get_context().autocommit_block()``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import event, func, select
from sqlalchemy.engine import Connection

from sqlalchemy_resilience.transactions.sqlite import restore_busy_timeout, set_busy_timeout

__all__ = ["milliseconds", "session_timeouts", "transactional_ddl"]

log = logging.getLogger("sqlalchemy_resilience.migrations")


def milliseconds(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


@contextlib.contextmanager
def session_timeouts(connection: Connection, timeouts: dict[str, float]) -> Iterator[None]:
    """``timeouts`` (seconds by name) as settings of the connection's session, put back afterwards."""
    name = connection.dialect.name
    if not timeouts:
        yield
        return
    if name == "sqlite":
        if "statement_timeout" in timeouts:
            log.info("statement_timeout has no SQLite equivalent: not applied")
        if "lock_timeout" not in timeouts:
            yield
            return
        set_busy_timeout(connection, round(timeouts["lock_timeout"] * 1000))
        connection.commit()
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                restore_busy_timeout(connection)
        return
    if name == "postgresql":
        apply = _postgresql_timeouts
    elif name in ("mysql", "mariadb"):
        apply = _mysql_timeouts
    else:
        yield
        return
    restore = apply(connection, timeouts)
    connection.commit()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # a dead connection takes its settings with it
            if connection.in_transaction():
                connection.rollback()
            restore()
            connection.commit()


def _postgresql_timeouts(connection: Connection, timeouts: dict[str, float]) -> Callable[[], None]:
    """Set the timeouts for the session; returns what puts the previous values back."""
    previous = {
        key: connection.execute(select(func.current_setting(key))).scalar() for key in timeouts
    }
    for key, seconds in timeouts.items():
        connection.execute(select(func.set_config(key, milliseconds(seconds), False)))

    def restore() -> None:
        for key, value in previous.items():
            connection.execute(select(func.set_config(key, value, False)))

    return restore


def _mysql_variables(connection: Connection, timeouts: dict[str, float]) -> list[tuple[str, Any]]:
    """The session variables (fixed names) and values that carry ``timeouts`` on MySQL/MariaDB."""
    found: list[tuple[str, Any]] = []
    if "lock_timeout" in timeouts:
        whole = max(1, math.ceil(timeouts["lock_timeout"]))
        # DDL waits for the table's metadata lock; a data migration's rows for InnoDB's.
        found += [("lock_wait_timeout", whole), ("innodb_lock_wait_timeout", whole)]
    if "statement_timeout" in timeouts:
        seconds = timeouts["statement_timeout"]
        if getattr(connection.dialect, "is_mariadb", False):
            found.append(("max_statement_time", seconds))
        else:  # MySQL times SELECTs only
            found.append(("max_execution_time", max(1, math.ceil(seconds * 1000))))
    return found


def _mysql_timeouts(connection: Connection, timeouts: dict[str, float]) -> Callable[[], None]:
    """:func:`_postgresql_timeouts` for MySQL/MariaDB's session variables."""
    variables = _mysql_variables(connection, timeouts)
    # The variable names are this module's constants; the values are bound.
    previous = connection.exec_driver_sql(
        "SELECT " + ", ".join(f"@@SESSION.{variable}" for variable, _ in variables)
    ).one()
    for variable, value in variables:
        connection.exec_driver_sql(f"SET SESSION {variable} = %s", (value,))

    def restore() -> None:
        for (variable, _), old in zip(variables, previous, strict=True):
            connection.exec_driver_sql(f"SET SESSION {variable} = %s", (old,))

    return restore


@contextlib.contextmanager
def transactional_ddl(connection: Connection) -> Iterator[None]:
    """SQLite: every SQLAlchemy transaction on ``connection`` really begins (``BEGIN IMMEDIATE``).

    pysqlite and aiosqlite send no ``BEGIN`` before DDL (only before DML), so
    without this a revision's ``CREATE``/``ALTER`` commits on its own and a
    revision killed or failing half-way leaves its DDL applied and the version
    behind. SQLite's DDL is transactional once a ``BEGIN`` is sent: the driver
    is put in autocommit mode for the migration and this connection's
    transactions begin explicitly (SQLAlchemy's documented recipe, applied to
    this one connection), so the revision, its version row and its checksum
    commit together or not at all. A ``BEGIN`` the application's own recipe
    already sent is left alone. The driver's mode is put back afterwards.
    """
    if connection.dialect.name != "sqlite":
        yield
        return
    if connection.in_transaction():
        connection.commit()
    fairy = connection.connection
    driver: Any = fairy.driver_connection
    if getattr(driver, "autocommit", None) is False:
        yield  # Python 3.12's autocommit=False: always inside a transaction already
        return
    previous = driver.isolation_level
    if previous is not None:
        # Through SQLAlchemy's adapter: aiosqlite's connection lives on its own thread.
        fairy.dbapi_connection.isolation_level = None  # type: ignore[union-attr]

    def begin(conn: Connection) -> None:
        # Appended to the engine's listeners, so after an application's own
        # BEGIN recipe; only the migrating connection is touched.
        if conn is connection and not driver.in_transaction:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    engine = connection.engine
    event.listen(engine, "begin", begin)
    try:
        yield
    finally:
        event.remove(engine, "begin", begin)
        if previous is not None and not connection.closed and not connection.invalidated:
            with contextlib.suppress(Exception):  # a broken connection is discarded anyway
                if connection.in_transaction():
                    connection.rollback()
                fairy.dbapi_connection.isolation_level = previous  # type: ignore[union-attr]
