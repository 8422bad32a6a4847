"""The chaos tier: the bank workload under server and network faults (FAULTS.md section 3).

Each scenario owns its server (``fault_server``), prints its figure line (run
pytest with ``-s`` or read the captured output) and ends with the H5
"nothing leaked" post-conditions. ``SQLALCHEMY_RESILIENCE_SOAK=1`` lengthens the
load runs to the 60 s of the plan.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import (
    CircuitBreaker,
    RetryBudget,
    RetryPolicy,
    instrument,
    resilient_sessionmaker,
    run_transaction,
)

from .chaos import (
    TOTAL,
    GcWarnings,
    assert_nothing_leaked,
    audit_sum,
    check,
    run_bank,
    setup_bank,
)
from .faultproxy import FaultProxy
from .pgharness import PgServer

pytestmark = pytest.mark.chaos

SOAK = os.environ.get("SQLALCHEMY_RESILIENCE_SOAK") == "1"
DB = "faults"


@pytest.fixture
def gc_warnings() -> Iterator[GcWarnings]:
    handler = GcWarnings()
    pool_logger = logging.getLogger("sqlalchemy.pool")
    pool_logger.addHandler(handler)
    previous = pool_logger.level
    pool_logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        pool_logger.removeHandler(handler)
        pool_logger.setLevel(previous)


@pytest.fixture
async def bank(fault_server: PgServer) -> AsyncIterator[AsyncEngine]:
    """The bank schema and an instrumented asyncpg engine, pool 5 (the plan's 8 workers / pool 5)."""
    setup_bank(fault_server, DB)
    engine = create_async_engine(
        fault_server.app_url(DB, driver="asyncpg"), pool_size=5, max_overflow=0, pool_timeout=30
    )
    instr = instrument(engine)
    yield engine
    instr.detach()
    await engine.dispose()


def _policy() -> RetryPolicy:
    # A budget sized for 8 busy workers: the scenarios measure correctness, not shedding.
    return RetryPolicy(
        attempts=40,
        initial_backoff=0.01,
        max_backoff=0.5,
        deadline=40,
        budget=RetryBudget(capacity=500, refill_per_second=50),
    )


def _figure(name: str, line: str) -> None:
    print(f"\n[{name}] {line}")


async def test_s1_baseline_load(
    bank: AsyncEngine, fault_server: PgServer, gc_warnings: GcWarnings
) -> None:
    """S1: 8 workers, pool 5, no fault: 0 errors, the invariant holds in every audit."""
    seconds = 60.0 if SOAK else 8.0
    history, audits = await run_bank(
        bank, seconds=seconds, retry=_policy(), audit=audit_sum(fault_server, DB)
    )
    verdict = check(fault_server, DB, history, audits)
    _figure(
        "S1",
        f"{verdict.ok} transfers in {seconds:.0f} s ({verdict.ok / seconds:.0f}/s), "
        f"{sum(history.errors.values()) - history.errors.get('CheckViolation', 0)} errors; "
        + verdict.line(),
    )
    assert verdict.lost == 0 and verdict.phantom == 0 and verdict.unknown == 0
    assert set(history.errors) <= {"CheckViolation"}
    assert verdict.total_balance == TOTAL and verdict.ledger_consistent
    assert verdict.audits_ok == verdict.audits_total >= int(seconds) - 1
    await assert_nothing_leaked(bank, fault_server, DB, gc=gc_warnings)


async def test_s2_fast_restarts(
    bank: AsyncEngine, fault_server: PgServer, gc_warnings: GcWarnings
) -> None:
    """S2: fast restarts during the load: 0 lost, 0 phantom, every unknown resolved, recovery measured."""
    pg = fault_server.require_owned()
    restarts = 5 if SOAK else 3
    up_times: list[float] = []

    async def chaos() -> None:
        for _ in range(restarts):
            await asyncio.sleep(2.0)
            await asyncio.to_thread(pg.restart, mode="fast")
            up_times.append(time.monotonic())

    history, audits = await run_bank(
        bank,
        seconds=2.0 * restarts + 3.0,
        retry=_policy(),
        chaos=chaos,
        audit=audit_sum(fault_server, DB),
    )
    verdict = check(fault_server, DB, history, audits)
    recovery = [
        min((t for t in history.successes_at if t >= up), default=float("inf")) - up
        for up in up_times
    ]
    _figure(
        "S2",
        f"{restarts} restarts: {verdict.line()}; errors {history.errors}; "
        f"recovery after server up p50 {statistics.median(recovery) * 1000:.0f} ms, "
        f"max {max(recovery) * 1000:.0f} ms",
    )
    assert verdict.lost == 0 and verdict.phantom == 0
    assert verdict.total_balance == TOTAL and verdict.ledger_consistent
    assert all(a == TOTAL for a in audits if a is not None)  # never a wrong sum
    assert max(recovery) < 5.0
    assert verdict.ok > 100
    await assert_nothing_leaked(bank, fault_server, DB, gc=gc_warnings)


async def test_s5_stale_pool(fault_server: PgServer, gc_warnings: GcWarnings) -> None:
    """S5: every idle pooled connection killed; 200 requests through resilient sessions: 0 failed, <= 5 retries."""
    setup_bank(fault_server, DB)
    engine = create_async_engine(fault_server.app_url(DB, driver="asyncpg"), pool_size=5)
    instrument(engine)
    retries: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = retries.append  # type: ignore[method-assign]
    retry_logger = logging.getLogger("sqlalchemy_resilience.retry")
    retry_logger.addHandler(handler)
    try:
        Session = resilient_sessionmaker(engine, retry=_policy())

        async def hold() -> int:
            async with Session() as session:
                pid = int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())
                await asyncio.sleep(0.2)
                return pid

        killed_pids = set(await asyncio.gather(*(hold() for _ in range(5))))
        fault_server.terminate_backends(database=DB)
        await asyncio.to_thread(
            fault_server.wait_for, lambda: not fault_server.backend_pids(database=DB)
        )
        failed = 0
        new_pids: set[int] = set()
        for i in range(200):
            try:
                async with Session() as session:
                    new_pids.add(int(await session.scalar(text("SELECT pg_backend_pid()"))))
                    await session.execute(
                        text("UPDATE accounts SET balance = balance WHERE id = :i"),
                        {"i": i % 50 + 1},
                    )
                    await session.commit()
            except sr.ResilienceError:
                failed += 1
        retry_count = sum(1 for r in retries if "retrying after" in r.getMessage())
        _figure(
            "S5",
            f"200 requests after killing {len(killed_pids)} idle connections: {failed} failed, "
            f"{retry_count} retries, {len(new_pids & killed_pids)} killed pids reused",
        )
        assert failed == 0
        assert retry_count <= 5
        assert not (new_pids & killed_pids)
        await assert_nothing_leaked(engine, fault_server, DB, gc=gc_warnings)
    finally:
        retry_logger.removeHandler(handler)
        await engine.dispose()


async def test_s6_inflight_kill_before_commit(
    bank: AsyncEngine, fault_server: PgServer, gc_warnings: GcWarnings
) -> None:
    """S6: the backend killed mid-transaction, before COMMIT, 30 times: each retried and applied exactly once."""
    Session = async_sessionmaker(bank)
    kills = 30
    attempts_total = 0
    for n in range(kills):
        attempts = 0

        async def work(session: AsyncSession, n: int = n) -> None:
            nonlocal attempts
            attempts += 1
            await session.execute(text("UPDATE accounts SET balance = balance - 1 WHERE id = 1"))
            await session.execute(text("UPDATE accounts SET balance = balance + 1 WHERE id = 2"))
            if attempts == 1:
                pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
                await asyncio.to_thread(
                    fault_server.execute, "SELECT pg_terminate_backend(%s)", (pid,)
                )
            await session.execute(
                text("INSERT INTO ledger_entries VALUES (:r, 1)"), {"r": uuid.UUID(int=n)}
            )

        await run_transaction(Session, work, retry=_policy())
        attempts_total += attempts
    rows = fault_server.execute(
        "SELECT count(*), count(DISTINCT request_id) FROM ledger_entries", database=DB
    )[0]
    balances = dict(
        fault_server.execute("SELECT id, balance FROM accounts WHERE id IN (1, 2)", database=DB)
    )
    _figure(
        "S6",
        f"{kills} kills before COMMIT: {attempts_total - kills} retried, "
        f"{rows[0] - rows[1]} duplicated, {kills - rows[1]} lost",
    )
    assert attempts_total == 2 * kills
    assert rows == (kills, kills)
    assert balances == {1: 1000 - kills, 2: 1000 + kills}
    await assert_nothing_leaked(bank, fault_server, DB, gc=gc_warnings)


async def test_s7_swallowed_commit_reply(
    fault_server: PgServer, gc_warnings: GcWarnings, caplog: pytest.LogCaptureFixture
) -> None:
    """S7: the proxy forwards COMMIT and resets the client: classified unknown, resolved by key, 0 duplicates.

    Negative control: the same fault with a blind retry and no key duplicates every entry.
    """
    setup_bank(fault_server, DB)
    proxy = FaultProxy("127.0.0.1", fault_server.port)
    engine = create_async_engine(
        fault_server.app_url(DB, driver="asyncpg").set(port=proxy.port), pool_size=5
    )
    instrument(engine)
    Session = async_sessionmaker(engine)
    injected = 10
    try:
        caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience.retry")
        for _ in range(injected):
            request_id = uuid.uuid4()
            proxy.swallow_commit_reply, proxy.swallow_commits = True, 1

            async def keyed(session: AsyncSession, request_id: uuid.UUID = request_id) -> bool:
                found = await session.execute(
                    text(
                        "INSERT INTO transfers (request_id, src, dst, amount) VALUES (:r, 1, 2, 1)"
                        " ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
                    ),
                    {"r": request_id},
                )
                return found.first() is not None

            policy = RetryPolicy(attempts=5, initial_backoff=0.01, max_backoff=0.05)
            applied_by_retry = await run_transaction(Session, keyed, retry=policy, idempotent=True)
            assert applied_by_retry is False  # the retry found the first attempt's row
        keyed_unknown = sum(
            "retrying after CommitOutcomeUnknown" in r.getMessage() for r in caplog.records
        )
        xact = fault_server.execute(
            "SELECT count(*), count(*) FILTER (WHERE pg_xact_status(xid) = 'committed')"
            " FROM transfers",
            database=DB,
        )[0]
        # Negative control: no key, blind retry.
        control_ids = [uuid.uuid4() for _ in range(injected)]
        for request_id in control_ids:
            proxy.swallow_commit_reply, proxy.swallow_commits = True, 1

            async def blind(session: AsyncSession, rid: uuid.UUID = request_id) -> None:
                await session.execute(text("INSERT INTO ledger_entries VALUES (:r, 1)"), {"r": rid})

            await run_transaction(
                Session,
                blind,
                retry=RetryPolicy(attempts=5, initial_backoff=0.01, max_backoff=0.05),
                idempotent=True,
            )
        dup = fault_server.execute(
            "SELECT count(*) FROM (SELECT request_id FROM ledger_entries"
            " GROUP BY request_id HAVING count(*) > 1) d",
            database=DB,
        )[0][0]
        _figure(
            "S7",
            f"{injected} swallowed COMMIT replies: {keyed_unknown} classified unknown, "
            f"{xact[1]}/{xact[0]} resolved committed, 0 duplicates; "
            f"control (no key, blind retry): {dup}/{injected} duplicated",
        )
        assert proxy.commits_swallowed == 2 * injected
        assert keyed_unknown == injected
        assert xact == (injected, injected)
        assert dup == injected
        proxy.clear()
        await assert_nothing_leaked(engine, fault_server, DB, gc=gc_warnings)
    finally:
        await engine.dispose()
        proxy.close()


async def test_s12_statement_timeout(
    bank: AsyncEngine, fault_server: PgServer, gc_warnings: GcWarnings
) -> None:
    """S12: 50 statement timeouts: 0 retries, 0 invalidations, the same backend reused."""
    invalidations: list[object] = []
    event.listen(bank.sync_engine, "invalidate", lambda *a: invalidations.append(a))
    Session = async_sessionmaker(bank)
    pids: set[int] = set()
    attempts = 0

    async def slow(session: AsyncSession) -> None:
        nonlocal attempts
        attempts += 1
        pids.add(int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()))
        await session.execute(text("SET LOCAL statement_timeout = '20ms'"))
        await session.execute(text("SELECT pg_sleep(1)"))

    timeouts = 0
    for _ in range(50):
        with pytest.raises(sr.QueryTimeout):
            await run_transaction(Session, slow, retry=_policy())
        timeouts += 1
    _figure(
        "S12",
        f"{timeouts} timeouts: {attempts - timeouts} retries, {len(invalidations)} invalidations, "
        f"{len(pids)} backend(s) used",
    )
    assert attempts == timeouts == 50
    assert invalidations == []
    assert len(pids) == 1
    await assert_nothing_leaked(bank, fault_server, DB, gc=gc_warnings)


async def test_s18_breaker_while_database_unreachable(fault_server: PgServer) -> None:
    """S18: refused, then hanging connects open the breaker; while open 0 connects; restored -> closed."""
    proxy = FaultProxy("127.0.0.1", fault_server.port)
    engine = create_async_engine(
        fault_server.app_url(DB, driver="asyncpg").set(port=proxy.port),
        connect_args={"timeout": 0.5},
    )
    instrument(engine)
    connects: list[float] = []
    event.listen(engine.sync_engine, "do_connect", lambda *a: connects.append(time.monotonic()))
    transitions: list[str] = []
    breaker = CircuitBreaker(failure_threshold=3, recovery_timeout=0.5)
    breaker.add_listener(lambda t: transitions.append(t.current.name))
    Session = async_sessionmaker(engine)
    once = RetryPolicy(attempts=1)

    async def ping(session: AsyncSession) -> int:
        return int((await session.execute(text("SELECT 1"))).scalar_one())

    try:
        assert await run_transaction(Session, ping, retry=once, breaker=breaker) == 1
        await engine.dispose()
        proxy.down()  # (a) refused
        for _ in range(2):
            with pytest.raises(sr.DatabaseUnavailable):
                await run_transaction(Session, ping, retry=once, breaker=breaker)
        proxy.deaf()  # (b) connects hang until the client's timeout
        started = time.monotonic()
        with pytest.raises(sr.DatabaseUnavailable):
            await run_transaction(Session, ping, retry=once, breaker=breaker)
        hang = time.monotonic() - started
        assert breaker.state is sr.BreakerState.OPEN
        before = len(connects)
        fast: list[float] = []
        for _ in range(50):
            t0 = time.perf_counter()
            with pytest.raises(sr.CircuitOpenError):
                await run_transaction(Session, ping, retry=once, breaker=breaker)
            fast.append(time.perf_counter() - t0)
        assert len(connects) == before
        proxy.up()  # (c) restored
        await asyncio.sleep(0.55)
        assert await run_transaction(Session, ping, retry=once, breaker=breaker) == 1
        _figure(
            "S18",
            f"transitions {' -> '.join(['CLOSED', *transitions])}; 0 connects during 50 calls while open "
            f"(median refusal {statistics.median(fast) * 1e6:.0f} µs); hanging connect cut at {hang:.2f} s",
        )
        assert transitions == ["OPEN", "HALF_OPEN", "CLOSED"]
        assert 0.4 <= hang < 2.0
    finally:
        await engine.dispose()
        proxy.close()
