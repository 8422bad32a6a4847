"""RetryPolicy's classifier and tenacity composition, and RetryBudget's token bucket."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import RetryPolicy, run_transaction_sync
from sqlalchemy_resilience.retry import RetryBudget
from tests.clock import FakeClock


def test_default_classifier_follows_the_safety_table() -> None:
    """Retry conflicts, disconnects before COMMIT and unavailability; never permanent errors or unknown commits."""
    policy = RetryPolicy()
    for retryable in (
        sr.SerializationFailure("40001"),
        sr.DeadlockDetected("40P01"),
        sr.ConnectionLost("57P01"),
        sr.DatabaseUnavailable("refused"),
        sr.TooManyConnections("53300"),
        ConnectionRefusedError(),
    ):
        assert policy.is_retryable(retryable), retryable
    for permanent in (
        sr.UniqueViolation("23505"),
        sr.InvalidData("22P02"),
        sr.InvalidStatement("42601"),
        sr.AuthenticationFailed("28P01"),
        sr.CommitOutcomeUnknown("lost during COMMIT"),
        sr.CircuitOpenError(1.0),
        sr.LockNotAvailable("55P03"),
        sr.QueryTimeout("57014"),
        asyncio.CancelledError(),
        ValueError("app bug"),
    ):
        assert not policy.is_retryable(permanent), permanent


def test_opt_ins_widen_the_classifier() -> None:
    """Lock and statement timeouts, unknown commits and custom rules are opt-in."""
    assert RetryPolicy(retry_lock_timeouts=True).is_retryable(sr.LockNotAvailable("55P03"))
    assert RetryPolicy(retry_query_timeouts=True).is_retryable(sr.QueryTimeout("57014"))
    assert RetryPolicy().is_retryable(sr.CommitOutcomeUnknown("x"), idempotent=True)
    custom = RetryPolicy(retry_on=lambda e: isinstance(e, sr.UniqueViolation))
    assert custom.is_retryable(sr.UniqueViolation("23505"))
    assert not custom.is_retryable(sr.SerializationFailure("40001"))
    assert not custom.is_retryable(sr.CircuitOpenError(1.0))


def test_times_accept_timedelta_and_policy_is_frozen() -> None:
    """timedelta and float seconds are equivalent; the policy cannot be changed after construction."""
    policy = RetryPolicy(
        initial_backoff=timedelta(milliseconds=20), max_backoff=1, deadline=timedelta(seconds=3)
    )
    assert policy.initial_backoff_seconds == pytest.approx(0.02)
    assert policy.deadline_seconds == pytest.approx(3.0)
    with pytest.raises(AttributeError):
        policy.attempts = 3  # type: ignore[misc]


async def test_as_tenacity_retries_then_reraises() -> None:
    """The tenacity escape hatch stops after `attempts` and re-raises the last error."""
    calls = 0
    policy = RetryPolicy(attempts=3, initial_backoff=0.001, max_backoff=0.001)

    async def always_lost() -> None:
        nonlocal calls
        async for attempt in policy.as_tenacity():
            with attempt:
                calls += 1
                raise sr.ConnectionLost("gone")

    with pytest.raises(sr.ConnectionLost):
        await always_lost()
    assert calls == 3
    calls = 0
    for attempt in policy.as_tenacity_sync():
        with attempt:
            calls += 1
            if calls < 2:
                raise sr.SerializationFailure("40001")
    assert calls == 2


def test_budget_is_a_share_of_traffic_with_a_floor() -> None:
    """Retries in the window: min_per_second x window, plus ratio of the units started;
    what leaves the window comes back."""
    clock = FakeClock(0.0)
    budget = RetryBudget(ratio=0.2, min_per_second=0.2, window=10, clock=clock)
    assert budget.try_acquire() and budget.try_acquire()  # the floor: 0.2/s x 10 s
    assert not budget.try_acquire()
    assert budget.denied == 1
    for _ in range(10):
        budget.deposit()  # ten units of work started: two more retries
    assert budget.available == pytest.approx(2.0)
    assert budget.try_acquire() and budget.try_acquire()
    assert not budget.try_acquire()
    clock.now += 10.0  # the window has moved past all of it
    assert budget.available == pytest.approx(2.0)


def test_a_quiet_service_still_retries_and_a_busy_one_cannot_storm() -> None:
    """No traffic: the floor alone (10/s by default). 1,000 units a second while every
    first attempt fails: at most a fifth of them, plus the floor, are retried."""
    clock = FakeClock(0.0)
    budget = RetryBudget(clock=clock)
    assert budget.available == pytest.approx(100.0)
    granted = 0
    for _ in range(10):  # ten seconds
        for _ in range(1000):
            budget.deposit()
            granted += budget.try_acquire()
        clock.now += 1.0
    assert granted <= 0.2 * 10_000 + 100 + 0.2 * 1000  # the share, the floor, one bucket's slack
    assert granted >= 0.2 * 9_000


def test_budget_denials_are_logged_at_most_every_five_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A database that is down produces one budget warning per 5 s, not one per request."""
    clock = FakeClock(0.0)
    budget = RetryBudget(ratio=0, min_per_second=0.1, window=10, clock=clock)
    budget.try_acquire()
    with caplog.at_level(logging.WARNING, logger="sqlalchemy_resilience.retry"):
        for _ in range(100):
            budget.try_acquire()
        clock.now += 5
        budget.try_acquire()
    records = [r for r in caplog.records if "retry budget exhausted" in r.getMessage()]
    assert len(records) == 2
    assert "1 retry refused" in records[0].getMessage()
    assert "100 retries refused" in records[1].getMessage()


def test_budget_is_shared_per_engine() -> None:
    """All callers of one engine share one budget; another engine has its own."""
    a, b = create_engine("sqlite://"), create_engine("sqlite://")
    try:
        assert RetryBudget.for_engine(a) is RetryBudget.for_engine(a)
        assert RetryBudget.for_engine(a) is not RetryBudget.for_engine(b)
        assert RetryBudget.for_engine(None) is RetryBudget.for_engine(None)
    finally:
        a.dispose()
        b.dispose()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"min_per_second": -1}, "min_per_second must be >= 0"),
        ({"ratio": 2}, "ratio must be between 0 and 1"),
        ({"window": 0}, "window must be > 0"),
    ],
)
def test_budget_validation(kwargs: dict[str, float], match: str) -> None:
    """Bad budget settings are refused."""
    with pytest.raises(ValueError, match=match):
        RetryBudget(**kwargs)


def test_contention_is_not_charged(tmp_path: Path) -> None:
    """40001/40P01 retries take nothing from the budget; infrastructure retries do."""
    engine = create_engine(f"sqlite:///{tmp_path / 'budget.sqlite'}")
    budget = RetryBudget(ratio=0, min_per_second=0.1, window=10)  # one retry in 10 s
    policy = RetryPolicy(attempts=8, initial_backoff=0.0001, max_backoff=0.0002, budget=budget)
    conflicts = [sr.SerializationFailure("could not serialize", sqlstate="40001")] * 3 + [
        sr.DeadlockDetected("deadlock detected", sqlstate="40P01")
    ] * 3

    def contended(session: Session) -> str:
        if conflicts:
            raise conflicts.pop()
        return "committed"

    try:
        # Six contention retries on a budget of one token: none charged.
        assert run_transaction_sync(sessionmaker(engine), contended, retry=policy) == "committed"
        assert budget.available == 1 and budget.denied == 0
        lost = [sr.ConnectionLost("server closed the connection", sqlstate="08006")]

        def flaky(session: Session) -> str:
            if lost:
                raise lost.pop()
            return "committed"

        assert run_transaction_sync(sessionmaker(engine), flaky, retry=policy) == "committed"
        assert budget.available == 0  # that retry was charged
        lost += [sr.ConnectionLost("server closed the connection", sqlstate="08006")] * 2

        with pytest.raises(sr.ConnectionLost):  # a second infrastructure retry: budget spent
            run_transaction_sync(sessionmaker(engine), flaky, retry=policy)
        assert budget.denied == 1
    finally:
        engine.dispose()
