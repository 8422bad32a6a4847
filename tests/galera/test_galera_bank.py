"""The chaos tier's bank workload on the Galera cluster, through HAProxy, with the
package's defaults (``RetryPolicy()``, ``CircuitBreaker()``): a node SIGKILLed and
restarted, and a node rejecting queries. 0 lost, 0 phantom, 0 duplicated, no error
surfaced to the application.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import instrument
from tests.chaos.mariadb_bank import DB, audit, check, committed_more, figure, setup_bank, transfer
from tests.chaos.workload import TOTAL, History, count_retries, run_bank
from tests.waiting import until

from .conftest import ClusterAdmin, Galera


@pytest.fixture
async def bank(galera: Galera) -> AsyncIterator[AsyncEngine]:
    """A fresh bank on the cluster, and an instrumented aiomysql engine through HAProxy."""
    setup_bank(galera.any_node())  # type: ignore[arg-type]
    engine = create_async_engine(
        galera.url(driver="aiomysql").set(database=DB), pool_size=10, max_overflow=0
    )
    instrument(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


def _longest_gap(history: History) -> float:
    times = sorted(history.successes_at)
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


async def _synced(galera: Galera, node: int) -> bool:
    try:
        status = await asyncio.to_thread(galera.status, node)
    except Exception:
        return False
    return status.get("wsrep_local_state_comment") == "Synced"


async def test_g1_a_node_sigkilled_and_restarted(
    galera: Galera, bank: AsyncEngine, caplog: pytest.LogCaptureFixture
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

    history, audits = await run_bank(
        bank,
        seconds=3.0,
        retry=sr.RetryPolicy(),
        breaker=sr.CircuitBreaker(),
        chaos=kill_and_rejoin,
        audit=audit(admin),  # type: ignore[arg-type]
        after_chaos=1.0,
        transfer_fn=transfer,
    )
    verdict = check(admin, history, audits)  # type: ignore[arg-type]
    retried = count_retries(caplog)
    sessions = galera.proxy.sessions()
    figure(
        "G1 a Galera node SIGKILLed and restarted",
        f"{verdict.line()}; longest gap between commits {_longest_gap(history) * 1000:.0f} ms; "
        f"rejoined {marks['rejoined'] - marks['killed']:.1f} s after the kill; retried {retried}; "
        f"errors {history.errors}; sessions per node {sessions}",
    )
    assert verdict.lost == 0 and verdict.phantom == 0 and verdict.unknown == 0
    assert verdict.total_balance == TOTAL and verdict.ledger_consistent
    assert set(history.errors) <= {"CheckViolation"}  # nothing else reached the application
    assert sum(retried.values()) > 0  # the kill really hit transfers


async def test_g2_a_node_rejecting_queries_under_load(
    galera: Galera, bank: AsyncEngine, caplog: pytest.LogCaptureFixture
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

    history, audits = await run_bank(
        bank,
        seconds=2.0,
        retry=sr.RetryPolicy(),
        breaker=sr.CircuitBreaker(),
        chaos=reject_for_a_while,
        audit=audit(admin),  # type: ignore[arg-type]
        after_chaos=0.5,
        transfer_fn=transfer,
    )
    verdict = check(admin, history, audits)  # type: ignore[arg-type]
    retried = count_retries(caplog)
    figure(
        "G2 a Galera node rejecting queries behind HAProxy",
        f"{verdict.line()}; retried {retried}; errors {history.errors}",
    )
    assert verdict.lost == 0 and verdict.phantom == 0 and verdict.unknown == 0
    assert verdict.total_balance == TOTAL and verdict.ledger_consistent
    assert set(history.errors) <= {"CheckViolation"}
    assert retried.get("DatabaseUnavailable", 0) >= 10
