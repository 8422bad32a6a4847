"""The pool parts the hook core calls: checkout timing, load shedding, pool events.

:class:`CheckoutObserver` builds, once per engine, the callables for
:class:`~sqlalchemy_resilience.core.HookParts`: after a checkout it counts it,
records the wait, registers a one-shot checkin callback on the connection
record (use time, end of a leak-detector hold) and starts the hold; after a
failed checkout it counts the failure and a timeout. ``CheckoutObserver.shed``
is the ``before_checkout`` gate of ``max_waiting``: it refuses a request at
once, with :class:`~sqlalchemy_resilience.PoolExhausted`, when that many are
already waiting and the pool can neither hand out an idle connection nor grow.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.pool import PoolProxiedConnection

from sqlalchemy_resilience.core.engines import pool_status
from sqlalchemy_resilience.errors.hierarchy import PoolExhausted
from sqlalchemy_resilience.errors.translate import pool_numbers
from sqlalchemy_resilience.observe.metrics import POOL_NAME, MeterSet

from .leaks import LeakDetector
from .monitor import PoolMonitor

__all__ = ["CheckoutObserver", "check_max_waiting"]


def check_max_waiting(value: object) -> int | None:
    """``value`` as a ``max_waiting`` option, or a TypeError/ValueError naming it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_waiting must be an int or None, got {value!r}")
    if value < 0:
        raise ValueError(f"max_waiting must be >= 0, got {value!r}")
    return value


class CheckoutObserver:
    """Counts, times and guards the checkouts of one engine's pool.

    Args:
        engine: the (sync) engine.
        monitor: the pool's counters.
        meters: the metric instruments, or None.
        log_own_failure: logs an observation's own failure once per kind.
        max_waiting: see :meth:`shed`; None for no limit.

    Attributes:
        leaks: the leak detector, or None; set while attached.
        max_waiting: settable at runtime.

    Example::

        observer = CheckoutObserver(engine, monitor, meters=None, log_own_failure=print)
        hooks.attach(HookParts(checked_out=observer.checked_out,
                               checkout_failed=observer.checkout_failed))
    """

    def __init__(
        self,
        engine: Engine,
        monitor: PoolMonitor,
        *,
        meters: MeterSet | None,
        log_own_failure: Callable[[str], None],
        max_waiting: int | None = None,
    ) -> None:
        self.engine = engine
        self.monitor = monitor
        self.meters = meters
        self.leaks: LeakDetector | None = None
        self.max_waiting = max_waiting
        self._log_own_failure = log_own_failure
        self._pool_attrs = {POOL_NAME: monitor.name}
        self.checked_out = self._build_checked_out()
        self.shed = self._build_shed()

    def _build_checked_out(self) -> Callable[[PoolProxiedConnection, float], None]:
        monitor = self.monitor
        answered, returned = monitor.answered, monitor.returned
        waits, queue_waits, uses = monitor.waits, monitor.queue_waits, monitor.uses
        meters = self.meters
        wait_hist = meters.wait_time if meters is not None else None
        use_hist = meters.use_time if meters is not None else None
        pool_attrs = self._pool_attrs
        perf, wall = time.perf_counter, time.time
        observer = self

        def checked_out(fairy: PoolProxiedConnection, start: float) -> None:
            now = perf()
            next(answered)
            wait = now - start
            waits.append(wait)
            record = fairy._connection_record
            if wait < 0.001:
                queue_waits.append(wait)  # too short to tell apart, or to matter
            else:
                # A connection opened during this wait is younger than the wait:
                # only the time before it began to be opened was queueing.
                age = wall() - record.starttime if record is not None else wait
                queue_waits.append(wait - age if 0 <= age < wait else wait)
            if (
                wait_hist is not None
                and getattr(wait_hist, "_real_instrument", wait_hist) is not None
            ):
                wait_hist.record(wait, pool_attrs)

            def checked_in(dbapi_connection: Any) -> None:
                use = perf() - now
                next(returned)
                leaks = observer.leaks
                if leaks is not None:
                    leaks.returned(key)
                uses.append(use)
                if (
                    use_hist is not None
                    and getattr(use_hist, "_real_instrument", use_hist) is not None
                ):
                    use_hist.record(use, pool_attrs)

            key = id(record)
            if record is not None:
                record.finalize_callback.append(checked_in)
                leaks = observer.leaks
                if leaks is not None:
                    leaks.checked_out(record)

        return checked_out

    def checkout_failed(self, exc: BaseException) -> None:
        """Count a checkout that raised; a pool timeout also counts as a timeout."""
        monitor = self.monitor
        next(monitor.answered)
        next(monitor.failures)
        if isinstance(exc, sa_exc.TimeoutError):
            monitor.timed_out()
            if self.meters is not None:
                self.meters.timeouts.add(1, self._pool_attrs)

    def _build_shed(self) -> Callable[[], None]:
        requested = self.monitor.requested
        observer = self

        def shed() -> None:
            """Count the request, refusing it first if ``max_waiting`` requests already wait.

            Raises:
                PoolExhausted: the request is refused at once instead of queueing.
            """
            limit = observer.max_waiting
            if limit is not None:
                observer._shed_load(limit)
            next(requested)

        return shed

    def _shed_load(self, limit: int) -> None:
        checked_in = getattr(self.engine.pool, "checkedin", None)
        if checked_in is not None and checked_in() > 0:
            return  # an idle connection is there: nobody will queue
        monitor = self.monitor
        waiting = monitor.waiting
        if waiting < limit:
            return
        gauges = monitor.gauges()
        pool_max = gauges["pool_max"]
        can_grow = pool_max is None or (
            gauges["connections_in_use"] + gauges["connections_idle"] < pool_max
        )
        if gauges["connections_idle"] > 0 or can_grow:
            return
        monitor.shed_one()
        status = pool_status(self.engine)
        raise PoolExhausted(
            f"{waiting} requests already waiting for a connection (max_waiting={limit}); "
            f"refused at once instead of queueing ({pool_numbers(status)})",
            pool_status={**status, "waiting": waiting, "max_waiting": limit},
        )

    # -- pool events -----------------------------------------------------------

    def connected(self, dbapi_connection: Any, record: Any) -> None:
        """The pool's ``connect`` event: count the connection and its create time."""
        try:
            started = getattr(record, "starttime", 0) or 0
            seconds = time.time() - started if started else None
            self.monitor.connection_created(seconds)
            if seconds is not None and self.meters is not None:
                self.meters.create_time.record(seconds, self._pool_attrs)
        except Exception:
            self._log_own_failure("pool connect")

    def closed(self, dbapi_connection: Any, record: Any) -> None:
        """The pool's ``close`` event."""
        self.monitor.connection_closed()
        self._forget_hold(record)

    def invalidated(self, dbapi_connection: Any, record: Any, exception: Any) -> None:
        """The pool's ``invalidate`` event."""
        self.monitor.connection_invalidated()
        self._forget_hold(record)

    def _forget_hold(self, record: Any) -> None:
        # An invalidated or closed connection drops its finalize callbacks:
        # end its hold here so it is not reported as leaked later.
        leaks = self.leaks
        if leaks is not None and record is not None:
            leaks.returned(id(record))
