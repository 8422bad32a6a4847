"""run_transaction against a real PostgreSQL (asyncpg and psycopg) and SQLite.

Each failure is provoked on the server (recipes of FAULTS.md section 4); the
assertions count how many times the unit of work ran and what was applied.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import (
    CircuitBreaker,
    RetryPolicy,
    instrument,
    run_transaction,
    run_transaction_sync,
)
from sqlalchemy_resilience.retry import BreakerState, RetryBudget
from tests.pgharness import PgServer

FAST = RetryPolicy(attempts=5, initial_backoff=0.001, max_backoff=0.01, deadline=20)


@pytest.fixture
async def engine(pg_engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    instr = instrument(pg_engine)
    async with pg_engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS acct, applied"))
        await conn.execute(text("CREATE TABLE acct (id int PRIMARY KEY, v int NOT NULL)"))
        await conn.execute(text("INSERT INTO acct VALUES (1, 0), (2, 0)"))
        await conn.execute(text("CREATE TABLE applied (k text PRIMARY KEY)"))
    yield pg_engine
    instr.detach()


async def _value(engine: AsyncEngine, row: int) -> int:
    async with engine.connect() as conn:
        return int(
            (await conn.execute(text("SELECT v FROM acct WHERE id = :i"), {"i": row})).scalar_one()
        )


async def test_success_returns_value_and_runs_once(engine: AsyncEngine) -> None:
    """On the happy path fn runs once, its result is returned and its writes are committed."""
    Session = async_sessionmaker(engine)
    calls = 0

    async def work(session: AsyncSession) -> str:
        nonlocal calls
        calls += 1
        await session.execute(text("UPDATE acct SET v = v + 5 WHERE id = 1"))
        return "done"

    assert await run_transaction(Session, work, retry=FAST) == "done"
    assert calls == 1
    assert await _value(engine, 1) == 5


async def test_serialization_failure_is_retried_and_applied_once(engine: AsyncEngine) -> None:
    """40001 on the first attempt (recipe e2) re-runs the whole function; the update lands once."""
    Session = async_sessionmaker(engine)
    attempts = 0

    async def work(session: AsyncSession) -> None:
        nonlocal attempts
        attempts += 1
        await session.execute(text("SELECT v FROM acct WHERE id = 1"))
        if attempts == 1:
            async with engine.begin() as other:
                await other.execute(text("UPDATE acct SET v = v + 100 WHERE id = 1"))
        await session.execute(text("UPDATE acct SET v = v + 1 WHERE id = 1"))

    await run_transaction(Session, work, retry=FAST, isolation_level="REPEATABLE READ")
    assert attempts == 2
    assert await _value(engine, 1) == 101


async def test_deadlock_victim_is_retried_once(
    engine: AsyncEngine, pg_server: PgServer, pg_database: str
) -> None:
    """40P01 (recipe e1): the unit of work is the victim, is re-run, and both sides apply exactly once."""
    Session = async_sessionmaker(engine)
    attempts = 0
    admin = await asyncio.to_thread(_admin_conn, pg_server, pg_database)
    try:
        await asyncio.to_thread(admin.execute, "BEGIN")
        await asyncio.to_thread(admin.execute, "SET LOCAL deadlock_timeout = '10s'")
        await asyncio.to_thread(admin.execute, "UPDATE acct SET v = v + 1 WHERE id = 1")
        blocked: asyncio.Future[object] | None = None
        admin_waiting = asyncio.Event()

        async def work(session: AsyncSession) -> None:
            nonlocal attempts, blocked
            attempts += 1
            await session.execute(text("UPDATE acct SET v = v + 10 WHERE id = 2"))
            if attempts == 1:
                pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                blocked = asyncio.ensure_future(
                    asyncio.to_thread(admin.execute, "UPDATE acct SET v = v + 1 WHERE id = 2")
                )
                admin_waiting.set()
                await asyncio.to_thread(
                    pg_server.wait_for,
                    lambda: bool(
                        pg_server.execute(
                            "SELECT 1 FROM pg_locks WHERE NOT granted AND pid <> %s", (pid,)
                        )
                    ),
                )
            await session.execute(text("UPDATE acct SET v = v + 10 WHERE id = 1"))

        async def finish_admin() -> None:
            await admin_waiting.wait()
            assert blocked is not None
            await blocked
            await asyncio.to_thread(admin.execute, "COMMIT")

        await asyncio.gather(run_transaction(Session, work, retry=FAST), finish_admin())
    finally:
        await asyncio.to_thread(admin.close)
    assert attempts == 2
    assert await _value(engine, 1) == 11
    assert await _value(engine, 2) == 11


def _admin_conn(server: PgServer, database: str) -> object:
    import psycopg

    url = server.admin_url(database=database)
    return psycopg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        dbname=database,
        autocommit=True,
    )


async def test_constraint_violation_is_not_retried(engine: AsyncEngine) -> None:
    """A unique violation surfaces at once, typed, after a single attempt."""
    Session = async_sessionmaker(engine)
    attempts = 0

    async def work(session: AsyncSession) -> None:
        nonlocal attempts
        attempts += 1
        await session.execute(text("INSERT INTO acct VALUES (1, 0)"))

    with pytest.raises(sr.UniqueViolation):
        await run_transaction(Session, work, retry=FAST)
    assert attempts == 1


async def test_retry_exhausted_carries_every_error(engine: AsyncEngine) -> None:
    """When every attempt fails retryably, RetryExhausted holds each attempt's error."""
    Session = async_sessionmaker(engine)
    attempts = 0

    async def always_conflicts(session: AsyncSession) -> None:
        nonlocal attempts
        attempts += 1
        await session.execute(text("SELECT v FROM acct WHERE id = 2"))
        async with engine.begin() as other:
            await other.execute(text("UPDATE acct SET v = v + 1 WHERE id = 2"))
        await session.execute(text("UPDATE acct SET v = v - 1 WHERE id = 2"))

    policy = RetryPolicy(attempts=3, initial_backoff=0.001, max_backoff=0.002)
    with pytest.raises(sr.RetryExhausted) as info:
        await run_transaction(
            Session, always_conflicts, retry=policy, isolation_level="REPEATABLE READ"
        )
    assert attempts == 3
    assert info.value.attempts == 3
    assert all(isinstance(e, sr.SerializationFailure) for e in info.value.errors)
    assert info.value.__cause__ is info.value.errors[-1]


async def test_killed_connection_is_retried_and_counted_by_breaker(
    engine: AsyncEngine, pg_server: PgServer
) -> None:
    """A backend terminated mid-transaction (57P01) is a safe retry; the breaker counts it."""
    Session = async_sessionmaker(engine)
    breaker = CircuitBreaker(failure_threshold=5)
    transitions: list[str] = []
    breaker.add_listener(lambda t: transitions.append(t.current.name))
    attempts = 0

    async def work(session: AsyncSession) -> None:
        nonlocal attempts
        attempts += 1
        pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        if attempts == 1:
            await asyncio.to_thread(pg_server.execute, "SELECT pg_terminate_backend(%s)", (pid,))
        await session.execute(text("UPDATE acct SET v = v + 1 WHERE id = 1"))

    await run_transaction(Session, work, retry=FAST, breaker=breaker)
    assert attempts == 2
    assert await _value(engine, 1) == 1
    assert breaker.state is BreakerState.CLOSED
    assert transitions == []


async def test_open_breaker_fails_fast_without_touching_the_pool(engine: AsyncEngine) -> None:
    """An open breaker raises CircuitOpenError itself: no checkout, no connect, fn never runs."""
    checkouts: list[object] = []
    event.listen(engine.sync_engine, "checkout", lambda *a: checkouts.append(a))
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=60)
    breaker.force_open()
    ran = False

    async def work(session: AsyncSession) -> None:
        nonlocal ran
        ran = True

    started = time.perf_counter()
    with pytest.raises(sr.CircuitOpenError) as info:
        await run_transaction(async_sessionmaker(engine), work, retry=FAST, breaker=breaker)
    assert time.perf_counter() - started < 0.5
    assert info.value.retry_after > 50
    assert not ran
    assert checkouts == []


async def test_cancellation_is_not_retried_and_leaks_nothing(
    engine: AsyncEngine, pg_server: PgServer, pg_database: str
) -> None:
    """Cancelling a running unit of work propagates CancelledError, runs fn once, and returns the connection."""
    Session = async_sessionmaker(engine)
    attempts = 0
    started = asyncio.Event()

    async def slow(session: AsyncSession) -> None:
        nonlocal attempts
        attempts += 1
        started.set()
        await session.execute(text("SELECT pg_sleep(5)"))

    task = asyncio.create_task(run_transaction(Session, slow, retry=FAST))
    await started.wait()

    def sleeping_on_the_server() -> bool:
        rows = pg_server.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND usename = 'app'"
            " AND state = 'active' AND query LIKE '%%pg_sleep(5)%%'",
            (pg_database,),
        )
        return rows[0][0] == 1

    await asyncio.to_thread(pg_server.wait_for, sleeping_on_the_server, timeout=10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert attempts == 1
    pool = engine.sync_engine.pool
    assert pool.checkedout() == 0  # type: ignore[attr-defined]

    def settled() -> bool:
        rows = pg_server.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND usename = 'app'"
            " AND (state = 'idle in transaction' OR (state = 'active' AND query LIKE '%%pg_sleep%%'))",
            (pg_database,),
        )
        return rows[0][0] == 0

    await asyncio.to_thread(pg_server.wait_for, settled, timeout=10)


async def test_read_only_and_isolation_level(engine: AsyncEngine) -> None:
    """isolation_level reaches the server; read_only makes writes fail without retry."""
    Session = async_sessionmaker(engine)

    async def show(session: AsyncSession) -> str:
        return str((await session.execute(text("SHOW transaction_isolation"))).scalar_one())

    assert await run_transaction(Session, show, isolation_level="SERIALIZABLE") == "serializable"

    async def write(session: AsyncSession) -> None:
        await session.execute(text("UPDATE acct SET v = 1 WHERE id = 1"))

    with pytest.raises(sr.DatabaseFailure) as info:
        await run_transaction(Session, write, read_only=True, retry=FAST)
    assert info.value.sqlstate == "25006"
    assert info.value.retryable is False


async def test_retry_budget_stops_retry_storms(pg_driver: str) -> None:
    """With the database down, an empty budget turns retries off: attempts stay bounded."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    query = "?ssl=disable" if pg_driver == "asyncpg" else ""
    engine = create_async_engine(f"postgresql+{pg_driver}://app:pw@127.0.0.1:{port}/x{query}")
    instrument(engine)
    connects: list[object] = []
    event.listen(engine.sync_engine, "do_connect", lambda *a: connects.append(a))
    budget = RetryBudget(ratio=0, min_per_second=0.2, window=10)  # two retries in 10 s
    policy = RetryPolicy(attempts=10, initial_backoff=0.001, max_backoff=0.002, budget=budget)

    async def work(session: AsyncSession) -> None:
        await session.execute(text("SELECT 1"))

    try:
        for _ in range(3):
            with pytest.raises(sr.DatabaseUnavailable):
                await run_transaction(async_sessionmaker(engine), work, retry=policy)
    finally:
        await engine.dispose()
    assert len(connects) == 3 + 2  # three first attempts, two budgeted retries
    assert budget.denied >= 1


def test_sync_twin_retries_sqlite_busy(tmp_path: Path) -> None:
    """run_transaction_sync rides out SQLITE_BUSY while another writer holds the lock.

    The unit of work begins with BEGIN IMMEDIATE, so the lock is waited for
    (and retried) before ``work`` runs: ``work`` runs once, on the attempt
    that got the lock.
    """
    path = tmp_path / "busy.sqlite"
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0.02})
    instrument(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
    begins: list[str] = []
    event.listen(
        engine,
        "before_cursor_execute",
        lambda c, cur, stmt, *rest: begins.append(stmt) if stmt.startswith("BEGIN") else None,
    )
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    release.start()
    attempts = 0

    def work(session: Session) -> int:
        nonlocal attempts
        attempts += 1
        session.execute(text("INSERT INTO t VALUES (1)"))
        return attempts

    try:
        policy = RetryPolicy(attempts=50, initial_backoff=0.01, max_backoff=0.05, deadline=10)
        result = run_transaction_sync(sessionmaker(engine), work, retry=policy)
    finally:
        release.join()
        holder.close()
        engine.dispose()
    assert result == attempts == 1
    assert len(begins) > 1 and set(begins) == {"BEGIN IMMEDIATE"}


def test_sync_read_only_on_sqlite_is_reset(tmp_path: Path) -> None:
    """read_only on SQLite refuses writes, and the pooled connection is writable afterwards."""
    engine = create_engine(f"sqlite:///{tmp_path / 'ro.sqlite'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
    Session = sessionmaker(engine)
    try:
        with pytest.raises(sr.PermissionDenied):
            run_transaction_sync(
                Session, lambda s: s.execute(text("INSERT INTO t VALUES (1)")), read_only=True
            )
        run_transaction_sync(Session, lambda s: s.execute(text("INSERT INTO t VALUES (2)")))
        with engine.connect() as conn:
            assert conn.execute(text("SELECT id FROM t")).scalars().all() == [2]
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"attempts": 0}, ValueError, "attempts must be >= 1"),
        ({"attempts": 2.5}, TypeError, "attempts must be an int"),
        ({"initial_backoff": 1, "max_backoff": 0.5}, ValueError, "max_backoff"),
        ({"deadline": 0}, ValueError, "deadline must be > 0"),
        ({"jitter": "yes"}, TypeError, "jitter must be True or False"),
        ({"retry_on": 3}, TypeError, "retry_on must be callable"),
        ({"budget": 5}, TypeError, "budget must be a RetryBudget"),
    ],
)
def test_retry_policy_validation(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    """RetryPolicy refuses bad values with an error naming the field."""
    with pytest.raises(error, match=match):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_run_transaction_validation(tmp_path: Path) -> None:
    """Bad isolation levels and flags fail before any database work."""
    engine = create_engine(f"sqlite:///{tmp_path / 'v.sqlite'}")
    try:
        with pytest.raises(ValueError, match="isolation_level must be one of"):
            run_transaction_sync(sessionmaker(engine), lambda s: None, isolation_level="SNAPSHOT")
        with pytest.raises(TypeError, match="read_only must be True or False"):
            run_transaction_sync(sessionmaker(engine), lambda s: None, read_only=1)  # type: ignore[arg-type]
    finally:
        engine.dispose()


def test_idempotency_key_applies_once_on_sqlite(tmp_path: Path) -> None:
    """A second call with the same key raises AlreadyApplied without running the work."""
    from sqlalchemy_resilience.schema import metadata

    engine = create_engine(f"sqlite:///{tmp_path / 'idem.sqlite'}")
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (n INTEGER)"))
    Session = sessionmaker(engine)
    runs = 0

    def work(session: Session) -> int:
        nonlocal runs
        runs += 1
        session.execute(text("INSERT INTO t VALUES (1)"))
        return runs

    try:
        assert run_transaction_sync(Session, work, idempotency_key="order-42") == 1
        with pytest.raises(sr.AlreadyApplied):
            run_transaction_sync(Session, work, idempotency_key="order-42")
        assert run_transaction_sync(Session, work, idempotency_key="order-43") == 2
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 2
    finally:
        engine.dispose()
    assert runs == 2


@pytest.mark.parametrize("key", ["", "x" * 256, 42])
def test_idempotency_key_validation(tmp_path: Path, key: object) -> None:
    """Keys must be non-empty strings of at most 255 characters."""
    engine = create_engine(f"sqlite:///{tmp_path / 'k.sqlite'}")
    try:
        with pytest.raises(ValueError, match="idempotency_key must be a string of 1 to 255"):
            run_transaction_sync(sessionmaker(engine), lambda s: None, idempotency_key=key)  # type: ignore[arg-type]
    finally:
        engine.dispose()
