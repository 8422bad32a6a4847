"""The breaker's failover defaults (#31): a burst is not an outage, probes start soon and
back off, and callers wait at an open breaker while a failover can still end in time."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import (
    CircuitBreaker,
    RetryPolicy,
    instrument,
    run_transaction,
    run_transaction_sync,
)
from sqlalchemy_resilience.retry import BreakerState
from tests.retry.test_breaker import FakeClock, fail, ok

FAST = RetryPolicy(attempts=4, initial_backoff=0.001, max_backoff=0.01, deadline=30)


def test_a_burst_on_a_busy_engine_does_not_open_it() -> None:
    """Five in-flight attempts killed at once among a busy engine's successes: still closed.
    Half of the last 20 calls failing: open."""
    b = CircuitBreaker(clock=FakeClock())
    for _ in range(15):
        ok(b)
    for _ in range(5):
        fail(b)
    assert b.state is BreakerState.CLOSED
    for _ in range(5):
        fail(b)
    assert b.state is BreakerState.OPEN  # 10 of the last 20


def test_probes_start_soon_and_back_off() -> None:
    """First probe after 0.5 s; each failed probe doubles the wait up to 1 s; a success
    closes it and the next outage starts at 0.5 s again."""
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, clock=clock)
    fail(b)
    waits = []
    for _ in range(5):
        waits.append(b.retry_after())
        clock.advance(b.retry_after())
        fail(b)  # the probe fails
    assert waits == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0])
    clock.advance(1.0)
    ok(b)
    assert b.state is BreakerState.CLOSED
    fail(b)
    assert b.retry_after() == pytest.approx(0.5)


def test_outage_seconds_count_from_the_first_open() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, clock=clock)
    assert b.outage_seconds() == 0.0
    fail(b)
    clock.advance(0.5)
    fail(b)  # a failed probe: the same outage
    clock.advance(1.0)
    assert b.outage_seconds() == pytest.approx(1.5)


async def test_a_caller_waits_for_the_probe_that_succeeds() -> None:
    """Open breaker, recovery 20 ms: admit() returns the probe permit once it is allowed;
    a second caller waits for that probe's verdict and is admitted when it succeeds."""
    b = CircuitBreaker(failure_threshold=1, recovery_timeout=0.02)
    fail(b)
    probe = await b.admit(timeout=10)
    assert probe.probe
    second = asyncio.ensure_future(b.admit(timeout=10))
    await asyncio.sleep(0)
    assert not second.done()  # the probe is out: it waits for the verdict
    b.record_success(probe)
    permit = await asyncio.wait_for(second, 10)
    assert not permit.probe and b.state is BreakerState.CLOSED
    b.record_success(permit)


def test_waiting_stops_where_it_cannot_help() -> None:
    """No time left for the next probe, or an outage longer than failover_window: the caller
    gets CircuitOpenError at once, the latter with a note saying why."""
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, recovery_timeout=5, failover_window=30, clock=clock)
    fail(b)
    with pytest.raises(sr.CircuitOpenError):
        b.admit_sync(timeout=1)  # the probe is 5 s away
    clock.advance(31)
    b.force_open()
    with pytest.raises(sr.CircuitOpenError) as info:
        b.admit_sync(timeout=60)
    assert "longer than failover_window" in "\n".join(info.value.__notes__)


def test_run_transaction_waits_at_an_open_breaker(tmp_path: Path) -> None:
    """A unit of work meeting an open breaker waits for its probe and runs once; with
    wait_at_breaker=False it fails fast, the work never called."""
    engine = create_engine(f"sqlite:///{tmp_path / 'w.sqlite'}")
    calls = []

    def work(session: Session) -> str:
        calls.append(1)
        return "done"

    try:
        b = CircuitBreaker(failure_threshold=1, recovery_timeout=0.05)
        b.force_open()
        assert run_transaction_sync(sessionmaker(engine), work, breaker=b) == "done"
        assert len(calls) == 1 and b.state is BreakerState.CLOSED
        b.force_open()
        with pytest.raises(sr.CircuitOpenError):
            run_transaction_sync(
                sessionmaker(engine), work, breaker=b, retry=RetryPolicy(wait_at_breaker=False)
            )
        assert len(calls) == 1
    finally:
        engine.dispose()


def test_threads_waiting_at_the_breaker_send_one_probe() -> None:
    """Eight threads meet an open breaker: exactly one probe is admitted at a time; when it
    succeeds, all eight are served."""
    b = CircuitBreaker(failure_threshold=1, recovery_timeout=0.02)
    fail(b)
    probes = []
    served = []
    lock = threading.Lock()
    admitted_one = threading.Event()
    release_probe = threading.Event()

    def caller() -> None:
        permit = b.admit_sync(timeout=30)
        if permit.probe:
            with lock:
                probes.append(permit)
            admitted_one.set()
            release_probe.wait(30)
        b.record_success(permit)
        with lock:
            served.append(permit)

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    assert admitted_one.wait(30)
    with lock:
        assert len(probes) == 1 and served == []
    release_probe.set()
    for t in threads:
        t.join(30)
    assert len(served) == 8 and len(probes) == 1


async def test_a_commit_the_driver_never_sent_is_re_run(tmp_path: Path) -> None:
    """asyncpg refuses COMMIT while another operation is still in flight ("cannot switch to
    state ...; another operation is in progress"): nothing reached the server, so the unit
    is re-run, not reported as an unknown outcome. Injected through the driver's own
    exception class; the row lands once."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'c.sqlite'}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (k TEXT PRIMARY KEY)"))
    dialect = engine.sync_engine.dialect
    commit = dialect.do_commit
    refused = [1]
    # asyncpg's class, by name, under this driver's Error (SQLAlchemy wraps what it raises).
    internal_client_error = type("InternalClientError", (dialect.loaded_dbapi.Error,), {})

    def do_commit(dbapi_connection: object) -> None:
        if refused:
            refused.pop()
            # Nothing reached the server; the transaction ends with the connection.
            dbapi_connection.rollback()  # type: ignore[attr-defined]
            raise internal_client_error(
                "cannot switch to state 15; another operation (2) is in progress"
            )
        commit(dbapi_connection)

    dialect.do_commit = do_commit  # type: ignore[method-assign]
    instrument(engine)
    attempts = 0

    async def work(session: AsyncSession) -> None:
        nonlocal attempts
        attempts += 1
        await session.execute(text("INSERT INTO t VALUES ('a')"))

    try:
        await run_transaction(async_sessionmaker(engine), work, retry=FAST)
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 1
    finally:
        await engine.dispose()
    assert attempts == 2


def test_a_refused_re_run_after_a_lost_commit_is_still_unknown(tmp_path: Path) -> None:
    """S45: idempotent work whose COMMIT reply was lost (it committed) is re-run; an open
    breaker refuses the re-run at once (wait_at_breaker=False). The caller gets
    CommitOutcomeUnknown, not CircuitOpenError, which would read as "not applied" (the
    chaos leg of S45 counted one such phantom in 127,440 refusals before the fix)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'u.sqlite'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (k TEXT PRIMARY KEY)"))
    dialect = engine.dialect
    commit = dialect.do_commit
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=60)
    lost = [1]

    def do_commit(dbapi_connection: object) -> None:
        commit(dbapi_connection)
        if lost:
            lost.pop()
            # The reply is lost after the COMMIT was applied (as asyncpg and psycopg
            # report it when the server's connection drops then).
            breaker.force_open()
            raise sr.CommitOutcomeUnknown("reply to COMMIT lost", connection_invalidated=True)

    dialect.do_commit = do_commit  # type: ignore[method-assign]
    instrument(engine)

    def work(session: Session) -> None:
        session.execute(text("INSERT INTO t VALUES ('a') ON CONFLICT DO NOTHING"))

    try:
        with pytest.raises(sr.CommitOutcomeUnknown) as info:
            run_transaction_sync(
                sessionmaker(engine),
                work,
                breaker=breaker,
                idempotent=True,
                retry=RetryPolicy(attempts=4, initial_backoff=0.001, wait_at_breaker=False),
            )
        assert isinstance(info.value.__cause__, sr.CircuitOpenError)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == 1
    finally:
        engine.dispose()
