"""The idle pre-ping: only idle connections are pinged, and dead ones never reach a request.

The NAT test puts the fault proxy between the pool and PostgreSQL, lets the
pool's connections go idle, then makes the proxy forget every open flow the way
a NAT or a cloud load balancer does after its idle timeout: packets on those
connections vanish both ways, no RST. New connections work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience.pool import PoolMaintainer, ResizableQueuePool, ping_idle_connections
from tests.clock import FakeClock
from tests.faultproxy import FaultProxy
from tests.pgharness import PgServer

POOL = 5


@pytest.fixture
def proxy(pg_server: PgServer) -> Iterator[FaultProxy]:
    p = FaultProxy("127.0.0.1", pg_server.port)
    try:
        yield p
    finally:
        p.close()


def _through(url: URL, proxy: FaultProxy) -> URL:
    return url.set(host="127.0.0.1", port=proxy.port)


def test_only_idle_connections_are_pinged(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'live.sqlite'}", poolclass=ResizableQueuePool)
    clock = FakeClock.wall()
    liveness = ping_idle_connections(engine, after=0.3, timeout=1, clock=clock)
    try:
        for _ in range(20):
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        assert (liveness.checkouts, liveness.pinged, liveness.dead) == (20, 0, 0)
        clock.advance(0.4)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        with engine.connect() as conn:  # used a moment ago: no ping
            conn.execute(text("SELECT 1"))
        assert (liveness.checkouts, liveness.pinged, liveness.dead) == (22, 1, 0)
        # A keepalive ping of the maintainer counts as use.
        clock.advance(0.4)
        maintainer = PoolMaintainer(engine, keepalive=0.1, interval=1, clock=clock)
        assert maintainer.run_once_sync().pinged == 1
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        assert liveness.pinged == 1
    finally:
        liveness.detach()
        engine.dispose()
    with pytest.raises(ValueError, match="after"):
        ping_idle_connections(engine, after=0)
    with pytest.raises(ValueError, match="timeout"):
        ping_idle_connections(engine, timeout=-1)


async def _warm(engine: AsyncEngine) -> None:
    # Every connection of the pool open at once: each holder waits for the others.
    together = asyncio.Barrier(POOL)

    async def hold() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            await together.wait()

    await asyncio.gather(*(hold() for _ in range(POOL)))
    assert engine.sync_engine.pool.checkedin() == POOL  # type: ignore[attr-defined]


async def _requests(engine: AsyncEngine, n: int) -> dict[str, int]:
    errors: dict[str, int] = {}

    async def one() -> None:
        try:
            async with engine.connect() as conn:
                assert await conn.scalar(text("SELECT 1")) == 1
        except Exception as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

    await asyncio.gather(*(one() for _ in range(n)))
    return errors


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_a_nat_timeout_surfaces_no_error(
    pg_server: PgServer, pg_database: str, proxy: FaultProxy, driver: str
) -> None:
    url = _through(pg_server.app_url(pg_database, driver=driver), proxy)
    engine = create_async_engine(url, pool_size=POOL, max_overflow=0)
    sr.instrument(engine)
    clock = FakeClock.wall()
    liveness = ping_idle_connections(engine, after=0.3, timeout=1.0, clock=clock)
    try:
        await _warm(engine)
        clock.advance(0.4)
        assert await _requests(engine, 1) == {}  # idle, pinged, alive: kept
        assert (liveness.pinged, liveness.dead) == (1, 0)
        await _warm(engine)
        clock.advance(0.4)
        assert proxy.forget_flows() == POOL
        started = time.monotonic()
        errors = await asyncio.wait_for(_requests(engine, 20), timeout=60)
        took = time.monotonic() - started
    finally:
        liveness.detach()
        await engine.dispose()
    print(
        f"\n{driver}: {POOL} idle connections silently dropped; 20 requests, errors {errors}, "
        f"{liveness.dead} dead caught by {liveness.pinged} pings, {took:.2f}s"
    )
    assert errors == {}
    assert liveness.dead == POOL


def test_a_nat_timeout_surfaces_no_error_sync_psycopg(
    pg_server: PgServer, pg_database: str, proxy: FaultProxy
) -> None:
    url = _through(pg_server.app_url(pg_database, driver="psycopg"), proxy)
    engine: Engine = create_engine(url, pool_size=2, max_overflow=0)
    clock = FakeClock.wall()
    liveness = ping_idle_connections(engine, after=0.3, timeout=1.0, clock=clock)
    try:
        with engine.connect() as a, engine.connect() as b:
            a.execute(text("SELECT 1"))
            b.execute(text("SELECT 1"))
        clock.advance(0.4)
        with engine.connect() as conn:  # idle, pinged, alive: kept
            conn.execute(text("SELECT 1"))
        assert (liveness.pinged, liveness.dead) == (1, 0)
        with engine.connect() as a, engine.connect() as b:
            a.execute(text("SELECT 1"))
            b.execute(text("SELECT 1"))
        clock.advance(0.4)
        assert proxy.forget_flows() == 2
        for _ in range(5):
            with engine.connect() as conn:
                assert conn.scalar(text("SELECT 1")) == 1
    finally:
        liveness.detach()
        engine.dispose()
    assert liveness.dead == 2  # both idle connections, replaced as the pool (FIFO) hands them out


async def test_without_it_pool_pre_ping_hangs_on_a_dropped_flow(
    pg_server: PgServer, pg_database: str, proxy: FaultProxy
) -> None:
    """The failure the timeout prevents: SQLAlchemy's own pre-ping waits on a silent socket."""
    url = _through(pg_server.app_url(pg_database, driver="asyncpg"), proxy)
    engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True)
    try:
        await _warm_one(engine)
        proxy.forget_flows()
        with pytest.raises(asyncio.TimeoutError):  # TimeoutError from Python 3.11
            await asyncio.wait_for(_requests(engine, 1), timeout=3)
    finally:
        proxy.reset_peer()  # let the hung connection die, so dispose() returns
        await engine.dispose()


async def _warm_one(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
