"""Whether a connection commits every statement on its own, and who made it so.

A unit of work is atomic only when its statements wait for one COMMIT. A
connection can stop waiting in four places, and every decision about what was
committed has to look at all of them:

* ``create_engine(..., isolation_level="AUTOCOMMIT")`` (SQLAlchemy sets it on
  every new driver connection);
* ``engine.execution_options(isolation_level="AUTOCOMMIT")``,
  ``connection.execution_options(...)``, a session's ``bind`` in AUTOCOMMIT;
* the driver connection itself (``connect_args={"autocommit": True}`` on
  psycopg, a ``connect`` event that sets it, ``isolation_level=None`` on sqlite3
  without a ``BEGIN`` of its own).

The first two are read from SQLAlchemy's options, the last from the driver
connection's own attributes: no round trip.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Select, TextClause
from sqlalchemy.engine import Connection

__all__ = [
    "autocommit_source",
    "driver_autocommits",
    "engine_autocommit_source",
    "sql_reads_only",
    "statement_reads_only",
]


def driver_autocommits(dbapi_connection: Any, driver_connection: Any = None) -> bool:
    """Whether a DBAPI connection (or SQLAlchemy's adapter of one) is in autocommit now.

    SQLite's drivers count as autocommitting only when no ``BEGIN`` is open:
    the recipe that sets ``isolation_level = None`` and emits its own
    ``BEGIN`` (SQLAlchemy's documented one, and ``configure_sqlite``) is atomic.

    Example::

        >>> import sqlite3
        >>> driver_autocommits(sqlite3.connect(":memory:", isolation_level=None))
        True
    """
    driver = dbapi_connection if driver_connection is None else driver_connection
    if hasattr(driver, "in_transaction") and hasattr(driver, "isolation_level"):
        # sqlite3 and aiosqlite (Python 3.12's ``autocommit`` attribute is
        # True for autocommit, False for "always in a transaction").
        mode = getattr(driver, "autocommit", None)
        if mode is True:
            return True
        if mode is False:
            return False
        return driver.isolation_level is None and not driver.in_transaction
    value = getattr(dbapi_connection, "autocommit", None)
    if callable(value):  # PyMySQL's autocommit() is a setter
        getter = getattr(dbapi_connection, "get_autocommit", None)
        value = getter() if callable(getter) else None
    return value is True


def autocommit_source(conn: Connection) -> str | None:
    """Where ``conn``'s autocommit comes from, or None when its statements wait for COMMIT.

    Example::

        >>> with engine.connect() as conn:  # doctest: +SKIP
        ...     autocommit_source(conn.execution_options(isolation_level="AUTOCOMMIT"))
        "execution_options(isolation_level='AUTOCOMMIT')"
    """
    source = _settings_source(conn.get_execution_options(), conn.dialect)
    if source is not None:
        return source
    try:
        fairy = conn.connection
        dbapi_connection = fairy.dbapi_connection
        if dbapi_connection is None or not driver_autocommits(
            dbapi_connection, fairy.driver_connection
        ):
            return None
    except Exception:  # closed or invalidated: nothing left to ask
        return None
    return "the driver connection (autocommit set in connect_args or a connect event)"


def engine_autocommit_source(engine: Any) -> str | None:
    """Where an engine's autocommit comes from, read from its settings alone (no connection).

    Misses a driver connection set to autocommit by ``connect_args`` or a
    ``connect`` event; :func:`autocommit_source` on a connection sees that too.

    Example::

        >>> from sqlalchemy import create_engine
        >>> engine_autocommit_source(create_engine("sqlite://", isolation_level="AUTOCOMMIT"))
        "create_engine(isolation_level='AUTOCOMMIT')"
    """
    if isinstance(engine, Connection):
        return autocommit_source(engine)
    options = getattr(engine, "get_execution_options", None)
    return _settings_source(
        options() if callable(options) else {}, getattr(engine, "dialect", None)
    )


def _settings_source(execution_options: Mapping[str, Any], dialect: Any) -> str | None:
    """Autocommit set through SQLAlchemy: execution options, or ``create_engine``'s argument."""
    if execution_options.get("isolation_level") == "AUTOCOMMIT":
        return "execution_options(isolation_level='AUTOCOMMIT')"
    if getattr(dialect, "_on_connect_isolation_level", None) == "AUTOCOMMIT":
        return "create_engine(isolation_level='AUTOCOMMIT')"
    return None


# The first word of a statement that cannot change anything on its own.
_READ_WORDS = frozenset({"select", "show", "values", "table", "explain"})


def sql_reads_only(sql: str) -> bool:
    """Whether a SQL string is a plain read (its first word), as far as the text tells.

    Example::

        >>> sql_reads_only("  (SELECT 1)"), sql_reads_only("EXPLAIN ANALYZE DELETE FROM t")
        (True, False)
    """
    text = sql.lstrip(" \t\r\n(")
    word = text.split(None, 1)[0].lower() if text else ""
    if word == "explain" and "analyze" in text[:40].lower():
        return False  # EXPLAIN ANALYZE runs the statement
    return word in _READ_WORDS


def statement_reads_only(statement: Any) -> bool:
    """Whether a statement object (or SQL string) only reads: a ``Select``, or text that reads.

    Example::

        >>> from sqlalchemy import select, text, literal
        >>> statement_reads_only(select(literal(1))), statement_reads_only(text("UPDATE t SET a=1"))
        (True, False)
    """
    if isinstance(statement, str):
        return sql_reads_only(statement)
    if isinstance(statement, TextClause):
        return sql_reads_only(statement.text)
    return isinstance(statement, Select)
