"""Sagas on a real SQLite file and a real PostgreSQL: forward, compensation, outcomes, recovery."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.util import greenlet_spawn

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import RetryPolicy, Saga
from sqlalchemy_resilience.saga import SagaContext, get_saga, recover_sagas
from sqlalchemy_resilience.saga.api import _recover
from sqlalchemy_resilience.saga.store import TxRunner
from sqlalchemy_resilience.schema import create_saga_tables, sagas

QUICK = RetryPolicy(attempts=3, initial_backoff=0.001, max_backoff=0.005, retry_on=lambda e: True)


class Crash(BaseException):
    """Stands for the process dying mid-saga: nothing catches it, nothing is recorded."""


@pytest.fixture
async def engine(any_engine: AsyncEngine) -> AsyncEngine:
    """SQLite, then PostgreSQL, with the saga tables and an ``orders`` table."""
    eng = any_engine
    async with eng.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS orders"))
        await conn.execute(text("DROP TABLE IF EXISTS sqlalchemy_resilience_saga_step"))
        await conn.execute(text("DROP TABLE IF EXISTS sqlalchemy_resilience_saga"))
        await conn.run_sync(create_saga_tables)
        await conn.execute(
            text(
                "CREATE TABLE orders (saga_id varchar(200), step varchar(50), PRIMARY KEY (saga_id, step))"
            )
        )
    return eng


async def _lease_runs_out(engine: AsyncEngine, *saga_ids: str) -> None:
    """End each saga's lease now: what waiting past it does, in the database's clock."""
    async with engine.begin() as conn:
        await conn.execute(
            update(sagas)
            .where(sagas.c.id.in_(saga_ids))
            .values(lease_until=sagas.c.lease_until - 3600)
        )


class World:
    """The effects a saga leaves: database rows, and calls to an external system keyed by idempotency key."""

    def __init__(self) -> None:
        self.calls: list[str] = []  # every external call, duplicates included
        self.effects: set[str] = set()  # what the external system applied (deduplicated by key)
        self.order: list[str] = []

    async def insert(self, ctx: SagaContext) -> dict[str, Any]:
        await ctx.session.execute(
            text("INSERT INTO orders VALUES (:s, :t)"), {"s": ctx.saga_id, "t": ctx.step}
        )
        self.order.append(f"do {ctx.step}")
        return {"step": ctx.step, "seen": sorted(ctx.results)}

    async def delete(self, ctx: SagaContext) -> None:
        await ctx.session.execute(
            text("DELETE FROM orders WHERE saga_id = :s AND step = :t"),
            {"s": ctx.saga_id, "t": ctx.step},
        )
        self.order.append(f"undo {ctx.step}")

    def call(self, ctx: SagaContext) -> dict[str, Any]:
        self.calls.append(ctx.idempotency_key)
        self.effects.add(ctx.idempotency_key)
        self.order.append(f"{'undo' if ctx.compensating else 'do'} {ctx.step}")
        return {"key": ctx.idempotency_key}


async def _rows(engine: AsyncEngine, saga_id: str) -> list[str]:
    async with engine.connect() as conn:
        result = await conn.execute(
            text("SELECT step FROM orders WHERE saga_id = :s ORDER BY step"), {"s": saga_id}
        )
        return list(result.scalars())


def _saga(world: World, name: str = "order", **kwargs: Any) -> Saga:
    return (
        Saga(name, **kwargs)
        .step("reserve", world.insert, compensate=world.delete)
        .step("charge", world.call, compensate=world.call, external=True)
        .step("ship", world.insert, compensate=world.delete)
    )


async def test_completes_and_passes_results(engine: AsyncEngine) -> None:
    """Every step runs in order and sees the earlier results; the log says completed."""
    world = World()
    Session = async_sessionmaker(engine)
    results = await _saga(world).execute({"sku": "A1"}, saga_id="ord-1", sessionmaker=Session)
    assert results == {
        "reserve": {"step": "reserve", "seen": []},
        "charge": {"key": "ord-1:charge"},
        "ship": {"step": "ship", "seen": ["charge", "reserve"]},
    }
    assert world.order == ["do reserve", "do charge", "do ship"]
    assert await _rows(engine, "ord-1") == ["reserve", "ship"]
    record = await get_saga(Session, "ord-1")
    assert record is not None and record.status == "completed" and record.owner is None
    assert [s["status"] for s in record.to_dict()["steps"]] == ["completed"] * 3
    assert record.data == {"sku": "A1"}


async def test_failure_compensates_completed_steps_in_reverse(engine: AsyncEngine) -> None:
    """A failing step is not compensated; the ones before it are, last first; the database is as before."""
    world = World()
    Session = async_sessionmaker(engine)

    async def refuse(ctx: SagaContext) -> None:
        raise ValueError("out of stock")

    saga = _saga(world).step("confirm", refuse, compensate=world.delete)
    with pytest.raises(sr.SagaCompensated) as info:
        await saga.execute(saga_id="ord-2", sessionmaker=Session)
    assert world.order == [
        "do reserve",
        "do charge",
        "do ship",
        "undo ship",
        "undo charge",
        "undo reserve",
    ]
    assert info.value.failed_step == "confirm"
    assert info.value.compensated == ("ship", "charge", "reserve")
    assert isinstance(info.value.__cause__, ValueError)
    assert "out of stock" in info.value.error
    assert await _rows(engine, "ord-2") == []
    assert world.effects == {"ord-2:charge", "ord-2:charge:compensate"}
    record = await get_saga(Session, "ord-2")
    assert record is not None and record.status == "compensated"
    assert record.steps["confirm"].status == "failed"


async def test_compensation_is_retried(engine: AsyncEngine) -> None:
    """A compensation failing twice succeeds on its third attempt under compensation_retry."""
    world = World()
    Session = async_sessionmaker(engine)
    attempts: list[int] = []

    def flaky_refund(ctx: SagaContext) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt < 3:
            raise ConnectionError("payments API unreachable")

    saga = (
        Saga("flaky", compensation_retry=QUICK)
        .step("charge", world.call, compensate=flaky_refund, external=True)
        .step("fail", lambda ctx: 1 / 0, external=True)
    )
    with pytest.raises(sr.SagaCompensated):
        await saga.execute(saga_id="ord-3", sessionmaker=Session)
    assert attempts == [1, 2, 3]


async def test_failed_compensations_are_raised_together_and_can_be_redriven(
    engine: AsyncEngine,
) -> None:
    """Two compensations fail: an ExceptionGroup naming them, the saga left compensation_failed; redrive finishes it."""
    world = World()
    Session = async_sessionmaker(engine)
    broken = {"charge", "reserve"}

    def refund(ctx: SagaContext) -> None:
        if ctx.step in broken:  # the payment API's socket error: not a database outage
            raise ConnectionError(f"{ctx.step} undo is down")
        world.call(ctx)

    async def release(ctx: SagaContext) -> None:
        if ctx.step in broken:
            raise RuntimeError(f"{ctx.step} undo is down")
        await world.delete(ctx)

    def build() -> Saga:
        return (
            Saga("fragile", compensation_retry=QUICK)
            .step("reserve", world.insert, compensate=release)
            .step("charge", world.call, compensate=refund, external=True)
            .step("fail", lambda ctx: 1 / 0, external=True)
        )

    with pytest.raises(sr.SagaCompensationFailed) as info:
        await build().execute(saga_id="ord-4", sessionmaker=Session)
    group = info.value
    assert isinstance(group, ExceptionGroup)
    assert group.saga_id == "ord-4" and group.failed_step == "fail"
    assert sorted(group.compensation_failures) == ["charge", "reserve"]
    assert isinstance(group.exceptions[0], ZeroDivisionError)
    assert [str(e) for e in group.exceptions[1:]] == ["charge undo is down", "reserve undo is down"]
    record = await get_saga(Session, "ord-4")
    assert record is not None and record.status == "compensation_failed"
    assert record.steps["charge"].error == "ConnectionError: charge undo is down"
    assert record.steps["reserve"].error == "RuntimeError: reserve undo is down"
    assert await _rows(engine, "ord-4") == ["reserve"]
    # A second start returns the same outcome, without running anything again.
    calls = len(world.calls)
    with pytest.raises(sr.SagaCompensationFailed) as again:
        await build().execute(saga_id="ord-4", sessionmaker=Session)
    assert sorted(again.value.compensation_failures) == ["charge", "reserve"]
    assert len(world.calls) == calls
    # The operator fixes the cause and re-drives.
    broken.clear()
    with pytest.raises(sr.SagaCompensated):
        await build().redrive("ord-4", sessionmaker=Session)
    record = await get_saga(Session, "ord-4")
    assert record is not None and record.status == "compensated"
    assert await _rows(engine, "ord-4") == []
    with pytest.raises(LookupError):
        await build().redrive("ord-4", sessionmaker=Session)


async def test_same_saga_id_returns_the_first_outcome(engine: AsyncEngine) -> None:
    """Starting a saga id again returns its results (or raises its failure) without running a step."""
    world = World()
    Session = async_sessionmaker(engine)
    first = await _saga(world).execute({"n": 1}, saga_id="ord-5", sessionmaker=Session)
    second = await _saga(world).execute({"n": 2}, saga_id="ord-5", sessionmaker=Session)
    assert second == first
    assert world.calls == ["ord-5:charge"]
    other = Saga("other").step("x", world.call, external=True)
    with pytest.raises(ValueError, match="belongs to saga 'order'"):
        await other.execute(saga_id="ord-5", sessionmaker=Session)


async def test_crash_mid_saga_is_recovered_exactly_once(engine: AsyncEngine) -> None:
    """The process 'dies' in the external call; after the lease, recover_sagas re-calls it with the same key and finishes."""
    world = World()
    Session = async_sessionmaker(engine)
    crashed = [False]

    def charge(ctx: SagaContext) -> dict[str, Any]:
        result = world.call(ctx)
        if not crashed[0]:
            crashed[0] = True
            raise Crash  # after the external system applied it, before the log knew
        return result

    # A lease long enough to still hold on a busy machine when the test asks
    # (0.2 s expired before the second start under two busy CPU loops).
    saga = (
        Saga("order", lease=2.0)
        .step("reserve", world.insert, compensate=world.delete)
        .step("charge", charge, compensate=world.call, external=True)
        .step("ship", world.insert, compensate=world.delete)
    )
    with pytest.raises(Crash):
        await saga.execute(saga_id="ord-6", sessionmaker=Session)
    record = await get_saga(Session, "ord-6")
    assert record is not None and (record.status, record.position) == ("running", 1)
    assert record.steps["charge"].status == "running"
    # Still leased: a start of the same id says so instead of running it twice.
    with pytest.raises(sr.SagaInProgress) as busy:
        await saga.execute(saga_id="ord-6", sessionmaker=Session)
    assert 0 < busy.value.retry_after <= 2.0
    assert (await recover_sagas(Session, [saga])).recovered == []
    await _lease_runs_out(engine, "ord-6")
    report = await recover_sagas(Session, [saga])
    assert report.completed == ["ord-6"]
    assert world.calls == ["ord-6:charge", "ord-6:charge"]  # called twice, same key
    assert world.effects == {"ord-6:charge"}
    assert await _rows(engine, "ord-6") == ["reserve", "ship"]  # the database step ran once
    record = await get_saga(Session, "ord-6")
    assert record is not None and record.status == "completed" and record.recoveries == 1
    assert record.steps["charge"].attempts == 2


async def test_database_step_commits_with_its_log_entry(engine: AsyncEngine) -> None:
    """A crash inside a database step rolls back its write with it: on recovery it runs once, not twice."""
    world = World()
    Session = async_sessionmaker(engine)
    crashed = [False]

    async def reserve(ctx: SagaContext) -> dict[str, Any]:
        result = await world.insert(ctx)
        if not crashed[0]:
            crashed[0] = True
            raise Crash
        return result

    saga = Saga("order", lease=0.1).step("reserve", reserve, compensate=world.delete)
    with pytest.raises(Crash):
        await saga.execute(saga_id="ord-7", sessionmaker=Session)
    assert await _rows(engine, "ord-7") == []
    await _lease_runs_out(engine, "ord-7")
    assert (await recover_sagas(Session, [saga])).completed == ["ord-7"]
    assert await _rows(engine, "ord-7") == ["reserve"]


async def test_two_recoverers_never_take_the_same_saga(engine: AsyncEngine) -> None:
    """20 interrupted sagas, two instances recovering at once (5 at a time): disjoint, and together all."""
    world = World()
    Session = async_sessionmaker(engine)
    stop = set()

    def charge(ctx: SagaContext) -> dict[str, Any]:
        if ctx.saga_id not in stop:
            stop.add(ctx.saga_id)
            raise Crash
        return world.call(ctx)

    saga = (
        # Long enough that a loaded machine does not let a claimed saga's lease
        # run out while the other instance is busy (that is test_lease_lost's case).
        Saga("order", lease=1.5)
        .step("reserve", world.insert, compensate=world.delete)
        .step("charge", charge, external=True)
    )
    ids = [f"bulk-{i:02d}" for i in range(20)]
    for saga_id in ids:
        with pytest.raises(Crash):
            await saga.execute(saga_id=saga_id, sessionmaker=Session)
    await _lease_runs_out(engine, *ids)

    async def instance(owner: str) -> list[str]:
        runner = TxRunner(Session, is_async=True, retry=RetryPolicy(attempts=5))
        taken: list[str] = []
        while True:
            report = await greenlet_spawn(_recover, runner, [saga], limit=5, owner=owner)
            if not report.recovered:
                return taken
            assert not report.errors and not report.lost
            taken += report.recovered

    a, b = await asyncio.gather(instance("instance-a"), instance("instance-b"))
    assert not set(a) & set(b)
    assert sorted(a + b) == ids
    for saga_id in ids:
        record = await get_saga(Session, saga_id)
        assert record is not None and record.status == "completed"
    assert len(world.calls) == 20


async def test_lease_lost_stops_the_old_driver(engine: AsyncEngine) -> None:
    """A driver slower than its lease is overtaken (here by recover_sagas in the same process): it stops at the next step boundary; the step applied once."""
    world = World()
    Session = async_sessionmaker(engine)
    release, in_flight = asyncio.Event(), asyncio.Event()
    calls = [0]

    async def slow_charge(ctx: SagaContext) -> dict[str, Any]:
        calls[0] += 1
        if calls[0] == 1:  # the first driver's call hangs until released
            in_flight.set()
            await release.wait()
        return world.call(ctx)

    saga = (
        Saga("order", lease=0.2)
        .step("charge", slow_charge, external=True)
        .step("ship", world.insert, compensate=world.delete)
    )
    first = asyncio.create_task(saga.execute(saga_id="ord-8", sessionmaker=Session))
    await in_flight.wait()
    await _lease_runs_out(engine, "ord-8")  # while the call is in flight
    # recover_sagas in the same process: the takeover is per driving, not per
    # process, so the slow driver is stopped all the same.
    report = await recover_sagas(Session, [saga])
    assert report.completed == ["ord-8"]
    release.set()  # the first driver's call returns; its next log write finds it lost the saga
    with pytest.raises(sr.SagaLeaseLost):
        await first
    assert world.effects == {"ord-8:charge"}
    assert await _rows(engine, "ord-8") == ["ship"]
