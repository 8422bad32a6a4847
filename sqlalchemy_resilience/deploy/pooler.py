"""Transaction-mode poolers (PgBouncer, RDS Proxy, Supavisor): engine options and a start-up check.

In transaction (or statement) pooling the pooler hands a server session to
another client after every transaction. Whatever a driver keeps in the session
between transactions goes with it: asyncpg's and psycopg's named prepared
statements are the failure users meet (``prepared statement
"__asyncpg_stmt_5__" does not exist``, ``"_pg3_0" already exists``).

:func:`pooler_safe_options` returns the engine options that keep the drivers
inside one transaction: asyncpg with both statement caches off and *unnamed*
prepared statements (an unnamed statement lives until the next one, so none
is left behind in a server session; SQLAlchemy's documented random names work
too but pile up in every server session), psycopg with ``prepare_threshold=None``.

:func:`check_pooler` finds out, at start-up, whether a transaction pooler is
in the path: the backend pid seen by one client changes between two of its
transactions while a second client holds a transaction open (a session-mode
pooler or a direct connection keeps one backend per client). It warns with
:class:`PoolerWarning` when the engine's driver connections would still keep
prepared statements across transactions.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sqlalchemy_resilience.errors import PoolerIncompatible, translate_error

__all__ = [
    "PoolMode",
    "PoolerReport",
    "PoolerWarning",
    "check_pooler",
    "check_pooler_sync",
    "keeps_prepared_statements",
    "pooler_safe_options",
    "unnamed_statement",
]

_log = logging.getLogger("sqlalchemy_resilience.deploy")

PoolMode = Literal["session", "transaction", "statement"]
_MODES = ("session", "transaction", "statement")
# Drivers whose default keeps no server-side prepared statement between transactions.
_NO_PREPARED = ("psycopg2", "pg8000")


class PoolerWarning(UserWarning):
    """The engine talks to a transaction-mode pooler with driver settings that break under it.

    Example::

        warnings.simplefilter("error", PoolerWarning)  # make it fatal in tests
    """


def unnamed_statement() -> str:
    """asyncpg ``prepared_statement_name_func`` giving the unnamed statement (``""``).

    The unnamed prepared statement is replaced by the next Parse, so a
    transaction pooler's server sessions collect none of them.

    Example::

        create_async_engine(url, connect_args={"prepared_statement_name_func": unnamed_statement})
    """
    return ""


def pooler_safe_options(
    url: str | URL,
    *,
    pool_mode: PoolMode = "transaction",
    connect_args: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Engine keyword arguments for a database behind a transaction-mode pooler.

    Args:
        url: the URL the engine will use (its driver decides the options).
        pool_mode: the pooler's mode; ``"session"`` needs nothing and returns
            ``connect_args`` as given.
        connect_args: the application's own ``connect_args``; kept, and its
            values win over the ones added here.

    Returns:
        ``{"connect_args": {...}}`` to pass to ``create_engine`` /
        ``create_async_engine``: for asyncpg ``statement_cache_size=0``,
        ``prepared_statement_cache_size=0`` and unnamed prepared statements;
        for psycopg ``prepare_threshold=None``; psycopg2 and pg8000 need nothing.

    Raises:
        ValueError: not a PostgreSQL URL, an unknown driver, or an unknown ``pool_mode``.

    Example::

        url = "postgresql+asyncpg://app@pgbouncer:6432/app"
        engine = create_async_engine(url, **pooler_safe_options(url), pool_size=20)
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(
            f"pooler_safe_options is for PostgreSQL URLs; got the {parsed.get_backend_name()!r} "
            "backend"
        )
    if pool_mode not in _MODES:
        raise ValueError(f"pool_mode must be one of {', '.join(_MODES)}; got {pool_mode!r}")
    if connect_args is not None and not isinstance(connect_args, Mapping):
        raise TypeError(f"connect_args must be a mapping or None, got {connect_args!r}")
    given = dict(connect_args or {})
    if pool_mode == "session":
        return {"connect_args": given}
    driver = parsed.get_driver_name()
    added: dict[str, Any]
    if driver == "asyncpg":
        added = {
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": unnamed_statement,
        }
    elif driver == "psycopg":
        added = {"prepare_threshold": None}
    elif driver in _NO_PREPARED:
        added = {}
    else:
        raise ValueError(
            f"no pooler-safe options known for the {driver!r} driver; "
            "use asyncpg, psycopg, psycopg2 or pg8000"
        )
    return {"connect_args": {**added, **given}}


@dataclass(frozen=True)
class PoolerReport:
    """What :func:`check_pooler` found.

    Attributes:
        transaction_pooling: a transaction- or statement-mode pooler is in the path.
        driver: the engine's driver (``asyncpg``, ``psycopg``, ...).
        keeps_prepared_statements: the driver connections keep named prepared
            statements between transactions (False for pooler-safe options).
        backend_pids: the backend pids seen (first client, second, first again).
        problem: why the engine is unsafe behind this pooler, or None.

    Example::

        report = await check_pooler(engine)
        assert report.safe, report.problem
    """

    transaction_pooling: bool
    driver: str
    keeps_prepared_statements: bool
    backend_pids: tuple[int, ...]
    problem: str | None = None

    @property
    def safe(self) -> bool:
        """No problem found: no transaction pooler, or one the driver settings fit."""
        return self.problem is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (health output)."""
        return {
            "transaction_pooling": self.transaction_pooling,
            "driver": self.driver,
            "keeps_prepared_statements": self.keeps_prepared_statements,
            "safe": self.safe,
            "problem": self.problem,
        }


def keeps_prepared_statements(driver: str, driver_connection: Any) -> bool:
    """Whether this live driver connection keeps named prepared statements across transactions.

    ``driver_connection`` is SQLAlchemy's asyncpg adapter for asyncpg (it
    holds SQLAlchemy's statement cache), the driver's own connection otherwise.

    Example::

        raw = await conn.get_raw_connection()
        keeps_prepared_statements("asyncpg", raw.dbapi_connection)
    """
    if driver == "asyncpg":
        adapted = driver_connection
        sa_cache = getattr(adapted, "_prepared_statement_cache", None)
        name_func = getattr(adapted, "_prepared_statement_name_func", None)
        raw = getattr(adapted, "_connection", None)
        stmt_cache = getattr(raw, "_stmt_cache", None)
        asyncpg_cache = stmt_cache.get_max_size() if stmt_cache is not None else 0
        unnamed = name_func is not None and name_func() == ""
        # SQLAlchemy's default name function returns None (asyncpg's counter
        # names, which collide between clients); a custom one gives unique
        # names or the unnamed statement.
        default_names = name_func is None or name_func() is None
        return bool(sa_cache is not None or asyncpg_cache or (default_names and not unnamed))
    if driver == "psycopg":
        return getattr(driver_connection, "prepare_threshold", None) is not None
    return False


def _problem(
    transaction_pooling: bool, driver: str, keeps: bool, failure: str | None
) -> str | None:
    if failure is not None:
        return failure
    if transaction_pooling and keeps:
        return (
            f"a transaction-mode pooler is in the path and the {driver} connections keep "
            "prepared statements between transactions ('prepared statement ... does not "
            "exist / already exists' will follow): create the engine with "
            "sqlalchemy_resilience.deploy.pooler_safe_options(url)"
        )
    return None


def _report(
    driver: str, keeps: bool, pids: list[int], failure: BaseException | None, warn: bool
) -> PoolerReport:
    failure_text = None
    pooled = len(pids) == 3 and pids[2] != pids[0]
    if failure is not None:
        translated = translate_error(failure)
        if not isinstance(translated, PoolerIncompatible):
            raise failure
        pooled = True
        failure_text = (
            "a transaction-mode pooler is in the path: the check itself failed with "
            f"{type(translated).__name__} ({translated.sqlstate}); create the engine with "
            "sqlalchemy_resilience.deploy.pooler_safe_options(url)"
        )
    report = PoolerReport(
        transaction_pooling=pooled,
        driver=driver,
        keeps_prepared_statements=keeps,
        backend_pids=tuple(pids),
        problem=_problem(pooled, driver, keeps, failure_text),
    )
    if report.problem is not None and warn:
        _log.warning("sqlalchemy_resilience: %s", report.problem)
        warnings.warn(report.problem, PoolerWarning, stacklevel=3)
    return report


def _require_postgresql(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        raise ValueError(
            f"check_pooler needs a PostgreSQL engine; this engine's dialect is "
            f"{engine.dialect.name!r}"
        )


_PID = select(func.pg_backend_pid())


def check_pooler_sync(engine: Engine, *, warn: bool = True) -> PoolerReport:
    """:func:`check_pooler` for a sync ``Engine``.

    Example::

        report = check_pooler_sync(engine)
        print(report.transaction_pooling, report.problem)
    """
    _require_postgresql(engine)
    pids: list[int] = []
    failure: BaseException | None = None
    with engine.connect() as first:
        driver_connection = first.connection.driver_connection
        keeps = keeps_prepared_statements(engine.dialect.driver, driver_connection)
        try:
            _pids_sync(engine, first, pids)
        except Exception as exc:  # the pooler's own failure is the finding
            failure = exc
    return _report(engine.dialect.driver, keeps, pids, failure, warn)


def _pids_sync(engine: Engine, first: Connection, pids: list[int]) -> None:
    with first.begin():
        pids.append(int(first.scalar(_PID) or 0))
    # A pooler gives the server session just released to the next client
    # (PgBouncer reuses the most recent one first); while the second client
    # holds it in a transaction, the first client's next transaction must
    # get another server session, unless it owns one.
    with engine.connect() as second, second.begin():
        pids.append(int(second.scalar(_PID) or 0))
        with first.begin():
            pids.append(int(first.scalar(_PID) or 0))


async def check_pooler(engine: AsyncEngine, *, warn: bool = True) -> PoolerReport:
    """Find out whether a transaction-mode pooler is in the path, and whether the engine fits it.

    Opens two connections of the engine's pool and runs three one-row
    transactions (``SELECT pg_backend_pid()``). Call it once at start-up
    (``Database`` does); it changes nothing.

    Args:
        engine: a PostgreSQL ``AsyncEngine``.
        warn: emit a :class:`PoolerWarning` and a log record on
            ``sqlalchemy_resilience.deploy`` when a problem is found (False:
            only the report says so).

    Returns:
        A :class:`PoolerReport`; ``report.problem`` says what to change.

    Raises:
        ValueError: not a PostgreSQL engine.
        sqlalchemy_resilience.DatabaseFailure: the database could not be
            reached (a pooler's own prepared-statement failure is reported, not raised).

    Example::

        engine = create_async_engine(url, **pooler_safe_options(url))
        report = await check_pooler(engine)
        assert report.safe
    """
    sync = engine.sync_engine
    _require_postgresql(sync)
    pids: list[int] = []
    failure: BaseException | None = None
    async with engine.connect() as first:
        raw = await first.get_raw_connection()
        # asyncpg: SQLAlchemy's adapter holds its statement cache and names.
        driver = sync.dialect.driver
        held = raw.dbapi_connection if driver == "asyncpg" else raw.driver_connection
        keeps = keeps_prepared_statements(driver, held)
        try:
            await _pids(engine, first, pids)
        except Exception as exc:  # the pooler's own failure is the finding
            failure = exc
    return _report(sync.dialect.driver, keeps, pids, failure, warn)


async def _pids(engine: AsyncEngine, first: AsyncConnection, pids: list[int]) -> None:
    async with first.begin():
        pids.append(int(await first.scalar(_PID) or 0))
    async with engine.connect() as second, second.begin():
        pids.append(int(await second.scalar(_PID) or 0))
        async with first.begin():
            pids.append(int(await first.scalar(_PID) or 0))
