"""PoolAutosizer against a real PostgreSQL: a step change of load, the server's budget, bad input."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from sqlalchemy_resilience import instrument
from sqlalchemy_resilience.pool import AsyncResizableQueuePool, PoolAutosizer, ResizableQueuePool
from tests.pgharness import PgServer


async def _load(engine: AsyncEngine, workers: int, seconds: float) -> int:
    """``workers`` tasks, each checking out, holding 20 ms, returning; the number of requests."""
    done = 0
    deadline = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT pg_sleep(0.02)"))
            done += 1

    await asyncio.gather(*(worker() for _ in range(workers)))
    return done


async def test_step_change_converges_without_oscillating(
    pg_server: PgServer, pg_database: str
) -> None:
    """2 -> 10 -> 2 workers: the pool grows to serve 10 within a second, then shrinks back; no back-and-forth."""
    engine = create_async_engine(
        pg_server.app_url(pg_database),
        poolclass=AsyncResizableQueuePool,
        pool_size=2,
        max_overflow=0,
        pool_timeout=30,
    )
    try:
        instr = instrument(engine)
        sizer = PoolAutosizer(
            engine,
            monitor=instr.pool,
            min_size=2,
            max_size=12,
            interval=0.2,
            shrink_after=4,
            reserve=3,
        )
        await sizer.start()
        try:
            await _load(engine, 2, 1.0)
            assert sizer.decisions == []  # 2 workers fit in 2 connections
            step_up = time.monotonic()
            await _load(engine, 10, 3.0)
            grown = [d for d in sizer.decisions if d.size > d.previous]
            assert grown, "no growth under 5x the load"
            reached = next(d.at for d in sizer.decisions if d.size >= 10)
            assert reached - step_up < 3.0  # within the 3 s phase, however loaded the machine
            assert max(d.size for d in sizer.decisions) <= 12
            await _load(engine, 2, 4.0)
        finally:
            sizer.detach()
        sizes = [2] + [d.size for d in sizer.decisions]
        directions = [b > a for a, b in itertools.pairwise(sizes)]
        changes = sum(1 for a, b in itertools.pairwise(directions) if a != b)
        assert changes == 1, f"oscillated: {sizes}"
        assert sizes[-1] <= 4
        assert engine.sync_engine.pool.size() == sizes[-1]
    finally:
        await engine.dispose()


async def test_server_budget_caps_max_size(pg_server: PgServer, pg_database: str) -> None:
    """max_size is capped by max_connections - superuser_reserved_connections - reserve, read at start."""
    engine = create_async_engine(
        pg_server.app_url(pg_database),
        poolclass=AsyncResizableQueuePool,
        pool_size=1,
        max_overflow=2,
    )
    try:
        instr = instrument(engine)
        async with engine.connect() as conn:
            max_connections = int((await conn.execute(text("SHOW max_connections"))).scalar_one())
            reserved = int(
                (await conn.execute(text("SHOW superuser_reserved_connections"))).scalar_one()
            )
        sizer = PoolAutosizer(
            engine, monitor=instr.pool, min_size=1, max_size=100_000, reserve=7, budget=50_000
        )
        await sizer.start()
        sizer.detach()
        assert sizer.server_cap == max_connections - reserved - 7
        assert sizer.effective_max == max_connections - reserved - 7 - 2  # overflow counts too
        sizer.budget = 10
        assert sizer.effective_max == 8
    finally:
        await engine.dispose()


def test_bad_autosizer_input(tmp_path: Path) -> None:
    """Bounds, fractions, SQLAlchemy's own QueuePool and a monitor that is not the engine's
    are refused with clear errors."""
    plain = create_engine(f"sqlite:///{tmp_path / 'a.sqlite'}")
    other = instrument(plain).pool
    with pytest.raises(TypeError, match="poolclass=ResizableQueuePool"):
        PoolAutosizer(plain, monitor=other, min_size=1, max_size=4)
    engine = create_engine(f"sqlite:///{tmp_path / 'a.sqlite'}", poolclass=ResizableQueuePool)
    try:
        with pytest.raises(TypeError, match=r"instrument\(engine\)\.pool"):
            PoolAutosizer(engine, monitor=None, min_size=1, max_size=4)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="not this engine's"):
            PoolAutosizer(engine, monitor=other, min_size=1, max_size=4)
        plain.dispose()
        monitor = instrument(engine).pool
        with pytest.raises(ValueError, match=r"min_size \(5\) must be <= max_size \(4\)"):
            PoolAutosizer(engine, monitor=monitor, min_size=5, max_size=4)
        with pytest.raises(ValueError, match="min_size must be >= 1"):
            PoolAutosizer(engine, monitor=monitor, min_size=0, max_size=4)
        with pytest.raises(ValueError, match="must be below high_utilization"):
            PoolAutosizer(engine, monitor=monitor, min_size=1, max_size=4, low_utilization=0.8)
        with pytest.raises(ValueError, match="grow_factor must be a finite number > 1"):
            PoolAutosizer(engine, monitor=monitor, min_size=1, max_size=4, grow_factor=1)
        sizer = PoolAutosizer(engine, monitor=monitor, min_size=1, max_size=4)
        assert sizer.read_server_limits() is None  # SQLite has no server limit
        assert sizer.effective_max == 4
    finally:
        engine.dispose()
