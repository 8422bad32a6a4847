"""Pool management against a real PostgreSQL: exhaustion, load shedding, leaks, warm-up,
keepalive of dead idle connections, jittered recycle, runtime resize, health under a hung server."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool, QueuePool

from sqlalchemy_resilience import (
    CircuitBreaker,
    DatabaseUnavailable,
    PoolExhausted,
    health_check,
    instrument,
)
from sqlalchemy_resilience.pool import (
    AsyncResizableQueuePool,
    PoolMaintainer,
    ResizableQueuePool,
    health_check_sync,
    pool_stats,
    resize_pool,
    resize_pool_sync,
    warm_up,
    warm_up_sync,
)
from tests.clock import FakeClock
from tests.pgharness import PgServer
from tests.waiting import until, wait_until

health_module = importlib.import_module("sqlalchemy_resilience.pool.health")

POOL_LOGGER = "sqlalchemy_resilience.pool"


@contextlib.asynccontextmanager
async def engine_on(
    server: PgServer, database: str, **kwargs: object
) -> AsyncIterator[AsyncEngine]:
    kwargs.setdefault("poolclass", AsyncResizableQueuePool)  # resizable, maintainable
    engine = create_async_engine(server.app_url(database), **kwargs)  # type: ignore[arg-type]
    try:
        yield engine
    finally:
        await engine.dispose()


@contextlib.contextmanager
def frozen(server: PgServer, database: str) -> Iterator[None]:
    """SIGSTOP the postmaster and the app's backends: the server accepts TCP and never answers."""
    pids = [server.require_owned().postmaster_pid(), *server.backend_pids(database=database)]
    stopped = [pid for pid in pids if pid is not None]
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGCONT)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- exhaustion and load shedding ----------------------------------------------------


async def test_pool_timeout_is_pool_exhausted_on_time(
    pg_server: PgServer, pg_database: str
) -> None:
    """With every connection held, a checkout fails with PoolExhausted at pool_timeout (±10%)."""
    async with engine_on(
        pg_server, pg_database, pool_size=2, max_overflow=0, pool_timeout=0.5
    ) as engine:
        instrument(engine)
        held = [await engine.connect() for _ in range(2)]
        for conn in held:
            await conn.execute(text("SELECT 1"))
        start = time.monotonic()
        with pytest.raises(PoolExhausted) as info:
            await engine.connect()
        elapsed = time.monotonic() - start
        assert 0.45 <= elapsed <= 0.75  # 0.5 s, with slack for a loaded CI machine
        assert "size=2" in str(info.value) and "checkedout=2" in str(info.value)
        assert info.value.retryable
        for conn in held:
            await conn.close()
        assert pool_stats(engine)["timeouts"] == 1


async def test_max_waiting_sheds_load_at_once(pg_server: PgServer, pg_database: str) -> None:
    """Beyond max_waiting queued requests a caller fails immediately instead of queueing."""
    async with engine_on(
        pg_server, pg_database, pool_size=1, max_overflow=0, pool_timeout=10
    ) as engine:
        instr = instrument(engine, max_waiting=2)
        holder = await engine.connect()
        await holder.execute(text("SELECT 1"))

        async def wait_for_one() -> int:
            async with engine.connect() as conn:
                return int((await conn.execute(text("SELECT 7"))).scalar_one())

        waiters = [asyncio.create_task(wait_for_one()) for _ in range(2)]
        await until(lambda: instr.pool.waiting == 2, what="two queued requests")
        start = time.monotonic()
        with pytest.raises(PoolExhausted, match=r"2 requests already waiting .*max_waiting=2"):
            await engine.connect()
        assert time.monotonic() - start < 0.1
        await holder.close()
        assert await asyncio.gather(*waiters) == [7, 7]
        stats = pool_stats(engine)
        assert stats["requests_shed"] == 1
        assert stats["timeouts"] == 0
        instr.max_waiting = None
        with pytest.raises(ValueError, match="max_waiting must be >= 0"):
            instr.max_waiting = -1


# -- leak detection ---------------------------------------------------------------------------


async def test_leak_is_reported_while_held_and_on_return(
    pg_server: PgServer, pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A connection held past leak_threshold: one warning (task, stack, held time), then a return record."""
    caplog.set_level(logging.WARNING, logger=POOL_LOGGER)
    async with engine_on(pg_server, pg_database) as engine:
        instr = instrument(engine, leak_threshold=0.3)

        async def returns_in_time() -> None:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

        async def holds_too_long() -> None:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
                await until(lambda: instr.suspected_leaks == 1, what="the leak report")
                reports = [r for r in caplog.records if r.name == POOL_LOGGER]
                assert len(reports) == 1  # reported while still held
                assert instr.suspected_leaks == 1

        await returns_in_time()
        await asyncio.create_task(holds_too_long(), name="export-job")
    held, returned = [r for r in caplog.records if r.name == POOL_LOGGER]
    assert held.__dict__["sqlalchemy_resilience.returned"] is False
    assert held.__dict__["sqlalchemy_resilience.holder"] == "task 'export-job'"
    assert held.__dict__["sqlalchemy_resilience.held_for"] >= 0.3
    stack = held.__dict__["sqlalchemy_resilience.checkout_stack"]
    assert stack[0].startswith("tests/pool/test_pool.py:") and stack[0].endswith(
        " in holds_too_long"
    )
    assert "in holds_too_long" in held.getMessage()
    # Where the holder is at report time: still inside holds_too_long, waiting.
    holder_stack = held.__dict__["sqlalchemy_resilience.holder_stack"]
    assert any(frame.endswith(" in holds_too_long") for frame in holder_stack)
    assert returned.__dict__["sqlalchemy_resilience.returned"] is True
    assert (
        returned.__dict__["sqlalchemy_resilience.held_for"]
        >= held.__dict__["sqlalchemy_resilience.held_for"]
    )
    assert instr.suspected_leaks == 0


def test_leak_on_a_sync_engine_names_the_thread(
    pg_server: PgServer, pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """On a sync engine the holder is the thread and the stack is the thread's."""
    caplog.set_level(logging.WARNING, logger=POOL_LOGGER)
    engine = create_engine(pg_server.app_url(pg_database, driver="psycopg"))
    try:
        instr = instrument(engine, leak_threshold=0.2)

        def report_builder() -> None:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                wait_until(lambda: instr.suspected_leaks == 1, what="the leak report")

        worker = threading.Thread(target=report_builder, name="reports-1")
        worker.start()
        worker.join()
    finally:
        engine.dispose()
    held = next(r for r in caplog.records if r.name == POOL_LOGGER)
    assert held.__dict__["sqlalchemy_resilience.holder"] == "thread 'reports-1'"
    assert held.__dict__["sqlalchemy_resilience.checkout_stack"][0].endswith(" in report_builder")
    holder_stack = held.__dict__["sqlalchemy_resilience.holder_stack"]
    assert any(frame.endswith(" in report_builder") for frame in holder_stack)


# -- warm-up -------------------------------------------------------------------------------


async def test_warm_up_opens_and_verifies_min_size(pg_server: PgServer, pg_database: str) -> None:
    """warm_up(engine, 4) leaves 4 verified idle connections; the first requests create none."""
    async with engine_on(pg_server, pg_database, pool_size=5) as engine:
        instr = instrument(engine)
        await warm_up(engine, 4, timeout=5, monitor=instr.pool)
        stats = pool_stats(engine)
        assert stats["connections_idle"] == 4
        assert stats["connections_created"] == 4
        assert instr.min_size == 4
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        assert pool_stats(engine)["connections_created"] == 4
        with pytest.raises(ValueError, match=r"min_size must be <= the pool size \(5\), got 6"):
            await warm_up(engine, 6)


async def test_warm_up_fails_fast_when_unreachable(pg_server: PgServer) -> None:
    """Nothing listening: DatabaseUnavailable at once, naming the server but not the password."""
    url = pg_server.app_url("nowhere").set(port=_free_port())
    engine = create_async_engine(url)
    try:
        start = time.monotonic()
        with pytest.raises(DatabaseUnavailable) as info:
            await warm_up(engine, 2, timeout=5)
        assert time.monotonic() - start < 2
        message = str(info.value)
        assert f"127.0.0.1:{url.port}" in message
        assert str(url.password) not in message
        assert info.value.retryable
    finally:
        await engine.dispose()


def test_bad_pool_arguments(tmp_path: Path) -> None:
    """Sizes, fractions and pool kinds are validated with errors naming the value."""
    engine = create_engine(
        f"sqlite:///{tmp_path / 'p.sqlite'}", poolclass=ResizableQueuePool, pool_size=3
    )
    null = create_engine(f"sqlite:///{tmp_path / 'p.sqlite'}", poolclass=NullPool)
    queue = create_engine(f"sqlite:///{tmp_path / 'p.sqlite'}", poolclass=QueuePool)
    try:
        with pytest.raises(ValueError, match="size must be >= 1, got 0"):
            resize_pool_sync(engine, size=0)
        with pytest.raises(TypeError, match="max_overflow must be an int"):
            resize_pool_sync(engine, max_overflow=1.5)  # type: ignore[arg-type]
        with pytest.raises(
            TypeError, match=r"SQLAlchemy's NullPool .* poolclass=ResizableQueuePool"
        ):
            resize_pool_sync(null, size=2)
        with pytest.raises(
            TypeError, match=r"SQLAlchemy's QueuePool .* poolclass=ResizableQueuePool"
        ):
            resize_pool_sync(queue, size=2)
        with pytest.raises(TypeError, match=r"PoolMaintainer .* poolclass=ResizableQueuePool"):
            PoolMaintainer(queue)
        with pytest.raises(ValueError, match="jitter must be a fraction"):
            PoolMaintainer(engine, jitter=1.5)
        with pytest.raises(ValueError, match="min_size must be <= the pool size"):
            PoolMaintainer(engine, min_size=4)
        with pytest.raises(ValueError, match="keepalive must be > 0"):
            PoolMaintainer(engine, keepalive=0)
        with pytest.raises(ValueError, match="min_size must be >= 0"):
            warm_up_sync(engine, -1)
        with pytest.raises(ValueError, match="timeout must be > 0"):
            health_check_sync(engine, timeout=0)
        with pytest.raises(ValueError, match=r"saturation must be a number in \(0, 1\]"):
            health_check_sync(engine, saturation=2)
        with pytest.raises(TypeError, match="leak_threshold must be seconds"):
            instrument(engine, leak_threshold="5s")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="max_waiting must be an int or None"):
            instrument(engine, max_waiting=1.5)  # type: ignore[arg-type]
    finally:
        engine.dispose()
        null.dispose()
        queue.dispose()


# -- background maintenance ---------------------------------------------------------------


async def test_keepalive_replaces_dead_idle_connections(
    pg_server: PgServer, pg_database: str
) -> None:
    """Idle connections killed on the server are found by the keepalive pass and replaced off the request path."""
    async with engine_on(pg_server, pg_database, pool_size=3) as engine:
        instrument(engine)
        await warm_up(engine, 3)
        before = set(pg_server.backend_pids(database=pg_database))
        assert len(before) == 3
        assert pg_server.terminate_backends(database=pg_database) == 3
        maintainer = PoolMaintainer(engine, keepalive=0.001, interval=60)
        report = await maintainer.run_once()
        assert (report.pinged, report.dead, report.replaced) == (3, 3, 3)
        after = set(pg_server.backend_pids(database=pg_database))
        assert len(after) == 3 and not after & before
        created = pool_stats(engine)["connections_created"]
        async with engine.connect() as conn:  # no error, no reconnect on the request path
            await conn.execute(text("SELECT 1"))
        stats = pool_stats(engine)
        assert stats["connections_created"] == created
        assert stats["connections_invalidated"] == 3


async def test_jittered_recycle_never_touches_a_checked_out_connection(
    pg_server: PgServer, pg_database: str
) -> None:
    """Past recycle, idle connections are replaced in the background; the one in use keeps its backend."""
    async with engine_on(pg_server, pg_database, pool_size=4) as engine:
        instrument(engine)
        await warm_up(engine, 4)
        async with engine.connect() as busy:
            busy_pid = (await busy.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            clock = FakeClock.wall()  # SQLAlchemy stamps connections with time.time()
            maintainer = PoolMaintainer(
                engine, keepalive=None, recycle=0.5, jitter=0.4, min_size=4, clock=clock
            )
            assert (await maintainer.run_once()).replaced == 0  # young connections stay
            clock.advance(0.55)
            report = await maintainer.run_once()
            assert report.replaced == 3
            assert (await busy.execute(text("SELECT pg_backend_pid()"))).scalar_one() == busy_pid
        pool = engine.sync_engine.pool
        jitters = [
            rec.info["sqlalchemy_resilience.recycle_jitter"]
            for rec in list(pool._pool._queue._queue)  # type: ignore[attr-defined]
            if "sqlalchemy_resilience.recycle_jitter" in rec.info
        ]
        assert len(set(jitters)) == len(jitters)
        assert all(0 <= j <= 0.2 for j in jitters)


async def test_maintainer_keeps_min_size_and_runs_in_the_background(
    pg_server: PgServer, pg_database: str
) -> None:
    """A started maintainer opens connections up to min_size on a cold pool, then stops cleanly."""
    async with engine_on(pg_server, pg_database, pool_size=3) as engine:
        instrument(engine)
        maintainer = PoolMaintainer(engine, min_size=3, interval=0.05)
        await maintainer.start()
        try:
            await until(lambda: pool_stats(engine)["connections_idle"] == 3, what="3 idle")
        finally:
            maintainer.detach()
        assert pool_stats(engine)["connections_idle"] == 3
        assert maintainer.totals.opened == 3


def test_sync_maintainer_thread(tmp_path: Path) -> None:
    """On a sync engine the maintainer runs in a thread and keeps min_size (SQLite)."""
    engine = create_engine(
        f"sqlite:///{tmp_path / 'm.sqlite'}", poolclass=ResizableQueuePool, pool_size=2
    )
    try:
        maintainer = PoolMaintainer(engine, min_size=2, keepalive=0.01, interval=0.02)
        maintainer.start_sync()
        wait_until(lambda: maintainer.totals.pinged >= 2, what="two pings")
        maintainer.detach()
        assert maintainer.totals.opened == 2
        assert maintainer.totals.pinged >= 2
        assert maintainer.totals.dead == 0
    finally:
        engine.dispose()


# -- resize -----------------------------------------------------------------------------------


async def test_resize_under_load(pg_server: PgServer, pg_database: str) -> None:
    """Growing lets waiting requests run at once; shrinking under load drops no connection in use."""
    async with engine_on(
        pg_server, pg_database, pool_size=2, max_overflow=0, pool_timeout=10
    ) as engine:
        instr = instrument(engine)
        in_use = 0
        peak = 0
        stop = asyncio.Event()
        errors: list[BaseException] = []

        async def worker() -> None:
            nonlocal in_use, peak
            while not stop.is_set():
                try:
                    async with engine.connect() as conn:
                        in_use += 1
                        peak = max(peak, in_use)
                        await conn.execute(text("SELECT pg_sleep(0.02)"))
                        in_use -= 1
                except BaseException as exc:  # pragma: no cover - the assertion reports it
                    errors.append(exc)
                    return

        workers = [asyncio.create_task(worker()) for _ in range(8)]
        await until(
            lambda: peak == 2 and instr.pool.waiting >= 6, what="six requests queued behind two"
        )
        assert peak == 2
        result = await resize_pool(engine, size=8)
        assert (result.previous_size, result.size) == (2, 8)
        assert result.opened >= 1  # requests that were waiting got a connection at once
        await until(lambda: peak == 8, what="eight connections in use at once")
        assert pool_stats(engine)["pool_size"] == 8
        shrink = await resize_pool(engine, size=2)
        assert shrink.previous_size == 8
        # The surplus closes as it comes back (nothing in use is closed).
        await until(lambda: pool_stats(engine)["connections_closed"] >= 6, what="6 closed")
        stop.set()
        await asyncio.gather(*workers)
        assert errors == []
        stats = pool_stats(engine)
        assert stats["pool_size"] == 2
        assert stats["connections_idle"] <= 2
        assert stats["connections_in_use"] == 0
        assert stats["connections_closed"] >= 6
        assert instr.pool.gauges()["pool_max"] == 2


# -- health ----------------------------------------------------------------------------------


async def test_health_check_healthy_and_json(pg_server: PgServer, pg_database: str) -> None:
    """A live server: healthy, latency measured, JSON-ready, no password anywhere."""
    async with engine_on(pg_server, pg_database) as engine:
        instr = instrument(engine)
        report = await health_check(engine, timeout=2, monitor=instr.pool)
        assert report.status == "healthy", report.warnings
        assert report.ok
        assert report.latency is not None and 0 < report.latency < 2
        data = json.loads(json.dumps(report.to_dict()))
        assert data["status"] == "healthy"
        assert data["pool"]["checkouts"] >= 1
        assert str(engine.url.password) not in json.dumps(data)


async def test_health_check_degraded_and_breaker(pg_server: PgServer, pg_database: str) -> None:
    """Saturation, waiters, pool timeouts and leaks make it degraded; an open breaker unhealthy."""
    async with engine_on(
        pg_server, pg_database, pool_size=2, max_overflow=0, pool_timeout=0.1
    ) as engine:
        monitor = instrument(engine, leak_threshold=0.05).pool
        held = await engine.connect()
        await held.execute(text("SELECT 1"))
        await until(lambda: monitor.suspected_leaks == 1, what="past leak_threshold")
        report = await health_check(engine, timeout=2, monitor=monitor)
        assert report.status == "degraded"
        assert any("held past leak_threshold" in w for w in report.warnings)
        await held.close()
        blockers = [await engine.connect() for _ in range(2)]
        with pytest.raises(PoolExhausted):
            await engine.connect()
        report = await health_check(engine, timeout=1, monitor=monitor)
        assert report.status == "unhealthy"  # the probe itself cannot get a connection
        assert report.error == "PoolExhausted"
        assert any("saturated: 2 of 2" in w for w in report.warnings)
        assert any("pool timeouts since the last health check" in w for w in report.warnings)
        for conn in blockers:
            await conn.close()
        again = await health_check(engine, timeout=1, monitor=monitor)
        assert again.status == "healthy", again.warnings  # timeouts are counted once
        breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=60)
        breaker.force_open()
        opened = await health_check(engine, timeout=1, breaker=breaker, monitor=monitor)
        assert (opened.status, opened.breaker, opened.latency) == ("unhealthy", "open", None)


async def test_health_check_never_hangs_on_a_frozen_server(fault_server: PgServer) -> None:
    """SIGSTOPped server (TCP accepted, no answer): unhealthy within the timeout, async and sync."""
    if "pool_hang" not in _databases(fault_server):
        fault_server.create_database("pool_hang")
    async_engine = create_async_engine(fault_server.app_url("pool_hang"))
    sync_engine = create_engine(fault_server.app_url("pool_hang", driver="psycopg"))
    try:
        instrument(async_engine)
        assert (await health_check(async_engine, timeout=2)).status == "healthy"
        with frozen(fault_server, "pool_hang"):
            start = time.monotonic()
            report = await health_check(async_engine, timeout=0.5)
            elapsed = time.monotonic() - start
            assert report.status == "unhealthy"
            assert report.error == "HealthCheckTimeout"
            assert 0.45 <= elapsed < 2.0  # bounded by the timeout (0.5 s), with slack
            start = time.monotonic()
            sync_report = await asyncio.to_thread(health_check_sync, sync_engine, timeout=0.5)
            assert time.monotonic() - start < 2.0
            assert sync_report.status == "unhealthy"

        async def healthy() -> bool:
            return (await health_check(async_engine, timeout=2)).status == "healthy"

        await until(healthy, what="healthy again once the server answers")
    finally:
        # The abandoned probes finish once the server runs again; let them
        # return their connections before the engines are disposed.
        for thread in threading.enumerate():
            if thread.name == "sqlalchemy-resilience-health":
                await asyncio.to_thread(thread.join, 30)
        await until(lambda: not health_module._abandoned, what="the abandoned probes' return")
        await async_engine.dispose()
        sync_engine.dispose()


def _databases(server: PgServer) -> set[str]:
    return {row[0] for row in server.execute("SELECT datname FROM pg_database")}


async def test_health_check_unreachable(pg_server: PgServer) -> None:
    """Nothing listening: unhealthy at once with DatabaseUnavailable."""
    engine = create_async_engine(pg_server.app_url("x").set(port=_free_port()))
    try:
        instrument(engine)
        report = await health_check(engine, timeout=2)
        assert report.status == "unhealthy"
        assert report.error == "DatabaseUnavailable"
        assert report.detail is not None and str(engine.url.password) not in report.detail
    finally:
        await engine.dispose()


def test_health_check_sync_sqlite(tmp_path: Path) -> None:
    """A sync Engine is checked directly (no await)."""
    engine: Engine = create_engine(f"sqlite:///{tmp_path / 'h.sqlite'}")
    try:
        report = health_check_sync(engine, timeout=1)
        assert report.status == "healthy"
        assert report.pool["pool_class"] == "QueuePool"
    finally:
        engine.dispose()


def test_health_check_judges_by_the_monitor_it_is_given(tmp_path: Path) -> None:
    """The counted figures come from the monitor passed in, never from a lookup: an
    instrumented engine checked without its monitor reports the gauges alone, and a
    monitor of another engine is refused."""
    engine: Engine = create_engine(f"sqlite:///{tmp_path / 'h.sqlite'}")
    other: Engine = create_engine(f"sqlite:///{tmp_path / 'o.sqlite'}")
    try:
        instr = instrument(engine)
        without = health_check_sync(engine, timeout=1)
        assert "checkouts" not in without.pool and "connections_in_use" in without.pool
        with_monitor = health_check_sync(engine, timeout=1, monitor=instr.pool)
        assert with_monitor.pool["checkouts"] >= 1
        with pytest.raises(ValueError, match="not this engine's"):
            health_check_sync(other, timeout=1, monitor=instr.pool)
        with pytest.raises(TypeError, match=r"PoolMonitor \(instrument\(engine\)\.pool\)"):
            health_check_sync(engine, timeout=1, monitor=instr)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="this engine's PoolMonitor"):
            warm_up_sync(other, 1, monitor=instr.pool)
    finally:
        engine.dispose()
        other.dispose()
