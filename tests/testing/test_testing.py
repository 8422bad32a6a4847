"""The testing kit: fault injection through the real driver, and test mode."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import CircuitBreaker, RetryPolicy, instrument, run_transaction
from sqlalchemy_resilience.testing import in_test_mode, inject_fault, is_testing, set_testing

FAST = RetryPolicy(attempts=4, initial_backoff=0.001, max_backoff=0.002)


@pytest.fixture
async def engine(pg_engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    instr = instrument(pg_engine)
    async with pg_engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS k"))
        await conn.execute(text("CREATE TABLE k (id int PRIMARY KEY, v int NOT NULL)"))
        await conn.execute(text("INSERT INTO k VALUES (1, 0)"))
    yield pg_engine
    instr.detach()


@pytest.mark.parametrize(
    ("fault", "expected", "sqlstate"),
    [
        ("serialization_failure", sr.SerializationFailure, "40001"),
        ("deadlock", sr.DeadlockDetected, "40P01"),
        ("query_canceled", sr.QueryTimeout, "57014"),
        ("lock_not_available", sr.LockNotAvailable, "55P03"),
    ],
)
async def test_injected_server_errors_translate_like_real_ones(
    engine: AsyncEngine, fault: str, expected: type[sr.DatabaseFailure], sqlstate: str
) -> None:
    """An injected SQLSTATE arrives through the driver and is translated like the real error."""
    with inject_fault(engine, fault) as injector:  # type: ignore[arg-type]
        with pytest.raises(expected) as info:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 2"))).scalar_one() == 2
    assert info.value.sqlstate == sqlstate
    assert injector.fired == 1


async def test_injected_disconnect_really_drops_the_connection(engine: AsyncEngine) -> None:
    """`disconnect` closes the driver connection: SQLAlchemy invalidates it and the retry applies once."""
    with inject_fault(engine, "disconnect", match="UPDATE k") as injector:
        with pytest.raises(sr.ConnectionLost) as info:
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE k SET v = v + 1 WHERE id = 1"))
        assert info.value.connection_invalidated is True
        attempts = 0

        async def work(session: AsyncSession) -> None:
            nonlocal attempts
            attempts += 1
            await session.execute(text("UPDATE k SET v = v + 1 WHERE id = 1"))

        injector.nth, injector.seen = injector.seen + 1, injector.seen  # fail the next UPDATE too
        await run_transaction(async_sessionmaker(engine), work, retry=FAST)
    assert attempts == 2
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT v FROM k WHERE id = 1"))).scalar_one() == 1


async def test_nth_times_and_match(engine: AsyncEngine) -> None:
    """Only matching statements count; the nth and the times-1 after it fail."""
    outcomes: list[str] = []
    with inject_fault(engine, "serialization_failure", nth=2, times=2, match="select v") as inj:
        for _ in range(5):
            try:
                async with engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))  # never matches
                    await conn.execute(text("SELECT v FROM k"))
                outcomes.append("ok")
            except sr.SerializationFailure:
                outcomes.append("fail")
    assert outcomes == ["ok", "fail", "fail", "ok", "ok"]
    assert (inj.seen, inj.fired) == (5, 2)


@pytest.mark.parametrize("driver", ["sqlite", "sqlite+aiosqlite"])
async def test_sqlite_faults(tmp_path: Path, driver: str) -> None:
    """busy, busy_snapshot and disconnect on SQLite, sync and async."""
    url = f"{driver}:///{tmp_path / 'f.sqlite'}"
    expectations = [
        ("busy", sr.LockNotAvailable),
        ("busy_snapshot", sr.SerializationFailure),
        ("disconnect", sr.ConnectionLost),
    ]
    if driver == "sqlite":
        engine = create_engine(url)
        instrument(engine)
        try:
            for fault, expected in expectations:
                with inject_fault(engine, fault), pytest.raises(expected), engine.connect() as c:  # type: ignore[arg-type]
                    c.execute(text("SELECT 1"))
            with engine.connect() as c:
                assert c.execute(text("SELECT 3")).scalar_one() == 3
        finally:
            engine.dispose()
        return
    pytest.importorskip("aiosqlite")
    aengine = create_async_engine(url)
    instrument(aengine)
    try:
        for fault, expected in expectations:
            with inject_fault(aengine, fault), pytest.raises(expected):  # type: ignore[arg-type]
                async with aengine.connect() as ac:
                    await ac.execute(text("SELECT 1"))
        async with aengine.connect() as ac:
            assert (await ac.execute(text("SELECT 3"))).scalar_one() == 3
    finally:
        await aengine.dispose()


def test_injector_validation(tmp_path: Path) -> None:
    """Faults a database cannot produce, and bad counts, are refused."""
    engine = create_engine(f"sqlite:///{tmp_path / 'v.sqlite'}")
    try:
        with pytest.raises(ValueError, match="not available on sqlite"):
            inject_fault(engine, "deadlock")
        with pytest.raises(ValueError, match="nth must be an int >= 1"):
            inject_fault(engine, "busy", nth=0)
        with pytest.raises(TypeError, match="match must be a string"):
            inject_fault(engine, "busy", match=5)  # type: ignore[arg-type]
    finally:
        engine.dispose()


async def test_test_mode_skips_backoff_caps_attempts_and_disables_breakers(tmp_path: Path) -> None:
    """In test mode retries do not sleep, stop at the cap, and an open breaker admits calls."""
    engine = create_engine(f"sqlite:///{tmp_path / 't.sqlite'}")
    instrument(engine)
    from sqlalchemy.orm import Session, sessionmaker

    from sqlalchemy_resilience import run_transaction_sync

    slow_policy = RetryPolicy(attempts=10, initial_backoff=1.0, max_backoff=5.0, jitter=False)
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=3600)
    breaker.force_open()
    calls = 0

    def work(session: Session) -> None:
        nonlocal calls
        calls += 1
        session.execute(text("SELECT 1"))

    assert not is_testing()
    try:
        with in_test_mode(attempts=2), inject_fault(engine, "busy", times=100):
            assert is_testing()
            started = time.monotonic()
            with pytest.raises(sr.RetryExhausted) as info:
                run_transaction_sync(sessionmaker(engine), work, retry=slow_policy, breaker=breaker)
            elapsed = time.monotonic() - started
        assert not is_testing()
    finally:
        engine.dispose()
    assert info.value.attempts == 2
    assert (
        calls == 0
    )  # each attempt failed at its first statement, BEGIN IMMEDIATE: before the work
    assert elapsed < 0.5
    with pytest.raises(ValueError, match="attempts must be an int >= 1"):
        set_testing(True, attempts=0)
