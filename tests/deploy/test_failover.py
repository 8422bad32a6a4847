"""A failover to a promoted streaming replica, behind a TCP proxy that plays the DNS name.

Two real servers: a primary and its hot standby (``pg_basebackup``, streaming
replication). The application reaches "the database" through a TCP proxy
(the cluster endpoint); the failover fences the old primary
(``default_transaction_read_only``, as a fencing failover does, sessions kept),
waits until the standby has replayed everything, promotes it and repoints the
proxy: new connections reach the new primary, the pool's old ones still lead
to the old one -- exactly what a DNS flip does to a running application.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

import sqlalchemy_resilience as sr
from sqlalchemy_resilience.pool import ping_idle_connections
from tests.chaos.workload import check, run_bank, setup_bank
from tests.clock import FakeClock
from tests.faultproxy import FaultProxy
from tests.pgharness import PgServer

# These tests start servers of their own.
pytestmark = pytest.mark.postgresql

DB = "failover"


class Cluster:
    """A primary, its streaming standby, and the proxy that is the application's endpoint."""

    def __init__(self) -> None:
        self.primary = PgServer.start_embedded(fsync="on")
        self.primary.setup_roles()
        self.primary.create_database(DB)
        setup_bank(self.primary, DB)
        standby = self.primary.require_owned().start_standby()
        self.standby = PgServer(standby.url(driver="psycopg"), standby)
        self.standby.app_password = self.primary.app_password  # replicated roles
        self.proxy = FaultProxy("127.0.0.1", self.primary.port)
        self.new_primary_at: float | None = None

    def url(self, driver: str = "asyncpg") -> object:
        return self.primary.app_url(DB, driver=driver).set(port=self.proxy.port)

    def fail_over(self) -> float:
        """Fence, catch up, promote, repoint; returns when the new primary accepts writes."""
        self.primary.execute("ALTER SYSTEM SET default_transaction_read_only = on")
        self.primary.execute("SELECT pg_reload_conf()")
        # Fencing is complete only when no transaction begun before it can still
        # commit: those stay read-write. Wait them out, then catch the standby up
        # (with asynchronous replication, promoting earlier loses their commits).
        # A backend takes the SIGHUP at its next command: there is no event that says
        # every one has, so this one pause stays (a transaction begun before it is
        # waited out below, one begun after it is read-only).
        time.sleep(0.3)  # no event says every backend took the SIGHUP (see above)
        cutoff = self.primary.execute("SELECT now()")[0][0]
        self.primary.wait_for(
            lambda: (
                not self.primary.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND xact_start < %s",
                    (cutoff,),
                )[0][0]
            ),
            timeout=30,
        )
        target = self.primary.execute("SELECT pg_current_wal_lsn()")[0][0]
        self.standby.wait_for(
            lambda: self.standby.execute(
                "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (str(target),)
            )[0][0],
            timeout=30,
        )
        self.standby.require_owned().promote()
        self.proxy.target = ("127.0.0.1", self.standby.port)  # the DNS flip
        self.new_primary_at = time.monotonic()
        return self.new_primary_at

    def close(self) -> None:
        self.proxy.close()
        self.standby.close()
        self.primary.close()


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        c.close()


def _assert_nothing_lost_and_no_error(verdict: Any, history: Any) -> None:
    assert verdict.lost == 0 and verdict.phantom == 0
    assert verdict.ledger_consistent and verdict.total_balance == 50 * 1000
    assert history.errors == {}


async def _one_transfer(Session: async_sessionmaker[AsyncSession], policy: sr.RetryPolicy) -> None:
    request_id = uuid.uuid4()

    async def work(session: AsyncSession) -> None:
        await session.execute(
            text("INSERT INTO transfers (request_id, src, dst, amount) VALUES (:r, 1, 2, 5)"),
            {"r": request_id},
        )
        await session.execute(text("UPDATE accounts SET balance = balance - 5 WHERE id = 1"))
        await session.execute(text("UPDATE accounts SET balance = balance + 5 WHERE id = 2"))

    await sr.run_transaction(Session, work, retry=policy)


async def _warm(engine: AsyncEngine, n: int) -> None:
    all_held = asyncio.Barrier(n)

    async def hold() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            await all_held.wait()  # n connections at once: n distinct ones in the pool

    await asyncio.gather(*(hold() for _ in range(n)))


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_the_first_write_after_an_idle_failover_does_not_fail(
    cluster: Cluster, driver: str
) -> None:
    """No retry allowed (attempts=1): the writer check alone must route the write."""
    engine = create_async_engine(cluster.url(driver), pool_size=4, max_overflow=0)
    sr.instrument(engine)
    clock = FakeClock.wall()
    checker = ping_idle_connections(engine, after=0.3, timeout=2, require_writer=True, clock=clock)
    once = sr.RetryPolicy(attempts=1)
    try:
        await _warm(engine, 4)
        clock.advance(0.4)  # the pooled connections are idle past `after`
        await asyncio.to_thread(cluster.fail_over)
        await _one_transfer(async_sessionmaker(engine), once)
    finally:
        checker.detach()
        await engine.dispose()
    assert checker.read_only == 1  # one discovery; the pool's other connections recycled
    rows = cluster.standby.execute("SELECT count(*) FROM transfers", database=DB)
    assert rows[0][0] == 1


async def test_without_the_writer_check_that_write_fails(cluster: Cluster) -> None:
    """The negative control: the idle ping alone passes (the old primary is alive) -> 25006."""
    engine = create_async_engine(cluster.url("asyncpg"), pool_size=4, max_overflow=0)
    sr.instrument(engine)
    clock = FakeClock.wall()
    liveness = ping_idle_connections(engine, after=0.3, timeout=2, clock=clock)
    try:
        await _warm(engine, 4)
        clock.advance(0.4)  # the pooled connections are idle past `after`
        await asyncio.to_thread(cluster.fail_over)
        with pytest.raises(sr.ReadOnlyServer):
            await _one_transfer(async_sessionmaker(engine), sr.RetryPolicy(attempts=1))
    finally:
        liveness.detach()
        await engine.dispose()


async def test_bank_workload_across_a_failover(cluster: Cluster) -> None:
    """20 clients through the failover with the default retry policy, budget and breaker:
    0 lost, 0 duplicated, 0 errors, writes resume within 2 s."""
    engine = create_async_engine(cluster.url("asyncpg"), pool_size=20, max_overflow=0)
    sr.instrument(engine)
    checker = ping_idle_connections(engine, after=1, timeout=2, require_writer=True)
    # The package's defaults: 30 attempts within 45 s, the shared budget
    # (20 % of units started plus 10/s), waiting at an open breaker.
    policy = sr.RetryPolicy()

    async def chaos() -> None:
        # Once the workload is under way: 200 transfers committed.
        await asyncio.to_thread(
            cluster.primary.wait_for, lambda: _committed(cluster) >= 200, timeout=30
        )
        await asyncio.to_thread(cluster.fail_over)

    try:
        history, _ = await run_bank(
            engine,
            seconds=6.0,
            workers=20,
            retry=policy,
            breaker=sr.CircuitBreaker(),
            chaos=chaos,
            after_chaos=3.0,
        )
    finally:
        checker.detach()
        await engine.dispose()
    assert cluster.new_primary_at is not None
    verdict = check(cluster.standby, DB, history, [])
    after = sorted(t for t in history.successes_at if t > cluster.new_primary_at)
    resumed = after[0] - cluster.new_primary_at
    before = sum(1 for t in history.successes_at if t <= cluster.new_primary_at)
    print(
        f"\nfailover under load: {verdict.line()}; errors {history.errors}; "
        f"{before} transfers before the promotion, {len(after)} after; writes resumed "
        f"{resumed * 1000:.0f} ms after the new primary answered; "
        f"{checker.read_only} read-only checkouts discarded"
    )
    _assert_nothing_lost_and_no_error(verdict, history)
    assert resumed < 2.0


# -- multi-host URLs (#31 section 2) ----------------------------------------------------------


def _committed(cluster: Cluster) -> int:
    return int(cluster.primary.execute("SELECT count(*) FROM transfers", database=DB)[0][0])


def _multi_host_url(cluster: Cluster, driver: str) -> object:
    """Both servers listed, the primary first, as SQLAlchemy spells it for asyncpg and psycopg."""
    base = cluster.primary.app_url(DB, driver=driver)
    query = dict(base.query)
    query["host"] = (f"127.0.0.1:{cluster.primary.port}", f"127.0.0.1:{cluster.standby.port}")
    query["target_session_attrs"] = "read-write"
    return base.set(host=None, port=None, query=query)


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_multi_host_url_rides_a_failover_with_the_defaults(
    cluster: Cluster, driver: str
) -> None:
    """10 clients on a multi-host URL (``?host=..&host=..&target_session_attrs=read-write``),
    the package's default retry policy and breaker, the primary fenced and its standby
    promoted once 200 transfers have committed: 0 errors surfaced, 0 lost, 0 phantom;
    afterwards every connection the pool hands out leads to the new primary (the 25006
    that found the old one discarded the pool's older connections before they were
    handed out)."""
    engine = create_async_engine(_multi_host_url(cluster, driver), pool_size=10, max_overflow=0)
    sr.instrument(engine)
    breaker = sr.CircuitBreaker(name="multi-host")
    ports: list[int] = []

    async def chaos() -> None:
        # The failover comes once the workload is under way: 200 transfers committed.
        await asyncio.to_thread(
            cluster.primary.wait_for, lambda: _committed(cluster) >= 200, timeout=30
        )
        await asyncio.to_thread(cluster.fail_over)

    async def hold_all() -> None:
        # Every pooled connection at once: none may still lead to the old primary.
        held = [await engine.connect() for _ in range(10)]
        try:
            for conn in held:
                row = (
                    await conn.execute(text("SELECT inet_server_port(), pg_is_in_recovery()"))
                ).one()
                assert row[1] is False
                ports.append(int(row[0]))
        finally:
            for conn in held:
                await conn.close()

    try:
        history, _ = await run_bank(
            engine,
            seconds=4.0,
            workers=10,
            retry=sr.RetryPolicy(),
            breaker=breaker,
            chaos=chaos,
            after_chaos=2.0,
        )
        await hold_all()
    finally:
        await engine.dispose()
    assert cluster.new_primary_at is not None
    verdict = check(cluster.standby, DB, history, [])
    after = sorted(t for t in history.successes_at if t > cluster.new_primary_at)
    print(
        f"\nmulti-host URL ({driver}) across a failover: {verdict.line()}; errors "
        f"{history.errors}; {len(after)} transfers after the promotion, the first "
        f"{(after[0] - cluster.new_primary_at) * 1000:.0f} ms after it; breaker "
        f"{breaker.state.name}"
    )
    _assert_nothing_lost_and_no_error(verdict, history)
    assert after, "no transfer committed after the promotion"
    assert set(ports) == {cluster.standby.port}
    assert breaker.name == "multi-host" and "host=" not in str(breaker.name)
