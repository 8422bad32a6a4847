"""The chaos tier's bank workload on the Galera cluster, through HAProxy, with the
package's defaults (``RetryPolicy()``, ``CircuitBreaker()``): a node SIGKILLed and
restarted, a node rejecting queries, a node turned read-only, the quorum lost. 0 lost,
0 phantom, 0 duplicated, no error surfaced to the application, at most one connect in
flight while the breaker is open (counted at a proxy in front of HAProxy).

Beside it, through the same event, plain SQLAlchemy with a naive retry loop (three
tries, a fixed pause) moves money in a bank of its own: its figures are printed with
the package's.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import instrument
from sqlalchemy_resilience.retry import BreakerState
from tests.chaos.mariadb_bank import (
    DB,
    audit,
    check,
    committed_more,
    figure,
    naive_transfer,
    setup_bank,
    transfer,
)
from tests.chaos.workload import (
    NAIVE_TRIES,
    TOTAL,
    History,
    connects_while_not_closed,
    count_retries,
    not_closed,
    run_bank,
)
from tests.faultproxy import FaultProxy
from tests.waiting import until

from .conftest import ClusterAdmin, Galera

# Around a lost quorum, some aiomysql connections are garbage-collected with
# their socket still open (aiomysql's "Unclosed connection", asyncio's
# unclosed transport and StreamWriter; 0 to 16 per run of G4). They are not
# the pool's: after every leg it has 0 connections checked out (asserted), and
# the allocation traces point into aiomysql's _connect. Which path drops them
# unclosed (SQLAlchemy's connect-failure handling or aiomysql's) is not pinned
# down yet, so these warnings are tolerated in this module and nowhere else.
#
# The same connections, collected only after the test's event loop has closed,
# make aiomysql's Connection.__del__ raise "Event loop is closed" (pytest's
# unraisable-exception warning; seen once in G3 beside the naive loop's engine).
pytestmark = [
    pytest.mark.filterwarnings("ignore:unclosed:ResourceWarning"),
    pytest.mark.filterwarnings("ignore:Unclosed connection:ResourceWarning"),
    pytest.mark.filterwarnings("ignore:loop is closed:ResourceWarning"),
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <function Connection.__del__"
        ":pytest.PytestUnraisableExceptionWarning"
    ),
]


NAIVE_DB = "t_bank_naive"
# What a gap between commits may exceed the outage by: the breaker's probes one a
# second, and a commit on a loaded two-core machine.
SLACK = 2.5
DEADLINE = sr.RetryPolicy().deadline_seconds or float("inf")


@pytest.fixture
def counter(galera: Galera) -> Iterator[FaultProxy]:
    """A proxy in front of HAProxy (no toxics) that records every connection attempt."""
    proxy = FaultProxy("127.0.0.1", galera.proxy.port, protocol="mysql")
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
async def bank(galera: Galera, counter: FaultProxy) -> AsyncIterator[AsyncEngine]:
    """A fresh bank on the cluster, and an instrumented aiomysql engine through HAProxy
    (and the counting proxy)."""
    setup_bank(galera.any_node())  # type: ignore[arg-type]
    engine = create_async_engine(
        galera.url(driver="aiomysql").set(database=DB, port=counter.port),
        pool_size=10,
        max_overflow=0,
    )
    instrument(engine)
    try:
        yield engine
    finally:
        await engine.dispose()
        # The connections dropped unclosed (below) are collected while the
        # loop still runs, so that aiomysql can close their sockets.
        gc.collect()


@pytest.fixture
async def naive(galera: Galera) -> AsyncIterator[AsyncEngine]:
    """A bank of its own, and a plain aiomysql engine through HAProxy: the baseline."""
    setup_bank(galera.any_node(), NAIVE_DB)  # type: ignore[arg-type]
    engine = create_async_engine(
        galera.url(driver="aiomysql").set(database=NAIVE_DB), pool_size=10, max_overflow=0
    )
    try:
        yield engine
    finally:
        await engine.dispose()
        gc.collect()


Banks = tuple[AsyncEngine, AsyncEngine, FaultProxy]


@pytest.fixture
def banks(bank: AsyncEngine, naive: AsyncEngine, counter: FaultProxy) -> Banks:
    """The package's bank, the naive loop's, and the proxy counting the package's connects."""
    return bank, naive, counter


def _longest_gap(history: History) -> float:
    times = sorted(history.successes_at)
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


async def _synced(galera: Galera, node: int) -> bool:
    try:
        status = await asyncio.to_thread(galera.status, node)
    except Exception:
        return False
    return status.get("wsrep_local_state_comment") == "Synced"


async def _cluster_status(galera: Galera, node: int) -> str:
    try:
        status = await asyncio.to_thread(galera.status, node)
    except Exception:
        return "unreachable"
    return status.get("wsrep_cluster_status", "")


async def _leg(
    name: str,
    galera: Galera,
    banks: Banks,
    caplog: pytest.LogCaptureFixture,
    chaos: Callable[[], Awaitable[None]],
    *,
    seconds: float,
    after_chaos: float,
    notes: Callable[[], str] = str,
    outage: Callable[[], float] | None = None,
) -> tuple[History, dict[str, int]]:
    """One leg with the package's defaults beside the naive loop, the figures of both
    printed, and what every leg promises checked for the package: nothing lost, phantom or
    left unknown, no error but a legal refusal reached the application, the ledger exact,
    no connection kept out of the pool, at most one connect in flight while the breaker
    was not closed."""
    bank, naive, counter = banks
    admin = galera.any_node()
    transitions: list[tuple[float, BreakerState]] = []
    breaker = sr.CircuitBreaker(
        listeners=[lambda t: transitions.append((time.monotonic(), t.current))]
    )
    finished = asyncio.Event()

    async def the_chaos() -> None:
        try:
            await chaos()
        finally:
            finished.set()

    (history, audits), (naive_history, naive_audits) = await asyncio.gather(
        run_bank(
            bank,
            seconds=seconds,
            retry=sr.RetryPolicy(),
            breaker=breaker,
            chaos=the_chaos,
            audit=audit(admin),  # type: ignore[arg-type]
            after_chaos=after_chaos,
            transfer_fn=transfer,
        ),
        run_bank(
            naive,
            seconds=seconds,
            chaos=finished.wait,
            audit=audit(admin, NAIVE_DB),  # type: ignore[arg-type]
            after_chaos=after_chaos,
            transfer_fn=naive_transfer,
        ),
    )
    verdict = check(admin, history, audits)  # type: ignore[arg-type]
    naive_verdict = check(admin, naive_history, naive_audits, NAIVE_DB)  # type: ignore[arg-type]
    retried = count_retries(caplog)
    spans = not_closed(transitions)
    in_flight = connects_while_not_closed([counter.attempts], transitions)
    figure(
        name,
        f"{verdict.line()}; longest gap between commits {_longest_gap(history) * 1000:.0f} ms; "
        f"{notes()}retried {retried}; errors {history.errors}; breaker not closed "
        f"{sum(b - a for a, b in spans if b != float('inf')):.1f} s, at most {in_flight} "
        f"connect in flight meanwhile\n  plain SQLAlchemy, {NAIVE_TRIES}-try loop: "
        f"{naive_verdict.line()}; longest gap between commits "
        f"{_longest_gap(naive_history) * 1000:.0f} ms; errors {naive_history.errors}",
    )
    assert verdict.lost == 0 and verdict.phantom == 0 and verdict.unknown == 0
    assert in_flight <= 1
    assert naive_verdict.lost == 0  # the checker itself: a commit is a commit
    assert verdict.total_balance == TOTAL and verdict.ledger_consistent
    legal = {"CheckViolation"}
    if outage is not None and outage() > DEADLINE:
        # An outage longer than the retry deadline (a lost quorum that took a loaded
        # machine over a minute to regain) is no failover: the units caught in it end
        # at their deadline, as promised, and say so.
        legal |= {"RetryExhausted", "CircuitOpenError"}
    assert set(history.errors) <= legal  # nothing else reached the application
    assert bank.sync_engine.pool.checkedout() == 0
    return history, retried


async def test_g1_a_node_sigkilled_and_restarted(
    galera: Galera, banks: Banks, caplog: pytest.LogCaptureFixture
) -> None:
    """node1 SIGKILLed under 8 clients, HAProxy marks it down, the others carry on; it
    restarts and rejoins (state transfer) and takes work again."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience.retry")
    admin: ClusterAdmin = galera.any_node()
    node = galera.cluster.nodes[1]
    marks: dict[str, float] = {}

    async def kill_and_rejoin() -> None:
        await until(committed_more(admin, 200), what="200 transfers before the kill")  # type: ignore[arg-type]
        await asyncio.to_thread(node.stop, mode="kill")
        marks["killed"] = time.monotonic()
        await until(lambda: galera.proxy.states()["node1"] != "UP", what="node1 down at haproxy")
        await until(committed_more(admin, 100), what="transfers on two nodes")  # type: ignore[arg-type]
        await asyncio.to_thread(node.start)
        await until(lambda: _synced(galera, 1), timeout=60, what="node1 synced again")
        await until(lambda: galera.proxy.states()["node1"] == "UP", what="node1 up at haproxy")
        marks["rejoined"] = time.monotonic()
        await until(committed_more(admin, 100), what="transfers on three nodes")  # type: ignore[arg-type]

    history, retried = await _leg(
        "G1 a Galera node SIGKILLed and restarted",
        galera,
        banks,
        caplog,
        kill_and_rejoin,
        seconds=3.0,
        after_chaos=1.0,
        notes=lambda: (
            f"rejoined {marks['rejoined'] - marks['killed']:.1f} s after the kill; "
            f"sessions per node {galera.proxy.sessions()}; "
        ),
    )
    assert sum(retried.values()) > 0  # the kill really hit transfers
    # The cluster holds commits until it has evicted the dead node
    # (evs.inactive_timeout, 6 s here); HAProxy's checks take 1 s more.
    assert _longest_gap(history) <= 6.0 + 1.0 + SLACK


async def test_g2_a_node_rejecting_queries_under_load(
    galera: Galera, bank: AsyncEngine, banks: Banks, caplog: pytest.LogCaptureFixture
) -> None:
    """node2 starts rejecting queries (1047) under 8 clients and HAProxy keeps it UP: every
    transfer that lands there is re-run on another node, none fails."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience.retry")
    admin: ClusterAdmin = galera.any_node()

    async def reject_for_a_while() -> None:
        await until(committed_more(admin, 100), what="100 transfers first")  # type: ignore[arg-type]
        await asyncio.to_thread(galera.execute, 2, "SET GLOBAL wsrep_reject_queries = ALL")
        try:
            await bank.dispose()  # new connections: some of them land on node2
            await until(
                lambda: count_retries(caplog).get("DatabaseUnavailable", 0) >= 10,
                what="10 transfers refused by node2",
            )
        finally:
            await asyncio.to_thread(galera.execute, 2, "SET GLOBAL wsrep_reject_queries = NONE")

    _, retried = await _leg(
        "G2 a Galera node rejecting queries behind HAProxy",
        galera,
        banks,
        caplog,
        reject_for_a_while,
        seconds=2.0,
        after_chaos=0.5,
    )
    assert retried.get("DatabaseUnavailable", 0) >= 10


async def test_g3_a_node_turned_read_only_behind_the_proxy(
    galera: Galera, banks: Banks, caplog: pytest.LogCaptureFixture
) -> None:
    """node0 turns read_only=ON (a node taken out of writing) while HAProxy keeps routing to
    it: each write it refuses (1290) discards the pool's connections and is re-run; none
    fails."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience.retry")
    admin: ClusterAdmin = galera.any_node()

    async def read_only_for_a_while() -> None:
        await until(committed_more(admin, 100), what="100 transfers first")  # type: ignore[arg-type]
        await asyncio.to_thread(galera.execute, 0, "SET GLOBAL read_only = ON")
        try:
            await until(
                lambda: count_retries(caplog).get("ReadOnlyServer", 0) >= 10,
                what="10 transfers refused by node0",
            )
        finally:
            await asyncio.to_thread(galera.execute, 0, "SET GLOBAL read_only = OFF")

    _, retried = await _leg(
        "G3 a Galera node read_only=ON behind HAProxy",
        galera,
        banks,
        caplog,
        read_only_for_a_while,
        seconds=2.0,
        after_chaos=0.5,
    )
    assert retried.get("ReadOnlyServer", 0) >= 10


async def test_g4_the_quorum_lost_and_regained(
    galera: Galera, banks: Banks, caplog: pytest.LogCaptureFixture
) -> None:
    """node1 and node2 SIGKILLed: node0 alone is not a primary component and refuses
    everything (1047) though HAProxy keeps it UP; the clients wait (the breaker's verdict,
    within the deadline) instead of failing; the two restart, the primary component
    re-forms, and every waiting transfer completes."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience.retry")
    admin: ClusterAdmin = galera.any_node()
    nodes = galera.cluster.nodes
    marks: dict[str, float] = {}

    async def lose_and_regain_the_quorum() -> None:
        await until(committed_more(admin, 200), what="200 transfers first")  # type: ignore[arg-type]
        for node in (nodes[1], nodes[2]):
            await asyncio.to_thread(node.stop, mode="kill")
        marks["lost"] = time.monotonic()

        async def alone() -> bool:
            return await _cluster_status(galera, 0) == "non-Primary"

        await until(alone, what="node0 out of the primary component")
        # Together: the primary component is restored (pc.recovery) once every
        # member of the last one is back; one node alone would wait for the other.
        await asyncio.gather(*(asyncio.to_thread(node.start) for node in (nodes[1], nodes[2])))
        for index in (0, 1, 2):
            await until(lambda i=index: _synced(galera, i), timeout=60, what="the cluster synced")
        marks["regained"] = time.monotonic()
        await until(committed_more(admin, 100), what="transfers after the quorum is back")  # type: ignore[arg-type]

    history, _ = await _leg(
        "G4 the quorum lost (two of three nodes SIGKILLed) and regained",
        galera,
        banks,
        caplog,
        lose_and_regain_the_quorum,
        seconds=3.0,
        after_chaos=1.0,
        notes=lambda: f"no quorum for {marks['regained'] - marks['lost']:.1f} s; ",
        outage=lambda: marks["regained"] - marks["lost"],
    )
    # The outage is the lost quorum: commits resume once it is back.
    assert _longest_gap(history) <= marks["regained"] - marks["lost"] + SLACK
