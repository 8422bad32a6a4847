"""resilient_sessionmaker: retries only where nothing can be lost, through the breaker."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import CircuitBreaker, RetryPolicy, instrument
from sqlalchemy_resilience.retry import resilient_sessionmaker
from sqlalchemy_resilience.testing import inject_fault
from tests.pgharness import PgServer

FAST = RetryPolicy(attempts=4, initial_backoff=0.001, max_backoff=0.002)


@pytest.fixture
async def engine(pg_engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    instr = instrument(pg_engine)
    async with pg_engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS r"))
        await conn.execute(text("CREATE TABLE r (id int PRIMARY KEY, v int NOT NULL)"))
        await conn.execute(text("INSERT INTO r VALUES (1, 0)"))
    yield pg_engine
    instr.detach()


async def test_stale_pooled_connections_are_retried_on_first_statement(
    engine: AsyncEngine, pg_server: PgServer, pg_database: str
) -> None:
    """Killing every idle pooled connection costs the caller nothing: the first statement is retried."""
    from sqlalchemy.ext.asyncio import async_sessionmaker

    Plain = async_sessionmaker(engine)
    async with Plain() as session:
        await session.execute(text("SELECT 1"))
    pg_server.terminate_backends(database=pg_database)
    with pytest.raises(sr.ConnectionLost):  # the control: a plain session fails
        async with Plain() as session:
            await session.execute(text("SELECT 1"))
    Session = resilient_sessionmaker(engine, retry=FAST)
    async with Session() as session:
        await session.execute(text("SELECT 1"))
    killed = pg_server.terminate_backends(database=pg_database)
    assert killed >= 1
    async with Session() as session:
        value = (await session.execute(text("SELECT v FROM r WHERE id = 1"))).scalar_one()
        await session.execute(text("UPDATE r SET v = v + 1 WHERE id = 1"))
        await session.commit()
    assert value == 0
    async with Session() as session:
        assert await session.scalar(text("SELECT v FROM r WHERE id = 1")) == 1


async def test_failure_after_work_is_not_retried(engine: AsyncEngine) -> None:
    """A disconnect on the second statement is raised (typed, retryable) with a note to re-run the unit of work."""
    Session = resilient_sessionmaker(engine, retry=FAST)
    with inject_fault(engine, "disconnect", match="UPDATE r") as injector:
        async with Session() as session:
            await session.execute(text("SELECT v FROM r WHERE id = 1"))
            with pytest.raises(sr.ConnectionLost) as info:
                await session.execute(text("UPDATE r SET v = v + 100 WHERE id = 1"))
    assert injector.fired == 1
    assert info.value.retryable is True
    notes = getattr(info.value, "__notes__", None)
    if notes is not None:  # Python >= 3.11
        assert any("re-run the whole unit of work" in n for n in notes)
    async with Session() as session:
        assert await session.scalar(text("SELECT v FROM r WHERE id = 1")) == 0


async def test_first_statement_serialization_failure_is_retried(engine: AsyncEngine) -> None:
    """A retryable error on the statement that opens the transaction is retried transparently."""
    Session = resilient_sessionmaker(engine, retry=FAST)
    with inject_fault(engine, "serialization_failure", match="SELECT v") as injector:
        async with Session() as session:
            assert await session.scalar(text("SELECT v FROM r WHERE id = 1")) == 0
    assert injector.fired == 1


async def test_permanent_errors_are_raised_at_once(engine: AsyncEngine) -> None:
    """A constraint violation on the first statement is not retried."""
    Session = resilient_sessionmaker(engine, retry=FAST)
    statements: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    async with Session() as session:
        with pytest.raises(sr.UniqueViolation):
            await session.execute(text("INSERT INTO r VALUES (1, 0)"))
    assert sum("INSERT INTO r" in s for s in statements) == 1


async def test_open_breaker_refuses_before_checkout(engine: AsyncEngine) -> None:
    """With the breaker open, session calls fail fast without a pool checkout."""
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=60)
    breaker.force_open()
    checkouts: list[object] = []
    event.listen(engine.sync_engine, "checkout", lambda *a: checkouts.append(a))
    Session = resilient_sessionmaker(engine, retry=FAST, breaker=breaker)
    async with Session() as session:
        with pytest.raises(sr.CircuitOpenError):
            await session.execute(text("SELECT 1"))
    assert checkouts == []


def test_resilient_sessionmaker_validation() -> None:
    """Wrong option types are refused."""
    with pytest.raises(TypeError, match="retry must be a RetryPolicy"):
        resilient_sessionmaker(None, retry=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="do not pass class_"):
        resilient_sessionmaker(None, class_=object)
