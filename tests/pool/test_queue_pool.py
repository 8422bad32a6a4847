"""The package's pool classes: resized, walked and filled through their own methods."""

from __future__ import annotations

import threading
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, QueuePool

import sqlalchemy_resilience as sr
from sqlalchemy_resilience.pool import (
    AsyncResizableQueuePool,
    ResizableQueuePool,
    resize_pool,
    resize_pool_sync,
)
from tests.waiting import wait_until


def test_a_resize_survives_dispose(tmp_path: Path) -> None:
    """engine.dispose() recreates the same class with the size it had then."""
    engine = create_engine(
        f"sqlite:///{tmp_path / 'q.sqlite'}", poolclass=ResizableQueuePool, pool_size=2
    )
    try:
        assert isinstance(engine.pool, QueuePool)
        resize_pool_sync(engine, size=7, max_overflow=3)
        engine.dispose()
        pool = engine.pool
        assert isinstance(pool, ResizableQueuePool)
        assert (pool.size(), pool.max_overflow) == (7, 3)
    finally:
        engine.dispose()


def test_shrinking_never_closes_a_connection_in_use(tmp_path: Path) -> None:
    """Four in use, one idle; shrink to 2: nothing is closed now (one idle is within the new
    size), three of the four are closed as they come back; the pool ends holding 2."""
    engine = create_engine(
        f"sqlite:///{tmp_path / 'q.sqlite'}", poolclass=ResizableQueuePool, pool_size=5
    )
    try:
        held = [engine.connect() for _ in range(5)]
        held.pop().close()
        pool = engine.pool
        assert isinstance(pool, ResizableQueuePool)
        assert pool.resize(2, 0) == (0, 0)
        for conn in held:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1  # still usable
            conn.close()
        assert (pool.checkedout(), pool.checkedin()) == (0, 2)
    finally:
        engine.dispose()


def test_shrinking_closes_idle_connections_beyond_the_size(tmp_path: Path) -> None:
    """Five idle, shrink to 2: three are closed at once."""
    engine = create_engine(
        f"sqlite:///{tmp_path / 'q.sqlite'}", poolclass=ResizableQueuePool, pool_size=5
    )
    try:
        pool = engine.pool
        assert isinstance(pool, ResizableQueuePool)
        while pool.open_idle():
            pass
        assert pool.resize(2, 0) == (3, 0)
        assert pool.checkedin() == 2
        assert not pool.open_idle()
    finally:
        engine.dispose()


def test_idle_connections_are_handed_back(tmp_path: Path) -> None:
    """Each idle connection is out of the pool only while the caller has it; stopping early
    hands the current one back."""
    engine = create_engine(
        f"sqlite:///{tmp_path / 'q.sqlite'}", poolclass=ResizableQueuePool, pool_size=3
    )
    try:
        pool = engine.pool
        assert isinstance(pool, ResizableQueuePool)
        while pool.open_idle():
            pass
        assert pool.checkedin() == 3  # full: open_idle said no more
        seen = []
        with pool.idle_connections() as idle:
            for record in idle:
                assert pool.checkedin() == 2
                seen.append(record)
        assert len(seen) == 3 and len({id(r) for r in seen}) == 3
        assert pool.checkedin() == 3
        with pool.idle_connections() as idle:
            for _ in idle:
                break
        assert pool.checkedin() == 3
    finally:
        engine.dispose()


async def test_the_async_class_serves_an_async_engine(tmp_path: Path) -> None:
    """AsyncResizableQueuePool is an AsyncAdaptedQueuePool; resize_pool works on it."""
    engine = create_async_engine(
        f"sqlite+aiosqlite:///{tmp_path / 'q.sqlite'}",
        poolclass=AsyncResizableQueuePool,
        pool_size=1,
    )
    try:
        assert isinstance(engine.sync_engine.pool, AsyncAdaptedQueuePool)
        result = await resize_pool(engine, size=4)
        assert (result.previous_size, result.size) == (1, 4)
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar_one() == 1
    finally:
        await engine.dispose()


async def test_database_uses_the_resizable_class(tmp_path: Path) -> None:
    """Database makes its engine with the package's pool class (unless told otherwise)."""
    async with sr.Database(f"sqlite+aiosqlite:///{tmp_path / 'q.sqlite'}") as db:
        assert isinstance(db.engine.sync_engine.pool, AsyncResizableQueuePool)
    with sr.SyncDatabase(f"sqlite:///{tmp_path / 'q.sqlite'}") as sync_db:
        assert isinstance(sync_db.engine.pool, ResizableQueuePool)


def test_a_grow_serves_waiting_requests_without_instrument(tmp_path: Path) -> None:
    """The pool counts its own waiting requests: resize opens a connection for the one
    waiting whether or not instrument() ran."""
    engine = create_engine(
        f"sqlite:///{tmp_path / 'q.sqlite'}",
        poolclass=ResizableQueuePool,
        pool_size=1,
        max_overflow=0,
        pool_timeout=30,
    )
    pool = engine.pool
    assert isinstance(pool, ResizableQueuePool)
    served = threading.Event()

    def request() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            served.set()

    held = engine.connect()
    waiter = threading.Thread(target=request)
    try:
        waiter.start()
        wait_until(lambda: pool.waiting > 0, what="the request queued for the only connection")
        result = resize_pool_sync(engine, size=2)
        assert result.opened == 1
        assert served.wait(30)  # served while the first connection is still held
        assert pool.waiting == 0
    finally:
        held.close()
        waiter.join()
        engine.dispose()
