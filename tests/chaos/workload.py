"""H4 (bank workload + checker) and H5 ("nothing leaked") for the chaos tier (FAULTS.md section 3).

The bank: 50 accounts of 1000, transfers recorded in ``transfers`` whose
primary key is the request id (the idempotency key). Each transfer is one
``run_transaction``: insert the transfer ``ON CONFLICT DO NOTHING RETURNING``
(nothing returned: it was already applied), then move the money, accounts
locked in id order (or in random order, to provoke deadlocks). The client keeps
a history of (request id, outcome); the checker compares it with the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import statistics
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.util.queue import Empty

import sqlalchemy_resilience as sr
from sqlalchemy_resilience.retry import BreakerState
from tests.faultproxy import most_in_flight
from tests.pgharness import PgServer

ACCOUNTS = 50
INITIAL = 1000
TOTAL = ACCOUNTS * INITIAL


def setup_bank(server: PgServer, database: str) -> None:
    """(Re)create the bank tables as the admin, owned by the app role."""
    server.execute("DROP TABLE IF EXISTS transfers, accounts, ledger_entries", database=database)
    server.execute(
        "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL CHECK (balance >= 0))",
        database=database,
    )
    server.execute(
        "INSERT INTO accounts SELECT g, %s FROM generate_series(1, %s) g",
        (INITIAL, ACCOUNTS),
        database=database,
    )
    server.execute(
        "CREATE TABLE transfers (request_id uuid PRIMARY KEY, src int NOT NULL, dst int NOT NULL,"
        " amount int NOT NULL, xid xid8 NOT NULL DEFAULT pg_current_xact_id())",
        database=database,
    )
    # The negative control: no unique key, so a blind retry shows up as a duplicate.
    server.execute(
        "CREATE TABLE ledger_entries (request_id uuid NOT NULL, amount int NOT NULL)",
        database=database,
    )
    server.execute("GRANT ALL ON accounts, transfers, ledger_entries TO app", database=database)


@dataclass
class History:
    """What the clients saw, per request id."""

    ok: set[uuid.UUID] = field(default_factory=set)
    fail: set[uuid.UUID] = field(default_factory=set)
    unknown: set[uuid.UUID] = field(default_factory=set)
    already: set[uuid.UUID] = field(default_factory=set)
    errors: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    successes_at: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(
        self, request_id: uuid.UUID, outcome: str, error: BaseException | None, started: float
    ) -> None:
        now = time.monotonic()
        with self.lock:
            getattr(self, outcome).add(request_id)
            if error is not None:
                name = type(error).__name__
                self.errors[name] = self.errors.get(name, 0) + 1
            else:
                self.latencies.append(now - started)
                self.successes_at.append(now)


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, sr.CommitOutcomeUnknown):
        return "unknown"
    if isinstance(exc, sr.RetryExhausted) and any(
        isinstance(e, sr.CommitOutcomeUnknown) for e in exc.errors
    ):
        return "unknown"
    return "fail"


async def transfer(
    Session: Callable[[], AsyncSession],
    history: History,
    *,
    retry: sr.RetryPolicy,
    breaker: sr.CircuitBreaker | None = None,
    random_order: bool = False,
    rng: random.Random,
    hot: int = ACCOUNTS,
    isolation_level: str | None = None,
    lock_timeout_ms: int | None = None,
    nowait: bool = False,
    bare: bool = False,
) -> None:
    """One bank transfer as one run_transaction, recorded in ``history``.

    ``bare`` runs the same work in a plain ``async with Session() as s, s.begin()``
    (no retry, no translation needed) -- the baseline for the overhead figure.

    ``hot`` limits transfers to the first accounts (contention), ``random_order``
    locks them in random order (deadlocks), ``isolation_level`` and
    ``lock_timeout_ms`` apply to the transaction.
    """
    request_id = uuid.uuid4()
    src, dst = rng.sample(range(1, hot + 1), 2)
    amount = rng.randint(1, 20)

    async def work(session: AsyncSession) -> bool:
        if lock_timeout_ms is not None:
            await session.execute(
                text("SELECT set_config('lock_timeout', :v, true)"), {"v": f"{lock_timeout_ms}ms"}
            )
        inserted = await session.execute(
            text(
                "INSERT INTO transfers (request_id, src, dst, amount) VALUES (:r, :s, :d, :a)"
                " ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
            ),
            {"r": request_id, "s": src, "d": dst, "a": amount},
        )
        if inserted.first() is None:
            return False  # an earlier attempt committed it
        if nowait:
            # Lock both rows up front, failing at once (55P03) when another
            # transfer holds one: contention without any timer race.
            await session.execute(
                text("SELECT id FROM accounts WHERE id IN (:a, :b) ORDER BY id FOR UPDATE NOWAIT"),
                {"a": src, "b": dst},
            )
        order = [(src, -amount), (dst, amount)]
        if not random_order:
            order.sort()
        for account, delta in order:
            await session.execute(
                text("UPDATE accounts SET balance = balance + :d WHERE id = :i"),
                {"d": delta, "i": account},
            )
        return True

    started = time.monotonic()
    if bare:
        try:
            async with Session() as session, session.begin():
                await work(session)
        except Exception as exc:
            history.record(request_id, "fail", exc, started)
        else:
            history.record(request_id, "ok", None, started)
        return
    await recorded(
        history,
        request_id,
        started,
        sr.run_transaction(
            Session,
            work,
            retry=retry,
            breaker=breaker,
            idempotent=True,
            isolation_level=isolation_level,
        ),
    )


async def recorded(
    history: History, request_id: uuid.UUID, started: float, unit: Awaitable[bool]
) -> None:
    """Await a transfer's ``run_transaction`` (True: applied now; False: an earlier
    attempt had) and record what the client saw."""
    try:
        applied_now = await unit
    except sr.CheckViolation as exc:
        history.record(request_id, "fail", exc, started)  # insufficient funds: a legal refusal
    except sr.ResilienceError as exc:
        history.record(request_id, _outcome(exc), exc, started)
    else:
        history.record(request_id, "ok" if applied_now else "already", None, started)
        if not applied_now:
            history.ok.add(request_id)


# How long after a breaker opens a connect it had already let through may
# still begin (a thread or task between its permit and its connect).
SETTLE = 0.3


def not_closed(transitions: list[tuple[float, BreakerState]]) -> list[tuple[float, float]]:
    """From a breaker's transitions ``(when, new state)``: the intervals it spent open or
    half-open (till the end of time when it stayed so)."""
    spans: list[tuple[float, float]] = []
    opened: float | None = None
    for at, state in transitions:
        if state is BreakerState.CLOSED and opened is not None:
            spans.append((opened, at))
            opened = None
        elif state is not BreakerState.CLOSED and opened is None:
            opened = at
    if opened is not None:
        spans.append((opened, float("inf")))
    return spans


def connects_while_not_closed(
    logs: list[list[list[float]]], transitions: list[tuple[float, BreakerState]]
) -> int:
    """The most connects in flight at once to one host (one log of ``[started, ended]``
    per host) among those begun while the breaker was not closed, from :data:`SETTLE`
    after it opened: a connect whose permit came before it opened (one a proxy may hold
    for seconds) is not the breaker's to stop."""
    return max(
        (
            most_in_flight(log, start + SETTLE, end, started=True)
            for start, end in not_closed(transitions)
            if end > start + SETTLE
            for log in logs
        ),
        default=0,
    )


NAIVE_TRIES = 3
NAIVE_PAUSE = 0.5  # seconds between a naive loop's tries


async def naive_unit(
    Session: Callable[[], AsyncSession],
    history: History,
    request_id: uuid.UUID,
    work: Callable[[AsyncSession], Awaitable[bool]],
) -> None:
    """``work`` the way many applications retry, the baseline the package is measured
    against: plain SQLAlchemy, any connection-looking error gets up to three tries with a
    fixed pause, nothing else is known about the failure. ``work`` returns False when the
    transfer's key shows an earlier try already committed it (counted in ``already``)."""
    started = time.monotonic()
    for attempt in range(NAIVE_TRIES):
        try:
            async with Session() as session, session.begin():
                if not await work(session):
                    history.already.add(request_id)  # the key saved a double apply
        except sa_exc.IntegrityError as exc:  # insufficient funds: a legal refusal
            history.record(request_id, "fail", exc, started)
            return
        except (sa_exc.DBAPIError, OSError) as exc:
            if attempt == NAIVE_TRIES - 1:
                history.record(request_id, "fail", exc, started)
                return
            # The naive loop's fixed pause between tries: the behaviour being measured.
            await asyncio.sleep(NAIVE_PAUSE)
        else:
            history.record(request_id, "ok", None, started)
            return


async def run_bank(
    engine: AsyncEngine,
    *,
    seconds: float,
    workers: int = 8,
    retry: sr.RetryPolicy | None = None,
    breaker: sr.CircuitBreaker | None = None,
    random_order: bool = False,
    chaos: Callable[[], Awaitable[None]] | None = None,
    audit: Callable[[], int | None] | None = None,
    seed: int = 7,
    hot: int = ACCOUNTS,
    isolation_level: str | None = None,
    lock_timeout_ms: int | None = None,
    nowait: bool = False,
    bare: bool = False,
    after_chaos: float = 0.0,
    transfer_fn: Callable[..., Awaitable[None]] | None = None,
) -> tuple[History, list[int | None]]:
    """Run ``workers`` transfer loops for ``seconds`` (and ``chaos`` alongside); 1 Hz audits.

    With ``after_chaos``, the loops also go on until ``chaos`` has finished and
    that many seconds more: on a loaded machine the faults take longer, and a
    scenario that checks recovery after the last one needs time after it to see it.
    ``transfer_fn`` replaces :func:`transfer` (another database's SQL), called
    with the same keywords.
    """
    move = transfer_fn or transfer
    Session = async_sessionmaker(engine, expire_on_commit=False)
    history = History()
    policy = retry or sr.RetryPolicy(
        attempts=30, initial_backoff=0.01, max_backoff=0.5, deadline=30
    )
    stop_at = time.monotonic() + seconds
    chaos_done: list[float] = []  # when chaos finished
    audits: list[int | None] = []

    def running() -> bool:
        now = time.monotonic()
        if now < stop_at:
            return True
        if chaos is None or not after_chaos:
            return False
        return not chaos_done or now < chaos_done[0] + after_chaos

    async def worker(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        while running():
            # A caller refused at once (an open breaker told to fail fast)
            # must still let the loop run the others, and the chaos.
            await asyncio.sleep(0)
            await move(
                Session,
                history,
                retry=policy,
                breaker=breaker,
                random_order=random_order,
                rng=rng,
                hot=hot,
                isolation_level=isolation_level,
                lock_timeout_ms=lock_timeout_ms,
                nowait=nowait,
                bare=bare,
            )

    async def auditor() -> None:
        while running():
            await asyncio.sleep(1.0)  # the 1 Hz audit's tick
            if audit is not None:
                audits.append(await asyncio.to_thread(audit))

    async def chaos_then_note() -> None:
        assert chaos is not None
        try:
            await chaos()
        finally:
            chaos_done.append(time.monotonic())

    tasks = [worker(i) for i in range(workers)] + [auditor()]
    if chaos is not None:
        tasks.append(chaos_then_note())
    await asyncio.gather(*tasks)
    return history, audits


def audit_sum(server: PgServer, database: str) -> Callable[[], int | None]:
    """A 1 Hz audit: SUM(balance), or None when the server cannot be reached."""

    def run() -> int | None:
        try:
            return int(server.execute("SELECT sum(balance) FROM accounts", database=database)[0][0])
        except Exception:
            return None

    return run


def count_retries(caplog: Any) -> dict[str, int]:
    """How many re-runs the retry logger announced, by error class (``retrying after X``)."""
    counts: dict[str, int] = {}
    for record in caplog.records:
        message = record.getMessage()
        if message.startswith("retrying after "):
            name = message.split()[2]
            counts[name] = counts.get(name, 0) + 1
    return counts


@dataclass
class Verdict:
    """The checker's figures for one run."""

    ok: int
    failed: int
    unknown: int
    lost: int
    phantom: int
    unknown_resolved: int
    total_balance: int
    ledger_consistent: bool
    audits_ok: int
    audits_total: int
    p50_ms: float
    p99_ms: float

    def line(self) -> str:
        return (
            f"{self.ok} ok, {self.failed} failed, {self.unknown} unknown "
            f"({self.unknown_resolved} resolved): lost {self.lost}, phantom {self.phantom}; "
            f"sum {self.total_balance}, ledger {'ok' if self.ledger_consistent else 'BROKEN'}, "
            f"audits {self.audits_ok}/{self.audits_total}; p50 {self.p50_ms:.1f} ms, p99 {self.p99_ms:.1f} ms"
        )


def check(server: PgServer, database: str, history: History, audits: list[int | None]) -> Verdict:
    """Compare the history with the database (lost, phantom, unknown, invariant, ledger)."""
    present = {
        row[0] for row in server.execute("SELECT request_id FROM transfers", database=database)
    }
    balances = dict(server.execute("SELECT id, balance FROM accounts", database=database))
    expected = dict.fromkeys(range(1, ACCOUNTS + 1), INITIAL)
    for src, dst, amount in server.execute(
        "SELECT src, dst, amount FROM transfers", database=database
    ):
        expected[src] -= amount
        expected[dst] += amount
    lat = sorted(history.latencies) or [0.0]
    audited = [a for a in audits if a is not None]
    return Verdict(
        ok=len(history.ok),
        failed=len(history.fail),
        unknown=len(history.unknown),
        lost=len(history.ok - present),
        phantom=len(history.fail & present),
        unknown_resolved=len(history.unknown),  # presence in the table decides each one
        total_balance=sum(balances.values()),
        ledger_consistent=balances == expected,
        audits_ok=sum(1 for a in audited if a == TOTAL),
        audits_total=len(audits),
        p50_ms=statistics.median(lat) * 1000,
        p99_ms=lat[max(0, int(len(lat) * 0.99) - 1)] * 1000,
    )


class GcWarnings(logging.Handler):
    """Collects the pool's "garbage collector is trying to clean up" records (H5)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.hits: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "garbage collector is trying to clean up" in message:
            self.hits.append(message)


def _pooled_backend_pid(record: Any) -> int | None:
    driver = getattr(record.dbapi_connection, "driver_connection", None)
    if driver is None:
        return None
    if hasattr(driver, "get_server_pid"):  # asyncpg
        return int(driver.get_server_pid())
    info = getattr(driver, "info", None)  # psycopg
    return int(info.backend_pid) if info is not None else None


def _forget_killed_backends(pool: Any, alive: set[int]) -> None:
    """Soft-invalidate idle pooled connections whose backend the scenario killed.

    A kill loop can terminate a backend after the workload's last use of that
    pooled connection and before the follow-ups: the pool cannot know without
    a ping (the package's answer is ``ping_idle_connections``; the bank engine
    runs without it on purpose). Such a connection was killed, not leaked, so
    it is reconnected on its next checkout instead of failing the first
    follow-up. A pooled connection whose backend is still alive is left as it
    is and must prove healthy reuse.
    """
    queue = pool._pool
    idle: list[Any] = []
    with contextlib.suppress(Empty):
        while True:
            idle.append(queue.get_nowait())
    for record in idle:
        pid = _pooled_backend_pid(record)
        if pid is not None and pid not in alive:
            record.invalidate(soft=True)
        queue.put_nowait(record)


async def assert_nothing_leaked(
    engine: AsyncEngine,
    server: PgServer,
    database: str,
    *,
    gc: GcWarnings | None = None,
    followups: int = 200,
) -> None:
    """H5: no checked-out connection, no idle-in-transaction, no orphan query, healthy reuse."""
    pool: Any = engine.sync_engine.pool
    assert pool.checkedout() == 0, f"{pool.checkedout()} connections still checked out"
    limit = pool.size() + max(pool._max_overflow, 0)

    def settled() -> bool:
        rows = server.execute(
            "SELECT count(*) FILTER (WHERE true),"
            " count(*) FILTER (WHERE state = 'idle in transaction'),"
            " count(*) FILTER (WHERE state = 'active')"
            " FROM pg_stat_activity WHERE usename = 'app' AND datname = %s",
            (database,),
        )
        total, idle_tx, active = rows[0]
        return bool(total <= limit and idle_tx == 0 and active == 0)

    await asyncio.to_thread(server.wait_for, settled, timeout=3.0)
    _forget_killed_backends(pool, set(await asyncio.to_thread(server.backend_pids)))
    Session = async_sessionmaker(engine)

    async def ping(session: AsyncSession) -> int:
        return int((await session.execute(text("SELECT 1"))).scalar_one())

    for _ in range(followups):
        assert await sr.run_transaction(Session, ping, retry=sr.RetryPolicy(attempts=1)) == 1
    if gc is not None:
        assert gc.hits == [], gc.hits
