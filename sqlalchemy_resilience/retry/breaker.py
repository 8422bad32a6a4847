"""A circuit breaker for database work: closed, open, half-open.

The breaker counts only **infrastructure** failures -- the database is
unreachable, connections die, the server shuts down or runs out of
connections, operations time out -- and never a constraint violation, a data
error or a transaction conflict, which say nothing about the database's
health. By default it trips on a failure rate: half of the last 20 calls, once 10
have been seen (Resilience4j semantics; consecutive failures and slow calls
are rules to opt into), so the handful of in-flight attempts one failover
kills at once does not open it on a busy engine. While open it refuses calls
with :class:`CircuitOpenError` before any pool checkout or network attempt;
after ``recovery_timeout`` (0.5 s) it lets one probe through (half-open),
closes when it succeeds, and after a failed probe waits twice as long, up to
``max_recovery_timeout`` (1 s): a failover's end is seen within about a
second (measured on Patroni: the first commit 0.0-1.9 s after HAProxy routed
to the new leader), and an outage costs one connection attempt a second, not
a storm.

Callers can wait at an open breaker instead of failing (:meth:`CircuitBreaker.admit`,
``guard(wait=...)``; ``run_transaction`` does by default): the breaker keeps
the database from being hammered, and the caller keeps its chance to succeed
once a failover is over. Waiting stops when the caller's time runs out and
once the outage has lasted ``failover_window`` (45 s: Patroni with its defaults
elects a new leader up to ``ttl`` + ``loop_wait`` = 40 s after a crash): past
that, fail fast.

The breaker is safe to share between asyncio tasks and threads: its state
lives under a lock that is never held across an ``await``.

Example::

    breaker = CircuitBreaker(failure_threshold=5, recovery_timeout=10)

    async with breaker.guard():               # raises CircuitOpenError when open
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from types import TracebackType

from sqlalchemy_resilience._util.seconds import Seconds, to_seconds
from sqlalchemy_resilience._util.testmode import TEST_MODE
from sqlalchemy_resilience.errors.hierarchy import CircuitOpenError

from .breaker_state import (
    BreakerState,
    BreakerTransition,
    is_infrastructure_failure,
    observe_breaker,
    optional_fraction,
    optional_positive_int,
    positive_int,
    record_transition,
)
from .breaker_state import (
    Outcome as _Outcome,
)
from .breaker_state import (
    Permit as _Permit,
)

__all__ = [
    "BreakerGuard",
    "BreakerState",
    "BreakerTransition",
    "CircuitBreaker",
    "is_infrastructure_failure",
]

_log = logging.getLogger("sqlalchemy_resilience.breaker")

# Callers waiting for a half-open probe's verdict look again after this long,
# doubling up to the cap (the verdict has no event to wait on across threads
# and event loops).
_FIRST_POLL = 0.02
_MAX_POLL = 0.25


class CircuitBreaker:
    """Closed / open / half-open circuit breaker for infrastructure failures.

    Args:
        name: for logs, metrics and :class:`CircuitOpenError`.
        failure_threshold: consecutive failures that open the breaker (None,
            the default: rule off).
        failure_rate_threshold: fraction of failed calls in the window (0 < x <= 1)
            that opens the breaker (default 0.5; None: rule off).
        slow_call_duration: a call taking at least this long counts as slow.
        slow_call_rate_threshold: fraction of slow calls in the window that
            opens the breaker (needs ``slow_call_duration``).
        window_size: the count-based window's number of calls.
        window_duration: use a time-based window of this many seconds instead.
        minimum_calls: rate rules apply only once the window holds this many calls.
        recovery_timeout: seconds open before the first probe is allowed.
        max_recovery_timeout: after each failed probe the wait doubles, up to
            this (default: the larger of ``recovery_timeout`` and 1 s).
        failover_window: callers wait at an open breaker (:meth:`admit`) only
            while the outage has lasted less than this; past it they fail fast.
        half_open_max_calls: probes admitted at once in half-open; all must
            succeed to close.
        is_failure: which exceptions count (default :func:`is_infrastructure_failure`).
        shadow: compute state, log and report transitions, but never refuse a call.
        clock: a monotonic clock (tests inject a fake one).
        listeners: callables receiving each :class:`BreakerTransition`.

    Raises:
        ValueError, TypeError: for an option out of range, naming it.

    Example::

        breaker = CircuitBreaker(failure_threshold=3, recovery_timeout=timedelta(seconds=5))
        with breaker.guard():       # sync code
            engine.connect().close()
        async with breaker.guard(wait=10):   # wait up to 10 s while it is open
            ...
    """

    def __init__(
        self,
        *,
        name: str = "default",
        failure_threshold: int | None = None,
        failure_rate_threshold: float | None = 0.5,
        slow_call_duration: Seconds | None = None,
        slow_call_rate_threshold: float | None = None,
        window_size: int = 20,
        window_duration: Seconds | None = None,
        minimum_calls: int = 10,
        recovery_timeout: Seconds = 0.5,
        max_recovery_timeout: Seconds | None = None,
        failover_window: Seconds = 45.0,
        half_open_max_calls: int = 1,
        is_failure: Callable[[BaseException], bool] = is_infrastructure_failure,
        shadow: bool = False,
        clock: Callable[[], float] = time.monotonic,
        listeners: Iterable[Callable[[BreakerTransition], None]] = (),
    ) -> None:
        given_name: object = name  # untyped callers: check at run time
        if not isinstance(given_name, str) or not given_name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.name = name
        self.failure_threshold = optional_positive_int("failure_threshold", failure_threshold)
        self.failure_rate_threshold = optional_fraction(
            "failure_rate_threshold", failure_rate_threshold
        )
        self.slow_call_rate_threshold = optional_fraction(
            "slow_call_rate_threshold", slow_call_rate_threshold
        )
        self.slow_call_duration = (
            None
            if slow_call_duration is None
            else to_seconds("slow_call_duration", slow_call_duration, allow_zero=False)
        )
        if (self.slow_call_rate_threshold is None) != (self.slow_call_duration is None):
            raise ValueError(
                "slow_call_rate_threshold and slow_call_duration go together: give both or neither"
            )
        if (
            self.failure_threshold is None
            and self.failure_rate_threshold is None
            and self.slow_call_rate_threshold is None
        ):
            raise ValueError(
                "at least one trip rule is needed: failure_threshold, "
                "failure_rate_threshold or slow_call_rate_threshold"
            )
        self.window_size = positive_int("window_size", window_size)
        self.window_duration = (
            None
            if window_duration is None
            else to_seconds("window_duration", window_duration, allow_zero=False)
        )
        self.minimum_calls = positive_int("minimum_calls", minimum_calls)
        self.recovery_timeout = to_seconds("recovery_timeout", recovery_timeout, allow_zero=False)
        self.max_recovery_timeout = (
            max(self.recovery_timeout, 1.0)
            if max_recovery_timeout is None
            else to_seconds("max_recovery_timeout", max_recovery_timeout, allow_zero=False)
        )
        if self.max_recovery_timeout < self.recovery_timeout:
            raise ValueError(
                f"max_recovery_timeout ({max_recovery_timeout!r}) must be >= "
                f"recovery_timeout ({recovery_timeout!r})"
            )
        self.failover_window = to_seconds("failover_window", failover_window)
        self.half_open_max_calls = positive_int("half_open_max_calls", half_open_max_calls)
        if not callable(is_failure):
            raise TypeError(f"is_failure must be callable, got {is_failure!r}")
        if not callable(clock):
            raise TypeError(f"clock must be callable, got {clock!r}")
        self.is_failure = is_failure
        self.shadow = bool(shadow)
        self._clock = clock
        self._listeners: list[Callable[[BreakerTransition], None]] = list(listeners)
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        # The wait before the next probe: recovery_timeout, doubled per failed probe.
        self._recovery = self.recovery_timeout
        # When the breaker last opened from CLOSED: how long the outage has lasted.
        self._outage_since: float | None = None
        self._consecutive = 0
        self._window: deque[_Outcome] = deque(
            maxlen=None if self.window_duration is not None else self.window_size
        )
        self._probes_in_flight = 0
        self._probe_successes = 0
        # Counts half-open cycles: a probe admitted in one cycle reports to it
        # only, never to a later one (after the breaker re-opened meanwhile).
        self._cycle = 0
        self.transitions = 0
        self.rejected = 0
        observe_breaker(self)

    # -- state -----------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The current state (an OPEN breaker past its recovery timeout reads HALF_OPEN)."""
        with self._lock:
            self._maybe_half_open_locked(self._clock())
            return self._state

    def retry_after(self) -> float:
        """Seconds until a probe is allowed (0 when not open)."""
        with self._lock:
            if self._state is not BreakerState.OPEN:
                return 0.0
            return max(0.0, self._opened_at + self._recovery - self._clock())

    def outage_seconds(self) -> float:
        """Seconds since the breaker opened from closed (0 while closed)."""
        with self._lock:
            if self._outage_since is None:
                return 0.0
            return max(0.0, self._clock() - self._outage_since)

    def add_listener(self, listener: Callable[[BreakerTransition], None]) -> None:
        """Call ``listener`` with every :class:`BreakerTransition` from now on."""
        if not callable(listener):
            raise TypeError(f"listener must be callable, got {listener!r}")
        self._listeners.append(listener)

    def reset(self) -> None:
        """Close the breaker and forget the window (an operator's override)."""
        with self._lock:
            transition = self._move_locked(BreakerState.CLOSED, "reset", self._clock())
            self._window.clear()
            self._consecutive = 0
            self._new_cycle_locked()
        self._notify(transition)

    def force_open(self) -> None:
        """Open the breaker now (maintenance); probes start after ``recovery_timeout``."""
        with self._lock:
            now = self._clock()
            transition = self._open_locked(now, "forced open")
        self._notify(transition)

    # -- the call protocol ------------------------------------------------

    def acquire(self) -> _Permit:
        """Admit one call or raise :class:`CircuitOpenError`.

        Every admitted call must end in exactly one of :meth:`record_success`,
        :meth:`record_failure` or :meth:`release`; the context-manager forms do this.
        """
        if TEST_MODE.enabled:
            return _Permit(0.0, probe=False, inert=True)
        transition = None
        with self._lock:
            now = self._clock()
            transition = self._maybe_half_open_locked(now)
            if self._state is BreakerState.OPEN:
                if not self.shadow:
                    self.rejected += 1
                    retry_after = max(0.0, self._opened_at + self._recovery - now)
                    error: CircuitOpenError | None = CircuitOpenError(
                        retry_after, breaker=self.name
                    )
                else:
                    error = None
                permit = _Permit(now, probe=False)
            elif self._state is BreakerState.HALF_OPEN:
                if self._probes_in_flight >= self.half_open_max_calls and not self.shadow:
                    self.rejected += 1
                    error = CircuitOpenError(0.0, breaker=self.name)
                    permit = _Permit(now, probe=False)
                else:
                    self._probes_in_flight += 1
                    error = None
                    permit = _Permit(now, probe=True, cycle=self._cycle)
            else:
                error = None
                permit = _Permit(now, probe=False)
        self._notify(transition)
        if error is not None:
            raise error
        return permit

    async def admit(self, *, timeout: Seconds | None = None) -> _Permit:
        """Admit one call, waiting while the breaker is open; raise :class:`CircuitOpenError` when waiting cannot help.

        Waits for the next probe's verdict instead of failing at once, while
        ``timeout`` (seconds from now; None: no limit of the caller's own)
        leaves time for it and the outage has lasted less than
        ``failover_window``. The wait is sleeping: no connection attempt, no
        retry budget. :meth:`admit_sync` is the blocking twin.

        Example::

            permit = await breaker.admit(timeout=5)
            try:
                await do_work()
            except Exception as exc:
                breaker.record_failure(permit, exc)
                raise
            breaker.record_success(permit)
        """
        until = None if timeout is None else self._clock() + to_seconds("timeout", timeout)
        poll = _FIRST_POLL
        while True:
            try:
                return self.acquire()
            except CircuitOpenError as exc:
                delay = self._wait_or_raise(exc, until, poll)
            await asyncio.sleep(delay)
            poll = min(poll * 2, _MAX_POLL)

    def admit_sync(self, *, timeout: Seconds | None = None) -> _Permit:
        """The blocking twin of :meth:`admit`.

        Example::

            permit = breaker.admit_sync(timeout=5)
        """
        until = None if timeout is None else self._clock() + to_seconds("timeout", timeout)
        poll = _FIRST_POLL
        while True:
            try:
                return self.acquire()
            except CircuitOpenError as exc:
                delay = self._wait_or_raise(exc, until, poll)
            time.sleep(delay)
            poll = min(poll * 2, _MAX_POLL)

    def _wait_or_raise(self, exc: CircuitOpenError, until: float | None, poll: float) -> float:
        """How long to wait before asking again, or ``exc`` raised when waiting cannot help."""
        now = self._clock()
        outage = self.outage_seconds()
        if outage >= self.failover_window:
            exc.add_note(
                f"the outage has lasted {outage:.1f} s, longer than failover_window "
                f"({self.failover_window:g} s): failing fast"
            )
            raise exc
        # Open: until the probe is allowed; half-open with its probe out: the verdict.
        delay = exc.retry_after if exc.retry_after > 0 else poll
        if until is not None and now + delay >= until:
            raise exc
        return delay

    def record_success(self, permit: _Permit) -> None:
        """The admitted call succeeded."""
        self._finish(permit, failed=False)

    def record_failure(self, permit: _Permit, exc: BaseException) -> None:
        """The admitted call failed with ``exc``; counted only when :attr:`is_failure` says so."""
        try:
            counts = bool(self.is_failure(exc))
        except Exception:  # a broken classifier must not break the caller
            _log.exception("circuit breaker %r: is_failure raised; not counting", self.name)
            counts = False
        if counts:
            self._finish(permit, failed=True)
        else:
            self._finish(permit, failed=False, neutral=True)

    def release(self, permit: _Permit) -> None:
        """The admitted call ended without an outcome (cancelled): free its probe slot."""
        if permit.done:
            return
        with self._lock:
            permit.done = True
            if permit.probe and permit.cycle == self._cycle and self._probes_in_flight > 0:
                self._probes_in_flight -= 1

    def _finish(self, permit: _Permit, *, failed: bool, neutral: bool = False) -> None:
        if permit.done:
            return
        transition = None
        with self._lock:
            permit.done = True
            now = self._clock()
            slow = (
                self.slow_call_duration is not None
                and now - permit.started >= self.slow_call_duration
            )
            if permit.probe and permit.cycle != self._cycle:
                # A probe of an earlier half-open cycle: the breaker has opened
                # again since it was admitted, so its outcome is stale news.
                pass
            elif permit.probe:
                self._probes_in_flight = max(0, self._probes_in_flight - 1)
                if self._state is BreakerState.HALF_OPEN:
                    if failed or slow:
                        transition = self._open_locked(
                            now, "probe failed" if failed else "probe slow"
                        )
                    else:
                        # A neutral outcome (a constraint violation, say) still
                        # means the database answered: the probe succeeded.
                        self._probe_successes += 1
                        if self._probe_successes >= self.half_open_max_calls:
                            transition = self._move_locked(
                                BreakerState.CLOSED, "probes succeeded", now
                            )
                            self._window.clear()
                            self._consecutive = 0
            elif self._state is BreakerState.CLOSED:
                if neutral:
                    # Not a health signal either way: it does not break a
                    # run of failures, and the window does not see it.
                    pass
                else:
                    self._window.append(_Outcome(now, failed, slow))
                    self._consecutive = self._consecutive + 1 if failed else 0
                    transition = self._check_trip_locked(now)
        self._notify(transition)

    # -- rules -----------------------------------------------------------

    def _check_trip_locked(self, now: float) -> BreakerTransition | None:
        if self.failure_threshold is not None and self._consecutive >= self.failure_threshold:
            return self._open_locked(now, f"{self._consecutive} consecutive failures")
        if self.window_duration is not None:
            horizon = now - self.window_duration
            while self._window and self._window[0].at < horizon:
                self._window.popleft()
        calls = len(self._window)
        if calls < self.minimum_calls:
            return None
        if self.failure_rate_threshold is not None:
            failures = sum(1 for o in self._window if o.failed)
            if failures / calls >= self.failure_rate_threshold:
                return self._open_locked(now, f"failure rate {failures}/{calls}")
        if self.slow_call_rate_threshold is not None:
            slow = sum(1 for o in self._window if o.slow)
            if slow / calls >= self.slow_call_rate_threshold:
                return self._open_locked(now, f"slow-call rate {slow}/{calls}")
        return None

    def _new_cycle_locked(self) -> None:
        # Probes still out belong to the cycle that just ended: they report to no other.
        self._cycle += 1
        self._probes_in_flight = 0
        self._probe_successes = 0

    def _open_locked(self, now: float, reason: str) -> BreakerTransition | None:
        if self._state is BreakerState.HALF_OPEN:
            # A failed probe: the outage goes on; look again later, not sooner.
            self._recovery = min(self.max_recovery_timeout, self._recovery * 2)
        elif self._state is BreakerState.CLOSED:
            self._recovery = self.recovery_timeout
            self._outage_since = now
        self._opened_at = now
        self._new_cycle_locked()
        return self._move_locked(BreakerState.OPEN, reason, now)

    def _maybe_half_open_locked(self, now: float) -> BreakerTransition | None:
        if self._state is BreakerState.OPEN and now - self._opened_at >= self._recovery:
            self._new_cycle_locked()
            return self._move_locked(BreakerState.HALF_OPEN, "recovery timeout elapsed", now)
        return None

    def _move_locked(self, new: BreakerState, reason: str, now: float) -> BreakerTransition | None:
        if new is self._state:
            return None
        old, self._state = self._state, new
        if new is BreakerState.CLOSED:
            self._outage_since = None
        self.transitions += 1
        return BreakerTransition(self.name, old, new, reason, now)

    def _notify(self, transition: BreakerTransition | None) -> None:
        if transition is None:
            return
        level = logging.WARNING if transition.current is BreakerState.OPEN else logging.INFO
        _log.log(
            level,
            "circuit breaker %r: %s -> %s (%s)%s",
            transition.breaker,
            transition.previous.name,
            transition.current.name,
            transition.reason,
            " [shadow]" if self.shadow else "",
            extra={
                "sqlalchemy_resilience.breaker": transition.breaker,
                "sqlalchemy_resilience.breaker_state": transition.current.name,
            },
        )
        record_transition(transition)
        for listener in list(self._listeners):
            try:
                listener(transition)
            except Exception:
                _log.exception("circuit breaker %r: a transition listener failed", self.name)

    # -- context manager ----------------------------------------------------

    def guard(self, *, wait: Seconds | None = None, waits: bool = False) -> BreakerGuard:
        """A context manager (``with`` or ``async with``) admitting one call.

        Entering raises :class:`CircuitOpenError` when open — or, with
        ``waits=True``, first waits as :meth:`admit` does, up to ``wait``
        seconds (None: as long as ``failover_window`` allows); leaving records
        success, a failure (counted when :attr:`is_failure` says so) or, for
        cancellation, releases the permit.

        Example::

            async with breaker.guard():
                await session.execute(select(User))
            async with breaker.guard(waits=True, wait=10):
                await session.execute(select(User))
        """
        return BreakerGuard(self, waits=waits, wait=wait)

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self.state.name}>"


class BreakerGuard:
    """One call through a :class:`CircuitBreaker`; see :meth:`CircuitBreaker.guard`."""

    __slots__ = ("_breaker", "_permit", "_wait", "_waits")

    def __init__(
        self, breaker: CircuitBreaker, *, waits: bool = False, wait: Seconds | None = None
    ) -> None:
        self._breaker = breaker
        self._permit: _Permit | None = None
        self._waits = waits
        self._wait = wait

    def _check_unused(self) -> None:
        if self._permit is not None:
            raise RuntimeError("a BreakerGuard admits one call; use breaker.guard() per call")

    def __enter__(self) -> BreakerGuard:
        self._check_unused()
        breaker = self._breaker
        self._permit = breaker.admit_sync(timeout=self._wait) if self._waits else breaker.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        permit, self._permit = self._permit, None
        assert permit is not None
        if exc is None:
            self._breaker.record_success(permit)
        elif isinstance(exc, Exception):
            self._breaker.record_failure(permit, exc)
        else:
            # CancelledError, KeyboardInterrupt...: no verdict on the database.
            self._breaker.release(permit)

    async def __aenter__(self) -> BreakerGuard:
        self._check_unused()
        breaker = self._breaker
        self._permit = await breaker.admit(timeout=self._wait) if self._waits else breaker.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
