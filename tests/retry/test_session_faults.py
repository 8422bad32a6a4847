"""run_transaction when the connection dies while COMMIT is in flight (recipe e6, own server).

The transaction has committed locally when the backend is killed in its
synchronous-replication wait; the client only sees the connection drop.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

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
from sqlalchemy_resilience import RetryPolicy, instrument, run_transaction, run_transaction_sync
from sqlalchemy_resilience._util import cut as cut_module
from tests.pgharness import PgServer

FAST = RetryPolicy(attempts=4, initial_backoff=0.001, max_backoff=0.01, deadline=30)


@pytest.fixture
async def ledger(syncrep: PgServer, pg_driver: str) -> AsyncIterator[AsyncEngine]:
    """An instrumented AsyncEngine on the database whose sync COMMITs stall (disposed afterwards)."""
    engine = create_async_engine(syncrep.app_url("faults", driver=pg_driver))
    instrument(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.mark.parametrize("instrumented", [True, False])
async def test_unknown_commit_is_never_retried_blindly(
    syncrep: PgServer, pg_driver: str, instrumented: bool
) -> None:
    """A lost COMMIT raises CommitOutcomeUnknown after one attempt, instrumented or not; the row did commit."""
    engine = create_async_engine(syncrep.app_url("faults", driver=pg_driver))
    if instrumented:
        instrument(engine)
    key = uuid.uuid4()
    attempts = 0

    async def work(session: AsyncSession) -> None:
        nonlocal attempts
        attempts += 1
        await session.execute(text("SET LOCAL synchronous_commit = 'on'"))
        await session.execute(text("INSERT INTO ledger VALUES (:k)"), {"k": key})

    try:
        killer = asyncio.create_task(asyncio.to_thread(syncrep.kill_first_syncrep_waiter))
        with pytest.raises(sr.CommitOutcomeUnknown) as info:
            await run_transaction(async_sessionmaker(engine), work, retry=FAST)
        await killer
    finally:
        await engine.dispose()
    assert attempts == 1
    assert info.value.retryable is False
    assert syncrep.ledger_rows(key) == 1


async def test_idempotent_work_is_retried_after_unknown_commit(
    syncrep: PgServer, ledger: AsyncEngine
) -> None:
    """Declared idempotent (ON CONFLICT DO NOTHING on its key), the work is re-run and lands exactly once."""
    key = uuid.uuid4()
    attempts = 0

    async def work(session: AsyncSession) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await session.execute(text("SET LOCAL synchronous_commit = 'on'"))
        await session.execute(
            text("INSERT INTO ledger VALUES (:k) ON CONFLICT (k) DO NOTHING"), {"k": key}
        )

    killer = asyncio.create_task(asyncio.to_thread(syncrep.kill_first_syncrep_waiter))
    await run_transaction(async_sessionmaker(ledger), work, retry=FAST, idempotent=True)
    await killer
    assert attempts == 2
    assert syncrep.ledger_rows(key) == 1


async def test_idempotency_key_resolves_unknown_commit(
    syncrep: PgServer, ledger: AsyncEngine
) -> None:
    """With an idempotency key, the retry after a lost COMMIT finds the key: the first attempt's result is returned, the work ran once."""
    from sqlalchemy_resilience.schema import metadata

    async with ledger.begin() as conn:
        await conn.run_sync(metadata.create_all)
    key = uuid.uuid4()
    attempts = 0

    async def work(session: AsyncSession) -> str:
        nonlocal attempts
        attempts += 1
        await session.execute(text("SET LOCAL synchronous_commit = 'on'"))
        await session.execute(text("INSERT INTO ledger VALUES (:k)"), {"k": key})
        return f"applied by attempt {attempts}"

    killer = asyncio.create_task(asyncio.to_thread(syncrep.kill_first_syncrep_waiter))
    result = await run_transaction(
        async_sessionmaker(ledger), work, retry=FAST, idempotency_key=f"req-{key}"
    )
    await killer
    with pytest.raises(sr.AlreadyApplied) as again:
        await run_transaction(
            async_sessionmaker(ledger), work, retry=FAST, idempotency_key=f"req-{key}"
        )
    assert result == "applied by attempt 1"
    assert attempts == 1
    assert syncrep.ledger_rows(key) == 1
    assert again.value.idempotency_key == f"req-{key}"
    assert again.value.user_message("ja") == "このリクエストは既に処理されています。"


async def test_attempt_timeout_during_commit_is_unknown(
    syncrep: PgServer, ledger: AsyncEngine
) -> None:
    """attempt_timeout expiring while COMMIT waits (SyncRep) gives CommitOutcomeUnknown, never a blind retry."""
    key = uuid.uuid4()
    attempts = 0

    async def work(session: AsyncSession) -> None:
        nonlocal attempts
        attempts += 1
        await session.execute(text("SET LOCAL synchronous_commit = 'on'"))
        await session.execute(text("INSERT INTO ledger VALUES (:k)"), {"k": key})

    started = asyncio.get_running_loop().time()
    with pytest.raises(sr.CommitOutcomeUnknown) as info:
        await run_transaction(async_sessionmaker(ledger), work, retry=FAST, attempt_timeout=0.5)
    elapsed = asyncio.get_running_loop().time() - started
    assert attempts == 1
    assert "attempt_timeout" in str(info.value)
    assert 0.45 <= elapsed < 4.0
    # The client gave up waiting; the server had committed locally.
    syncrep.wait_for(lambda: syncrep.ledger_rows(key) == 1, timeout=5)


async def test_attempt_timeout_retries_a_stuck_statement(
    fault_server: PgServer, pg_driver: str
) -> None:
    """An attempt stuck past attempt_timeout is cancelled (connection discarded) and re-run."""
    engine = create_async_engine(fault_server.app_url("faults", driver=pg_driver))
    instrument(engine)
    attempts = 0

    async def work(session: AsyncSession) -> int:
        nonlocal attempts
        attempts += 1
        seconds = 5 if attempts == 1 else 0
        await session.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})
        return attempts

    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        result = await run_transaction(
            async_sessionmaker(engine), work, retry=FAST, attempt_timeout=0.3
        )
    finally:
        await engine.dispose()
    elapsed = loop.time() - started
    assert result == 2
    assert 0.27 <= elapsed < 3.0


async def test_resolver_reports_a_lost_commit_that_committed(
    syncrep: PgServer, ledger: AsyncEngine
) -> None:
    """resolve_commit_outcome: COMMIT lost in the SyncRep wait; pg_xact_status says committed; fn ran once."""
    key = uuid.uuid4()
    attempts = 0

    async def work(session: AsyncSession) -> str:
        nonlocal attempts
        attempts += 1
        await session.execute(text("SET LOCAL synchronous_commit = 'on'"))
        await session.execute(text("INSERT INTO ledger VALUES (:k)"), {"k": key})
        return "booked"

    killer = asyncio.create_task(asyncio.to_thread(syncrep.kill_first_syncrep_waiter))
    result = await run_transaction(
        async_sessionmaker(ledger), work, retry=FAST, resolve_commit_outcome=True
    )
    await killer
    assert result == "booked"
    assert attempts == 1
    assert syncrep.ledger_rows(key) == 1


async def test_resolver_reruns_a_lost_commit_that_aborted(fault_server: PgServer) -> None:
    """resolve_commit_outcome: the client loses COMMIT's reply while the server is still committing;
    the server then aborts it; the resolver sees 'aborted' and re-runs the work, applied once."""
    from tests.faultproxy import FaultProxy

    fault_server.execute(
        "DROP TABLE IF EXISTS resolved;"
        " CREATE TABLE resolved (id int PRIMARY KEY, note text NOT NULL);"
        " GRANT ALL ON resolved TO app",
        database="faults",
    )
    fault_server.install_commit_delay("resolved", database="faults")
    proxy = FaultProxy("127.0.0.1", fault_server.port)
    engine = create_async_engine(
        fault_server.app_url("faults", driver="asyncpg").set(port=proxy.port)
    )
    instrument(engine)
    attempts = 0
    asked = threading.Event()

    @event.listens_for(engine.sync_engine, "after_cursor_execute")
    def _resolver_asked(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "pg_xact_status" in statement:
            asked.set()

    async def work(session: AsyncSession) -> int:
        nonlocal attempts
        attempts += 1
        note = "chaos-delay-commit" if attempts == 1 else "ok"
        await session.execute(text("INSERT INTO resolved VALUES (1, :n)"), {"n": note})
        return attempts

    def kill_sleeping_commit() -> None:
        fault_server.wait_for(
            lambda: proxy.commits_swallowed == 1 and bool(fault_server.pids_sleeping_in_commit()),
            timeout=20,
        )
        # The resolver has asked once, while the COMMIT still sleeps: "in progress".
        assert asked.wait(timeout=20)
        pid = fault_server.pids_sleeping_in_commit()[0]
        fault_server.execute("SELECT pg_terminate_backend(%s)", (pid,))

    proxy.swallow_commit_reply, proxy.swallow_commits = True, 1
    try:
        killer = asyncio.create_task(asyncio.to_thread(kill_sleeping_commit))
        result = await run_transaction(
            async_sessionmaker(engine), work, retry=FAST, resolve_commit_outcome=True
        )
        await killer
    finally:
        await engine.dispose()
        proxy.close()
    rows = fault_server.execute("SELECT note FROM resolved", database="faults")
    assert result == 2
    assert attempts == 2
    assert rows == [("ok",)]


async def test_resolve_commit_outcome_needs_postgresql(tmp_path: object) -> None:
    """On SQLite the option is refused with a clear error."""
    pytest.importorskip("aiosqlite")
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/r.sqlite")

    async def work(session: AsyncSession) -> None:
        await session.execute(text("SELECT 1"))

    try:
        with pytest.raises(ValueError, match="resolve_commit_outcome needs PostgreSQL"):
            await run_transaction(async_sessionmaker(engine), work, resolve_commit_outcome=True)
    finally:
        await engine.dispose()


# -- the blocking twin: the same guarantees ------------------------------------------


def test_sync_attempt_timeout_retries_a_stuck_statement(fault_server: PgServer) -> None:
    """run_transaction_sync: an attempt stuck past attempt_timeout has its socket cut
    (connection discarded) and is re-run."""
    engine = create_engine(fault_server.app_url("faults", driver="psycopg"))
    instrument(engine)
    attempts = 0

    def work(session: Session) -> int:
        nonlocal attempts
        attempts += 1
        seconds = 5 if attempts == 1 else 0
        session.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})
        return attempts

    started = time.monotonic()
    try:
        result = run_transaction_sync(sessionmaker(engine), work, retry=FAST, attempt_timeout=0.3)
    finally:
        engine.dispose()
    elapsed = time.monotonic() - started
    assert result == 2
    assert 0.27 <= elapsed < 3.0


def test_sync_attempt_timeout_during_commit_is_unknown(syncrep: PgServer) -> None:
    """run_transaction_sync: attempt_timeout expiring while COMMIT waits (SyncRep) gives
    CommitOutcomeUnknown, never a blind retry; the server had committed."""
    engine = create_engine(syncrep.app_url("faults", driver="psycopg"))
    key = uuid.uuid4()
    attempts = 0

    def work(session: Session) -> None:
        nonlocal attempts
        attempts += 1
        session.execute(text("SET LOCAL synchronous_commit = 'on'"))
        session.execute(text("INSERT INTO ledger VALUES (:k)"), {"k": key})

    try:
        with pytest.raises(sr.CommitOutcomeUnknown) as info:
            run_transaction_sync(sessionmaker(engine), work, retry=FAST, attempt_timeout=0.5)
    finally:
        engine.dispose()
    assert attempts == 1
    assert "attempt_timeout" in str(info.value)
    syncrep.wait_for(lambda: syncrep.ledger_rows(key) == 1, timeout=5)


def test_cut_reaches_the_server_after_the_driver_closed_the_connection(
    syncrep: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cut shuts the socket, the blocked thread reads EOF and psycopg marks the connection
    closed — after which its cancel_safe() does nothing — before the cut sends its cancel
    request. The cancel must still reach the server, or the backend waits in SyncRep for
    ever, its committed row invisible. (Seen once in CI as the test above failing.)"""
    engine = create_engine(syncrep.app_url("faults", driver="psycopg"))
    key = uuid.uuid4()
    raw = engine.raw_connection()
    driver = raw.driver_connection
    failed: list[BaseException] = []

    def commit() -> None:
        try:
            driver.commit()  # type: ignore[union-attr]
        except Exception as exc:
            failed.append(exc)

    try:
        cursor = raw.cursor()
        cursor.execute("SET LOCAL synchronous_commit = 'on'")
        cursor.execute("INSERT INTO ledger VALUES (%s)", (key,))
        committing = threading.Thread(target=commit)
        committing.start()
        syncrep.wait_for(lambda: syncrep.syncrep_waiters() != [], timeout=20)

        real_shutdown = cut_module.shutdown

        def shutdown_and_lose_the_race(fd: int) -> None:
            real_shutdown(fd)
            committing.join()  # the blocked thread has seen EOF: the connection is closed

        monkeypatch.setattr(cut_module, "shutdown", shutdown_and_lose_the_race)
        assert cut_module.cut(driver)
        assert driver.closed  # type: ignore[union-attr]
        assert len(failed) == 1
        syncrep.wait_for(lambda: syncrep.ledger_rows(key) == 1, timeout=10)
        assert syncrep.syncrep_waiters() == []
    finally:
        raw.invalidate()
        engine.dispose()


@pytest.mark.parametrize("instrumented", [True, False])
def test_sync_resolver_reports_a_lost_commit_that_committed(
    syncrep: PgServer, instrumented: bool
) -> None:
    """run_transaction_sync(resolve_commit_outcome=True): COMMIT lost in the SyncRep wait;
    pg_xact_status says committed; the result is returned, fn ran once."""
    engine = create_engine(syncrep.app_url("faults", driver="psycopg"))
    if instrumented:
        instrument(engine)
    key = uuid.uuid4()
    attempts = 0

    def work(session: Session) -> str:
        nonlocal attempts
        attempts += 1
        session.execute(text("SET LOCAL synchronous_commit = 'on'"))
        session.execute(text("INSERT INTO ledger VALUES (:k)"), {"k": key})
        return "booked"

    killer = threading.Thread(target=syncrep.kill_first_syncrep_waiter)
    killer.start()
    try:
        result = run_transaction_sync(
            sessionmaker(engine), work, retry=FAST, resolve_commit_outcome=True
        )
    finally:
        killer.join()
        engine.dispose()
    assert result == "booked"
    assert attempts == 1
    assert syncrep.ledger_rows(key) == 1


def test_sync_attempt_timeout_interrupts_sqlite(tmp_path: Path) -> None:
    """On SQLite the deadline calls sqlite3's interrupt(): an endless query ends as a QueryTimeout."""
    engine = create_engine(f"sqlite:///{tmp_path / 'endless.sqlite'}")

    def endless(session: Session) -> int:
        query = (
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
        )
        return int(session.execute(text(query)).scalar_one())

    try:
        with pytest.raises(sr.QueryTimeout, match=r"attempt_timeout of 0\.2s expired"):
            run_transaction_sync(
                sessionmaker(engine), endless, retry=RetryPolicy(attempts=1), attempt_timeout=0.2
            )
        assert (
            run_transaction_sync(
                sessionmaker(engine),
                lambda s: s.execute(text("SELECT 7")).scalar_one(),
                attempt_timeout=5,
            )
            == 7
        )
    finally:
        engine.dispose()
