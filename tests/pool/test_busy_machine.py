"""What a slow network or a loaded machine must not be mistaken for: queueing.

Waiting for a free connection and opening a new one are different figures
(the conventions' ``wait_time`` and ``create_time``); the health check warns
on each by its own rule, and the autosizer grows only on requests beyond the
pool's capacity, not on a checkout that already has its connection but has
not returned yet (which a loaded machine can stretch long enough to sample).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.ext.asyncio import create_async_engine

from sqlalchemy_resilience import health_check, health_check_sync, instrument
from sqlalchemy_resilience.pool import PoolAutosizer, ResizableQueuePool, pool_stats
from tests.faultproxy import FaultProxy
from tests.pgharness import PgServer


@pytest.fixture
def proxy(pg_server: PgServer) -> Iterator[FaultProxy]:
    p = FaultProxy("127.0.0.1", pg_server.port)
    try:
        yield p
    finally:
        p.close()


async def test_a_distant_database_is_healthy_not_slow_checkouts(
    pg_server: PgServer, pg_database: str, proxy: FaultProxy
) -> None:
    """50 ms each way: the probe opens a connection in several round trips, which is
    create time, not a wait for a free connection: healthy."""
    proxy.latency = 0.05
    engine = create_async_engine(pg_server.app_url(pg_database).set(port=proxy.port))
    instr = instrument(engine)
    try:
        report = await health_check(engine, timeout=5, monitor=instr.pool)
        stats = pool_stats(engine)
    finally:
        await engine.dispose()
    assert report.status == "healthy", report.warnings
    assert report.latency is not None and report.latency >= 0.05  # the SELECT 1 round trip
    assert stats["create_time_p99"] >= 0.1  # several round trips to open it...
    assert stats["wait_time_p99"] >= stats["create_time_p99"]  # ...inside the checkout...
    assert stats["queue_wait_time_p99"] < 0.05  # ...none of it queueing


async def test_queueing_for_a_free_connection_is_still_slow_checkouts(
    pg_server: PgServer, pg_database: str
) -> None:
    """A request that waits 300 ms for the only connection is degraded: slow checkouts."""
    engine = create_async_engine(pg_server.app_url(pg_database), pool_size=1, max_overflow=0)
    instr = instrument(engine)
    holding = asyncio.Event()

    async def holder() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            holding.set()
            await asyncio.sleep(0.3)  # the hold itself: the waiter's 300 ms queue

    async def waiter() -> None:
        await holding.wait()
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    try:
        await asyncio.gather(holder(), waiter())
        report = await health_check(engine, timeout=5, monitor=instr.pool)
    finally:
        await engine.dispose()
    assert report.status == "degraded"
    assert any("wait for a free connection" in w for w in report.warnings), report.warnings
    assert not any("slow connects" in w for w in report.warnings)


async def test_slow_connection_opening_has_its_own_rule(
    pg_server: PgServer, pg_database: str, proxy: FaultProxy
) -> None:
    """Opening a connection slower than slow_connect is degraded as slow connects, not checkouts."""
    proxy.latency = 0.1
    engine = create_async_engine(pg_server.app_url(pg_database).set(port=proxy.port))
    instr = instrument(engine)
    try:
        report = await health_check(engine, timeout=10, slow_connect=0.2, monitor=instr.pool)
    finally:
        await engine.dispose()
    assert report.status == "degraded"
    assert any(w.startswith("slow connects") for w in report.warnings), report.warnings
    assert not any(w.startswith("slow checkouts") for w in report.warnings)


def test_uninstrumented_engine_judges_the_probes_own_checkout(tmp_path: Path) -> None:
    """Without the package's pool figures the probe's own checkout is the sample."""
    engine = create_engine(f"sqlite:///{tmp_path / 'h.sqlite'}")

    @event.listens_for(engine, "connect")
    def _slow(dbapi_connection: object, record: object) -> None:
        time.sleep(0.3)  # the slow connect itself

    try:
        report = health_check_sync(engine, timeout=5, slow_connect=0.1)
        assert report.status == "degraded"
        assert any("the probe waited" in w for w in report.warnings), report.warnings
        assert health_check_sync(engine, timeout=5, slow_connect=0.1).status == "healthy"  # reused
    finally:
        engine.dispose()


def _slow_checkout(
    engine: Engine, seconds: float, armed: threading.Event, stalled: threading.Event
) -> None:
    """A checkout that already has its connection and then stalls, as on a loaded machine."""

    @event.listens_for(engine, "checkout")
    def _stall(dbapi_connection: object, record: object, proxy: object) -> None:
        if armed.is_set():
            armed.clear()
            stalled.set()
            time.sleep(seconds)  # the stall itself (a busy thread), not a wait for something


def test_a_stalled_checkout_is_not_queueing(tmp_path: Path) -> None:
    """Every connection in use, one checkout stalled after getting its connection: the
    autosizer sees no queue and does not grow."""
    engine = create_engine(
        f"sqlite:///{tmp_path / 'q.sqlite'}",
        poolclass=ResizableQueuePool,
        pool_size=2,
        max_overflow=0,
    )
    instr = instrument(engine)
    armed, stalled_now = threading.Event(), threading.Event()
    _slow_checkout(engine, 0.6, armed, stalled_now)
    sizer = PoolAutosizer(engine, monitor=instr.pool, min_size=2, max_size=8, interval=1)
    try:
        held = engine.connect()
        armed.set()
        stalled = threading.Thread(target=lambda: engine.connect().close())
        stalled.start()
        assert stalled_now.wait(10)  # the second checkout has its connection and is stalled
        try:
            assert engine.pool.checkedout() == 2
            sizer.sample()
            assert sizer.decide() is None
            assert engine.pool.size() == 2
            # The conventions' pending requests do count it: it has not returned yet.
            assert pool_stats(engine)["requests_waiting"] == 1
        finally:
            stalled.join()
            held.close()
    finally:
        engine.dispose()


def test_slow_checkouts_beside_an_idle_connection_do_not_grow_the_pool(tmp_path: Path) -> None:
    """Checkout waits over ``target_wait`` while a connection sat idle at every sample (a
    busy CPU, not the pool) do not grow it; the same waits with every connection in use do.
    (The autosizer grew back right after a shrink on a loaded CI machine.)"""
    engine = create_engine(
        f"sqlite:///{tmp_path / 'q.sqlite'}",
        poolclass=ResizableQueuePool,
        pool_size=3,
        max_overflow=0,
    )
    monitor = instrument(engine).pool
    sizer = PoolAutosizer(engine, monitor=monitor, min_size=2, max_size=8, interval=1)

    def slow_checkouts(count: int, seconds: float) -> None:
        # What the checkout hook records for answered requests that waited.
        for _ in range(count):
            next(monitor.answered)
            monitor.waits.append(seconds)

    held = [engine.connect() for _ in range(3)]
    try:
        held.pop().close()  # 2 of 3 in use, one idle
        assert sizer.decide() is None  # the interval that opened them: not queueing
        sizer.sample()
        slow_checkouts(20, 0.05)
        assert sizer.decide() is None
        assert engine.pool.size() == 3
        held.append(engine.connect())  # every connection in use
        sizer.sample()
        slow_checkouts(20, 0.05)
        assert sizer.decide() == 5  # 3 x grow_factor 1.5, rounded up
    finally:
        for conn in held:
            conn.close()
        engine.dispose()
