"""Through a real PgBouncer in transaction mode: the failure without the options, none with them.

PgBouncer (``pool_mode = transaction``, 10 server connections) stands in
front of the suite's PostgreSQL. The bank workload (tests/chaos/workload.py)
runs 50 concurrent tasks over it; every transfer is one ``run_transaction``,
and the checker compares what the clients saw with the tables.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience.cli.demo.migration_project import alembic, write_project
from sqlalchemy_resilience.deploy import (
    PoolerWarning,
    check_pooler,
    check_pooler_sync,
    keeps_prepared_statements,
    pooler_safe_options,
    unnamed_statement,
)
from tests.chaos.workload import check, run_bank, setup_bank
from tests.pgbouncer import PgBouncer
from tests.pgharness import PgServer

WORKERS = 50
POLICY = sr.RetryPolicy(attempts=10, initial_backoff=0.01, max_backoff=0.2, deadline=20)


def _engine(url: URL, options: dict[str, Any]) -> AsyncEngine:
    engine = create_async_engine(url, pool_size=WORKERS, max_overflow=0, **options)
    sr.instrument(engine)
    return engine


@pytest.fixture
def bank(pg_server: PgServer, pg_database: str) -> str:
    setup_bank(pg_server, pg_database)
    return pg_database


def test_options_per_driver() -> None:
    asyncpg = pooler_safe_options("postgresql+asyncpg://app@bouncer/app")
    assert asyncpg == {
        "connect_args": {
            "statement_cache_size": 0,
            "prepared_statement_cache_size": 0,
            "prepared_statement_name_func": unnamed_statement,
        }
    }
    assert pooler_safe_options("postgresql+psycopg://app@b/app") == {
        "connect_args": {"prepare_threshold": None}
    }
    assert pooler_safe_options("postgresql+psycopg2://app@b/app") == {"connect_args": {}}
    # The application's own connect_args stay and win.
    merged = pooler_safe_options(
        "postgresql+psycopg://b/app", connect_args={"prepare_threshold": None, "connect_timeout": 3}
    )
    assert merged == {"connect_args": {"prepare_threshold": None, "connect_timeout": 3}}
    assert pooler_safe_options("postgresql+asyncpg://b/app", pool_mode="session") == {
        "connect_args": {}
    }
    with pytest.raises(
        ValueError, match="pool_mode must be one of session, transaction, statement; got 'tx'"
    ):
        pooler_safe_options("postgresql+asyncpg://b/app", pool_mode="tx")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="for PostgreSQL URLs; got the 'sqlite' backend"):
        pooler_safe_options("sqlite://")
    with pytest.raises(ValueError, match="no pooler-safe options known for the 'asyncpgx' driver"):
        pooler_safe_options("postgresql+asyncpgx://b/app")


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_without_the_options_the_pooler_breaks_prepared_statements(
    pg_server: PgServer, bank: str, pgbouncer: PgBouncer, driver: str
) -> None:
    engine = _engine(pgbouncer.url(pg_server.app_url(bank, driver=driver)), {})
    try:
        history, _ = await run_bank(engine, seconds=2.0, workers=WORKERS, retry=POLICY)
        caught: BaseException | None = None
        Session = async_sessionmaker(engine)
        for _ in range(40):  # one failure in hand, for its text
            try:
                async with Session() as s, s.begin():
                    await s.execute(
                        text("SELECT count(*) FROM accounts WHERE balance > :b"), {"b": 1}
                    )
            except sr.PoolerIncompatible as exc:
                caught = exc
                break
    finally:
        await engine.dispose()
    verdict = check(pg_server, bank, history, [])
    print(
        f"\n{driver} through PgBouncer, default options: {verdict.line()}; errors {history.errors}"
    )
    assert history.errors.get("PoolerIncompatible", 0) > 0, history.errors
    # Typed, not retried, and no transfer lost or half-applied on the way.
    assert verdict.lost == 0 and verdict.phantom == 0 and verdict.ledger_consistent
    if caught is not None:
        assert "pooler_safe_options(url)" in str(caught)
        assert caught.retryable is False
        assert isinstance(caught, sr.InvalidStatement)


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_bank_through_pgbouncer_with_the_options(
    pg_server: PgServer, bank: str, pgbouncer: PgBouncer, driver: str
) -> None:
    url = pgbouncer.url(pg_server.app_url(bank, driver=driver))
    engine = _engine(url, pooler_safe_options(url))
    peak: list[int] = []

    async def watch_server_sessions() -> None:
        for _ in range(30):
            await asyncio.sleep(0.1)  # the sampling interval of the session count
            peak.append(len(await asyncio.to_thread(pg_server.backend_pids, database=bank)))

    try:
        (history, _), _ = await asyncio.gather(
            run_bank(engine, seconds=3.0, workers=WORKERS, retry=POLICY), watch_server_sessions()
        )
    finally:
        await engine.dispose()
    verdict = check(pg_server, bank, history, [])
    print(
        f"\n{driver} through PgBouncer with pooler_safe_options, {WORKERS} tasks over "
        f"<= {max(peak)} server sessions: {verdict.line()}; errors {history.errors}"
    )
    assert history.errors == {}
    assert verdict.ok > WORKERS
    assert verdict.lost == 0 and verdict.phantom == 0 and verdict.ledger_consistent
    assert verdict.total_balance == 50 * 1000
    assert max(peak) <= 10


async def test_check_pooler(pg_server: PgServer, pg_database: str, pgbouncer: PgBouncer) -> None:
    direct = create_async_engine(pg_server.app_url(pg_database, driver="asyncpg"))
    bounced_url = pgbouncer.url(pg_server.app_url(pg_database, driver="asyncpg"))
    unsafe = create_async_engine(bounced_url)
    safe = create_async_engine(bounced_url, **pooler_safe_options(bounced_url))
    try:
        report = await check_pooler(direct)
        assert not report.transaction_pooling and report.safe
        assert report.backend_pids[0] == report.backend_pids[2]
        assert report.keeps_prepared_statements  # asyncpg's default; harmless here

        with pytest.warns(PoolerWarning, match="pooler_safe_options"):
            report = await check_pooler(unsafe)
        assert report.transaction_pooling and not report.safe
        assert report.to_dict()["safe"] is False

        with warnings.catch_warnings():
            warnings.simplefilter("error", PoolerWarning)
            report = await check_pooler(safe)
        assert report.transaction_pooling and report.safe
        assert not report.keeps_prepared_statements
    finally:
        for engine in (direct, unsafe, safe):
            await engine.dispose()


def test_check_pooler_sync_with_psycopg(
    pg_server: PgServer, pg_database: str, pgbouncer: PgBouncer
) -> None:
    url = pgbouncer.url(pg_server.app_url(pg_database, driver="psycopg"))
    unsafe = create_engine(url)
    safe = create_engine(url, **pooler_safe_options(url))
    try:
        with pytest.warns(PoolerWarning):
            assert not check_pooler_sync(unsafe).safe
        report = check_pooler_sync(safe, warn=False)
        assert report.transaction_pooling and report.safe
        with safe.connect() as conn:
            assert not keeps_prepared_statements("psycopg", conn.connection.driver_connection)
    finally:
        unsafe.dispose()
        safe.dispose()
    with pytest.raises(ValueError, match="needs a PostgreSQL engine"):
        check_pooler_sync(create_engine("sqlite://"))


@pytest.fixture
async def safe_engine(
    pg_server: PgServer, pg_database: str, pgbouncer: PgBouncer
) -> AsyncIterator[AsyncEngine]:
    url = pgbouncer.url(pg_server.app_url(pg_database, driver="asyncpg"))
    engine = _engine(url, pooler_safe_options(url))
    try:
        yield engine
    finally:
        await engine.dispose()


async def test_transaction_timeouts_stay_inside_their_transaction(safe_engine: AsyncEngine) -> None:
    """``transaction()`` sets its timeouts with SET LOCAL: nothing leaks into the pooler's sessions."""
    Session = async_sessionmaker(safe_engine)
    with pytest.raises(sr.QueryTimeout):
        async with sr.transaction(Session, statement_timeout=0.2) as session:
            await session.execute(text("SELECT pg_sleep(2)"))

    async def timeout_seen() -> str:
        async with Session() as s, s.begin():
            return str(await s.scalar(text("SELECT current_setting('statement_timeout')")))

    # Whatever server session each of 20 concurrent transactions lands on: the default.
    seen = await asyncio.gather(*(timeout_seen() for _ in range(20)))
    assert set(seen) == {"0"}


def test_migrations_refuse_a_transaction_pooler(
    pg_server: PgServer, pg_database: str, pgbouncer: PgBouncer, tmp_path: Path
) -> None:
    """The migration lock is session-level: through a transaction pooler it would guard nothing."""
    ini = write_project(tmp_path)
    url = pgbouncer.url(pg_server.app_url(pg_database, driver="psycopg"))
    _, err = alembic(ini, url, "upgrade", "head").communicate(timeout=120)
    assert (
        "refusing to migrate through a transaction-mode pooler (PgBouncer, RDS Proxy, "
        "Supavisor): the migration lock and the session's lock_timeout would stay on a server "
        "session the pooler hands to other clients. Point DATABASE_URL (or -x url) for "
        "migrations at the server itself or at a session-mode pool"
    ) in err
    assert "Traceback" not in err
    tables = pg_server.execute(
        "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'mig_%'", database=pg_database
    )
    assert tables[0][0] == 0  # nothing applied
