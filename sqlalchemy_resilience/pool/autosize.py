"""``PoolAutosizer``: grow and shrink a pool between bounds from measured demand.

Every ``interval`` the autosizer looks at what the pool went through since
the last decision — the peak number of connections in use and of requests
waiting (sampled ten times per interval), and the p95 of checkout waits — and
decides:

* **grow** at once when requests queued (a request waiting while every
  connection was in use, or a p95 wait above ``target_wait`` in an interval
  that opened no connection and in which every connection was seen in use —
  a wait while connections sit idle is the machine's, not the pool's, and
  more connections would not shorten it): to ``max(size * grow_factor, peak in use + peak waiting)``,
  capped by ``max_size``;
* **shrink** only after ``shrink_after`` consecutive calm intervals in which
  the peak in use stayed at or below ``low_utilization`` of the size: to the
  size at which that peak would be ``high_utilization`` of the pool (never
  below ``min_size``). The gap between the two utilizations and the waiting
  period are the hysteresis: a steady load never makes it go back and forth.

``max_size`` is also capped by a connection budget: the ``budget`` you give,
and on PostgreSQL the server's ``max_connections`` minus
``superuser_reserved_connections`` minus ``reserve``, read when the autosizer
starts. Resizing goes through :func:`~sqlalchemy_resilience.pool.resize_pool`, so
connections in use are never closed. The engine must be instrumented: the
autosizer reads the pool figures of the ``monitor`` it is given
(``instrument(engine).pool``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from sqlalchemy_resilience._util.background import Background
from sqlalchemy_resilience._util.seconds import Seconds, to_seconds
from sqlalchemy_resilience.core.engines import async_engine_for, engine_for, sync_engine

from .control import int_option, resize
from .monitor import PoolMonitor, _value
from .queue import AsyncResizableQueuePool, ResizableQueuePool, resizable_pool_of

__all__ = ["AutosizeDecision", "PoolAutosizer"]

_log = logging.getLogger("sqlalchemy_resilience.pool")


@dataclass(frozen=True, slots=True)
class AutosizeDecision:
    """One resize the autosizer made.

    Attributes:
        at: ``time.monotonic()`` of the decision.
        previous, size: pool size before and after.
        reason: what was measured, in words.

    Example::

        for d in sizer.decisions:
            print(f"{d.previous} -> {d.size}: {d.reason}")
    """

    at: float
    previous: int
    size: int
    reason: str


def _fraction(name: str, value: object, *, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
        raise ValueError(f"{name} must be a number in ({low:g}, {high:g}], got {value!r}")
    return float(value)


class PoolAutosizer(Background):
    """Sizes one engine's pool between ``min_size`` and ``max_size`` from observed demand.

    Args:
        engine: an instrumented ``Engine`` or ``AsyncEngine`` whose pool is the
            package's (``poolclass=ResizableQueuePool`` /
            ``AsyncResizableQueuePool``; ``Database`` uses it).
        monitor: the engine's :class:`~sqlalchemy_resilience.pool.PoolMonitor`,
            ``instrument(engine).pool``: the figures decisions are made from.
        min_size, max_size: the bounds of ``pool_size`` (1 <= min <= max).
        budget: the most connections this pool may hold, overflow included (None: no extra cap).
        reserve: connections left free on the server (PostgreSQL) for others.
        interval: seconds between decisions.
        target_wait: a p95 checkout wait above this (seconds) is pressure.
        low_utilization: shrink when the peak in use stays at or below this share of the size.
        high_utilization: after a shrink, the peak in use is at most this share of the new size.
        shrink_after: calm intervals in a row before a shrink.
        grow_factor: multiplicative growth on pressure (> 1).

    Example::

        engine = create_async_engine(url, poolclass=AsyncResizableQueuePool)
        instr = instrument(engine)
        sizer = PoolAutosizer(engine, monitor=instr.pool, min_size=2, max_size=40, reserve=10)
        await sizer.start()    # AsyncEngine; sizer.start_sync() for an Engine
        ...
        sizer.detach()
    """

    thread_name = "sqlalchemy-resilience-autosizer"

    def __init__(
        self,
        engine: Engine | AsyncEngine,
        *,
        monitor: PoolMonitor,
        min_size: int,
        max_size: int,
        budget: int | None = None,
        reserve: int = 5,
        interval: Seconds = 1.0,
        target_wait: Seconds = 0.005,
        low_utilization: float = 0.5,
        high_utilization: float = 0.75,
        shrink_after: int = 5,
        grow_factor: float = 1.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self._sync = sync_engine(engine)
        resizable_pool_of(self._sync.pool, "PoolAutosizer")
        if not isinstance(monitor, PoolMonitor):
            raise TypeError(
                f"monitor must be the engine's PoolMonitor (instrument(engine).pool), got {monitor!r}"
            )
        if monitor.engine is not self._sync:
            raise ValueError(
                f"monitor counts the pool of {monitor.name!r}, not this engine's: pass "
                "instrument(engine).pool of the engine being sized"
            )
        self._monitor: PoolMonitor = monitor
        self.min_size = int_option("min_size", min_size, 1)
        self.max_size = int_option("max_size", max_size, 1)
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({min_size}) must be <= max_size ({max_size})")
        self.budget = None if budget is None else int_option("budget", budget, 1)
        self.reserve = int_option("reserve", reserve, 0)
        self.interval = to_seconds("interval", interval, allow_zero=False)
        self.target_wait = to_seconds("target_wait", target_wait)
        self.low_utilization = _fraction("low_utilization", low_utilization, low=0, high=1)
        self.high_utilization = _fraction("high_utilization", high_utilization, low=0, high=1)
        if self.low_utilization >= self.high_utilization:
            raise ValueError(
                f"low_utilization ({low_utilization}) must be below high_utilization "
                f"({high_utilization}): the gap is the hysteresis"
            )
        self.shrink_after = int_option("shrink_after", shrink_after, 1)
        factor: object = grow_factor
        if (
            isinstance(factor, bool)
            or not isinstance(factor, (int, float))
            or not math.isfinite(factor)
            or factor <= 1
        ):
            raise ValueError(f"grow_factor must be a finite number > 1, got {grow_factor!r}")
        self.grow_factor = float(factor)
        self._clock = clock
        self.server_cap: int | None = None
        self.decisions: list[AutosizeDecision] = []
        self._calm = 0
        self._calm_peak = 0
        self._peak_in_use = 0
        self._peak_waiting = 0
        self._answered = _value(self._monitor.answered)
        self._created = self._monitor.created
        super().__init__()

    @property
    def _pool(self) -> ResizableQueuePool | AsyncResizableQueuePool:
        # Read each time: engine.dispose() puts a new pool in place.
        return resizable_pool_of(self._sync.pool, "PoolAutosizer")

    # -- limits ------------------------------------------------------------------------

    @property
    def effective_max(self) -> int:
        """``max_size`` after the budget and the server's limit."""
        cap = self.max_size
        overflow = max(self._pool.max_overflow, 0)
        if self.budget is not None:
            cap = min(cap, self.budget - overflow)
        if self.server_cap is not None:
            cap = min(cap, self.server_cap - overflow)
        return max(self.min_size, cap)

    def read_server_limits(self) -> int | None:
        """Read the server's connection limit (PostgreSQL); returns the cap for this pool."""
        if self._sync.dialect.name != "postgresql":
            return None
        with self._sync.connect() as conn:
            max_connections = int(conn.execute(text("SHOW max_connections")).scalar_one())
            reserved = int(conn.execute(text("SHOW superuser_reserved_connections")).scalar_one())
        self.server_cap = max_connections - reserved - self.reserve
        if self.server_cap < self.min_size:
            raise ValueError(
                f"the server allows {max_connections} connections ({reserved} reserved for "
                f"superusers, {self.reserve} kept in reserve): fewer than min_size={self.min_size}"
            )
        return self.server_cap

    # -- measuring and deciding --------------------------------------------------------

    def sample(self) -> None:
        """Note the pool's current in-use and waiting numbers (called between decisions)."""
        pool = self._pool
        in_use = pool.checkedout()
        if in_use > self._peak_in_use:
            self._peak_in_use = in_use
        # A request counts as queued only beyond the pool's capacity; before
        # that it is opening a connection, which more size would not speed up.
        capacity = pool.size() + max(pool.max_overflow, 0)
        waiting = self._monitor.queued(capacity)
        if waiting > self._peak_waiting:
            self._peak_waiting = waiting

    def _recent_wait_p95(self) -> float:
        answered = _value(self._monitor.answered)
        new = answered - self._answered
        self._answered = answered
        created = self._monitor.created
        if created != self._created:
            # Waits that include opening a connection say nothing about queueing.
            self._created = created
            return 0.0
        waits = list(self._monitor.waits)[-new:] if new > 0 else []
        if not waits:
            return 0.0
        waits.sort()
        return waits[min(len(waits) - 1, math.ceil(0.95 * len(waits)) - 1)]

    def decide(self) -> int | None:
        """The new size from what was sampled since the last decision, or None to keep it."""
        self.sample()
        size = self._pool.size()
        peak_in_use, peak_waiting = self._peak_in_use, self._peak_waiting
        self._peak_in_use = self._peak_waiting = 0
        p95 = self._recent_wait_p95()
        top = self.effective_max
        capacity = size + max(self._pool.max_overflow, 0)
        # A slow checkout counts as pressure only when the pool was full: with
        # a connection idle at every sample, the wait was the CPU or the
        # pre-ping, and growing would not shorten it (it would only undo the
        # last shrink on a busy machine).
        if peak_waiting > 0 or (peak_in_use >= capacity and p95 > self.target_wait):
            self._calm = 0
            self._calm_peak = 0
            wanted = max(math.ceil(size * self.grow_factor), peak_in_use + peak_waiting)
            new = min(top, wanted)
            return new if new > size else None
        if peak_in_use <= self.low_utilization * size:
            self._calm += 1
            self._calm_peak = max(self._calm_peak, peak_in_use)
            if self._calm >= self.shrink_after and size > self.min_size:
                new = max(self.min_size, math.ceil(self._calm_peak / self.high_utilization))
                self._calm = 0
                self._calm_peak = 0
                return new if new < size else None
            return None
        self._calm = 0
        self._calm_peak = 0
        return None

    def tick_sync(self) -> AutosizeDecision | None:
        """The blocking twin of :meth:`tick`: decide and, if the size changes, resize (an ``Engine``)."""
        previous = self._pool.size()
        measured = (self._peak_in_use, self._peak_waiting)
        new = self.decide()
        if new is None:
            return None
        resize(self._sync, self._pool, new, self._pool.max_overflow)
        reason = (
            f"peak {measured[0]} in use, {measured[1]} waiting"
            if new > previous
            else f"peak in use at most {self.low_utilization:.0%} of {previous} "
            f"for {self.shrink_after} intervals"
        )
        decision = AutosizeDecision(self._clock(), previous, new, reason)
        self.decisions.append(decision)
        _log.info("pool autosizer: size %d -> %d (%s)", previous, new, reason)
        return decision

    async def tick(self) -> AutosizeDecision | None:
        """Decide and, if the size changes, resize (an ``AsyncEngine``)."""
        decision: AutosizeDecision | None = await greenlet_spawn(self.tick_sync)
        return decision

    # -- running -----------------------------------------------------------------------

    async def start(self) -> None:
        """Read the server's limits and start deciding in a task on the running loop (an ``AsyncEngine``)."""
        async_engine_for("PoolAutosizer.start", self.engine)
        if self.running:
            return
        await greenlet_spawn(self.read_server_limits)
        self._start(in_loop=True)

    async def _loop_async(self) -> None:
        step = self.interval / 10
        while True:
            for _ in range(10):
                await asyncio.sleep(step)
                self.sample()
            try:
                await self.tick()
            except Exception:
                _log.exception("sqlalchemy_resilience: pool autosizer decision failed")

    def start_sync(self) -> None:
        """The blocking twin of :meth:`start`: decide in a daemon thread (an ``Engine``)."""
        engine_for("PoolAutosizer.start_sync", self.engine)
        if self.running:
            return
        self.read_server_limits()
        self._start(in_loop=False)

    def _loop_sync(self) -> None:
        step = self.interval / 10
        while True:
            for _ in range(10):
                if self._stop.wait(step):
                    return
                self.sample()
            try:
                self.tick_sync()
            except Exception:
                _log.exception("sqlalchemy_resilience: pool autosizer decision failed")

    def __repr__(self) -> str:
        return (
            f"<PoolAutosizer size={self._pool.size()} bounds={self.min_size}..{self.effective_max}"
            f" decisions={len(self.decisions)}>"
        )
