"""Pool monitoring: the numbers behind ``pool_stats(engine)`` and the OTel pool metrics.

One :class:`PoolMonitor` per instrumented engine counts what SQLAlchemy's pool
does not: requests waiting for a connection, checkouts, timeouts, connections
created / closed / invalidated, and wait, use and create times. Gauges (size,
in use, idle, overflow) are read from the pool itself when asked. The same
object feeds :func:`pool_stats` and the ``db.client.connection.*`` metrics, so
both always agree.

Cost per checkout: the checkout is timed inside the wrapper of the pool's
``connect`` the instrumentation already has, and the checkin by a one-shot
callback on the connection record (SQLAlchemy's ``finalize_callback``, which
runs at checkin without the cost of event dispatch); nothing runs per
statement and nothing takes a lock.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

from sqlalchemy_resilience.core.engines import sync_engine
from sqlalchemy_resilience.core.registry import find_part

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from .leaks import LeakDetector

__all__ = ["PoolMonitor", "pool_name_of", "pool_stats"]


SAMPLES = 4096


def _value(counter: itertools.count[int]) -> int:
    # itertools.count is incremented atomically under the GIL and is the
    # cheapest thread-safe counter; its repr is the only way to read it
    # without advancing it.
    return int(repr(counter)[6:-1])


def _summary(prefix: str, samples: deque[float]) -> dict[str, float]:
    values = sorted(samples)
    if not values:
        return {
            f"{prefix}_p50": 0.0,
            f"{prefix}_p95": 0.0,
            f"{prefix}_p99": 0.0,
            f"{prefix}_max": 0.0,
        }
    last = len(values) - 1
    return {
        f"{prefix}_p50": values[round(0.50 * last)],
        f"{prefix}_p95": values[round(0.95 * last)],
        f"{prefix}_p99": values[round(0.99 * last)],
        f"{prefix}_max": values[-1],
    }


def pool_name_of(engine: Engine) -> str:
    """The default ``db.client.connection.pool.name``: host, port and database, never credentials."""
    url = engine.url
    if url.host:
        port = f":{url.port}" if url.port else ""
        return f"{url.host}{port}/{url.database or ''}"
    return f"{url.get_backend_name()}:{url.database or 'memory'}"


class PoolMonitor:
    """Counters and timings of one engine's pool (owned by the instrumentation).

    The hot path takes no lock: counters are ``itertools.count`` objects and
    timings go into bounded deques (the most recent 4096 samples since the
    last pop), both safe under concurrent threads.

    Attributes:
        name: the pool name reported in metrics and stats.
        leaks: the leak detector while ``leak_threshold`` is set, else None.

    Example::

        instr = instrument(engine)
        print(instr.pool_stats()["checkouts"])
        report = await health_check(engine, monitor=instr.pool)
    """

    def __init__(
        self,
        engine: Engine,
        *,
        name: str,
        log_own_failure: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.name = name
        self.attached = False
        self.min_size = 0
        self.leaks: LeakDetector | None = None
        self._log_own_failure = log_own_failure
        self._last_health = (0, 0)
        self._lock = threading.Lock()
        self.requested = itertools.count()
        self.answered = itertools.count()
        self.failures = itertools.count()
        self.returned = itertools.count()
        self.waits: deque[float] = deque(maxlen=SAMPLES)
        # The part of each wait spent before a connection was free or being
        # opened for it: queueing, which a bigger pool would shorten.
        self.queue_waits: deque[float] = deque(maxlen=SAMPLES)
        self.uses: deque[float] = deque(maxlen=SAMPLES)
        self.creates: deque[float] = deque(maxlen=SAMPLES)
        self.since = time.time()
        self._base_checkouts = 0
        self.timeouts = 0
        self.shed = 0
        self.created = 0
        self.closed = 0
        self.invalidated = 0

    @property
    def suspected_leaks(self) -> int:
        """Connections held past the leak threshold and not returned yet (0 without one)."""
        leaks = self.leaks
        return leaks.suspected if leaks is not None else 0

    @property
    def waiting(self) -> int:
        """Requests for a connection not answered yet."""
        return max(0, _value(self.requested) - _value(self.answered))

    def queued(self, capacity: int | None) -> int:
        """Requests beyond what the pool can serve at once: queued for a connection.

        Counts demand (requests not yet given back, failed ones excluded)
        against ``capacity`` (size plus overflow); unlike :attr:`waiting` it
        does not count a request that already has its connection but whose
        checkout has not returned yet, which on a busy machine can last long
        enough to be sampled. None capacity (unbounded pool): 0.
        """
        if capacity is None:
            return 0
        returned, failed = _value(self.returned), _value(self.failures)
        return max(0, _value(self.requested) - returned - failed - capacity)

    def _checkouts(self) -> int:
        # Answered requests that did not fail; both counters only grow, read
        # "failures" first so a concurrent failure never makes this negative.
        failed = _value(self.failures)
        return max(0, _value(self.answered) - failed)

    def log_own_failure(self, what: str) -> None:
        """Log a failure of an observation of this pool, once per kind."""
        if self._log_own_failure is not None:
            self._log_own_failure(what)

    def limit(self, which: str) -> int | None:
        """``idle_max``, ``idle_min``, ``max`` or ``pending`` for the pool metrics."""
        if which == "pending":
            return self.waiting
        gauges = self.gauges()
        if which == "idle_max":
            return gauges["pool_size"]  # type: ignore[no-any-return]
        if which == "idle_min":
            return self.min_size
        return gauges["pool_max"]  # type: ignore[no-any-return]

    def health_deltas(self, stats: Mapping[str, Any]) -> tuple[int, int]:
        """Pool timeouts and refused requests since the previous health check."""
        timeouts, shed = int(stats.get("timeouts", 0)), int(stats.get("requests_shed", 0))
        last_timeouts, last_shed = self._last_health
        self._last_health = (timeouts, shed)
        # A pop_stats() in between restarts the counters: then all are new.
        return (
            timeouts - last_timeouts if timeouts >= last_timeouts else timeouts,
            shed - last_shed if shed >= last_shed else shed,
        )

    # -- rare events (called by the checkout and pool listeners) ---------------

    def shed_one(self) -> None:
        with self._lock:
            self.shed += 1

    def timed_out(self) -> None:
        with self._lock:
            self.timeouts += 1

    def connection_created(self, seconds: float | None) -> None:
        with self._lock:
            self.created += 1
        if seconds is not None and seconds >= 0:
            self.creates.append(seconds)

    def connection_closed(self) -> None:
        with self._lock:
            self.closed += 1

    def connection_invalidated(self) -> None:
        with self._lock:
            self.invalidated += 1

    # -- reading ---------------------------------------------------------------

    def gauges(self) -> dict[str, Any]:
        """Size, in use, idle, overflow, max and waiting, read from the pool now."""
        pool: Pool = self.engine.pool
        size = _call(pool, "size")
        checked_out = _call(pool, "checkedout")
        checked_in = _call(pool, "checkedin")
        overflow = _call(pool, "overflow")
        max_overflow = getattr(pool, "_max_overflow", None)
        if checked_out is None:
            checked_out = max(0, self._checkouts() - _value(self.returned))
        pool_max: int | None = None
        if size is not None and max_overflow is not None:
            pool_max = size + max_overflow if max_overflow >= 0 else None
        return {
            "pool_name": self.name,
            "pool_class": type(pool).__name__,
            "pool_size": size,
            "pool_max": pool_max,
            "connections_in_use": checked_out,
            "connections_idle": checked_in if checked_in is not None else 0,
            "overflow": max(overflow, 0) if overflow is not None else 0,
            "requests_waiting": self.waiting,
        }

    def stats(self, *, pop: bool = False) -> dict[str, Any]:
        """Gauges plus everything counted since the last pop (see :func:`pool_stats`)."""
        result = self.gauges()
        with self._lock:
            checkouts = self._checkouts()
            result.update(
                {
                    "since": self.since,
                    "checkouts": checkouts - self._base_checkouts,
                    "timeouts": self.timeouts,
                    "requests_shed": self.shed,
                    "connections_created": self.created,
                    "connections_closed": self.closed,
                    "connections_invalidated": self.invalidated,
                }
            )
            result.update(_summary("wait_time", self.waits))
            result.update(_summary("queue_wait_time", self.queue_waits))
            result.update(_summary("use_time", self.uses))
            result.update(_summary("create_time", self.creates))
            if pop:
                self.since = time.time()
                self._base_checkouts = checkouts
                self.timeouts = self.shed = self.created = self.closed = self.invalidated = 0
                self.waits.clear()
                self.queue_waits.clear()
                self.uses.clear()
                self.creates.clear()
        return result


def _call(pool: Pool, name: str) -> int | None:
    method = getattr(pool, name, None)
    if not callable(method):
        return None
    try:
        value = method()
    except Exception:  # pragma: no cover - status is best effort
        return None
    return value if isinstance(value, int) else None


def pool_stats(engine: Engine | AsyncEngine, *, pop: bool = False) -> Mapping[str, Any]:
    """The pool's numbers as a plain mapping (psycopg_pool's ``get_stats`` / ``pop_stats``).

    Gauges, read now: ``pool_name``, ``pool_class``, ``pool_size`` (configured
    size), ``pool_max`` (size plus overflow; None when unbounded or not a
    queue pool), ``connections_in_use``, ``connections_idle``, ``overflow``,
    ``requests_waiting``.

    Counted since the engine was instrumented or the last ``pop=True``:
    ``since`` (epoch seconds), ``checkouts``, ``timeouts``, ``requests_shed``
    (refused by ``max_waiting``),
    ``connections_created``, ``connections_closed``,
    ``connections_invalidated``, and in seconds ``wait_time_p50/_p95/_p99/_max``
    (request to connection in hand, as ``db.client.connection.wait_time``),
    ``queue_wait_time_p50/_p95/_p99/_max`` (the part of each wait before a
    connection was free or began to be opened for it: time spent queueing,
    without the time to open one), ``use_time_p50/_p95/_p99/_max``,
    ``create_time_p50/_p95/_p99/_max`` (over the most recent 4096 samples
    since the last pop).

    The counted figures need :func:`~sqlalchemy_resilience.instrument`; on an
    engine without it they are absent and only the gauges are returned.

    Args:
        engine: an ``Engine`` or ``AsyncEngine``.
        pop: reset the counted figures after reading them.

    Example::

        instrument(engine)
        stats = pool_stats(engine)
        print(stats["connections_in_use"], stats["wait_time_p99"])
    """
    monitor = find_part(engine, PoolMonitor)
    if monitor is not None:
        return monitor.stats(pop=pop)  # type: ignore[no-any-return]
    sync = sync_engine(engine)
    return PoolMonitor(sync, name=pool_name_of(sync)).gauges()
