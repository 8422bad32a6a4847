"""When and how to retry a unit of work: :class:`RetryPolicy` and :class:`RetryBudget`.

The policy is configuration only; :func:`~sqlalchemy_resilience.run_transaction`
applies it. Retries are composed from tenacity (``stop_any`` of an attempt
count and a deadline, full-jitter exponential backoff, a classifier predicate);
:meth:`RetryPolicy.as_tenacity` hands the same composition to power users.

The default classifier follows the retry-safety table: serialization
failures, deadlocks, connection failures before COMMIT and a database that is
(re)starting are retried; constraint, data and syntax errors never are; a
connection lost while COMMIT was in flight (:class:`CommitOutcomeUnknown`) is
retried only for work declared idempotent; lock and statement timeouts only
when the policy opts in.

Example::

    policy = RetryPolicy(attempts=5, initial_backoff=0.05, max_backoff=1.0, deadline=10)
    await run_transaction(Session, transfer, retry=policy)
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tenacity

from sqlalchemy_resilience._util.seconds import Seconds, to_seconds
from sqlalchemy_resilience._util.testmode import TEST_MODE
from sqlalchemy_resilience.errors.hierarchy import (
    CircuitOpenError,
    CommitOutcomeUnknown,
    LockNotAvailable,
    QueryTimeout,
    ResilienceError,
    RetryExhausted,
)
from sqlalchemy_resilience.errors.translate import translate_error

__all__ = ["RetryBudget", "RetryPolicy", "default_retry_on"]

_DENIAL_LOG_INTERVAL = 5.0

_log = logging.getLogger("sqlalchemy_resilience.retry")


def default_retry_on(exc: BaseException) -> bool:
    """The default classifier: the error's own ``retryable`` verdict after translation.

    Cancellation, :class:`CircuitOpenError` and :class:`CommitOutcomeUnknown`
    are never retried here (the policy's options and ``idempotent=True``
    widen this).

    Example::

        >>> default_retry_on(ConnectionRefusedError())
        True
    """
    if not isinstance(exc, Exception):
        return False
    err = translate_error(exc)
    if isinstance(err, (CircuitOpenError, CommitOutcomeUnknown, RetryExhausted)):
        return False
    return isinstance(err, ResilienceError) and err.retryable


class RetryBudget:
    """A share of traffic that retries may add, with a floor, shared by every caller of one engine.

    Finagle's and Linkerd's retry budget (Envoy's is the same idea): over the
    last ``window`` seconds, retries after infrastructure failures (a lost
    connection, a refused connect, a timeout) may number ``ratio`` of the
    units of work started, plus ``min_per_second`` per second whatever the
    traffic — the floor lets a quiet service retry at all. When the database
    is down, retries stop at that share instead of multiplying the load;
    callers waiting at an open circuit breaker make no attempt and spend
    nothing.

    Contention (SQLSTATE 40001 serialization failures, 40P01 deadlocks) is
    not charged: the server is healthy and re-running is how SERIALIZABLE is
    meant to be used; those retries are bounded by the policy's attempts,
    backoff and deadline.

    Args:
        ratio: retries allowed per unit of work started in the window (0 .. 1; default 0.2).
        min_per_second: retries allowed per second regardless of traffic (default 10).
        window: the seconds the counts cover (default 10).
        clock: monotonic clock (tests inject one).

    Example::

        budget = RetryBudget(ratio=0.1, min_per_second=5)
        policy = RetryPolicy(budget=budget)
    """

    _BUCKETS = 10

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_second: float = 10.0,
        window: Seconds = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value in (("ratio", ratio), ("min_per_second", min_per_second)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                # A NaN share or floor would silently turn the budget off.
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not 0 <= ratio <= 1:
            raise ValueError(f"ratio must be between 0 and 1, got {ratio!r}")
        if min_per_second < 0:
            raise ValueError(f"min_per_second must be >= 0, got {min_per_second!r}")
        self.ratio = float(ratio)
        self.min_per_second = float(min_per_second)
        self.window = to_seconds("window", window, allow_zero=False)
        self._clock = clock
        self._width = self.window / self._BUCKETS
        # Per bucket of window/10 seconds: units started, retries taken.
        self._started = [0] * self._BUCKETS
        self._retries = [0] * self._BUCKETS
        self._tick = int(clock() // self._width)
        self._lock = threading.Lock()
        self.denied = 0
        self._denied_reported = 0
        self._last_report = float("-inf")

    def _advance_locked(self) -> int:
        tick = int(self._clock() // self._width)
        passed = tick - self._tick
        if passed > 0:
            for step in range(1, min(passed, self._BUCKETS) + 1):
                slot = (self._tick + step) % self._BUCKETS
                self._started[slot] = 0
                self._retries[slot] = 0
            self._tick = tick
        return tick % self._BUCKETS

    def _allowed_locked(self) -> float:
        return self.min_per_second * self.window + self.ratio * sum(self._started)

    @property
    def available(self) -> float:
        """Retries the budget allows now."""
        with self._lock:
            self._advance_locked()
            return max(0.0, self._allowed_locked() - sum(self._retries))

    def deposit(self) -> None:
        """A unit of work starts: it earns ``ratio`` of a retry for the window."""
        with self._lock:
            self._started[self._advance_locked()] += 1

    def try_acquire(self) -> bool:
        """Take one retry; False (and count a denial) when the budget is spent.

        A denial is logged at WARNING at most every 5 s, with the count since
        the last record: a database that is down must not flood the log.
        """
        with self._lock:
            slot = self._advance_locked()
            if sum(self._retries) + 1 <= self._allowed_locked():
                self._retries[slot] += 1
                return True
            self.denied += 1
            now = self._clock()
            report = now - self._last_report >= _DENIAL_LOG_INTERVAL
            if report:
                self._last_report = now
                newly = self.denied - self._denied_reported
                self._denied_reported = self.denied
        if report:
            _log.warning(
                "retry budget exhausted: %d retr%s refused since the last report",
                newly,
                "y" if newly == 1 else "ies",
                extra={"sqlalchemy_resilience.retries_denied": newly},
            )
        return False

    @classmethod
    def for_engine(cls, engine: Any) -> RetryBudget:
        """The budget shared by every caller of ``engine`` (created on first use).

        ``None`` (no engine known) gives one process-wide budget.
        """
        global _process_budget
        with _budgets_lock:
            if engine is None:
                if _process_budget is None:
                    _process_budget = cls()
                return _process_budget
            key = getattr(engine, "sync_engine", engine)
            budget = _engine_budgets.get(key)
            if budget is None:
                budget = _engine_budgets[key] = cls()
            return budget


_engine_budgets: weakref.WeakKeyDictionary[Any, RetryBudget] = weakref.WeakKeyDictionary()
_budgets_lock = threading.Lock()
_process_budget: RetryBudget | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a unit of work is retried. Frozen; every field is validated.

    Args:
        attempts: every try counts, the first included (>= 1; 1 means no retry).
        initial_backoff: the first wait's upper bound, seconds or ``timedelta``.
        max_backoff: no wait is longer than this.
        jitter: full jitter (each wait uniform in [0, bound]); off gives the bound itself.
        deadline: no attempt starts after this long since the first (None: no deadline).
        retry_on: classifier ``exc -> bool`` replacing :func:`default_retry_on`.
        retry_lock_timeouts: also retry :class:`LockNotAvailable` (55P03).
        retry_query_timeouts: also retry :class:`QueryTimeout` (57014).
        budget: the :class:`RetryBudget` to draw from; the engine's shared one when None.
        wait_at_breaker: while the unit's circuit breaker is open, wait for its
            verdict (:meth:`CircuitBreaker.admit`) until the deadline instead of
            failing with :class:`CircuitOpenError` at once; waiting takes no
            attempt and no budget. False: fail fast.

    The defaults ride out a failover: 30 attempts, backoff from 50 ms doubling
    to at most 2 s, within 45 s, waiting at an open breaker meanwhile. 45 s
    outlasts a Patroni failover with its defaults (``ttl`` 30 s before the
    leader key expires, ``loop_wait`` 10 s before a replica notices, about a
    second to promote) plus a proxy's health checks; a server restart of a
    few seconds is ridden out by the first attempts. Lower ``deadline`` to
    what your callers can wait.

    Example::

        RetryPolicy(attempts=3, initial_backoff=timedelta(milliseconds=20), deadline=5)
    """

    attempts: int = 30
    initial_backoff: Seconds = 0.05
    max_backoff: Seconds = 2.0
    jitter: bool = True
    deadline: Seconds | None = 45.0
    retry_on: Callable[[BaseException], bool] | None = None
    retry_lock_timeouts: bool = False
    retry_query_timeouts: bool = False
    budget: RetryBudget | None = field(default=None, compare=False)
    wait_at_breaker: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise TypeError(f"attempts must be an int, got {self.attempts!r}")
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1 (the first try counts), got {self.attempts!r}")
        initial = to_seconds("initial_backoff", self.initial_backoff)
        maximum = to_seconds("max_backoff", self.max_backoff)
        if maximum < initial:
            raise ValueError(
                f"max_backoff ({self.max_backoff!r}) must be >= initial_backoff ({self.initial_backoff!r})"
            )
        if self.deadline is not None:
            to_seconds("deadline", self.deadline, allow_zero=False)
        for name in ("jitter", "retry_lock_timeouts", "retry_query_timeouts", "wait_at_breaker"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.retry_on is not None and not callable(self.retry_on):
            raise TypeError(f"retry_on must be callable, got {self.retry_on!r}")
        if self.budget is not None and not isinstance(self.budget, RetryBudget):
            raise TypeError(f"budget must be a RetryBudget, got {self.budget!r}")

    @property
    def initial_backoff_seconds(self) -> float:
        """``initial_backoff`` in seconds."""
        return to_seconds("initial_backoff", self.initial_backoff)

    @property
    def max_backoff_seconds(self) -> float:
        """``max_backoff`` in seconds."""
        return to_seconds("max_backoff", self.max_backoff)

    @property
    def deadline_seconds(self) -> float | None:
        """``deadline`` in seconds, or None."""
        return None if self.deadline is None else to_seconds("deadline", self.deadline)

    def is_retryable(self, exc: BaseException, *, idempotent: bool = False) -> bool:
        """Whether ``exc`` may be retried under this policy.

        Args:
            exc: the failure (translated or not).
            idempotent: the unit of work may safely run twice, so an unknown
                COMMIT outcome may be retried too.
        """
        if not isinstance(exc, Exception):
            return False  # cancellation and exits always propagate
        err = translate_error(exc)
        if isinstance(err, (CircuitOpenError, RetryExhausted)):
            return False
        if isinstance(err, CommitOutcomeUnknown):
            return idempotent
        if self.retry_on is not None:
            return bool(self.retry_on(err))
        if isinstance(err, LockNotAvailable) and self.retry_lock_timeouts:
            return True
        if isinstance(err, QueryTimeout) and self.retry_query_timeouts:
            return True
        return default_retry_on(err)

    def wait_strategy(self) -> tenacity.wait.wait_base:
        """The tenacity wait: full-jitter (or plain) exponential backoff; none in test mode."""
        if TEST_MODE.enabled:
            return tenacity.wait_none()
        if self.jitter:
            return tenacity.wait_random_exponential(
                multiplier=self.initial_backoff_seconds, max=self.max_backoff_seconds
            )
        return tenacity.wait_exponential(
            multiplier=self.initial_backoff_seconds,
            min=self.initial_backoff_seconds,
            max=self.max_backoff_seconds,
        )

    def stop_strategy(self, *, elapsed: float = 0.0) -> tenacity.stop.stop_base:
        """The tenacity stop: the attempt count, or the deadline, whichever comes first."""
        attempts = min(self.attempts, TEST_MODE.attempts) if TEST_MODE.enabled else self.attempts
        stops: list[tenacity.stop.stop_base] = [tenacity.stop_after_attempt(attempts)]
        deadline = self.deadline_seconds
        if deadline is not None:
            stops.append(tenacity.stop_before_delay(max(deadline - elapsed, 0.0)))
        return tenacity.stop_any(*stops)

    def as_tenacity(
        self, *, idempotent: bool = False, sleep: Callable[[float], Any] | None = None
    ) -> tenacity.AsyncRetrying:
        """This policy as a ``tenacity.AsyncRetrying`` (the escape hatch), re-raising the last error.

        Example::

            async for attempt in RetryPolicy(attempts=3).as_tenacity():
                with attempt:
                    await do_work()
        """
        kwargs = self._tenacity_kwargs(idempotent)
        if sleep is not None:
            kwargs["sleep"] = sleep
        return tenacity.AsyncRetrying(**kwargs)

    def as_tenacity_sync(
        self, *, idempotent: bool = False, sleep: Callable[[float], Any] | None = None
    ) -> tenacity.Retrying:
        """The blocking twin of :meth:`as_tenacity`: a ``tenacity.Retrying``.

        Example::

            for attempt in RetryPolicy(attempts=3).as_tenacity_sync():
                with attempt:
                    do_work()
        """
        kwargs = self._tenacity_kwargs(idempotent)
        if sleep is not None:
            kwargs["sleep"] = sleep
        return tenacity.Retrying(**kwargs)

    def _tenacity_kwargs(self, idempotent: bool) -> dict[str, Any]:
        return {
            "stop": self.stop_strategy(),
            "wait": self.wait_strategy(),
            "retry": tenacity.retry_if_exception(
                lambda e: self.is_retryable(e, idempotent=idempotent)
            ),
            "before_sleep": log_retry,
            "reraise": True,
        }


_retry_counter: Any = None


def _counter() -> Any:
    global _retry_counter
    if _retry_counter is None:
        from opentelemetry import metrics

        _retry_counter = metrics.get_meter("sqlalchemy_resilience").create_counter(
            "sqlalchemy_resilience.retries",
            unit="{retry}",
            description="Units of work re-run after a retryable database error",
        )
    return _retry_counter


def log_retry(state: tenacity.RetryCallState) -> None:
    """tenacity ``before_sleep`` hook: a WARNING record and the ``sqlalchemy_resilience.retries`` counter."""
    outcome = state.outcome
    exc = outcome.exception() if outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    name = type(exc).__name__ if exc is not None else "unknown"
    code = getattr(exc, "sqlstate", None) or getattr(exc, "driver_code", None)
    _log.warning(
        "retrying after %s%s (attempt %d failed; waiting %.3fs)",
        name,
        f" [{code}]" if code else "",
        state.attempt_number,
        wait,
        extra={
            "sqlalchemy_resilience.attempt": state.attempt_number,
            "sqlalchemy_resilience.wait": wait,
            "sqlalchemy_resilience.error_type": name,
        },
    )
    try:
        attributes = {"error.type": name}
        if code:
            attributes["db.response.status_code"] = str(code)
        _counter().add(1, attributes)
    except Exception:  # metrics must never break the retry
        _log.debug("sqlalchemy_resilience.retries counter failed", exc_info=True)
