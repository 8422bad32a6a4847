"""Pool control: warm-up, runtime resize, and background keepalive / jittered recycle.

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

All three work on a sync ``Engine`` (called directly) and an ``AsyncEngine``
(awaited, or started from a running event loop).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, overload

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool
from sqlalchemy.util import greenlet_spawn

from ._ticker import Background
from ._time import Seconds, to_seconds
from .errors import DatabaseUnavailable
from .instrument import _sync_engine, instrumentation_of, translate_error

__all__ = ["MaintenanceReport", "PoolMaintainer", "resize_pool", "warm_up"]

_log = logging.getLogger("sqlalchemy_resilience.pool")
_JITTER_KEY = "sqlalchemy_resilience.recycle_jitter"
_PINGED_KEY = "sqlalchemy_resilience.pinged"


def _queue_pool(engine: Engine, what: str) -> QueuePool:
    pool = engine.pool
    if not isinstance(pool, QueuePool):
        raise TypeError(
            f"{what} needs a QueuePool (or AsyncAdaptedQueuePool); this engine uses "
            f"{type(pool).__name__}"
        )
    return pool


def _int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def _safe_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


# -- warm-up ------------------------------------------------------------------------


@overload
def warm_up(
    engine: AsyncEngine, min_size: int, *, timeout: Seconds = ...
) -> Coroutine[Any, Any, None]: ...


@overload
def warm_up(engine: Engine, min_size: int, *, timeout: Seconds = ...) -> None: ...


def warm_up(
    engine: Engine | AsyncEngine, min_size: int, *, timeout: Seconds = 10.0
) -> Coroutine[Any, Any, None] | None:
    """Open and verify ``min_size`` pooled connections now; fail fast if the database is unreachable.

    Each connection runs ``SELECT 1`` and goes back to the pool idle, so the
    first requests find them ready (HikariCP ``minimumIdle`` with
    ``initializationFailTimeout``, psycopg_pool ``wait()``). An instrumented
    engine reports ``min_size`` as ``db.client.connection.idle.min``.

    Args:
        engine: an ``Engine`` (called directly) or ``AsyncEngine`` (awaited).
        min_size: connections to open (0 .. the pool size).
        timeout: the most the whole warm-up may take, seconds or ``timedelta``.

    Raises:
        DatabaseUnavailable: not every connection could be opened and
            verified within ``timeout`` (the cause is chained); connections
            that were opened stay in the pool.
        ValueError, TypeError: bad ``min_size`` or ``timeout``.

    Example::

        engine = create_async_engine(url, pool_size=10)
        instrument(engine)
        await warm_up(engine, 5, timeout=3)   # at application start-up
    """
    seconds = to_seconds("timeout", timeout, allow_zero=False)
    sync = _sync_engine(engine)
    pool = _queue_pool(sync, "warm_up")
    size = _int("min_size", min_size, 0)
    if size > pool.size():
        raise ValueError(
            f"min_size must be <= the pool size ({pool.size()}), got {min_size!r}: "
            "connections beyond the pool size are closed when they are returned"
        )
    instr = instrumentation_of(sync)
    if instr is not None:
        instr.min_size = size
    if isinstance(engine, AsyncEngine):
        return _warm_up_async(engine, size, seconds)
    _warm_up_sync(sync, size, seconds)
    return None


def _warm_up_failed(engine: Engine, size: int, seconds: float, cause: BaseException) -> None:
    translated = translate_error(cause)
    raise DatabaseUnavailable(
        f"warm-up could not open and verify {size} connections to {_safe_url(engine)} "
        f"within {seconds:g} s: {type(translated).__name__}: "
        f"{str(translated).splitlines()[0] if str(translated) else 'no answer'}",
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
        done, pending = await asyncio.wait(tasks, timeout=seconds)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            _warm_up_failed(
                engine.sync_engine, size, seconds, TimeoutError("no answer within the timeout")
            )
        for task in done:
            error = task.exception()
            if error is not None:
                _warm_up_failed(engine.sync_engine, size, seconds, error)
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


@overload
def resize_pool(
    engine: AsyncEngine, *, size: int | None = ..., max_overflow: int | None = ...
) -> Coroutine[Any, Any, ResizeResult]: ...


@overload
def resize_pool(
    engine: Engine, *, size: int | None = ..., max_overflow: int | None = ...
) -> ResizeResult: ...


def resize_pool(
    engine: Engine | AsyncEngine, *, size: int | None = None, max_overflow: int | None = None
) -> ResizeResult | Coroutine[Any, Any, ResizeResult]:
    """Change the pool's ``pool_size`` and/or ``max_overflow`` while it is in use.

    Connections in use are never closed: a shrink closes surplus *idle*
    connections now, and the rest as they are returned; a grow lets waiting
    requests proceed at once (connections are opened for them).

    Args:
        engine: an ``Engine`` (called directly) or ``AsyncEngine`` (awaited).
        size: the new ``pool_size`` (>= 1); None keeps it.
        max_overflow: the new ``max_overflow`` (>= 0, or -1 for no limit); None keeps it.

    Example::

        await resize_pool(engine, size=20, max_overflow=5)
    """
    sync = _sync_engine(engine)
    pool = _queue_pool(sync, "resize_pool")
    new_size = pool.size() if size is None else _int("size", size, 1)
    new_overflow = (
        pool._max_overflow if max_overflow is None else _int("max_overflow", max_overflow, -1)
    )
    if isinstance(engine, AsyncEngine):
        return greenlet_spawn(_resize, sync, pool, new_size, new_overflow)
    return _resize(sync, pool, new_size, new_overflow)


def _set_queue_size(pool: QueuePool, size: int) -> None:
    queue = pool._pool
    queue.maxsize = size
    # AsyncAdaptedQueue keeps an asyncio.Queue created with the old maxsize.
    inner = queue.__dict__.get("_queue")
    if isinstance(inner, asyncio.Queue):
        inner._maxsize = size  # type: ignore[attr-defined]


def _resize(engine: Engine, pool: QueuePool, size: int, max_overflow: int) -> ResizeResult:
    previous_size, previous_overflow = pool.size(), pool._max_overflow
    with pool._overflow_lock:
        delta = size - previous_size
        _set_queue_size(pool, size)
        # Open connections = maxsize + _overflow; keep that number unchanged.
        pool._overflow -= delta
        pool._max_overflow = max_overflow
    closed = 0
    while pool._pool.qsize() > size:
        try:
            record = pool._pool.get(False)
        except Exception:
            break
        try:
            record.close()
            closed += 1
        finally:
            pool._dec_overflow()
    opened = 0
    instr = instrumentation_of(engine)
    waiting = instr.pool.waiting if instr is not None else 0
    while opened < waiting and pool._inc_overflow():
        try:
            record = pool._create_connection()
        except BaseException:
            pool._dec_overflow()
            raise
        pool._pool.put(record, False)
        opened += 1
    _log.info(
        "pool of %s resized: size %d -> %d, max_overflow %d -> %d (%d idle closed, %d opened)",
        _safe_url(engine),
        previous_size,
        size,
        previous_overflow,
        max_overflow,
        closed,
        opened,
    )
    return ResizeResult(size, max_overflow, previous_size, previous_overflow, closed, opened)


# -- background maintenance ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    """One maintenance pass.

    Attributes:
        pinged: idle connections pinged (keepalive).
        replaced: connections replaced (recycle age reached, or the ping failed).
        dead: pings that failed.
        opened: connections opened to reach ``min_size``.
        skipped: True when the pass did nothing because requests were waiting.

    Example::

        report = await maintainer.arun_once()
        if report.dead:
            log.warning("%d idle connections were dead and replaced", report.dead)
    """

    pinged: int = 0
    replaced: int = 0
    dead: int = 0
    opened: int = 0
    skipped: bool = False


class PoolMaintainer(Background):
    """Background keepalive, jittered recycle and minimum size for one engine's pool.

    Args:
        engine: an ``Engine`` or ``AsyncEngine`` with a queue pool.
        keepalive: ping each idle connection at least this often (seconds; None: never).
        recycle: replace a connection older than this (seconds; None: never),
            earlier by a random fraction up to ``jitter`` so connections
            opened together do not expire together.
        jitter: 0 .. 1, the fraction of ``recycle`` by which a connection may expire early.
        min_size: keep at least this many connections open.
        interval: seconds between passes.

    Example::

        maintainer = PoolMaintainer(engine, keepalive=30, recycle=1800, jitter=0.2, min_size=5)
        maintainer.start()          # from the running event loop for an AsyncEngine
        ...
        await maintainer.aclose()   # or maintainer.close() for a sync Engine
    """

    thread_name = "sqlalchemy-resilience-maintainer"

    def __init__(
        self,
        engine: Engine | AsyncEngine,
        *,
        keepalive: Seconds | None = 60.0,
        recycle: Seconds | None = None,
        jitter: float = 0.1,
        min_size: int = 0,
        interval: Seconds = 5.0,
    ) -> None:
        self.engine = engine
        self._sync = _sync_engine(engine)
        self._pool = _queue_pool(self._sync, "PoolMaintainer")
        self.keepalive = (
            None if keepalive is None else to_seconds("keepalive", keepalive, allow_zero=False)
        )
        self.recycle = None if recycle is None else to_seconds("recycle", recycle, allow_zero=False)
        share: object = jitter
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
            raise ValueError(f"jitter must be a fraction in [0, 1), got {jitter!r}")
        self.jitter = float(share)
        self.min_size = _int("min_size", min_size, 0)
        if self.min_size > self._pool.size():
            raise ValueError(
                f"min_size must be <= the pool size ({self._pool.size()}), got {min_size!r}"
            )
        self.interval = to_seconds("interval", interval, allow_zero=False)
        super().__init__()
        self.passes = 0
        self.totals = MaintenanceReport()

    # -- one pass --------------------------------------------------------------

    def _waiting(self) -> int:
        instr = instrumentation_of(self._sync)
        return instr.pool.waiting if instr is not None else 0

    def run_once(self) -> MaintenanceReport:
        """One pass over the idle connections (sync; an AsyncEngine uses :meth:`arun_once`)."""
        pool = self._pool
        if self._waiting():
            return MaintenanceReport(skipped=True)
        pinged = replaced = dead = opened = 0
        now = time.time()
        for _ in range(pool._pool.qsize()):
            if self._waiting():
                break
            try:
                record = pool._pool.get(False)
            except Exception:
                break  # taken by a request meanwhile
            try:
                outcome = self._maintain(record, now)
            finally:
                pool._pool.put(record, False)
            pinged += outcome[0]
            replaced += outcome[1]
            dead += outcome[2]
        while (
            self.min_size
            and pool.checkedin() + pool.checkedout() < self.min_size
            and pool._inc_overflow()
        ):
            try:
                record = pool._create_connection()
            except Exception:
                pool._dec_overflow()
                _log.warning("could not open a connection to keep min_size", exc_info=True)
                break
            pool._pool.put(record, False)
            opened += 1
        report = MaintenanceReport(pinged, replaced, dead, opened)
        self.passes += 1
        totals = self.totals
        self.totals = MaintenanceReport(
            totals.pinged + pinged,
            totals.replaced + replaced,
            totals.dead + dead,
            totals.opened + opened,
        )
        return report

    async def arun_once(self) -> MaintenanceReport:
        """One pass for an ``AsyncEngine`` (the driver needs SQLAlchemy's greenlet)."""
        return await greenlet_spawn(self.run_once)

    def _maintain(self, record: Any, now: float) -> tuple[int, int, int]:
        if record.dbapi_connection is None:
            return (0, 0, 0)  # reconnects lazily at its next checkout
        info = record.info
        if self.recycle is not None:
            jitter = info.get(_JITTER_KEY)
            if jitter is None:
                jitter = info[_JITTER_KEY] = random.uniform(0, self.jitter * self.recycle)
            if now - record.starttime >= self.recycle - jitter:
                self._replace(record, None)
                return (0, 1, 0)
        if self.keepalive is not None and now - info.get(_PINGED_KEY, record.starttime) >= (
            self.keepalive
        ):
            try:
                alive = self._sync.dialect.do_ping(record.dbapi_connection)
            except Exception as exc:
                self._replace(record, exc)
                return (1, 1, 1)
            if not alive:
                self._replace(record, None)
                return (1, 1, 1)
            info[_PINGED_KEY] = time.time()
            return (1, 0, 0)
        return (0, 0, 0)

    def _replace(self, record: Any, error: BaseException | None) -> None:
        record.invalidate(error)
        try:
            record.get_connection()  # reconnect now, off the request path
        except Exception:
            _log.warning(
                "could not replace a pooled connection of %s; it reconnects at its next checkout",
                _safe_url(self._sync),
                exc_info=True,
            )

    # -- running in the background ------------------------------------------------

    def start(self) -> None:
        """Start passes every ``interval`` seconds (idempotent).

        For an ``AsyncEngine`` call it from the running event loop (a task is
        created on it); for an ``Engine`` a daemon thread runs the passes.
        """
        self._start(in_loop=isinstance(self.engine, AsyncEngine))

    async def _loop_async(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.arun_once()
            except Exception:
                _log.exception("sqlalchemy_resilience: pool maintenance pass failed")

    def _loop_sync(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:
                _log.exception("sqlalchemy_resilience: pool maintenance pass failed")
