"""The chaos tier's bank workload on MariaDB (aiomysql): server crashes, killed sessions,
deadlocks and lock wait timeouts. 0 lost, 0 phantom, the ledger exact.

MySQL's own rules make two of these sharper than on PostgreSQL: a lock wait
timeout (1205) rolls back only the *statement*, leaving the transaction open,
so a transfer that committed after it would have moved money one way only
(the ledger check catches that); and a deadlock (1213) rolls back the whole
transaction, which the unit of work re-runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import RetryPolicy, instrument
from sqlalchemy_resilience.testing.embedded_mariadb import (
    EmbeddedMariaDB,
    EmbeddedMariaDBError,
    find_mariadb_bin,
)
from tests.mysqlharness import MariaDBServer
from tests.waiting import until

from .workload import ACCOUNTS, INITIAL, TOTAL, History, Verdict, _outcome, run_bank

pytestmark = pytest.mark.chaos

DB = "t_bank"


@pytest.fixture(scope="module")
def maria() -> Iterator[MariaDBServer]:
    """A MariaDB of the module's own, durable (every commit flushed), which it may crash."""
    try:
        find_mariadb_bin()
    except EmbeddedMariaDBError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}; .ci/run installs it, so in CI its absence is a failure")
        pytest.skip(str(exc))
    embedded = EmbeddedMariaDB(settings={"innodb-flush-log-at-trx-commit": "1"})
    embedded.start()
    own = MariaDBServer(embedded.url(driver="pymysql", database="mysql"), embedded)
    try:
        own.setup_app()
        own.create_database(DB)
        yield own
    finally:
        own.close()


def setup_bank(server: MariaDBServer) -> None:
    """(Re)create the bank: 50 accounts of 1000, and the transfers keyed by request id."""
    server.execute(f"DROP TABLE IF EXISTS `{DB}`.transfers, `{DB}`.accounts")
    server.execute(
        f"CREATE TABLE `{DB}`.accounts (id int PRIMARY KEY, balance int NOT NULL,"
        " CONSTRAINT funds CHECK (balance >= 0)) ENGINE=InnoDB"
    )
    rows = ", ".join(["(%s, %s)"] * ACCOUNTS)
    server.execute(
        f"INSERT INTO `{DB}`.accounts VALUES {rows}",
        [v for i in range(1, ACCOUNTS + 1) for v in (i, INITIAL)],
    )
    server.execute(
        f"CREATE TABLE `{DB}`.transfers (request_id char(36) PRIMARY KEY, src int NOT NULL,"
        " dst int NOT NULL, amount int NOT NULL) ENGINE=InnoDB"
    )


@pytest.fixture
async def bank(maria: MariaDBServer) -> AsyncIterator[AsyncEngine]:
    """A fresh bank and an instrumented aiomysql engine on it."""
    setup_bank(maria)
    engine = create_async_engine(maria.app_url(DB), pool_size=10, max_overflow=0)
    instrument(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


async def transfer(
    Session: Callable[[], AsyncSession],
    history: History,
    *,
    retry: RetryPolicy,
    breaker: sr.CircuitBreaker | None = None,
    random_order: bool = False,
    rng: random.Random,
    hot: int = ACCOUNTS,
    **_: Any,
) -> None:
    """The workload's transfer in MySQL's terms: ``INSERT IGNORE`` decides "already applied"."""
    request_id = uuid.uuid4()
    src, dst = rng.sample(range(1, hot + 1), 2)
    amount = rng.randint(1, 20)

    async def work(session: AsyncSession) -> bool:
        inserted = await session.execute(
            text(
                "INSERT IGNORE INTO transfers (request_id, src, dst, amount)"
                " VALUES (:r, :s, :d, :a)"
            ),
            {"r": str(request_id), "s": src, "d": dst, "a": amount},
        )
        if inserted.rowcount == 0:  # type: ignore[attr-defined]
            return False  # an earlier attempt committed it
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
    try:
        applied_now = await sr.run_transaction(
            Session, work, retry=retry, breaker=breaker, idempotent=True
        )
    except sr.CheckViolation as exc:
        history.record(request_id, "fail", exc, started)  # insufficient funds: a legal refusal
    except sr.ResilienceError as exc:
        history.record(request_id, _outcome(exc), exc, started)
    else:
        history.record(request_id, "ok" if applied_now else "already", None, started)
        if not applied_now:
            history.ok.add(request_id)


def audit(server: MariaDBServer) -> Callable[[], int | None]:
    """The 1 Hz audit: SUM(balance), or None while the server is down."""

    def run() -> int | None:
        try:
            return int(server.execute(f"SELECT sum(balance) FROM `{DB}`.accounts")[0][0])
        except Exception:
            return None

    return run


def check(server: MariaDBServer, history: History, audits: list[int | None]) -> Verdict:
    """The workload's checker, on MariaDB: lost, phantom, the invariant and the ledger."""
    moves = server.execute(f"SELECT request_id, src, dst, amount FROM `{DB}`.transfers")
    present = {uuid.UUID(row[0]) for row in moves}
    balances = dict(server.execute(f"SELECT id, balance FROM `{DB}`.accounts"))
    expected = dict.fromkeys(range(1, ACCOUNTS + 1), INITIAL)
    for _, src, dst, amount in moves:
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
        unknown_resolved=len(history.unknown),
        total_balance=sum(int(b) for b in balances.values()),
        ledger_consistent={k: int(v) for k, v in balances.items()} == expected,
        audits_ok=sum(1 for a in audited if a == TOTAL),
        audits_total=len(audits),
        p50_ms=statistics.median(lat) * 1000,
        p99_ms=lat[max(0, int(len(lat) * 0.99) - 1)] * 1000,
    )


def committed_more(server: MariaDBServer, n: int) -> Callable[[], Awaitable[bool]]:
    """A predicate for :func:`until`: ``n`` more transfers committed than when it was made
    (False while the server is down)."""
    start: list[int] = []

    def count() -> int | None:
        try:
            return int(server.execute(f"SELECT count(*) FROM `{DB}`.transfers")[0][0])
        except Exception:
            return None

    async def more() -> bool:
        now = await asyncio.to_thread(count)
        if now is None:
            return False
        if not start:
            start.append(now)
        return now >= start[0] + n

    return more


def _figure(name: str, line: str) -> None:
    print(f"\n[{name}] {line}")


def _retried(caplog: pytest.LogCaptureFixture) -> dict[str, int]:
    retried: dict[str, int] = {}
    for record in caplog.records:
        message = record.getMessage()
        if message.startswith("retrying after "):
            name = message.split()[2]
            retried[name] = retried.get(name, 0) + 1
    return retried


POLICY = RetryPolicy(
    attempts=60, initial_backoff=0.01, max_backoff=0.5, deadline=60, retry_lock_timeouts=True
)


async def test_m1_server_sigkilled_twice(
    bank: AsyncEngine, maria: MariaDBServer, caplog: pytest.LogCaptureFixture
) -> None:
    """mariadbd SIGKILLed and restarted (crash recovery) twice under 8 clients: every
    acknowledged transfer is there, no refused one is, every unknown outcome is resolved."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience.retry")
    embedded = maria.embedded
    assert embedded is not None

    async def crash_twice() -> None:
        for _ in range(2):
            await until(committed_more(maria, 200), what="200 transfers before the crash")
            await asyncio.to_thread(embedded.restart, mode="kill")

    history, audits = await run_bank(
        bank,
        seconds=4.0,
        retry=POLICY,
        chaos=crash_twice,
        audit=audit(maria),
        after_chaos=1.5,
        transfer_fn=transfer,
    )
    verdict = check(maria, history, audits)
    retried = _retried(caplog)
    _figure("M1 2 server SIGKILLs", f"{verdict.line()}; retried {retried}; errors {history.errors}")
    assert verdict.lost == 0 and verdict.phantom == 0
    assert verdict.total_balance == TOTAL and verdict.ledger_consistent
    assert verdict.ok > 0 and set(history.errors) <= {"CheckViolation"}
    assert sum(retried.values()) > 0  # the crashes really hit the transfers


async def test_m2_sessions_killed(
    bank: AsyncEngine, maria: MariaDBServer, caplog: pytest.LogCaptureFixture
) -> None:
    """KILL CONNECTION of two random app sessions every 200 ms: each transfer caught in one
    is re-run (lost before COMMIT) or resolved by its key (lost during COMMIT)."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience.retry")
    kills = 0

    async def kill_sessions() -> None:
        nonlocal kills
        rng = random.Random(3)
        for _ in range(15):
            await until(committed_more(maria, 20), what="20 transfers between rounds of kills")
            ids = await asyncio.to_thread(maria.connection_ids, DB)
            for victim in rng.sample(ids, min(2, len(ids))):
                # 1094 unknown thread: the session ended on its own first.
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(maria.execute, "KILL CONNECTION %s", (victim,))
                    kills += 1

    history, audits = await run_bank(
        bank,
        seconds=3.5,
        retry=POLICY,
        chaos=kill_sessions,
        audit=audit(maria),
        after_chaos=0.5,
        transfer_fn=transfer,
    )
    verdict = check(maria, history, audits)
    retried = _retried(caplog)
    _figure(
        "M2 KILL CONNECTION",
        f"{kills} sessions killed: {verdict.line()}; retried {retried}; errors {history.errors}",
    )
    assert kills > 0
    assert verdict.lost == 0 and verdict.phantom == 0
    assert verdict.total_balance == TOTAL and verdict.ledger_consistent
    assert set(history.errors) <= {"CheckViolation"}


async def test_m3_deadlocks(
    bank: AsyncEngine, maria: MariaDBServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Transfers among 4 accounts, rows locked in random order: InnoDB picks deadlock
    victims (1213, the whole transaction rolled back); each victim's unit is re-run."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience.retry")
    history, audits = await run_bank(
        bank,
        seconds=4.0,
        retry=POLICY,
        random_order=True,
        hot=4,
        audit=audit(maria),
        transfer_fn=transfer,
    )
    verdict = check(maria, history, audits)
    retried = _retried(caplog)
    _figure("M3 deadlocks", f"{verdict.line()}; retried {retried}; errors {history.errors}")
    assert verdict.lost == 0 and verdict.phantom == 0 and verdict.unknown == 0
    assert verdict.total_balance == TOTAL and verdict.ledger_consistent
    assert set(history.errors) <= {"CheckViolation"}
    assert retried.get("DeadlockDetected", 0) > 0  # the deadlocks really happened


async def test_m4_lock_wait_timeouts(
    bank: AsyncEngine, maria: MariaDBServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A holder keeps account 1 locked 1.5 s at a time with innodb_lock_wait_timeout=1: the
    transfers that wait get 1205, which rolls back the statement only; the package rolls the
    transaction back and re-runs it, so no transfer commits half-applied (the ledger)."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience.retry")
    maria.execute("SET GLOBAL innodb_lock_wait_timeout = 1")
    await bank.dispose()  # new sessions take the new global value
    try:

        async def hold_account_one() -> None:
            async with bank.connect() as conn:
                for round_ in range(1, 4):
                    await conn.execute(text("SELECT id FROM accounts WHERE id = 1 FOR UPDATE"))
                    # Held until a waiting transfer has given up on it (1205).
                    await until(
                        lambda round_=round_: _retried(caplog).get("LockNotAvailable", 0) >= round_,
                        what="a lock wait timeout",
                    )
                    await conn.rollback()
                    await until(committed_more(maria, 20), what="transfers through again")

        history, audits = await run_bank(
            bank,
            seconds=4.0,
            retry=POLICY,
            hot=3,
            chaos=hold_account_one,
            audit=audit(maria),
            after_chaos=0.5,
            transfer_fn=transfer,
        )
    finally:
        maria.execute("SET GLOBAL innodb_lock_wait_timeout = 50")
    verdict = check(maria, history, audits)
    retried = _retried(caplog)
    _figure(
        "M4 lock wait timeouts", f"{verdict.line()}; retried {retried}; errors {history.errors}"
    )
    assert verdict.lost == 0 and verdict.phantom == 0 and verdict.unknown == 0
    assert verdict.total_balance == TOTAL and verdict.ledger_consistent
    assert set(history.errors) <= {"CheckViolation"}
    assert retried.get("LockNotAvailable", 0) > 0  # the 1205s really happened
