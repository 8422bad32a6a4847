"""Background pool maintenance: keepalive pings, jittered recycle, a minimum size.

:class:`PoolMaintainer` pings idle connections in the background
(``keepalive``) so NAT and pgbouncer idle reaping never hit a request,
replaces connections before ``recycle`` seconds with a per-connection random
``jitter`` (no mass expiry), and keeps ``min_size`` connections open. It takes
idle connections straight from the pool's queue, one at a time, and only
while no request is waiting; a checked-out connection is never touched. It
runs as a task on the event loop for an ``AsyncEngine`` and as a daemon
thread for a sync ``Engine``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from sqlalchemy_resilience._util.background import Background
from sqlalchemy_resilience._util.seconds import Seconds, to_seconds
from sqlalchemy_resilience.core.engines import async_engine_for, engine_for, safe_url, sync_engine
from sqlalchemy_resilience.errors.translate import describe, translate_error

from .control import int_option
from .queue import AsyncResizableQueuePool, ResizableQueuePool, resizable_pool_of

__all__ = ["ALIVE_AT_KEY", "MaintenanceReport", "PoolMaintainer"]

_log = logging.getLogger("sqlalchemy_resilience.pool")
_JITTER_KEY = "sqlalchemy_resilience.recycle_jitter"
#: ``record.info`` key: when the connection was last known alive (``time.time()``):
#: a keepalive ping here, a checkin or a liveness ping in :mod:`.liveness`.
ALIVE_AT_KEY = "sqlalchemy_resilience.pinged"


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

        report = await maintainer.run_once()
        if report.dead:
            log.warning("%d idle connections were dead and replaced", report.dead)
    """

    pinged: int = 0
    replaced: int = 0
    dead: int = 0
    opened: int = 0
    skipped: bool = False


def _queueing(pool: ResizableQueuePool | AsyncResizableQueuePool) -> bool:
    # Requests come first: a pass stops as soon as one waits.
    return pool.waiting > 0


class PoolMaintainer(Background):
    """Background keepalive, jittered recycle and minimum size for one engine's pool.

    Args:
        engine: an ``Engine`` or ``AsyncEngine`` whose pool is the package's
            (``poolclass=ResizableQueuePool`` / ``AsyncResizableQueuePool``;
            ``Database`` uses it).
        keepalive: ping each idle connection at least this often (seconds; None: never).
        recycle: replace a connection older than this (seconds; None: never),
            earlier by a random fraction up to ``jitter`` so connections
            opened together do not expire together.
        jitter: 0 .. 1, the fraction of ``recycle`` by which a connection may expire early.
        min_size: keep at least this many connections open.
        interval: seconds between passes.
        clock: wall-clock seconds (``time.time``'s scale, as SQLAlchemy's
            connection records): when a connection was last known alive;
            injectable for tests.

    Example::

        maintainer = PoolMaintainer(engine, keepalive=30, recycle=1800, jitter=0.2, min_size=5)
        await maintainer.start()    # an AsyncEngine; maintainer.start_sync() for an Engine
        ...
        maintainer.detach()
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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self._clock = clock
        self._sync = sync_engine(engine)
        pool = resizable_pool_of(self._sync.pool, "PoolMaintainer")
        self.keepalive = (
            None if keepalive is None else to_seconds("keepalive", keepalive, allow_zero=False)
        )
        self.recycle = None if recycle is None else to_seconds("recycle", recycle, allow_zero=False)
        share: object = jitter
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
            raise ValueError(f"jitter must be a fraction in [0, 1), got {jitter!r}")
        self.jitter = float(share)
        self.min_size = int_option("min_size", min_size, 0)
        if self.min_size > pool.size():
            raise ValueError(f"min_size must be <= the pool size ({pool.size()}), got {min_size!r}")
        self.interval = to_seconds("interval", interval, allow_zero=False)
        super().__init__()
        self.passes = 0
        self.totals = MaintenanceReport()

    # -- one pass --------------------------------------------------------------

    def run_once_sync(self) -> MaintenanceReport:
        """The blocking twin of :meth:`run_once`: one pass over the idle connections (an ``Engine``)."""
        # Read each pass: engine.dispose() puts a new pool in place.
        pool = resizable_pool_of(self._sync.pool, "PoolMaintainer")
        if _queueing(pool):
            return MaintenanceReport(skipped=True)
        pinged = replaced = dead = opened = 0
        now = self._clock()
        with pool.idle_connections() as idle:
            for record in idle:
                outcome = self._maintain(record, now)
                pinged += outcome[0]
                replaced += outcome[1]
                dead += outcome[2]
                if _queueing(pool):
                    break
        while self.min_size and pool.checkedin() + pool.checkedout() < self.min_size:
            try:
                if not pool.open_idle():
                    break
            except Exception as exc:
                # describe(), not exc_info: a traceback would print SQLAlchemy's
                # text, parameters and all, into the package's own record.
                _log.warning(
                    "could not open a connection to keep min_size: %s",
                    describe(translate_error(exc)),
                )
                break
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

    async def run_once(self) -> MaintenanceReport:
        """One pass over the idle connections (an ``AsyncEngine``; the driver needs SQLAlchemy's greenlet)."""
        report: MaintenanceReport = await greenlet_spawn(self.run_once_sync)
        return report

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
        if self.keepalive is not None and now - info.get(ALIVE_AT_KEY, record.starttime) >= (
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
            info[ALIVE_AT_KEY] = self._clock()
            return (1, 0, 0)
        return (0, 0, 0)

    def _replace(self, record: Any, error: BaseException | None) -> None:
        record.invalidate(error)
        try:
            record.get_connection()  # reconnect now, off the request path
        except Exception as exc:
            _log.warning(
                "could not replace a pooled connection of %s; it reconnects at its next checkout: %s",
                safe_url(self._sync),
                describe(translate_error(exc)),
            )

    # -- running in the background ------------------------------------------------

    async def start(self) -> None:
        """Start passes every ``interval`` seconds in a task on the running loop (idempotent; an ``AsyncEngine``)."""
        async_engine_for("PoolMaintainer.start", self.engine)
        self._start(in_loop=True)

    def start_sync(self) -> None:
        """The blocking twin of :meth:`start`: passes run in a daemon thread (an ``Engine``)."""
        engine_for("PoolMaintainer.start_sync", self.engine)
        self._start(in_loop=False)

    async def _loop_async(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.run_once()
            except Exception:
                _log.exception("sqlalchemy_resilience: pool maintenance pass failed")

    def _loop_sync(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once_sync()
            except Exception:
                _log.exception("sqlalchemy_resilience: pool maintenance pass failed")
