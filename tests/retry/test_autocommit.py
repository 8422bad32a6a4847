"""Units of work on connections that commit every statement on their own (scenario S28).

A unit of work is atomic only when its statements wait for one COMMIT. On a
connection in autocommit -- set on the engine, by ``execution_options``, on a
session's bound connection or on the driver itself -- ``run_transaction`` and
``transaction()`` are refused before anything runs; a single autocommitted
write whose reply is lost is an unknown COMMIT, never blindly re-run.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import (
    RetryPolicy,
    instrument,
    run_transaction,
    run_transaction_sync,
    transaction,
    transaction_sync,
)
from sqlalchemy_resilience.retry import resilient_sessionmaker
from sqlalchemy_resilience.schema import metadata as package_metadata
from tests.pgharness import PgServer

FAST = RetryPolicy(attempts=4, initial_backoff=0.001, max_backoff=0.01, deadline=30)

# Where autocommit comes from: (name, create_engine kwargs, engine -> engine).
Source = tuple[str, dict[str, Any], Callable[[Any], Any]]


def _sources(driver_kwargs: dict[str, Any] | None) -> list[Source]:
    same: Callable[[Any], Any] = lambda e: e  # noqa: E731
    sources: list[Source] = [
        ("create_engine", {"isolation_level": "AUTOCOMMIT"}, same),
        ("execution_options", {}, lambda e: e.execution_options(isolation_level="AUTOCOMMIT")),
    ]
    if driver_kwargs is not None:
        sources.append(("driver", {"connect_args": driver_kwargs}, same))
    return sources


SQLITE_SOURCES = _sources({"isolation_level": None})


async def _two_updates(session: AsyncSession) -> None:
    await session.execute(text("UPDATE accounts SET balance = balance - 10 WHERE id = 1"))
    await session.execute(text("UPDATE accounts SET balance = balance + 10 WHERE id = 2"))


def _two_updates_sync(session: Session) -> None:
    session.execute(text("UPDATE accounts SET balance = balance - 10 WHERE id = 1"))
    session.execute(text("UPDATE accounts SET balance = balance + 10 WHERE id = 2"))


def _balances(url: str) -> list[int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT balance FROM accounts ORDER BY id"))
            return [int(r[0]) for r in rows]
    finally:
        engine.dispose()


def _seed(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS accounts"))
            conn.execute(text("CREATE TABLE accounts (id integer PRIMARY KEY, balance integer)"))
            conn.execute(text("INSERT INTO accounts VALUES (1, 100), (2, 100)"))
            package_metadata.create_all(conn)
    finally:
        engine.dispose()


def test_autocommit_isolation_level_is_refused_by_name() -> None:
    """run_transaction(isolation_level="AUTOCOMMIT") is a ValueError that says why."""
    engine = create_engine("sqlite://")
    try:
        with pytest.raises(ValueError, match="cannot autocommit"):
            run_transaction_sync(
                sessionmaker(engine), _two_updates_sync, isolation_level="AUTOCOMMIT"
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("source", "kwargs", "shape"), SQLITE_SOURCES, ids=[s[0] for s in SQLITE_SOURCES]
)
async def test_sqlite_units_on_autocommit_are_refused(
    tmp_path: Path, source: str, kwargs: dict[str, Any], shape: Callable[[Any], Any]
) -> None:
    """aiosqlite and pysqlite: run_transaction (with and without a key) and transaction() refuse, nothing written."""
    path = tmp_path / "auto.sqlite"
    _seed(f"sqlite:///{path}")
    async_engine = create_async_engine(f"sqlite+aiosqlite:///{path}", **kwargs)
    sync_engine = create_engine(f"sqlite:///{path}", **kwargs)
    calls = 0

    async def counted(session: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        await _two_updates(session)

    try:
        Session_ = async_sessionmaker(shape(async_engine))
        SyncSession = sessionmaker(shape(sync_engine))
        for key in (None, f"req-{source}"):
            with pytest.raises(sr.NotAtomic) as info:
                await run_transaction(Session_, counted, retry=FAST, idempotency_key=key)
            assert source.split("_")[0] in info.value.source
            with pytest.raises(sr.NotAtomic):
                run_transaction_sync(SyncSession, _two_updates_sync, idempotency_key=key)
        with pytest.raises(sr.NotAtomic):
            async with transaction(Session_):
                pytest.fail("the block must not run")
        with pytest.raises(sr.NotAtomic):
            async with transaction(shape(async_engine)):
                pytest.fail("the block must not run")
        with pytest.raises(sr.NotAtomic), transaction_sync(SyncSession):
            pytest.fail("the block must not run")
        assert calls == 0
        assert info.value.retryable is False
    finally:
        await async_engine.dispose()
        sync_engine.dispose()
    assert _balances(f"sqlite:///{path}") == [100, 100]
    # The key was never claimed on its own either.
    check = create_engine(f"sqlite:///{path}")
    try:
        with check.connect() as conn:
            assert (
                conn.execute(
                    text("SELECT count(*) FROM sqlalchemy_resilience_idempotency")
                ).scalar()
                == 0
            )
    finally:
        check.dispose()


async def test_sqlite_recipe_with_its_own_begin_is_atomic(tmp_path: Path) -> None:
    """isolation_level=None plus SQLAlchemy's documented BEGIN recipe is atomic: run_transaction runs."""
    path = tmp_path / "recipe.sqlite"
    _seed(f"sqlite:///{path}")
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{path}", connect_args={"isolation_level": None}
    )

    @event.listens_for(engine.sync_engine, "begin")
    def do_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    try:
        await run_transaction(async_sessionmaker(engine), _two_updates, retry=FAST)
    finally:
        await engine.dispose()
    assert _balances(f"sqlite:///{path}") == [90, 110]


def test_session_bound_to_an_autocommit_connection_is_refused(
    tmp_path: Path, sync_engines: list[Engine]
) -> None:
    """A Session bound to a Connection in AUTOCOMMIT: refused; the same engine's default connection runs."""
    path = tmp_path / "bound.sqlite"
    _seed(f"sqlite:///{path}")
    engine = create_engine(f"sqlite:///{path}")
    sync_engines.append(engine)
    with engine.connect() as conn:
        auto = conn.execution_options(isolation_level="AUTOCOMMIT")
        with pytest.raises(sr.NotAtomic, match="execution_options"):
            run_transaction_sync(sessionmaker(bind=auto), _two_updates_sync)
    run_transaction_sync(sessionmaker(engine), _two_updates_sync)
    assert _balances(f"sqlite:///{path}") == [90, 110]


# -- PostgreSQL ------------------------------------------------------------------------


def _pg_sources(driver: str) -> list[Source]:
    if driver == "psycopg":
        return _sources({"autocommit": True})
    # asyncpg has no connect argument for it: a connect event sets SQLAlchemy's adapter.
    sources = _sources(None)

    def with_event(engine: AsyncEngine) -> AsyncEngine:
        @event.listens_for(engine.sync_engine, "connect")
        def autocommit(dbapi_connection: Any, record: Any) -> None:
            dbapi_connection.autocommit = True

        return engine

    sources.append(("driver", {}, with_event))
    return sources


@pytest.fixture
def pg_accounts(pg_server: PgServer, pg_database: str, pg_driver: str) -> str:
    """The module database with ``accounts`` (2 rows of 100) and the package's tables."""
    url = pg_server.app_url(pg_database, driver="psycopg").render_as_string(hide_password=False)
    _seed(url)
    return url


@pytest.mark.parametrize(
    "source_index", [0, 1, 2], ids=["create_engine", "execution_options", "driver"]
)
async def test_postgresql_units_on_autocommit_are_refused(
    pg_server: PgServer, pg_database: str, pg_driver: str, pg_accounts: str, source_index: int
) -> None:
    """asyncpg and psycopg: every autocommit source refused before the unit runs; balances untouched."""
    source, kwargs, shape = _pg_sources(pg_driver)[source_index]
    base = create_async_engine(pg_server.app_url(pg_database, driver=pg_driver), **kwargs)
    instrument(base)
    engine = shape(base)
    calls = 0

    async def counted(session: AsyncSession) -> None:
        nonlocal calls
        calls += 1
        await _two_updates(session)

    try:
        for key in (None, f"req-{uuid.uuid4()}"):
            with pytest.raises(sr.NotAtomic) as info:
                await run_transaction(async_sessionmaker(engine), counted, idempotency_key=key)
            assert source.split("_")[0] in info.value.source
        with pytest.raises(sr.NotAtomic):
            async with transaction(async_sessionmaker(engine)):
                pytest.fail("the block must not run")
    finally:
        await base.dispose()
    assert calls == 0
    assert _balances(pg_accounts) == [100, 100]


# -- a lost reply to an autocommitted write (recipe e6 on a single statement) ---------


def _autocommit_engine(syncrep: PgServer, driver: str, source: str) -> AsyncEngine:
    """An AUTOCOMMIT engine whose first connection waits for the ghost standby at each commit."""
    kwargs: dict[str, Any] = {}
    if source == "create_engine":
        kwargs["isolation_level"] = "AUTOCOMMIT"
    engine = create_async_engine(syncrep.app_url("faults", driver=driver), **kwargs)
    if source == "execution_options":
        engine = engine.execution_options(isolation_level="AUTOCOMMIT")
    connections = 0

    @event.listens_for(engine.sync_engine, "connect")
    def first_waits(dbapi_connection: Any, record: Any) -> None:
        nonlocal connections
        connections += 1
        if source == "driver":
            dbapi_connection.autocommit = True
        if connections == 1:
            cursor = dbapi_connection.cursor()
            cursor.execute("SET synchronous_commit = 'on'")
            cursor.close()
            if source != "driver" and not getattr(dbapi_connection, "autocommit", False):
                dbapi_connection.commit()

    return engine


@pytest.mark.parametrize("source", ["create_engine", "execution_options", "driver"])
@pytest.mark.parametrize("instrumented", [True, False], ids=["instrumented", "plain"])
async def test_lost_reply_to_an_autocommitted_write_is_an_unknown_commit(
    syncrep: PgServer, pg_driver: str, source: str, instrumented: bool
) -> None:
    """resilient_sessionmaker: the INSERT committed, its reply was lost: CommitOutcomeUnknown, sent once."""
    engine = _autocommit_engine(syncrep, pg_driver, source)
    if instrumented:
        instrument(engine)
    key = uuid.uuid4()
    sent = 0

    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def count(*args: Any) -> None:
        nonlocal sent
        if "INSERT INTO ledger" in args[2]:
            sent += 1

    Session_ = resilient_sessionmaker(engine, retry=FAST)
    try:
        killer = asyncio.create_task(asyncio.to_thread(syncrep.kill_first_syncrep_waiter))
        async with Session_() as session:
            with pytest.raises(sr.CommitOutcomeUnknown) as info:
                await session.execute(text("INSERT INTO ledger VALUES (:k)"), {"k": key})
        await killer
    finally:
        await engine.dispose()
    assert sent == 1
    assert info.value.retryable is False
    assert syncrep.ledger_rows(key) == 1


@pytest.mark.parametrize("source", ["create_engine", "execution_options", "driver"])
async def test_instrumented_translation_reads_every_autocommit_source(
    syncrep: PgServer, pg_driver: str, source: str
) -> None:
    """A plain connection's autocommitted INSERT with its reply lost: CommitOutcomeUnknown, not ConnectionLost."""
    engine = _autocommit_engine(syncrep, pg_driver, source)
    instrument(engine)
    key = uuid.uuid4()
    try:
        killer = asyncio.create_task(asyncio.to_thread(syncrep.kill_first_syncrep_waiter))
        async with engine.connect() as conn:
            with pytest.raises(sr.CommitOutcomeUnknown):
                await conn.execute(text("INSERT INTO ledger VALUES (:k)"), {"k": key})
        await killer
    finally:
        await engine.dispose()
    assert syncrep.ledger_rows(key) == 1


async def test_lost_reply_to_an_autocommitted_read_is_retried(
    syncrep: PgServer, pg_driver: str
) -> None:
    """A SELECT on an AUTOCOMMIT engine changes nothing: its lost connection is retried as before."""
    engine = create_async_engine(
        syncrep.app_url("faults", driver=pg_driver), isolation_level="AUTOCOMMIT"
    )
    instrument(engine)
    Session_ = resilient_sessionmaker(engine, retry=FAST)
    try:
        async with Session_() as warm:
            await warm.execute(text("SELECT 1"))
        # Every pooled connection's backend is gone: the next SELECT meets a dead one.
        syncrep.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'"
        )
        async with Session_() as session:
            assert (await session.execute(text("SELECT 41 + 1"))).scalar() == 42
    finally:
        await engine.dispose()
