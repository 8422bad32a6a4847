"""The chaos tier: the bank workload under server and network faults (FAULTS.md section 3).

Each scenario owns its server (``fault_server``), prints its figure line (run
pytest with ``-s`` or read the captured output) and ends with the H5
"nothing leaked" post-conditions. ``SQLALCHEMY_RESILIENCE_SOAK=1`` lengthens the
load runs to the 60 s of the plan.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import signal
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import CircuitBreaker, RetryPolicy, instrument, run_transaction
from sqlalchemy_resilience.pool import AsyncResizableQueuePool, PoolAutosizer
from sqlalchemy_resilience.retry import BreakerState, RetryBudget, resilient_sessionmaker
from tests.chaos.workload import (
    TOTAL,
    GcWarnings,
    History,
    assert_nothing_leaked,
    audit_sum,
    check,
    count_retries,
    run_bank,
    setup_bank,
)
from tests.clock import FakeClock
from tests.faultproxy import FaultProxy
from tests.pgharness import PgServer
from tests.waiting import until

pytestmark = pytest.mark.chaos

SOAK = os.environ.get("SQLALCHEMY_RESILIENCE_SOAK") == "1"


def _n(ci: int, soak: int) -> int:
    """The CI tier's count, or the plan's full count under SQLALCHEMY_RESILIENCE_SOAK=1."""
    return soak if SOAK else ci


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
        budget=RetryBudget(min_per_second=50),
    )


# S7 injects a lost COMMIT into every request on purpose; the engine's default
# retry budget (built to stop retry storms) would rightly refuse some retries.
_BIG_BUDGET = RetryBudget(min_per_second=1_000)


# Seconds from "the server accepts connections again" to the next committed transfer.
RECOVERY_BOUND = 5.0


def _recovery_times(history: History, up_times: list[float]) -> list[float]:
    """For each moment the server was back: seconds until the next successful transfer."""
    return [
        min((t for t in history.successes_at if t >= up), default=float("inf")) - up
        for up in up_times
    ]


def _figure(name: str, line: str) -> None:
    print(f"\n[{name}] {line}")


async def test_s1_baseline_load(
    bank: AsyncEngine, fault_server: PgServer, gc_warnings: GcWarnings
) -> None:
    """S1: 8 workers, pool 5, no fault: 0 errors, the invariant holds in every audit; throughput
    against the same workload on bare SQLAlchemy sessions, interleaved in the same run."""
    seconds = 60.0 if SOAK else 8.0
    half = seconds / 4
    rates: dict[str, list[float]] = {"bare": [], "run_transaction": []}
    history = None
    await run_bank(bank, seconds=1.0, retry=_policy(), bare=True)  # warm-up, discarded
    audits: list[int | None] = []
    for _ in range(2):
        for label in ("bare", "run_transaction"):
            run_history, run_audits = await run_bank(
                bank,
                seconds=half,
                retry=_policy(),
                audit=audit_sum(fault_server, DB),
                bare=label == "bare",
            )
            rates[label].append(len(run_history.ok) / half)
            if label == "run_transaction":
                if history is None:
                    history = run_history
                else:
                    history.ok |= run_history.ok
                    history.fail |= run_history.fail
                    history.unknown |= run_history.unknown
                    history.latencies += run_history.latencies
                    for k, v in run_history.errors.items():
                        history.errors[k] = history.errors.get(k, 0) + v
            audits += run_audits
    assert history is not None
    verdict = check(fault_server, DB, history, audits)
    bare = statistics.mean(rates["bare"])
    wrapped = statistics.mean(rates["run_transaction"])
    _figure(
        "S1",
        f"{wrapped:.0f} transfers/s with run_transaction vs {bare:.0f}/s bare "
        f"(ratio {wrapped / bare:.3f}), "
        f"{sum(history.errors.values()) - history.errors.get('CheckViolation', 0)} errors; "
        + verdict.line(),
    )
    assert verdict.lost == 0 and verdict.phantom == 0 and verdict.unknown == 0
    assert set(history.errors) <= {"CheckViolation"}
    assert verdict.total_balance == TOTAL and verdict.ledger_consistent
    assert verdict.audits_ok == verdict.audits_total >= 4
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
            await asyncio.sleep(2.0)  # the scenario: a restart every 2 s of load
            await asyncio.to_thread(pg.restart, mode="fast")
            up_times.append(time.monotonic())

    history, audits = await run_bank(
        bank,
        seconds=2.0 * restarts + 3.0,
        retry=_policy(),
        chaos=chaos,
        audit=audit_sum(fault_server, DB),
        after_chaos=RECOVERY_BOUND,
    )
    verdict = check(fault_server, DB, history, audits)
    recovery = _recovery_times(history, up_times)
    _figure(
        "S2",
        f"{restarts} restarts: {verdict.line()}; errors {history.errors}; "
        f"recovery after server up p50 {statistics.median(recovery) * 1000:.0f} ms, "
        f"max {max(recovery) * 1000:.0f} ms",
    )
    assert verdict.lost == 0 and verdict.phantom == 0
    assert verdict.total_balance == TOTAL and verdict.ledger_consistent
    assert all(a == TOTAL for a in audits if a is not None)  # never a wrong sum
    assert max(recovery) < RECOVERY_BOUND
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

        all_held = asyncio.Barrier(5)

        async def hold() -> int:
            async with Session() as session:
                pid = int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())
                await all_held.wait()  # five sessions at once: five connections in the pool
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
    kills = _n(30, 200)
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
    injected = _n(10, 100)
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

            policy = RetryPolicy(
                attempts=5, initial_backoff=0.01, max_backoff=0.05, budget=_BIG_BUDGET
            )
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
                retry=RetryPolicy(
                    attempts=5, initial_backoff=0.01, max_backoff=0.05, budget=_BIG_BUDGET
                ),
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
    for _ in range(_n(50, 100)):
        with pytest.raises(sr.QueryTimeout):
            await run_transaction(Session, slow, retry=_policy())
        timeouts += 1
    _figure(
        "S12",
        f"{timeouts} timeouts: {attempts - timeouts} retries, {len(invalidations)} invalidations, "
        f"{len(pids)} backend(s) used",
    )
    assert attempts == timeouts == _n(50, 100)
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
    # The breaker's time moves when the test says: a busy machine cannot make
    # the 50 refusals below outlast recovery_timeout.
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, recovery_timeout=0.5, clock=clock)
    breaker.add_listener(lambda t: transitions.append(t.current.name))
    Session = async_sessionmaker(engine)
    # The fail-fast leg: waiting at the open breaker (the default) is S45's.
    once = RetryPolicy(attempts=1, wait_at_breaker=False)

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
        assert breaker.state is BreakerState.OPEN
        before = len(connects)
        fast: list[float] = []
        for _ in range(50):
            t0 = time.perf_counter()
            with pytest.raises(sr.CircuitOpenError):
                await run_transaction(Session, ping, retry=once, breaker=breaker)
            fast.append(time.perf_counter() - t0)
        assert len(connects) == before
        proxy.up()  # (c) restored
        clock.advance(0.55)  # past recovery_timeout
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


def _crash_chaos(server: PgServer, kind: str, times: int, up_times: list[float]):  # type: ignore[no-untyped-def]
    pg = server.require_owned()

    async def chaos() -> None:
        for _ in range(times):
            await asyncio.sleep(2.0)  # the scenario: a fault every 2 s of load
            if kind == "crash":
                await asyncio.to_thread(pg.crash_restart)
            else:  # SIGKILL one app backend: the postmaster resets every backend
                pids = server.backend_pids(database=DB)
                if pids:
                    os.kill(pids[0], 9)
                await asyncio.to_thread(server.wait_for, _accepting(server), timeout=30)
            up_times.append(time.monotonic())

    return chaos


def _accepting(server: PgServer):  # type: ignore[no-untyped-def]
    def probe() -> bool:
        try:
            server.execute("SELECT 1")
        except Exception:
            return False
        return True

    return probe


@pytest.mark.parametrize("kind", ["crash", "sigkill"])
async def test_s3_s4_crash_recovery(
    bank: AsyncEngine, fault_server: PgServer, gc_warnings: GcWarnings, kind: str
) -> None:
    """S3 (immediate stop + crash recovery) and S4 (backend SIGKILL -> postmaster crash cycle), 3 times.

    Every acknowledged transfer survives; unknown outcomes are resolved by the
    transfer's key; the invariant holds.
    """
    up_times: list[float] = []
    history, audits = await run_bank(
        bank,
        seconds=9.0,
        retry=_policy(),
        chaos=_crash_chaos(fault_server, kind, 3, up_times),
        audit=audit_sum(fault_server, DB),
        # However long the restarts took on this machine, the workload goes
        # on long enough after the last one to see it recover within the bound.
        after_chaos=RECOVERY_BOUND,
    )
    verdict = check(fault_server, DB, history, audits)
    recovery = _recovery_times(history, up_times)
    _figure(
        "S3" if kind == "crash" else "S4",
        f"3 {'crashes' if kind == 'crash' else 'backend SIGKILLs'}: {verdict.line()}; errors {history.errors}; recovery p50 "
        f"{statistics.median(recovery) * 1000:.0f} ms, max {max(recovery) * 1000:.0f} ms",
    )
    assert verdict.lost == 0 and verdict.phantom == 0
    assert verdict.total_balance == TOTAL and verdict.ledger_consistent
    assert all(a == TOTAL for a in audits if a is not None)
    assert max(recovery) < RECOVERY_BOUND
    await assert_nothing_leaked(bank, fault_server, DB, gc=gc_warnings)


@pytest.mark.parametrize(
    ("scenario", "options"),
    [
        ("S9b deadlocks", {"random_order": True, "hot": 4, "workers": 16}),
        ("S10 serialization", {"isolation_level": "SERIALIZABLE", "hot": 4, "workers": 8}),
        # FOR UPDATE NOWAIT: any wait for a row lock is 55P03 at once. (A
        # lock_timeout of a few ms races PostgreSQL's timer against the lock
        # grant and can surface as 57014 "due to user request" instead.)
        ("S11 lock not available", {"hot": 2, "workers": 16, "nowait": True}),
    ],
)
async def test_s9_s10_s11_contention(
    bank: AsyncEngine,
    fault_server: PgServer,
    gc_warnings: GcWarnings,
    caplog: pytest.LogCaptureFixture,
    scenario: str,
    options: dict[str, object],
) -> None:
    """Contention (deadlocks, serialization failures, lock timeouts) is retried; the breaker never trips."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience.retry")
    breaker = CircuitBreaker(failure_threshold=5)
    transitions: list[object] = []
    breaker.add_listener(transitions.append)
    policy = RetryPolicy(
        attempts=50,
        initial_backoff=0.005,
        max_backoff=0.1,
        deadline=30,
        retry_lock_timeouts=True,
        budget=RetryBudget(min_per_second=1_000),
    )
    history, audits = await run_bank(
        bank,
        seconds=6.0,
        retry=policy,
        breaker=breaker,
        audit=audit_sum(fault_server, DB),
        **options,  # type: ignore[arg-type]
    )
    verdict = check(fault_server, DB, history, audits)
    retried = count_retries(caplog)
    _figure(
        scenario,
        f"{verdict.line()}; retried {retried}; final errors {history.errors}; breaker transitions {len(transitions)}",
    )
    assert verdict.lost == 0 and verdict.phantom == 0 and verdict.unknown == 0
    assert verdict.total_balance == TOTAL and verdict.ledger_consistent
    assert set(history.errors) <= {"CheckViolation"}
    assert transitions == []
    assert sum(retried.values()) > 0  # the contention really happened
    await assert_nothing_leaked(bank, fault_server, DB, gc=gc_warnings)


async def test_s8_commit_aborted_by_fatal(
    bank: AsyncEngine, fault_server: PgServer, gc_warnings: GcWarnings
) -> None:
    """S8 (recipe e7): COMMIT answered with FATAL 57P01 is a definite failure: retried, applied exactly once."""
    fault_server.execute(
        "DROP TABLE IF EXISTS commit_probe;"
        " CREATE TABLE commit_probe (id int PRIMARY KEY, note text NOT NULL);"
        " GRANT ALL ON commit_probe TO app",
        database=DB,
    )
    fault_server.install_commit_delay("commit_probe", database=DB)
    Session = async_sessionmaker(bank)
    injected = _n(20, 100)
    attempts_total = 0

    def kill_commit_in_sleep() -> None:
        fault_server.wait_for(lambda: bool(fault_server.pids_sleeping_in_commit()), timeout=20)
        pid = fault_server.pids_sleeping_in_commit()[0]
        fault_server.execute("SELECT pg_terminate_backend(%s)", (pid,))

    for n in range(injected):
        attempts = 0

        async def work(session: AsyncSession, n: int = n) -> None:
            nonlocal attempts
            attempts += 1
            note = "chaos-delay-commit" if attempts == 1 else "ok"
            await session.execute(
                text("INSERT INTO commit_probe VALUES (:i, :note)"), {"i": n, "note": note}
            )

        killer = asyncio.create_task(asyncio.to_thread(kill_commit_in_sleep))
        await run_transaction(Session, work, retry=_policy())
        await killer
        attempts_total += attempts
    rows = fault_server.execute(
        "SELECT count(*), count(*) FILTER (WHERE note = 'ok') FROM commit_probe", database=DB
    )[0]
    _figure(
        "S8",
        f"{injected} COMMITs killed by FATAL: {attempts_total - injected} retried, "
        f"{rows[1]}/{injected} applied exactly once by the retry",
    )
    assert attempts_total == 2 * injected
    assert rows == (injected, injected)
    await assert_nothing_leaked(bank, fault_server, DB, gc=gc_warnings)


async def test_s13_cancellation_storm(
    bank: AsyncEngine, fault_server: PgServer, gc_warnings: GcWarnings
) -> None:
    """S13: transactions cut by random client timeouts and task.cancel() -- some of them while COMMIT
    is in flight: nothing leaks, nothing is retried, and re-submitting each interrupted request with
    its idempotency key resolves it (already applied, or applied now): every request lands exactly once.
    """
    import random

    from sqlalchemy_resilience.schema import metadata

    async with bank.begin() as conn:
        await conn.run_sync(metadata.create_all)
    rng = random.Random(13)
    Session = async_sessionmaker(bank)
    total = _n(300, 1000)
    keys = [uuid.uuid4() for _ in range(total)]
    started_attempts = 0
    cancelled = timed_out = completed = 0
    interrupted: list[uuid.UUID] = []
    gate = asyncio.Semaphore(8)

    def work_for(key: uuid.UUID, *, sleep: bool):  # type: ignore[no-untyped-def]
        async def work(session: AsyncSession) -> None:
            nonlocal started_attempts
            started_attempts += 1
            if sleep:
                await session.execute(text("SELECT pg_sleep(:s)"), {"s": rng.uniform(0.01, 0.3)})
            await session.execute(text("INSERT INTO ledger_entries VALUES (:k, 1)"), {"k": key})

        return work

    async def one(i: int) -> None:
        nonlocal cancelled, timed_out, completed
        key = keys[i]
        call = run_transaction(
            Session, work_for(key, sleep=True), retry=_policy(), idempotency_key=str(key)
        )
        async with gate:
            if i % 3 == 0:
                task = asyncio.ensure_future(call)
                # When the cancel lands: random, by design.
                await asyncio.sleep(rng.uniform(0.0, 0.2))
                task.cancel()
                try:
                    await task
                    completed += 1
                except asyncio.CancelledError:
                    cancelled += 1
                    interrupted.append(key)
            else:
                try:
                    await asyncio.wait_for(call, timeout=rng.uniform(0.005, 0.2))
                    completed += 1
                except TimeoutError:
                    timed_out += 1
                    interrupted.append(key)

    await asyncio.gather(*(one(i) for i in range(total)))
    storm_attempts = started_attempts
    checked_out = bank.sync_engine.pool.checkedout()  # type: ignore[attr-defined]
    await assert_nothing_leaked(bank, fault_server, DB, gc=gc_warnings, followups=500)
    already = applied_now = 0
    for key in interrupted:
        try:
            await run_transaction(
                Session, work_for(key, sleep=False), retry=_policy(), idempotency_key=str(key)
            )
            applied_now += 1
        except sr.AlreadyApplied:
            already += 1
    per_key = fault_server.execute(
        "SELECT count(*), count(DISTINCT request_id) FROM ledger_entries", database=DB
    )[0]
    _figure(
        "S13",
        f"{total} transactions: {cancelled} cancelled, {timed_out} timed out, {completed} completed; "
        f"{storm_attempts} attempts started (none retried); after: {checked_out} checked out, "
        f"GC warnings {len(gc_warnings.hits)}; {len(interrupted)} re-submitted by key: "
        f"{already} already applied, {applied_now} applied now; rows {per_key[0]} for {total} requests",
    )
    assert cancelled + timed_out + completed == total
    assert storm_attempts <= total  # cancellation is never retried
    assert cancelled + timed_out > total // 2
    assert per_key == (total, total)  # every request exactly once


async def test_s14_idle_in_transaction_timeout(
    bank: AsyncEngine, fault_server: PgServer, gc_warnings: GcWarnings
) -> None:
    """S14: 10% of transactions idle past idle_in_transaction_session_timeout: retried, no corrupted reuse."""
    Session = async_sessionmaker(bank)
    total, slow_every = 100, 10
    retries = 0
    errors: list[BaseException] = []
    for n in range(total):
        attempts = 0

        async def work(session: AsyncSession, n: int = n) -> None:
            nonlocal attempts
            attempts += 1
            await session.execute(text("SET LOCAL idle_in_transaction_session_timeout = '200ms'"))
            await session.execute(text("UPDATE accounts SET balance = balance WHERE id = 1"))
            if attempts == 1 and n % slow_every == 0:
                await asyncio.sleep(0.3)  # the slow unit itself: idle past the 200 ms timeout
            await session.execute(text("SELECT 1"))

        try:
            await run_transaction(Session, work, retry=_policy())
        except sr.ResilienceError as exc:
            errors.append(exc)
        retries += attempts - 1
    _figure(
        "S14",
        f"{total} transactions, {total // slow_every} idle past the timeout: {retries} retried, "
        f"{len(errors)} failed ({sorted({type(e).__name__ for e in errors})})",
    )
    assert errors == []
    assert retries == total // slow_every
    await assert_nothing_leaked(bank, fault_server, DB, gc=gc_warnings, followups=500)


async def test_s15_server_hang(fault_server: PgServer, gc_warnings: GcWarnings) -> None:
    """S15: (a) a SIGSTOPped backend: attempt_timeout fires at T and the retry succeeds elsewhere;
    (b) a SIGSTOPped postmaster: connects time out, the breaker opens and later calls fail fast;
    after SIGCONT a probe closes it.
    """
    import signal

    pg = fault_server.require_owned()
    setup_bank(fault_server, DB)
    engine = create_async_engine(
        fault_server.app_url(DB, driver="asyncpg"), connect_args={"timeout": 1.0}
    )
    instrument(engine)
    Session = async_sessionmaker(engine)
    try:
        # (a) the backend of a checked-out connection stops for 3 s.
        attempts = 0

        stopped: list[int] = []

        async def work(session: AsyncSession) -> int:
            nonlocal attempts
            attempts += 1
            pid = int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            if attempts == 1:
                stopped.append(pid)
                os.kill(pid, signal.SIGSTOP)
                asyncio.get_running_loop().call_later(3.0, os.kill, pid, signal.SIGCONT)
            await session.execute(text("UPDATE accounts SET balance = balance WHERE id = 1"))
            return pid

        t0 = time.monotonic()
        await run_transaction(Session, work, retry=_policy(), attempt_timeout=1.0)
        call_a = time.monotonic() - t0
        # The stopped backend resumes (SIGCONT after 3 s) and exits.
        await asyncio.to_thread(
            fault_server.wait_for, lambda: not fault_server.backend_exists(stopped[0]), timeout=30
        )

        # (b) the postmaster stops: new connects hang.
        await engine.dispose()
        clock = FakeClock()
        breaker = CircuitBreaker(failure_threshold=2, recovery_timeout=1.0, clock=clock)
        transitions: list[str] = []
        breaker.add_listener(lambda t: transitions.append(t.current.name))
        # Fail fast at the open breaker: this leg measures the refusals.
        once = RetryPolicy(attempts=1, wait_at_breaker=False)

        async def ping(session: AsyncSession) -> int:
            return int((await session.execute(text("SELECT 1"))).scalar_one())

        durations: list[float] = []
        with pg.paused():
            for _ in range(2):
                t1 = time.monotonic()
                with pytest.raises(sr.DatabaseUnavailable):
                    await run_transaction(Session, ping, retry=once, breaker=breaker)
                durations.append(time.monotonic() - t1)
            t2 = time.monotonic()
            for _ in range(20):
                with pytest.raises(sr.CircuitOpenError):
                    await run_transaction(Session, ping, retry=once, breaker=breaker)
            fail_fast = (time.monotonic() - t2) / 20
        clock.advance(1.05)  # past recovery_timeout
        assert await run_transaction(Session, ping, retry=once, breaker=breaker) == 1
        _figure(
            "S15",
            f"(a) stopped backend: call done in {call_a:.2f} s with attempt_timeout 1.0 s "
            f"({attempts} attempts); (b) stopped postmaster: connects cut at "
            f"{', '.join(f'{d:.2f}' for d in durations)} s, then {fail_fast * 1e6:.0f} µs per refused call; "
            f"breaker {' -> '.join(['CLOSED', *transitions])}",
        )
        assert attempts == 2
        assert 0.9 <= call_a <= 1.0 + 0.5 + 0.2  # deadline + cleanup grace (+ scheduling slack)
        assert all(0.9 <= d <= 1.6 for d in durations)
        assert transitions == ["OPEN", "HALF_OPEN", "CLOSED"]
        await assert_nothing_leaked(engine, fault_server, DB, gc=gc_warnings)
    finally:
        await engine.dispose()


async def test_s16_network_toxics(fault_server: PgServer, gc_warnings: GcWarnings) -> None:
    """S16: (a) a blackhole mid-query is cut by attempt_timeout for every worker, bounded;
    (b) a reset while streaming 100k rows is a disconnect and the read-only transaction is re-run.
    """
    setup_bank(fault_server, DB)
    proxy = FaultProxy("127.0.0.1", fault_server.port)
    engine = create_async_engine(
        fault_server.app_url(DB, driver="asyncpg").set(port=proxy.port),
        pool_size=5,
        max_overflow=0,
        pool_timeout=5,
        connect_args={"timeout": 1.0},
    )
    instrument(engine)
    Session = async_sessionmaker(engine)
    try:
        # (a) blackhole while 8 workers are mid-query.
        async def slow(session: AsyncSession) -> None:
            await session.execute(text("SELECT pg_sleep(0.5)"))

        async def worker() -> str:
            try:
                await run_transaction(
                    Session, slow, retry=RetryPolicy(attempts=1), attempt_timeout=1.0
                )
            except sr.QueryTimeout:
                return "timeout"
            except sr.ResilienceError as exc:
                return type(exc).__name__
            return "ok"

        t0 = time.monotonic()
        tasks = [asyncio.ensure_future(worker()) for _ in range(8)]

        def all_mid_query() -> bool:
            rows = fault_server.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE state = 'active' AND query = 'SELECT pg_sleep(0.5)'"
            )
            return rows[0][0] == 5  # every pooled connection; three more wait for one

        await asyncio.to_thread(fault_server.wait_for, all_mid_query, timeout=30)
        proxy.blackhole = True
        outcomes = await asyncio.gather(*tasks)
        blackhole_wall = time.monotonic() - t0
        proxy.blackhole = False
        proxy.reset_peer()
        await engine.dispose()
        bound = (5 + 1.0 + 2.0) * 2 * 1.2  # (pool_timeout + attempt + terminate) * ceil(8/5) * 1.2

        # (b) reset while streaming a 100k-row result.
        attempts = 0

        async def read_all(session: AsyncSession) -> int:
            nonlocal attempts
            attempts += 1
            result = await session.stream(text("SELECT g FROM generate_series(1, 100000) g"))
            count = 0
            async for _ in result:
                count += 1
                if attempts == 1 and count == 20_000:
                    proxy.reset_peer()
            return count

        rows = await run_transaction(Session, read_all, retry=_policy(), read_only=True)
        _figure(
            "S16",
            f"(a) blackhole with 8 workers on pool 5: all done in {blackhole_wall:.2f} s "
            f"(bound {bound:.1f} s), outcomes {sorted(set(outcomes))}; "
            f"(b) reset at row 20000 of 100000: re-run, {rows} rows on attempt {attempts}",
        )
        assert blackhole_wall <= bound
        assert "ok" not in outcomes
        assert rows == 100_000 and attempts == 2
        await assert_nothing_leaked(engine, fault_server, DB, gc=gc_warnings)
    finally:
        await engine.dispose()
        proxy.close()


async def test_s19_exhaustion(fault_server: PgServer, gc_warnings: GcWarnings) -> None:
    """S19: (a) a role limit of 3 under 8 callers: TooManyConnections retried at a bounded connect rate;
    (b) 20 callers on a pool of 5: PoolExhausted at the pool timeout +-10%.
    """
    setup_bank(fault_server, DB)
    fault_server.execute("ALTER ROLE app CONNECTION LIMIT 3")
    engine = create_async_engine(
        fault_server.app_url(DB, driver="asyncpg"), pool_size=5, max_overflow=0
    )
    instrument(engine)
    connects: list[float] = []
    event.listen(engine.sync_engine, "do_connect", lambda *a: connects.append(time.monotonic()))
    Session = async_sessionmaker(engine)

    async def hold(session: AsyncSession) -> None:
        await session.execute(text("SELECT pg_sleep(0.3)"))

    try:
        t0 = time.monotonic()
        await asyncio.gather(*(run_transaction(Session, hold, retry=_policy()) for _ in range(8)))
        wall_a = time.monotonic() - t0
        rate = len(connects) / wall_a
        await engine.dispose()
    finally:
        fault_server.execute("ALTER ROLE app CONNECTION LIMIT -1")
    timeouts: list[float] = []
    engine_b = create_async_engine(
        fault_server.app_url(DB, driver="asyncpg"), pool_size=5, max_overflow=0, pool_timeout=0.5
    )
    instrument(engine_b)
    SessionB = async_sessionmaker(engine_b)

    async def caller() -> str:
        t = time.monotonic()
        try:
            await run_transaction(SessionB, hold, retry=RetryPolicy(attempts=1))
        except sr.PoolExhausted:
            timeouts.append(time.monotonic() - t)
            return "exhausted"
        return "ok"

    try:
        outcomes = await asyncio.gather(*(caller() for _ in range(20)))
        _figure(
            "S19",
            f"(a) limit 3, 8 callers: all done in {wall_a:.2f} s, {len(connects)} connect attempts "
            f"({rate:.0f}/s); (b) 20 callers, pool 5: {outcomes.count('ok')} ok, "
            f"{len(timeouts)} PoolExhausted at {min(timeouts):.3f}-{max(timeouts):.3f} s (timeout 0.5 s)",
        )
        assert rate < 200
        assert outcomes.count("ok") >= 5
        assert timeouts and all(0.45 <= t <= 0.55 + 0.3 for t in timeouts)
        await assert_nothing_leaked(engine_b, fault_server, DB, gc=gc_warnings)
    finally:
        await engine_b.dispose()


_WRITER = """
import sys
from sqlalchemy import create_engine, text
from sqlalchemy.orm import sessionmaker
from sqlalchemy_resilience import RetryPolicy, instrument, run_transaction_sync

engine = create_engine("sqlite:///" + sys.argv[1], connect_args={"timeout": 0.05})
instrument(engine)
Session = sessionmaker(engine)
policy = RetryPolicy(attempts=100, initial_backoff=0.001, max_backoff=0.02, deadline=30)
n = 0
while True:
    n += 1
    run_transaction_sync(Session, lambda s, n=n: s.execute(text("INSERT INTO acked VALUES (:n)"), {"n": n}), retry=policy)
    print(n, flush=True)
"""


def test_s20_sqlite(tmp_path: object) -> None:
    """S20: (a, b) SQLITE_BUSY and SQLITE_BUSY_SNAPSHOT under concurrent writers are retried; (c) kill -9 a
    writer: every acknowledged commit is there and the file is intact.
    """
    import signal
    import sqlite3
    import subprocess
    import sys
    import threading
    from pathlib import Path

    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session as SyncSession
    from sqlalchemy.orm import sessionmaker

    from sqlalchemy_resilience import run_transaction_sync

    path = Path(str(tmp_path)) / "s20.sqlite"
    setup = sqlite3.connect(path)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
    setup.execute("INSERT INTO counter VALUES (1, 0)")
    setup.execute("CREATE TABLE acked (n INTEGER PRIMARY KEY)")
    setup.commit()
    setup.close()
    engine = create_engine(
        f"sqlite:///{path}", connect_args={"timeout": 0.05, "isolation_level": None}
    )

    @event.listens_for(engine, "begin")
    def deferred_begin(conn: object) -> None:
        conn.exec_driver_sql("BEGIN")  # type: ignore[attr-defined]  # deferred: read, then write

    instrument(engine)
    Session = sessionmaker(engine)
    policy = RetryPolicy(
        attempts=200,
        initial_backoff=0.001,
        max_backoff=0.02,
        deadline=60,
        budget=RetryBudget(min_per_second=10_000),
    )
    retried: dict[str, int] = {}
    lock = threading.Lock()
    per_thread, threads_n = 50, 6

    def increment(session: SyncSession) -> None:
        value = session.execute(text("SELECT v FROM counter WHERE id = 1")).scalar_one()
        session.execute(text("UPDATE counter SET v = :v WHERE id = 1"), {"v": value + 1})

    class Counter(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if message.startswith("retrying after "):
                with lock:
                    name = message.split()[2] + (" " + message.split()[3] if "[" in message else "")
                    retried[name] = retried.get(name, 0) + 1

    counter = Counter()
    logging.getLogger("sqlalchemy_resilience.retry").addHandler(counter)
    failures: list[BaseException] = []

    def writer() -> None:
        for _ in range(per_thread):
            try:
                run_transaction_sync(Session, increment, retry=policy)
            except BaseException as exc:
                failures.append(exc)

    try:
        threads = [threading.Thread(target=writer) for _ in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        logging.getLogger("sqlalchemy_resilience.retry").removeHandler(counter)
        engine.dispose()
    reader = sqlite3.connect(path)
    try:
        final = reader.execute("SELECT v FROM counter").fetchone()[0]
    finally:
        reader.close()
    # (c) kill -9 a writer that prints after each commit.
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    acked: list[int] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while len(acked) < 300 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        acked.append(int(line))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    check_conn = sqlite3.connect(path)
    try:
        present = {row[0] for row in check_conn.execute("SELECT n FROM acked")}
        integrity = check_conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        check_conn.close()
    lost = [n for n in acked if n not in present]
    _figure(
        "S20",
        f"(a,b) {threads_n} writers x {per_thread} read-then-write increments: {len(failures)} failed, "
        f"counter {final}/{threads_n * per_thread}, retried {retried}; "
        f"(c) kill -9 after {len(acked)} acknowledged commits: {len(lost)} lost, integrity {integrity}",
    )
    assert failures == []
    assert final == threads_n * per_thread
    assert sum(retried.values()) > 0
    assert len(acked) >= 300 and lost == []
    assert integrity == "ok"


async def test_s9a_s10_deterministic_conflicts(
    bank: AsyncEngine, fault_server: PgServer, gc_warnings: GcWarnings
) -> None:
    """S9(a): recipe e1 x50, the unit of work the deadlock victim each time; S10: recipe e3 x20, 40001
    raised by COMMIT. Every one is retried and applied exactly once; none is reported unknown."""
    import psycopg

    Session = async_sessionmaker(bank)
    url = fault_server.admin_url(database=DB)
    admin = await asyncio.to_thread(
        psycopg.connect,
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        dbname=DB,
        autocommit=True,
    )
    deadlocks = 50
    victims = 0
    try:
        for _ in range(deadlocks):
            await asyncio.to_thread(admin.execute, "BEGIN")
            await asyncio.to_thread(admin.execute, "SET LOCAL deadlock_timeout = '10s'")
            await asyncio.to_thread(
                admin.execute, "UPDATE accounts SET balance = balance + 1 WHERE id = 1"
            )
            attempts = 0
            blocked: asyncio.Future[object] | None = None
            admin_waiting = asyncio.Event()

            async def work(
                session: AsyncSession, admin_waiting: asyncio.Event = admin_waiting
            ) -> None:
                nonlocal attempts, blocked
                attempts += 1
                await session.execute(
                    text("UPDATE accounts SET balance = balance - 1 WHERE id = 2")
                )
                if attempts == 1:
                    blocked = asyncio.ensure_future(
                        asyncio.to_thread(
                            admin.execute, "UPDATE accounts SET balance = balance - 1 WHERE id = 2"
                        )
                    )
                    admin_waiting.set()
                    await asyncio.to_thread(
                        fault_server.wait_for,
                        lambda: bool(
                            fault_server.execute("SELECT 1 FROM pg_locks WHERE NOT granted")
                        ),
                    )
                await session.execute(
                    text("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
                )

            task = asyncio.ensure_future(run_transaction(Session, work, retry=_policy()))
            await asyncio.wait(
                {task, asyncio.ensure_future(admin_waiting.wait())},
                return_when=asyncio.FIRST_COMPLETED,
            )
            if blocked is not None:
                await blocked
            await asyncio.to_thread(admin.execute, "COMMIT")
            await task
            # Every forced deadlock makes a victim that is re-run; on a loaded
            # machine a re-run may be caught in a second one (correct too).
            assert attempts >= 2
            victims += attempts - 1
    finally:
        await asyncio.to_thread(admin.close)
    balances = dict(
        fault_server.execute("SELECT id, balance FROM accounts WHERE id IN (1, 2)", database=DB)
    )
    # S10 at COMMIT: write skew under SERIALIZABLE, the second COMMIT refused.
    fault_server.execute(
        "DROP TABLE IF EXISTS ws; CREATE TABLE ws (i int PRIMARY KEY, t text);"
        " GRANT ALL ON ws TO app",
        database=DB,
    )
    conflicts = _n(20, 100)
    at_commit = 0
    for _ in range(conflicts):
        fault_server.execute(
            "TRUNCATE ws; INSERT INTO ws VALUES (5, 'apple'), (7, 'pear')", database=DB
        )
        other = await bank.connect()
        try:
            other = await other.execution_options(isolation_level="SERIALIZABLE")
            await other.begin()
            await other.execute(text("UPDATE ws SET t = 'apple' WHERE t = 'pear'"))
            attempts = 0

            async def skew(session: AsyncSession, other: AsyncConnection = other) -> None:
                nonlocal attempts
                attempts += 1
                await session.execute(text("UPDATE ws SET t = 'pear' WHERE t = 'apple'"))
                if attempts == 1:
                    await other.commit()  # commits first; ours is refused at COMMIT

            await run_transaction(Session, skew, retry=_policy(), isolation_level="SERIALIZABLE")
            at_commit += attempts - 1
        finally:
            await other.close()
    _figure(
        "S9a/S10",
        f"(e1) {deadlocks} deadlocks: {victims} victims retried, balances {balances} "
        f"(expected 1100/900); (e3) {conflicts} serialization failures at COMMIT: {at_commit} "
        "retried, 0 reported unknown",
    )
    assert victims >= deadlocks  # the money is what must be exact:
    assert balances == {1: 1000 + deadlocks * 2, 2: 1000 - deadlocks * 2}
    assert at_commit == conflicts
    await assert_nothing_leaked(bank, fault_server, DB, gc=gc_warnings)


async def test_s17_degraded_network_is_not_failure(
    fault_server: PgServer, gc_warnings: GcWarnings, caplog: pytest.LogCaptureFixture
) -> None:
    """S17 (the retry and breaker leg): latency 100+-50 ms, 256 KB/s and a slicer make the bank slow,
    not failing: 0 retries, 0 breaker transitions; throughput comes back when the toxics go."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience")
    setup_bank(fault_server, DB)
    proxy = FaultProxy("127.0.0.1", fault_server.port)
    engine = create_async_engine(
        fault_server.app_url(DB, driver="asyncpg").set(port=proxy.port), pool_size=5, max_overflow=0
    )
    instrument(engine)
    breaker = CircuitBreaker(failure_threshold=5)
    transitions: list[object] = []
    breaker.add_listener(transitions.append)
    try:
        fast, _ = await run_bank(engine, seconds=2.0, retry=_policy(), breaker=breaker, workers=4)
        proxy.latency, proxy.jitter = 0.1, 0.05
        proxy.bandwidth = 256 * 1024
        proxy.slice_bytes, proxy.slice_delay = 64, 0.001
        slow, audits = await run_bank(
            engine,
            seconds=5.0,
            retry=_policy(),
            breaker=breaker,
            workers=4,
            audit=audit_sum(fault_server, DB),
        )
        proxy.clear()
        after, _ = await run_bank(engine, seconds=2.0, retry=_policy(), breaker=breaker, workers=4)
        verdict = check(fault_server, DB, slow, audits)
        retries = [r for r in caplog.records if r.getMessage().startswith("retrying after")]
        _figure(
            "S17",
            f"{len(fast.ok) / 2:.0f} transfers/s before, {len(slow.ok) / 5:.1f}/s degraded "
            f"(p50 {verdict.p50_ms:.0f} ms), {len(after.ok) / 2:.0f}/s after; "
            f"{len(retries)} retries, {len(transitions)} breaker transitions, "
            f"{sum(slow.errors.values())} errors",
        )
        assert retries == []
        assert transitions == []
        assert set(slow.errors) <= {"CheckViolation"}
        assert verdict.lost == 0 and verdict.phantom == 0
        assert verdict.p50_ms > 100  # the toxics really slowed it down
        assert len(after.ok) / 2 > 2 * len(slow.ok) / 5
        await assert_nothing_leaked(engine, fault_server, DB, gc=gc_warnings)
    finally:
        await engine.dispose()
        proxy.close()


async def test_s17_slow_query_log_and_metrics_match_ground_truth(fault_server: PgServer) -> None:
    """S17 (the observability leg): 15 of 60 statements are slowed by the proxy; the slow-query log
    names exactly those (precision = recall = 1.0), and the histogram and the statistics agree."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    proxy = FaultProxy("127.0.0.1", fault_server.port)
    engine = create_async_engine(fault_server.app_url(DB, driver="asyncpg").set(port=proxy.port))
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.WARNING)
    slow_logger = logging.getLogger("sqlalchemy_resilience.slow_query")
    slow_logger.addHandler(handler)
    try:
        instr = instrument(engine, slow_query_threshold=0.1, meter_provider=provider)
        slowed = set(random.Random(17).sample(range(60), 15))
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))  # connect and warm up outside the experiment
            for i in range(60):
                # A distinct statement per step (its alias), so each is its own log line.
                stmt = text(f"SELECT CAST(:v AS integer) AS s17_{i}")
                if i in slowed:
                    proxy.latency = 0.12
                try:
                    await conn.execute(stmt, {"v": i})
                finally:
                    proxy.latency = 0.0
        statements = [str(r.__dict__["sqlalchemy_resilience.statement"]) for r in records]
        logged = {int(s.rsplit("s17_", 1)[1]) for s in statements if "s17_" in s}
        hits = len(logged & slowed)
        precision = hits / len(logged) if logged else 0.0
        recall = hits / len(slowed)
        data = reader.get_metrics_data()
        assert data is not None
        observed = over = 0
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != "db.client.operation.duration":
                        continue
                    for point in metric.data.data_points:
                        observed += point.count
                        bounds = list(point.explicit_bounds)
                        # Buckets above the 0.1 s boundary hold the slowed statements.
                        over += sum(point.bucket_counts[bounds.index(0.1) + 1 :])
        assert instr.stats is not None
        ours = [s for s in instr.stats.all() if "s17_" in s.statement]
        _figure(
            "S17 observability",
            f"slow log precision {precision:.2f} recall {recall:.2f} ({len(logged)} logged, "
            f"{len(slowed)} slowed of 60); histogram {over} over 0.1 s of {observed} statements; "
            f"statistics {sum(s.calls for s in ours)} calls",
        )
        assert precision == 1.0
        assert recall == 1.0
        assert over == 15
        assert observed >= 61  # the 60, the warm-up and SQLAlchemy's first-connect queries
        assert len(ours) == 60
        assert all(s.calls == 1 for s in ours)
        assert sum(1 for s in ours if s.max >= 0.1) == 15
    finally:
        slow_logger.removeHandler(handler)
        await engine.dispose()
        provider.shutdown()
        proxy.close()


class _Records(logging.Handler):
    def __init__(self, name: str) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(name)

    def __enter__(self) -> list[logging.LogRecord]:
        self.logger.addHandler(self)
        return self.records

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_s19c_one_leak_report_under_load(
    fault_server: PgServer, gc_warnings: GcWarnings
) -> None:
    """S19 (c): a connection held past leak_threshold while the bank runs gives exactly one report
    (holder and checkout stack) and one return record; the bank's own short holds give none."""
    setup_bank(fault_server, DB)
    engine = create_async_engine(
        fault_server.app_url(DB, driver="asyncpg"), pool_size=6, max_overflow=0
    )
    try:
        instr = instrument(engine, leak_threshold=0.5)

        async def leaky() -> None:
            async with engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
                await until(lambda: instr.suspected_leaks == 1, what="the leak report")

        with _Records("sqlalchemy_resilience.pool") as records:
            leak = asyncio.create_task(leaky(), name="s19c-leaky")
            result, _ = await run_bank(engine, seconds=3.0, retry=_policy(), workers=4)
            await leak
        held = [r for r in records if not r.__dict__["sqlalchemy_resilience.returned"]]
        returned = [r for r in records if r.__dict__["sqlalchemy_resilience.returned"]]
        _figure(
            "S19c",
            f"{len(result.ok)} transfers by 4 workers alongside one connection held until reported "
            f"(leak_threshold 0.5 s): {len(held)} leak report(s), {len(returned)} return record(s), "
            f"checkout stack {held[0].__dict__['sqlalchemy_resilience.checkout_stack'][:1] if held else '-'}",
        )
        assert len(held) == 1
        assert held[0].__dict__["sqlalchemy_resilience.holder"] == "task 's19c-leaky'"
        assert held[0].__dict__["sqlalchemy_resilience.checkout_stack"][0].endswith(" in leaky")
        assert len(returned) == 1
        assert instr.suspected_leaks == 0
        verdict = check(fault_server, DB, result, [])
        assert verdict.lost == 0 and verdict.phantom == 0
        await assert_nothing_leaked(engine, fault_server, DB, gc=gc_warnings)
    finally:
        await engine.dispose()


async def test_s17_adaptive_pool_follows_a_degraded_network(fault_server: PgServer) -> None:
    """S17 (the adaptive-pool leg): 100 ms of latency makes 8 workers need more connections; the
    autosizer grows the pool (never past max), then shrinks it back to min once the load drops."""
    setup_bank(fault_server, DB)
    proxy = FaultProxy("127.0.0.1", fault_server.port)
    engine = create_async_engine(
        fault_server.app_url(DB, driver="asyncpg").set(port=proxy.port),
        poolclass=AsyncResizableQueuePool,
        pool_size=2,
        max_overflow=0,
        pool_timeout=30,
    )
    try:
        instr = instrument(engine)
        sizer = PoolAutosizer(
            engine, monitor=instr.pool, min_size=2, max_size=10, interval=0.25, shrink_after=4
        )
        await sizer.start()
        try:
            proxy.latency = 0.1
            slow, _ = await run_bank(engine, seconds=4.0, retry=_policy(), workers=8)
            peak = engine.sync_engine.pool.size()
            proxy.clear()
            calm_from = time.monotonic()
            light, _ = await run_bank(engine, seconds=3.0, retry=_policy(), workers=1)
        finally:
            sizer.detach()
        back_at = next(
            (d.at - calm_from for d in sizer.decisions if d.at > calm_from and d.size == 2), None
        )
        sizes = [2] + [d.size for d in sizer.decisions]
        directions = [b > a for a, b in itertools.pairwise(sizes)]
        changes = sum(1 for a, b in itertools.pairwise(directions) if a != b)
        _figure(
            "S17 adaptive pool",
            f"latency 100 ms, 8 workers: pool 2 -> {peak} ({len(slow.ok)} transfers, "
            f"{sum(slow.errors.values())} errors); load down to 1 worker: back to 2 after "
            f"{back_at if back_at is None else round(back_at, 2)} s; sizes {sizes}",
        )
        assert 6 <= peak <= 10
        assert max(sizes) <= 10
        assert changes == 1, sizes
        assert sizes[-1] == 2 and back_at is not None and back_at < 3.0
        assert set(slow.errors) <= {"CheckViolation"} and set(light.errors) <= {"CheckViolation"}
    finally:
        await engine.dispose()
        proxy.close()


async def test_contention_under_kills_with_the_default_budget(
    bank: AsyncEngine, fault_server: PgServer, gc_warnings: GcWarnings
) -> None:
    """SERIALIZABLE transfers on 10 accounts, 16 workers, a backend killed every 150 ms and one
    restart, with run_transaction's default shared budget: contention is not refused.

    A budget is there to stop retry storms against a database that is down
    (tests/retry/test_session.py keeps that leg); 40001/40P01 are not charged
    to it and a retry that then succeeds is refunded, so a healthy but
    contended and flaky database loses no work to it.
    """
    pg = fault_server.require_owned()

    async def chaos() -> None:
        restarted = False
        started = time.monotonic()
        while time.monotonic() - started < 8.0:
            await asyncio.sleep(0.15)  # the scenario's tick (lock contention, then a restart)
            if not restarted and time.monotonic() - started > 4.0:
                restarted = True
                await asyncio.to_thread(pg.restart)
                continue
            with contextlib.suppress(Exception):
                pids = await asyncio.to_thread(fault_server.backend_pids, database=DB)
                if pids:
                    os.kill(random.choice(pids), signal.SIGTERM)  # one backend: 57P01

    history, audits = await run_bank(
        bank,
        seconds=8.0,
        workers=16,
        hot=10,
        isolation_level="SERIALIZABLE",
        retry=RetryPolicy(attempts=30),  # budget=None: the engine's shared default budget
        chaos=chaos,
        audit=audit_sum(fault_server, DB),
    )
    await asyncio.to_thread(fault_server.wait_for, _accepting(fault_server), timeout=30)
    verdict = check(fault_server, DB, history, audits)
    attempted = verdict.ok + verdict.failed + verdict.unknown
    budget = RetryBudget.for_engine(bank.sync_engine)
    _figure(
        "S10k contention + kills, default budget",
        f"{attempted} transfers: {verdict.line()}; errors {history.errors}; "
        f"budget denials {budget.denied}",
    )
    assert verdict.lost == 0 and verdict.phantom == 0
    assert verdict.total_balance == TOTAL and verdict.ledger_consistent
    assert set(history.errors) <= {"CommitOutcomeUnknown", "CheckViolation"}, history.errors
    assert verdict.ok >= 0.99 * (attempted - history.errors.get("CheckViolation", 0))
    await assert_nothing_leaked(bank, fault_server, DB, gc=gc_warnings)
