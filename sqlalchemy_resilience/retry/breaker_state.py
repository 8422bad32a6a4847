"""The breaker's states and transition records, what counts against it, and its metrics.

A breaker counts only infrastructure failures (:func:`is_infrastructure_failure`):
the database unreachable, connections dying, the server shutting down or out
of connections, timeouts; never a constraint violation, a data error or a
transaction conflict, which say nothing about the database's health.
"""

from __future__ import annotations

import enum
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import exc as sa_exc

from sqlalchemy_resilience.errors.classify import CONNECT_FAILURES
from sqlalchemy_resilience.errors.hierarchy import (
    CommitOutcomeUnknown,
    ConnectionLost,
    DatabaseUnavailable,
    InsufficientResources,
    PoolExhausted,
    QueryTimeout,
    ReadOnlyServer,
    ResilienceError,
    StorageFailure,
)
from sqlalchemy_resilience.errors.translate import translate_error

__all__ = ["BreakerState", "BreakerTransition", "is_infrastructure_failure"]


_INFRASTRUCTURE = (
    DatabaseUnavailable,
    ConnectionLost,
    CommitOutcomeUnknown,
    QueryTimeout,
    InsufficientResources,
    PoolExhausted,
    ReadOnlyServer,
    StorageFailure,
)


def is_infrastructure_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the database (or the way to it) is unhealthy.

    True for connect failures, lost connections, shutdowns, too many
    connections, timeouts and resource exhaustion (translated or raw socket
    errors); False for constraint, data, syntax and contention errors and for
    cancellation.

    Example::

        >>> is_infrastructure_failure(ConnectionRefusedError())
        True
    """
    if isinstance(exc, _INFRASTRUCTURE):
        return True
    if isinstance(exc, ResilienceError):
        return False
    if isinstance(exc, sa_exc.TimeoutError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        translated = translate_error(exc)
        return isinstance(translated, _INFRASTRUCTURE)
    return isinstance(exc, CONNECT_FAILURES)


class BreakerState(enum.Enum):
    """The breaker's state; the value is what the state gauge reports.

    Example::

        if breaker.state is BreakerState.OPEN:
            print("retry in", breaker.retry_after())
    """

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    """A state change, as handed to listeners.

    Attributes:
        breaker: the breaker's name.
        previous, current: the states.
        reason: why (``"5 consecutive failures"``, ``"probe succeeded"``...).
        at: the breaker clock's reading at the change.

    Example::

        breaker.add_listener(lambda t: log.warning("%s: %s -> %s", t.breaker, t.previous, t.current))
    """

    breaker: str
    previous: BreakerState
    current: BreakerState
    reason: str
    at: float


class _Observed(Protocol):
    name: str

    @property
    def state(self) -> BreakerState: ...


def positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return value


def optional_positive_int(name: str, value: object) -> int | None:
    return None if value is None else positive_int(name, value)


def optional_fraction(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number between 0 and 1, got {value!r}")
    if not 0 < float(value) <= 1:
        raise ValueError(f"{name} must be > 0 and <= 1, got {value!r}")
    return float(value)


# -- OpenTelemetry (API only; a no-op without an SDK) --------------------------
_all_breakers: weakref.WeakSet[_Observed] = weakref.WeakSet()


def observe_breaker(breaker: _Observed) -> None:
    """Report ``breaker``'s state on the state gauge while it lives."""
    _all_breakers.add(breaker)
    _meters()


_transition_counter: Any = None


def record_transition(transition: BreakerTransition) -> None:
    counter = _meters()
    if counter is not None:
        counter.add(
            1,
            {
                "sqlalchemy_resilience.circuit_breaker.name": transition.breaker,
                "sqlalchemy_resilience.circuit_breaker.state": transition.current.name.lower(),
            },
        )


def _meters() -> Any:
    global _transition_counter
    if _transition_counter is None:
        try:
            from opentelemetry import metrics
            from opentelemetry.metrics import CallbackOptions, Observation
        except ImportError:  # pragma: no cover - opentelemetry-api is a dependency
            return None
        meter = metrics.get_meter("sqlalchemy_resilience")

        def observe(_options: CallbackOptions) -> Iterable[Observation]:
            return [
                Observation(b.state.value, {"sqlalchemy_resilience.circuit_breaker.name": b.name})
                for b in list(_all_breakers)
            ]

        meter.create_observable_gauge(
            "sqlalchemy_resilience.circuit_breaker.state",
            callbacks=[observe],
            unit="1",
            description="Circuit breaker state: 0 closed, 1 half-open, 2 open",
        )
        _transition_counter = meter.create_counter(
            "sqlalchemy_resilience.circuit_breaker.transitions",
            unit="{transition}",
            description="Circuit breaker state transitions",
        )
    return _transition_counter


@dataclass(slots=True)
class Outcome:
    """One finished call in the breaker's window."""

    at: float
    failed: bool
    slow: bool


class Permit:
    """One admitted call; a half-open probe holds a probe slot until it reports."""

    __slots__ = ("cycle", "done", "probe", "started")

    def __init__(self, started: float, probe: bool, *, inert: bool = False, cycle: int = 0) -> None:
        self.started = started
        self.probe = probe
        # The half-open cycle that admitted this probe: its outcome counts only there.
        self.cycle = cycle
        # An inert permit (test mode) records nothing when it finishes.
        self.done = inert
