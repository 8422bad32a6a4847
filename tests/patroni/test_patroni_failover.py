"""The cluster tier's Patroni events (#31): a planned switchover and a leader SIGKILLed.

Four banks run through each event side by side (see :mod:`.workloads`): the
package's ``Database``/``SyncDatabase`` with their defaults through HAProxy
and on multi-host URLs, async and sync, and plain SQLAlchemy with a naive
retry loop. The package's promise for each: 0 lost, 0 phantom, 0 duplicated,
every unknown outcome resolved, no error surfaced to the application, the
longest gap between commits within the election plus the proxy's checks, and
at most one connect in flight per host once its breaker has opened (counted
at the proxy). The naive loop's figures are printed beside them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import pytest

from sqlalchemy_resilience.testing.embedded_patroni import PatroniNode
from tests.chaos.workload import TOTAL
from tests.waiting import until

from .conftest import Patroni
from .workloads import Workload, run_event, workloads

# What the longest gap between commits may exceed the election by:
# HAProxy holds a connect that reached it while it still had the old leader
# up, retrying it 3 times with its 1 s turn-around (``retries 3``, its
# default), before the client sees a failure; the breaker's recovery probes
# are spaced (0.5 s, backing off), and a commit on a loaded two-core machine
# takes a few round trips.
HAPROXY_HOLD = 3 * 1.0
SLACK = 2.5


def _off_loop(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """``predicate`` on a thread: it blocks (a connect, an HTTP call), the banks must not."""

    async def run() -> bool:
        return await asyncio.to_thread(predicate)

    return run


def _committed(patroni: Patroni, database: str) -> int:
    try:
        return int(patroni.admin.execute("SELECT count(*) FROM transfers", database=database)[0][0])
    except Exception:
        return -1


async def _committed_more(patroni: Patroni, made: dict[str, Workload], n: int) -> None:
    """Wait until each bank has ``n`` more transfers than now (counted off the loop)."""

    def counts() -> dict[str, int]:
        return {k: _committed(patroni, w.database) for k, w in made.items()}

    start = await asyncio.to_thread(counts)

    def more() -> bool:
        now = counts()
        return all(now[k] >= start[k] + n for k in made)

    await until(_off_loop(more), timeout=60, what=f"{n} more transfers in each bank")


async def _new_leader_and_commits(
    patroni: Patroni, made: dict[str, Workload], old: PatroniNode, marks: dict[str, float]
) -> None:
    """After the event: when a new leader was elected, when HAProxy routed to it, and
    then 20 more commits in every bank."""
    await until(
        _off_loop(lambda: patroni.cluster.leader() not in (None, old)),
        timeout=60,
        what="a new leader",
    )
    marks["leader"] = time.monotonic()
    await until(_off_loop(lambda: patroni.proxy.up() == 1), timeout=20, what="HAProxy routing")
    marks["routed"] = time.monotonic()
    await _committed_more(patroni, made, 20)


def _report(name: str, made: dict[str, Workload], marks: dict[str, float]) -> None:
    event_at, leader_at, routed_at = marks["event"], marks["leader"], marks["routed"]
    print(
        f"\n[{name}] new leader after {leader_at - event_at:.1f} s, "
        f"routed by HAProxy after {routed_at - event_at:.1f} s"
    )
    for workload in made.values():
        verdict = workload.verdict
        assert verdict is not None
        first = workload.first_commit_after(routed_at)
        spans = workload.not_closed()
        breaker = (
            f"; breaker not closed for {sum(min(b, first) - a for a, b in spans):.1f} s, "
            f"at most {workload.attempts_while_not_closed()} connect in flight per host meanwhile"
            if spans
            else ""
        )
        print(
            f"  {workload.name}: longest gap between commits {workload.longest_gap():.1f} s, "
            f"the first commit {first - routed_at:.2f} s after HAProxy routed to the new leader; "
            f"errors {workload.errors()} {dict(workload.history.errors)}; {verdict.line()}; "
            f"re-runs that found their transfer already committed "
            f"{len(workload.history.already)}{breaker}"
        )


def _assert_the_package_rode_through(made: dict[str, Workload], marks: dict[str, float]) -> None:
    for key in ("haproxy", "multihost", "sync"):
        workload = made[key]
        bound = (
            marks["routed"] - marks["event"] + HAPROXY_HOLD + SLACK
            if key == "haproxy"
            else marks["leader"] - marks["event"] + SLACK
        )
        verdict = workload.verdict
        assert verdict is not None
        assert verdict.lost == 0 and verdict.phantom == 0 and verdict.unknown == 0, workload.name
        assert verdict.total_balance == TOTAL and verdict.ledger_consistent, workload.name
        assert workload.errors() == 0, (workload.name, workload.history.errors)
        assert workload.longest_gap() <= bound, (workload.name, workload.longest_gap(), bound)
        assert workload.attempts_while_not_closed() <= 1, workload.name
    naive = made["naive"].verdict
    assert naive is not None and naive.lost == 0  # the checker itself: a commit is a commit


async def test_p1_planned_switchover(patroni: Patroni, caplog: pytest.LogCaptureFixture) -> None:
    """``POST /switchover`` to the synchronous standby under four banks."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience.retry")
    marks: dict[str, float] = {}
    with workloads(patroni) as made:
        old = await asyncio.to_thread(patroni.leader)

        async def switchover() -> None:
            await _committed_more(patroni, made, 50)
            marks["event"] = time.monotonic()
            await asyncio.to_thread(patroni.cluster.switchover)
            await _new_leader_and_commits(patroni, made, old, marks)

        await run_event(patroni, made, switchover, seconds=2.0, after_event=1.0)
        _report("P1 Patroni planned switchover", made, marks)
        _assert_the_package_rode_through(made, marks)
    await asyncio.to_thread(patroni.cluster.wait_until_healthy)


async def test_p2_leader_sigkilled(patroni: Patroni, caplog: pytest.LogCaptureFixture) -> None:
    """The leader's Patroni agent and postmaster SIGKILLed (the machine gone) under four
    banks; the leader key expires (ttl 10 s), the sync standby is promoted; the old
    leader restarts and rejoins (pg_rewind) after."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience.retry")
    marks: dict[str, float] = {}
    with workloads(patroni) as made:
        old = await asyncio.to_thread(patroni.leader)

        async def kill_the_leader() -> None:
            await _committed_more(patroni, made, 50)
            marks["event"] = time.monotonic()
            await asyncio.to_thread(old.kill)
            await _new_leader_and_commits(patroni, made, old, marks)

        try:
            await run_event(patroni, made, kill_the_leader, seconds=2.0, after_event=1.0)
        finally:
            await asyncio.to_thread(old.start)
        _report("P2 Patroni leader SIGKILLed (agent and postmaster)", made, marks)
        _assert_the_package_rode_through(made, marks)
    await asyncio.to_thread(patroni.cluster.wait_until_healthy)
