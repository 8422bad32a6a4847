"""The observability and pool part of ``sqlalchemy-resilience demo``.

On the same database as the rest of the tour (SQLite by default, an embedded
or given PostgreSQL otherwise) it shows: a slow statement logged with its
call site, the statistics' top statements, a pool warmed up, a connection
held too long reported while held, a request refused by ``max_waiting``
instead of queueing, a runtime resize, and the health report.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO, TypeVar

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from sqlalchemy_resilience.errors import PoolExhausted
from sqlalchemy_resilience.instrumentation import instrument
from sqlalchemy_resilience.pool import (
    AsyncResizableQueuePool,
    HealthReport,
    PoolMonitor,
    ResizableQueuePool,
    health_check,
    health_check_sync,
    pool_stats,
    resize_pool,
    resize_pool_sync,
    warm_up,
    warm_up_sync,
)

__all__ = ["observability_tour"]

T = TypeVar("T")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def _maybe(value: T | Awaitable[T]) -> T:
    if inspect.isawaitable(value):
        return await value
    return value


async def _sync(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return fn(*args, **kwargs)


async def _health(engine: Any, is_async: bool, monitor: PoolMonitor) -> HealthReport:
    if is_async:
        return await health_check(engine, timeout=1, monitor=monitor)
    return health_check_sync(engine, timeout=1, monitor=monitor)


def _slow_sql(url: URL) -> str:
    if url.get_backend_name() == "postgresql":
        return "SELECT pg_sleep(0.05)"
    # About 50-100 ms of work inside SQLite itself.
    return (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 200000) "
        "SELECT count(*) FROM c"
    )


async def observability_tour(url: URL, out: TextIO) -> bool:
    """Run the tour against ``url``; True when every step showed what it should."""
    is_async = url.get_dialect().is_async
    options: dict[str, Any] = {
        "poolclass": AsyncResizableQueuePool if is_async else ResizableQueuePool,  # resize_pool
        "pool_size": 3,
        "max_overflow": 0,
        "pool_timeout": 2,
    }
    engine: Any = create_async_engine(url, **options) if is_async else create_engine(url, **options)
    collect = _Collect()
    watched = [
        logging.getLogger(n)
        for n in ("sqlalchemy_resilience.slow_query", "sqlalchemy_resilience.pool")
    ]
    for logger in watched:
        logger.addHandler(collect)
    ok = True
    try:
        instr = instrument(engine, slow_query_threshold=0.02, leak_threshold=0.2)

        async def run(sql: str) -> Any:
            if is_async:
                async with engine.connect() as conn:
                    return (await conn.execute(text(sql))).all()
            with engine.connect() as conn:
                return conn.execute(text(sql)).all()

        print("\nobservability: slow-query log, statistics, pool and health", file=out)
        await (
            warm_up(engine, 3, timeout=10, monitor=instr.pool)
            if is_async
            else _sync(warm_up_sync, engine, 3, timeout=10, monitor=instr.pool)
        )
        print(
            f"  warm_up(engine, 3): {pool_stats(engine)['connections_idle']} verified idle connections",
            file=out,
        )
        for value in range(5):
            await run(f"SELECT {value} + 1")
        await run(_slow_sql(url))
        slow = [r for r in collect.records if r.name.endswith("slow_query")]
        if slow:
            record = slow[0]
            print(
                f"  slow query logged: {record.__dict__['sqlalchemy_resilience.duration']:.3f} s "
                f"at {record.__dict__['sqlalchemy_resilience.call_site']}",
                file=out,
            )
        else:
            ok = False
            print("  slow query: not logged (unexpected)", file=out)
        assert instr.stats is not None
        print("  statistics, top 3 by total time (literals folded into one entry):", file=out)
        for entry in instr.stats.top(3):
            print(
                f"    {entry.total * 1000:8.1f} ms {entry.calls:4d} calls  p95 "
                f"{entry.p95 * 1000:6.2f} ms  {entry.statement[:60]}",
                file=out,
            )
        folded = instr.stats.get("SELECT ? + ?")
        ok = ok and folded is not None and folded.calls == 5

        # A connection held too long is reported while it is still held.
        if is_async:
            conn = await engine.connect()
            await asyncio.sleep(0.5)
            await conn.close()
        else:

            def hold() -> None:
                with engine.connect():
                    time.sleep(0.5)

            await asyncio.to_thread(hold)
        leak = [r for r in collect.records if r.name.endswith(".pool")]
        if leak:
            first = leak[0]
            print(
                f"  leak detector: held {first.__dict__['sqlalchemy_resilience.held_for']:.2f} s "
                f"by {first.__dict__['sqlalchemy_resilience.holder']}, checked out at "
                f"{(first.__dict__['sqlalchemy_resilience.checkout_stack'] or ['?'])[0]}",
                file=out,
            )
        else:
            ok = False
            print("  leak detector: nothing reported (unexpected)", file=out)

        # Load shedding: with every connection in use, max_waiting=0 refuses at once.
        instr.max_waiting = 0
        held = [await _maybe(engine.connect()) for _ in range(3)]
        start = time.perf_counter()
        try:
            await _maybe(engine.connect())
            ok = False
            print("  max_waiting: not refused (unexpected)", file=out)
        except PoolExhausted as exc:
            print(
                f"  max_waiting=0 with all 3 connections in use: refused in "
                f"{(time.perf_counter() - start) * 1000:.1f} ms with {type(exc).__name__}",
                file=out,
            )
        report = await _health(engine, is_async, instr.pool)
        print(f"  health while saturated: {report.status} ({'; '.join(report.warnings)})", file=out)
        for conn in held:
            await _maybe(conn.close())
        instr.max_waiting = None
        resized = await (
            resize_pool(engine, size=5) if is_async else _sync(resize_pool_sync, engine, size=5)
        )
        print(
            f"  resize_pool(size=5): {resized.previous_size} -> {resized.size}, nothing in use dropped",
            file=out,
        )
        report = await _health(engine, is_async, instr.pool)
        latency = f"{report.latency * 1000:.1f} ms" if report.latency is not None else "-"
        print(f"  health: {report.status}, round trip {latency}", file=out)
        for warning in report.warnings:  # a loaded machine may be slow: said, not failed
            print(f"    {warning}", file=out)
        ok = ok and report.status != "unhealthy"
    finally:
        for logger in watched:
            logger.removeHandler(collect)
        await _maybe(engine.dispose())
    return ok
