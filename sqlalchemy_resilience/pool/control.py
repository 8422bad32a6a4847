"""Pool control: warm-up and runtime resize (background maintenance is in ``maintainer``).

SQLAlchemy's ``QueuePool`` (and ``AsyncAdaptedQueuePool``, which
``postgresql+asyncpg`` uses) opens connections lazily, recycles them only when
a request checks one out, and has a fixed size. This module adds what
HikariCP and psycopg_pool users expect:

* :func:`warm_up` opens and verifies ``min_size`` connections at start-up and
  fails fast, with a clear error, when the database is unreachable;
* :func:`resize_pool` changes ``pool_size`` / ``max_overflow`` at runtime
  without touching connections in use (surplus idle ones are closed, waiting
  requests are served at once when the pool grows);
* :class:`PoolMaintainer` pings idle connections in the background
  (``keepalive``) so NAT and pgbouncer idle reaping never hit a request,
  replaces connections before ``recycle`` seconds with a per-connection
  random ``jitter`` (no mass expiry), and keeps ``min_size`` connections open.
  It takes idle connections straight from the pool's queue, one at a time,
  and only while no request is waiting; a checked-out connection is never
  touched.

Each is written for an ``AsyncEngine`` and has a blocking ``_sync`` twin for
an ``Engine`` (:func:`warm_up_sync`, :func:`resize_pool_sync`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool
from sqlalchemy.util import greenlet_spawn

from sqlalchemy_resilience._util.seconds import Seconds, to_seconds
from sqlalchemy_resilience.core.engines import async_engine_for, engine_for, safe_url
from sqlalchemy_resilience.errors.hierarchy import DatabaseUnavailable
from sqlalchemy_resilience.errors.translate import describe, translate_error

from .monitor import PoolMonitor
from .queue import AsyncResizableQueuePool, ResizableQueuePool, resizable_pool_of

Resizable = ResizableQueuePool | AsyncResizableQueuePool

__all__ = [
    "ResizeResult",
    "int_option",
    "queue_pool_of",
    "resize",
    "resize_pool",
    "resize_pool_sync",
    "warm_up",
    "warm_up_sync",
]

_log = logging.getLogger("sqlalchemy_resilience.pool")


def queue_pool_of(engine: Engine, what: str) -> QueuePool:
    """The engine's ``QueuePool``, or a TypeError saying ``what`` needs one."""
    pool = engine.pool
    if not isinstance(pool, QueuePool):
        raise TypeError(
            f"{what} needs a QueuePool (or AsyncAdaptedQueuePool); this engine uses "
            f"{type(pool).__name__}"
        )
    return pool


def int_option(name: str, value: object, minimum: int) -> int:
    """``value`` as an int option ``>= minimum``, or a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


# -- warm-up ------------------------------------------------------------------------


async def warm_up(
    engine: AsyncEngine,
    min_size: int,
    *,
    timeout: Seconds = 10.0,
    monitor: PoolMonitor | None = None,
) -> None:
    """Open and verify ``min_size`` pooled connections now; fail fast if the database is unreachable.

    Each connection runs ``SELECT 1`` and goes back to the pool idle, so the
    first requests find them ready (HikariCP ``minimumIdle`` with
    ``initializationFailTimeout``, psycopg_pool ``wait()``).
    :func:`warm_up_sync` is the blocking twin, for an ``Engine``.

    Args:
        engine: the ``AsyncEngine``.
        min_size: connections to open (0 .. the pool size).
        timeout: the most the whole warm-up may take, seconds or ``timedelta``.
        monitor: the engine's :class:`~sqlalchemy_resilience.pool.PoolMonitor`
            (``instrument(engine).pool``), which then reports ``min_size``
            as ``db.client.connection.idle.min``.

    Raises:
        DatabaseUnavailable: not every connection could be opened and
            verified within ``timeout`` (the cause is chained); connections
            that were opened stay in the pool.
        ValueError, TypeError: bad ``min_size`` or ``timeout``.

    Example::

        engine = create_async_engine(url, pool_size=10)
        instr = instrument(engine)
        await warm_up(engine, 5, timeout=3, monitor=instr.pool)   # at application start-up
    """
    seconds = to_seconds("timeout", timeout, allow_zero=False)
    engine = async_engine_for("warm_up", engine)
    size = _warm_up_size(engine.sync_engine, min_size, "warm_up", monitor)
    await _warm_up_async(engine, size, seconds)


def warm_up_sync(
    engine: Engine,
    min_size: int,
    *,
    timeout: Seconds = 10.0,
    monitor: PoolMonitor | None = None,
) -> None:
    """The blocking twin of :func:`warm_up`, for an ``Engine``.

    Example::

        engine = create_engine(url, pool_size=10)
        warm_up_sync(engine, 5, timeout=3)
    """
    seconds = to_seconds("timeout", timeout, allow_zero=False)
    engine = engine_for("warm_up_sync", engine)
    size = _warm_up_size(engine, min_size, "warm_up_sync", monitor)
    _warm_up_sync(engine, size, seconds)


def _warm_up_size(sync: Engine, min_size: int, what: str, monitor: PoolMonitor | None) -> int:
    pool = queue_pool_of(sync, what)
    size = int_option("min_size", min_size, 0)
    if size > pool.size():
        raise ValueError(
            f"min_size must be <= the pool size ({pool.size()}), got {min_size!r}: "
            "connections beyond the pool size are closed when they are returned"
        )
    if monitor is not None:
        if monitor.engine is not sync:
            raise ValueError(
                f"monitor must be this engine's PoolMonitor (instrument(engine).pool), got {monitor!r}"
            )
        monitor.min_size = size
    return size


def _warm_up_failed(engine: Engine, size: int, seconds: float, cause: BaseException) -> None:
    translated = translate_error(cause)
    raise DatabaseUnavailable(
        f"warm-up could not open and verify {size} connections to {safe_url(engine)} "
        f"within {seconds:g} s: {describe(translated)}",
        retryable=True,
    ) from cause


async def _warm_up_async(engine: AsyncEngine, size: int, seconds: float) -> None:
    opened: list[Any] = []

    async def one() -> None:
        conn = await engine.connect()
        opened.append(conn)
        await conn.execute(text("SELECT 1"))

    tasks = [asyncio.ensure_future(one()) for _ in range(size)]
    try:
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=seconds, return_when=asyncio.FIRST_EXCEPTION)
        for task in pending:
            task.cancel()
        # Every task's outcome is read, so none is reported "never retrieved".
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [
            o
            for o in outcomes
            if isinstance(o, BaseException) and not isinstance(o, asyncio.CancelledError)
        ]
        if errors:
            _warm_up_failed(engine.sync_engine, size, seconds, errors[0])
        if pending:
            _warm_up_failed(
                engine.sync_engine, size, seconds, TimeoutError("no answer within the timeout")
            )
    finally:
        for conn in opened:
            try:
                await conn.close()
            except Exception:
                _log.debug("closing a warm-up connection failed", exc_info=True)


def _warm_up_sync(engine: Engine, size: int, seconds: float) -> None:
    opened: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            conn = engine.connect()
            with lock:
                opened.append(conn)
            conn.execute(text("SELECT 1"))
        except BaseException as exc:
            with lock:
                errors.append(exc)

    workers = [
        threading.Thread(target=one, name="sqlalchemy-resilience-warm-up", daemon=True)
        for _ in range(size)
    ]
    deadline = time.monotonic() + seconds
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        if any(worker.is_alive() for worker in workers):
            _warm_up_failed(engine, size, seconds, TimeoutError("no answer within the timeout"))
        if errors:
            _warm_up_failed(engine, size, seconds, errors[0])
    finally:
        with lock:
            done = list(opened)
        for conn in done:
            try:
                conn.close()
            except Exception:
                _log.debug("closing a warm-up connection failed", exc_info=True)


# -- resize -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResizeResult:
    """What :func:`resize_pool` changed.

    Attributes:
        size, max_overflow: the pool's new settings.
        previous_size, previous_max_overflow: the settings before.
        closed: surplus idle connections closed by a shrink.
        opened: connections opened at once for requests that were waiting.

    Example::

        result = await resize_pool(engine, size=20)
        log.info("pool %d -> %d, %d opened for waiters", result.previous_size, result.size, result.opened)
    """

    size: int
    max_overflow: int
    previous_size: int
    previous_max_overflow: int
    closed: int
    opened: int


async def resize_pool(
    engine: AsyncEngine, *, size: int | None = None, max_overflow: int | None = None
) -> ResizeResult:
    """Change the pool's ``pool_size`` and/or ``max_overflow`` while it is in use.

    The engine's pool must be the package's
    (``poolclass=AsyncResizableQueuePool``; ``Database`` uses it): SQLAlchemy's
    own ``QueuePool`` keeps its size for life. Connections in use are never closed: a shrink closes surplus *idle*
    connections now, and the rest as they are returned; a grow lets waiting
    requests proceed at once (connections are opened for them).
    :func:`resize_pool_sync` is the blocking twin, for an ``Engine``.

    Args:
        engine: the ``AsyncEngine``.
        size: the new ``pool_size`` (>= 1); None keeps it.
        max_overflow: the new ``max_overflow`` (>= 0, or -1 for no limit); None keeps it.

    Raises:
        TypeError: the engine's pool is not a resizable one.

    Example::

        engine = create_async_engine(url, poolclass=AsyncResizableQueuePool)
        await resize_pool(engine, size=20, max_overflow=5)
    """
    sync = async_engine_for("resize_pool", engine).sync_engine
    pool, new_size, new_overflow = _new_bounds(sync, size, max_overflow, "resize_pool")
    result: ResizeResult = await greenlet_spawn(resize, sync, pool, new_size, new_overflow)
    return result


def resize_pool_sync(
    engine: Engine, *, size: int | None = None, max_overflow: int | None = None
) -> ResizeResult:
    """The blocking twin of :func:`resize_pool`, for an ``Engine``.

    Example::

        engine = create_engine(url, poolclass=ResizableQueuePool)
        result = resize_pool_sync(engine, size=20)
        print(result.previous_size, "->", result.size)
    """
    sync = engine_for("resize_pool_sync", engine)
    pool, new_size, new_overflow = _new_bounds(sync, size, max_overflow, "resize_pool_sync")
    return resize(sync, pool, new_size, new_overflow)


def _new_bounds(
    sync: Engine, size: int | None, max_overflow: int | None, what: str
) -> tuple[Resizable, int, int]:
    pool = resizable_pool_of(sync.pool, what)
    new_size = pool.size() if size is None else int_option("size", size, 1)
    new_overflow = (
        pool.max_overflow if max_overflow is None else int_option("max_overflow", max_overflow, -1)
    )
    return pool, new_size, new_overflow


def resize(engine: Engine, pool: Resizable, size: int, max_overflow: int) -> ResizeResult:
    """Resize ``pool`` now (the caller is in the pool's thread or greenlet)."""
    previous_size, previous_overflow = pool.size(), pool.max_overflow
    closed, opened = pool.resize(size, max_overflow, open_for=pool.waiting)
    _log.info(
        "pool of %s resized: size %d -> %d, max_overflow %d -> %d (%d idle closed, %d opened)",
        safe_url(engine),
        previous_size,
        size,
        previous_overflow,
        max_overflow,
        closed,
        opened,
    )
    return ResizeResult(size, max_overflow, previous_size, previous_overflow, closed, opened)
