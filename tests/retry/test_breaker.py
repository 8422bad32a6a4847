"""The circuit breaker's state machine, on an injected clock (Resilience4j MockClock style)."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest
import sqlalchemy.exc as sa_exc

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import CircuitBreaker
from sqlalchemy_resilience.retry import BreakerState, BreakerTransition, is_infrastructure_failure
from tests.clock import FakeClock


def lost() -> sr.ConnectionLost:
    return sr.ConnectionLost("server closed the connection")


def fail(breaker: CircuitBreaker, exc: BaseException | None = None) -> None:
    breaker.record_failure(breaker.acquire(), exc or lost())


def ok(breaker: CircuitBreaker) -> None:
    breaker.record_success(breaker.acquire())


def test_consecutive_failures_open_and_fail_fast() -> None:
    """N consecutive infrastructure failures open it; then calls fail with retry_after from the clock."""
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=3, recovery_timeout=10, clock=clock)
    fail(b)
    fail(b)
    assert b.state is BreakerState.CLOSED
    fail(b)
    assert b.state is BreakerState.OPEN
    clock.advance(4)
    with pytest.raises(sr.CircuitOpenError) as info:
        b.acquire()
    assert info.value.retry_after == pytest.approx(6.0)
    assert info.value.breaker == "default"
    assert b.rejected == 1


def test_success_resets_and_neutral_errors_do_not_count() -> None:
    """Constraint, data and contention errors are ignored; a success breaks the run of failures."""
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=3, clock=clock)
    fail(b)
    fail(b)
    ok(b)
    fail(b)
    fail(b)
    for neutral in (
        sr.UniqueViolation("dup"),
        sr.SerializationFailure("40001"),
        sr.DeadlockDetected("40P01"),
        sr.LockNotAvailable("55P03"),
        sr.InvalidData("22P02"),
        ValueError("app bug"),
    ):
        fail(b, neutral)
    assert b.state is BreakerState.CLOSED
    fail(b)
    assert b.state is BreakerState.OPEN


def test_raw_socket_and_pool_errors_count() -> None:
    """Untranslated connection errors and pool timeouts count as infrastructure failures."""
    assert is_infrastructure_failure(ConnectionRefusedError())
    assert is_infrastructure_failure(TimeoutError())
    assert is_infrastructure_failure(sa_exc.TimeoutError("QueuePool limit"))
    assert is_infrastructure_failure(sr.TooManyConnections("53300"))
    assert not is_infrastructure_failure(sr.CheckViolation("23514"))
    assert not is_infrastructure_failure(asyncio.CancelledError())


def test_failure_rate_over_count_window() -> None:
    """The failure-rate rule waits for minimum_calls, then trips at the threshold."""
    b = CircuitBreaker(
        failure_threshold=None,
        failure_rate_threshold=0.5,
        window_size=10,
        minimum_calls=6,
        clock=FakeClock(),
    )
    for _ in range(2):
        ok(b)
        fail(b)
    assert b.state is BreakerState.CLOSED  # 4 calls < minimum_calls
    ok(b)
    assert b.state is BreakerState.CLOSED  # 2/5
    fail(b)
    assert b.state is BreakerState.OPEN  # 3/6 = 0.5


def test_time_window_forgets_old_failures() -> None:
    """In a time-based window, failures older than the window no longer count."""
    clock = FakeClock()
    b = CircuitBreaker(
        failure_threshold=None,
        failure_rate_threshold=0.5,
        window_duration=timedelta(seconds=10),
        minimum_calls=4,
        clock=clock,
    )
    for _ in range(3):
        fail(b)
    clock.advance(11)
    for _ in range(3):
        ok(b)
    fail(b)
    # Counting the three old failures would give 4/7 and open; the window holds 1/4.
    assert b.state is BreakerState.CLOSED
    fail(b)
    assert b.state is BreakerState.CLOSED  # 2/5
    fail(b)
    assert b.state is BreakerState.OPEN  # 3/6


def test_slow_call_rate_trips() -> None:
    """Calls slower than slow_call_duration trip the slow-call rule even when they succeed."""
    clock = FakeClock()
    b = CircuitBreaker(
        failure_threshold=None,
        slow_call_duration=1.0,
        slow_call_rate_threshold=1.0,
        minimum_calls=3,
        clock=clock,
    )
    for _ in range(3):
        permit = b.acquire()
        clock.advance(1.5)
        b.record_success(permit)
    assert b.state is BreakerState.OPEN


def test_half_open_admits_exactly_k_probes_under_concurrency() -> None:
    """After the recovery timeout, exactly half_open_max_calls of 50 concurrent callers get through."""
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, recovery_timeout=5, half_open_max_calls=3, clock=clock)
    fail(b)
    clock.advance(5)
    admitted: list[object] = []
    rejected: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(50)

    def caller() -> None:
        start.wait()
        try:
            permit = b.acquire()
        except sr.CircuitOpenError as exc:
            with lock:
                rejected.append(exc)
        else:
            with lock:
                admitted.append(permit)

    threads = [threading.Thread(target=caller) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 3
    assert len(rejected) == 47
    assert b.state is BreakerState.HALF_OPEN
    for permit in admitted[:2]:
        b.record_success(permit)  # type: ignore[arg-type]
    assert b.state is BreakerState.HALF_OPEN
    b.record_success(admitted[2])  # type: ignore[arg-type]
    assert b.state is BreakerState.CLOSED


def test_probe_failure_reopens() -> None:
    """A failing probe sends the breaker back to open with a fresh recovery timer."""
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, recovery_timeout=5, clock=clock)
    fail(b)
    clock.advance(5)
    fail(b)
    assert b.state is BreakerState.OPEN
    assert b.retry_after() == pytest.approx(5.0)


def test_a_probe_counts_only_in_the_half_open_cycle_that_admitted_it() -> None:
    """S35: probes A and B admitted; B fails (re-open); the next cycle admits C. A's late
    success neither closes the breaker nor frees C's slot; C's success does."""
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, recovery_timeout=5, half_open_max_calls=2, clock=clock)
    fail(b)
    clock.advance(5)
    a, late = b.acquire(), b.acquire()
    b.record_failure(late, lost())
    assert b.state is BreakerState.OPEN
    clock.advance(5)
    assert b.state is BreakerState.HALF_OPEN
    c, d = b.acquire(), b.acquire()
    b.record_success(a)  # stale: admitted before the breaker re-opened
    assert b.state is BreakerState.HALF_OPEN
    with pytest.raises(sr.CircuitOpenError):
        b.acquire()  # still two probes in flight in this cycle: no third
    b.record_success(c)
    assert b.state is BreakerState.HALF_OPEN  # one of two probes of this cycle so far
    b.record_success(d)
    assert b.state is BreakerState.CLOSED


def test_a_stale_probe_failure_does_not_reopen_a_new_cycle() -> None:
    """S35: a probe of an earlier cycle failing (or cancelled) late is no verdict on the current one."""
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, recovery_timeout=5, half_open_max_calls=2, clock=clock)
    fail(b)
    clock.advance(5)
    a, late = b.acquire(), b.acquire()
    b.record_failure(late, lost())
    clock.advance(5)
    c, d = b.acquire(), b.acquire()
    b.record_failure(a, lost())  # stale
    assert b.state is BreakerState.HALF_OPEN
    with pytest.raises(sr.CircuitOpenError):
        b.acquire()
    b.record_success(c)
    b.record_success(d)
    assert b.state is BreakerState.CLOSED


def test_a_stale_probe_cancelled_late_frees_no_slot_of_the_new_cycle() -> None:
    """S35: releasing a probe of an earlier cycle leaves the current cycle's count alone."""
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, recovery_timeout=5, clock=clock)
    fail(b)
    clock.advance(5)
    a = b.acquire()
    b.force_open()
    clock.advance(5)
    c = b.acquire()
    b.release(a)  # stale
    with pytest.raises(sr.CircuitOpenError):
        b.acquire()  # the one slot is still c's
    b.record_success(c)
    assert b.state is BreakerState.CLOSED


async def test_cancelled_probe_releases_its_permit() -> None:
    """A probe cancelled mid-call frees its slot, so half-open never gets stuck."""
    clock = FakeClock()
    b = CircuitBreaker(failure_threshold=1, recovery_timeout=1, clock=clock)
    fail(b)
    clock.advance(1)
    entered = asyncio.Event()

    async def probe() -> None:
        async with b.guard():
            entered.set()
            await asyncio.Event().wait()  # until cancelled

    task = asyncio.create_task(probe())
    await entered.wait()
    with pytest.raises(sr.CircuitOpenError):
        b.acquire()  # the only probe slot is taken
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with b.guard():
        pass
    assert b.state is BreakerState.CLOSED


def test_shadow_mode_never_rejects_but_reports() -> None:
    """Shadow mode computes transitions and tells listeners, but lets every call through."""
    seen: list[BreakerTransition] = []
    b = CircuitBreaker(failure_threshold=2, shadow=True, clock=FakeClock(), listeners=[seen.append])
    fail(b)
    fail(b)
    assert b.state is BreakerState.OPEN
    ok(b)  # not rejected
    assert [(t.previous, t.current) for t in seen] == [(BreakerState.CLOSED, BreakerState.OPEN)]
    assert b.rejected == 0


def test_listeners_see_every_transition_and_cannot_break_it() -> None:
    """Listeners get closed->open->half-open->closed; a raising listener is logged, not propagated."""
    clock = FakeClock()
    seen: list[str] = []

    def broken(_t: BreakerTransition) -> None:
        raise RuntimeError("listener bug")

    b = CircuitBreaker(name="db", failure_threshold=1, recovery_timeout=2, clock=clock)
    b.add_listener(lambda t: seen.append(f"{t.previous.name}>{t.current.name}"))
    b.add_listener(broken)
    fail(b)
    clock.advance(2)
    ok(b)
    assert seen == ["CLOSED>OPEN", "OPEN>HALF_OPEN", "HALF_OPEN>CLOSED"]
    b.force_open()
    assert b.state is BreakerState.OPEN
    b.reset()
    assert b.state is BreakerState.CLOSED


def test_guard_is_single_use_and_sync() -> None:
    """The sync guard records outcomes; reusing one guard object is an error."""
    b = CircuitBreaker(failure_threshold=1, clock=FakeClock())
    guard = b.guard()
    with guard, pytest.raises(RuntimeError, match="one call"):
        guard.__enter__()
    with pytest.raises(sr.ConnectionLost), b.guard():
        raise lost()
    assert b.state is BreakerState.OPEN


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"failure_threshold": 0}, ValueError, "failure_threshold must be >= 1"),
        ({"failure_threshold": 1.5}, TypeError, "failure_threshold must be an int"),
        ({"failure_rate_threshold": 1.5}, ValueError, "failure_rate_threshold must be > 0"),
        ({"recovery_timeout": -1}, ValueError, "recovery_timeout must be > 0"),
        ({"recovery_timeout": "10s"}, TypeError, "recovery_timeout must be seconds"),
        ({"slow_call_duration": 1.0}, ValueError, "go together"),
        ({"failure_rate_threshold": None}, ValueError, "at least one trip rule"),
        ({"max_recovery_timeout": 0.1}, ValueError, "must be >= recovery_timeout"),
        ({"failover_window": -1}, ValueError, "failover_window must be >= 0"),
        ({"half_open_max_calls": 0}, ValueError, "half_open_max_calls must be >= 1"),
        ({"name": ""}, ValueError, "name must be a non-empty string"),
        ({"clock": 5}, TypeError, "clock must be callable"),
    ],
)
def test_bad_options_are_refused(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    """Every option is validated with an error naming it and the allowed range."""
    with pytest.raises(error, match=match):
        CircuitBreaker(**kwargs)  # type: ignore[arg-type]
