"""Translation entry points: by hand, from ``handle_error``, and at checkout.

SQLAlchemy routes failures through different paths, so translation has three
doors, all ending in :func:`~sqlalchemy_resilience.errors.classify.build_error`:

* :func:`translate_error`, for an exception in hand;
* :func:`translate_context`, for the engine's ``handle_error`` event (every
  DBAPI error, connect-time ones included, with SQLAlchemy's own verdict on
  whether the connection was lost);
* :func:`translate_checkout_failure`, for what a pool checkout raises without
  passing ``handle_error``: a refused or timed-out TCP connect (a plain
  ``OSError`` from asyncpg), a raw asyncpg server error on SQLAlchemy 2.0,
  and the pool's own ``TimeoutError``, which becomes :class:`PoolExhausted`.
"""

from __future__ import annotations

import contextlib
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import ExceptionContext

from sqlalchemy_resilience._util.autocommit import autocommit_source, sql_reads_only

from .classify import CONNECT_FAILURES, Phase, build_error
from .hierarchy import DatabaseFailure, PoolExhausted, ReadOnlyTransaction, ResilienceError

__all__ = [
    "COMMIT_TAG",
    "describe",
    "is_driver_exception",
    "pool_exhausted",
    "pool_numbers",
    "reported_read_only",
    "translate_checkout_failure",
    "translate_context",
    "translate_error",
]

# Set on an exception raised by the dialect's do_commit: COMMIT was in flight.
COMMIT_TAG = "_sqlalchemy_resilience_commit"


def is_driver_exception(exc: BaseException) -> bool:
    """Whether ``exc`` comes from one of the supported drivers' own modules (or the AWS wrapper's)."""
    module = type(exc).__module__
    return module.startswith(
        (
            "asyncpg",
            "psycopg",
            "sqlite3",
            "aiosqlite",
            "_sqlite3",
            "aws_advanced_python_wrapper",
            "pymysql",
            "aiomysql",
            "asyncmy",
            "MySQLdb",
        )
    )


def describe(exc: BaseException) -> str:
    """One line for the package's own records: no SQL, no bound parameters.

    A translated error gives :meth:`~.hierarchy.DatabaseFailure.safe_text`
    (class, code, redacted server message, error id); another of the
    package's errors its message; anything else its class and first line.
    """
    if isinstance(exc, DatabaseFailure):
        return exc.safe_text()
    if isinstance(exc, ResilienceError):
        return str(exc)
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def translate_error(exc: BaseException, *, log_parameters: bool = False) -> BaseException:
    """Translate a database exception by hand, as the ``handle_error`` hook does.

    Returns a :class:`~sqlalchemy_resilience.ResilienceError` for a SQLAlchemy
    ``DBAPIError``, a driver exception, a pool ``TimeoutError`` or a socket
    error; returns any other exception (and an already translated one) unchanged.
    The original becomes ``__cause__``.

    Args:
        exc: the exception.
        log_parameters: keep the values the server's message holds in the
            result's ``summary`` (off: redacted). ``str()`` follows ``exc``'s
            own ``hide_parameters``, as SQLAlchemy's text does.

    Example::

        try:
            conn.execute(insert(users).values(email=email))
        except sqlalchemy.exc.DBAPIError as raw:
            err = translate_error(raw)
            print(type(err).__name__, err.retryable, err.user_message("ja"))
    """
    if isinstance(exc, ResilienceError):
        return exc
    if isinstance(exc, sa_exc.TimeoutError):
        new: BaseException = PoolExhausted(str(exc).splitlines()[0])
    elif isinstance(exc, sa_exc.DBAPIError) or is_driver_exception(exc):
        new = build_error(
            exc,
            is_disconnect=bool(getattr(exc, "connection_invalidated", False)),
            show_parameters=log_parameters,
        )
    elif isinstance(exc, CONNECT_FAILURES):
        new = build_error(exc, phase="connect", is_disconnect=True, show_parameters=log_parameters)
    else:
        return exc
    new.__cause__ = exc
    return new


def pool_numbers(status: dict[str, Any]) -> str:
    """``"QueuePool: size=5, checkedout=5, ..."`` for a message, from a pool status mapping."""
    numbers = ", ".join(f"{k}={v}" for k, v in status.items() if k != "pool_class")
    return f"{status['pool_class']}: {numbers}"


def pool_exhausted(status: dict[str, Any]) -> PoolExhausted:
    """The :class:`PoolExhausted` for a pool timeout, naming the pool's numbers."""
    return PoolExhausted(
        f"no connection free within the pool timeout ({pool_numbers(status)})",
        pool_status=status,
    )


def translate_checkout_failure(
    exc: BaseException,
    *,
    dbapi_error: type[BaseException],
    status: Any,
    log_parameters: bool,
    secrets: tuple[str, ...],
) -> BaseException | None:
    """The translation of what a checkout raised, or None to let it through.

    Args:
        exc: what the pool's ``connect()`` raised.
        dbapi_error: the driver's ``Error`` class; those are routed through
            ``handle_error`` by SQLAlchemy and are left alone here.
        status: a callable returning the pool's status, read only on a timeout.
        log_parameters: as for :func:`translate_error`.
        secrets: strings to scrub from messages (the password).
    """
    if isinstance(exc, ResilienceError):
        return None
    if isinstance(exc, sa_exc.TimeoutError):
        return pool_exhausted(status())
    if isinstance(exc, dbapi_error):
        return None  # Connection.__init__ routes it through handle_error.
    if isinstance(exc, CONNECT_FAILURES) or is_driver_exception(exc):
        return build_error(
            exc,
            phase="connect",
            is_disconnect=isinstance(exc, CONNECT_FAILURES),
            show_parameters=log_parameters,
            secrets=secrets,
        )
    return None


def _phase(context: ExceptionContext) -> Phase:
    conn = context.connection
    if conn is None:
        return "connect"
    if context.statement is None and getattr(context.original_exception, COMMIT_TAG, False):
        return "commit"
    if context.statement is not None and not _reads_only(context) and autocommit_source(conn):
        # The statement commits on its own (AUTOCOMMIT, set on the engine, the
        # connection or the driver): a lost reply leaves its outcome unknown.
        return "commit"
    return "statement"


def _reads_only(context: ExceptionContext) -> bool:
    ctx = context.execution_context
    if ctx is not None and (ctx.isinsert or ctx.isupdate or getattr(ctx, "isdelete", False)):
        return False
    return sql_reads_only(context.statement or "")


# What PostgreSQL (14 and later) reports to the client about the server's own
# state, on connect and whenever it changes (a promotion, a reload).
_READ_ONLY_PARAMETERS = ("in_hot_standby", "default_transaction_read_only")


def reported_read_only(driver_connection: Any) -> bool | None:
    """Whether the server said it is read-only, from the parameters it reported.

    True when ``in_hot_standby`` or ``default_transaction_read_only`` is
    ``on``, False when the server reported them and both are off, None when
    it reported neither (PostgreSQL before 14, or not a PostgreSQL driver).
    Reads what the driver already holds: no query, no round trip.

    Example::

        >>> reported_read_only(raw.driver_connection)  # doctest: +SKIP
        False
    """
    values: list[Any] = []
    info = getattr(driver_connection, "info", None)
    if info is not None and callable(getattr(info, "parameter_status", None)):  # psycopg
        values = [info.parameter_status(name) for name in _READ_ONLY_PARAMETERS]
    elif callable(getattr(driver_connection, "get_settings", None)):  # asyncpg
        settings = driver_connection.get_settings()
        values = [getattr(settings, name, None) for name in _READ_ONLY_PARAMETERS]
    known = [v for v in values if isinstance(v, str)]
    if not known:
        return None
    return any(v == "on" for v in known)


def _driver_connection(context: ExceptionContext) -> Any:
    conn = context.connection
    if conn is None:
        return None
    try:
        return conn.connection.driver_connection
    except Exception:  # a connection in a state SQLAlchemy will not hand out
        return None


def _in_hot_standby(context: ExceptionContext) -> bool:
    """The server last reported ``in_hot_standby = on`` (PostgreSQL 14+): it cannot write."""
    driver = _driver_connection(context)
    if driver is None:
        return False
    info = getattr(driver, "info", None)
    if info is not None and callable(getattr(info, "parameter_status", None)):  # psycopg
        return bool(info.parameter_status("in_hot_standby") == "on")
    if callable(getattr(driver, "get_settings", None)):  # asyncpg
        return getattr(driver.get_settings(), "in_hot_standby", None) == "on"
    return False


def _server_read_only(context: ExceptionContext) -> bool | None:
    driver = _driver_connection(context)
    return None if driver is None else reported_read_only(driver)


def _sqlstate(exc: sa_exc.DBAPIError) -> str | None:
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return state if isinstance(state, str) else None


# Connections that must not be used again although the driver still holds
# them open: a read-only server (the pool's other connections lead there too)
# and a protocol violation (the session's state is unknown).
_DISCARD = frozenset({"25006", "08P01"})
# MySQL/MariaDB: a read-only server, transaction or mode (a demoted writer:
# sqlalchemy#7839), and a Galera node that is not ready.
_MYSQL_DISCARD = frozenset({"1290", "1792", "1836", "1047"})
#: ``Connection.info`` key marking a transaction whose failed statement was
#: rolled back alone (MySQL's lock wait timeout, 1205): its value names the
#: error. transaction() and run_transaction roll such a transaction back
#: instead of committing it (transactions.partial).
STATEMENT_ROLLED_BACK = "sqlalchemy_resilience.statement_rolled_back"
_STATEMENT_ONLY = frozenset({"1205"})

# Set by transaction(read_only=True) on MySQL (transactions.options; a lower
# layer cannot import it, so the key is repeated here and a test ties the two).
_MYSQL_READ_ONLY_TRANSACTION = "sqlalchemy_resilience.read_only_transaction"


def _mariadb(context: ExceptionContext) -> bool | None:
    """Whether the engine talks to MariaDB (True), MySQL (False), or neither (None)."""
    dialect = context.dialect
    if dialect.name not in ("mysql", "mariadb"):
        return None
    flavour = getattr(dialect, "is_mariadb", None)
    return flavour if isinstance(flavour, bool) else None


def translate_context(
    context: ExceptionContext, *, log_parameters: bool, secrets: tuple[str, ...]
) -> BaseException | None:
    """The translated error for a ``handle_error`` event, or None to keep SQLAlchemy's.

    Not a DBAPI error (SQLAlchemy's own, or an exit exception such as
    ``CancelledError``) and a pre-ping SQLAlchemy will recover from are left alone.

    A 25006 from a server that reports itself read-only (a standby, or a
    primary demoted in a failover) and an 08P01 protocol violation mark the
    connection as lost (``context.is_disconnect``): SQLAlchemy then discards
    it and every pooled connection opened before it, so the re-run of the
    unit of work reconnects -- to the new primary, after a failover.
    """
    original = context.sqlalchemy_exception
    if original is None or context.is_pre_ping:
        return None
    if not isinstance(original, sa_exc.DBAPIError):
        return None
    sqlstate = _sqlstate(original)
    read_only = _server_read_only(context) if sqlstate == "25006" else None
    if (
        read_only is None
        and context.connection is not None
        and context.connection.info.get(_MYSQL_READ_ONLY_TRANSACTION)
    ):
        # transaction(read_only=True) on MySQL: a 1792 is the application's own
        # READ ONLY transaction, whatever the server is.
        read_only = False
    phase = _phase(context)
    if phase == "commit" and _in_hot_standby(context):
        # A hot standby cannot write: whatever happened to this COMMIT, nothing
        # was changed, so the outcome is known and a re-run is safe.
        phase = "statement"
    err = build_error(
        original,
        phase=phase,
        is_disconnect=context.is_disconnect,
        show_parameters=log_parameters,
        secrets=secrets,
        server_read_only=read_only,
        mariadb=_mariadb(context),
    )
    if sqlstate in _DISCARD and not isinstance(err, ReadOnlyTransaction):
        context.is_disconnect = True
    if (
        err.sqlstate is None
        and err.driver_code in _MYSQL_DISCARD
        and not isinstance(err, ReadOnlyTransaction)
    ):
        context.is_disconnect = True
    if (
        err.sqlstate is None
        and err.driver_code in _STATEMENT_ONLY
        and context.connection is not None
    ):
        with contextlib.suppress(Exception):
            context.connection.info[STATEMENT_ROLLED_BACK] = (
                f"{type(err).__name__} {err.driver_code}"
            )
    return err
