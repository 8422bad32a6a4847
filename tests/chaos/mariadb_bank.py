"""The MariaDB bank: the chaos workload's schema, transfer and checks in MySQL's terms.

Shared by the MariaDB chaos legs (server faults in ``test_chaos_mariadb``, the
fault proxy's in ``test_chaos_mariadb_proxy``); the server is the package-scoped
``maria`` fixture of this directory's ``conftest``.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import RetryPolicy
from tests.mysqlharness import MariaDBServer

from .workload import ACCOUNTS, INITIAL, TOTAL, History, Verdict, naive_unit, recorded

DB = "t_bank"


def setup_bank(server: MariaDBServer, database: str = DB) -> None:
    """(Re)create the bank: 50 accounts of 1000, and the transfers keyed by request id."""
    server.execute(f"DROP TABLE IF EXISTS `{database}`.transfers, `{database}`.accounts")
    server.execute(
        f"CREATE TABLE `{database}`.accounts (id int PRIMARY KEY, balance int NOT NULL,"
        " CONSTRAINT funds CHECK (balance >= 0)) ENGINE=InnoDB"
    )
    rows = ", ".join(["(%s, %s)"] * ACCOUNTS)
    server.execute(
        f"INSERT INTO `{database}`.accounts VALUES {rows}",
        [v for i in range(1, ACCOUNTS + 1) for v in (i, INITIAL)],
    )
    server.execute(
        f"CREATE TABLE `{database}`.transfers (request_id char(36) PRIMARY KEY, src int NOT NULL,"
        " dst int NOT NULL, amount int NOT NULL) ENGINE=InnoDB"
    )


async def transfer(
    Session: Callable[[], AsyncSession],
    history: History,
    *,
    retry: RetryPolicy,
    breaker: sr.CircuitBreaker | None = None,
    random_order: bool = False,
    rng: random.Random,
    hot: int = ACCOUNTS,
    attempt_timeout: float | None = None,
    **_: Any,
) -> None:
    """The workload's transfer in MySQL's terms: ``INSERT IGNORE`` decides "already applied"."""
    request_id = uuid.uuid4()
    work = _work(request_id, rng, hot=hot, random_order=random_order)
    await recorded(
        history,
        request_id,
        time.monotonic(),
        sr.run_transaction(
            Session,
            work,
            retry=retry,
            breaker=breaker,
            idempotent=True,
            attempt_timeout=attempt_timeout,
        ),
    )


async def naive_transfer(
    Session: Callable[[], AsyncSession], history: History, *, rng: random.Random, **_: Any
) -> None:
    """The same transfer through :func:`~tests.chaos.workload.naive_unit` (plain SQLAlchemy,
    three tries): the baseline of the figures."""
    request_id = uuid.uuid4()
    await naive_unit(Session, history, request_id, _work(request_id, rng))


def _work(
    request_id: uuid.UUID, rng: random.Random, *, hot: int = ACCOUNTS, random_order: bool = False
) -> Callable[[AsyncSession], Awaitable[bool]]:
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

    return work


def audit(server: MariaDBServer, database: str = DB) -> Callable[[], int | None]:
    """The 1 Hz audit: SUM(balance), or None while the server is down."""

    def run() -> int | None:
        try:
            return int(server.execute(f"SELECT sum(balance) FROM `{database}`.accounts")[0][0])
        except Exception:
            return None

    return run


def check(
    server: MariaDBServer, history: History, audits: list[int | None], database: str = DB
) -> Verdict:
    """The workload's checker, on MariaDB: lost, phantom, the invariant and the ledger."""
    moves = server.execute(f"SELECT request_id, src, dst, amount FROM `{database}`.transfers")
    present = {uuid.UUID(row[0]) for row in moves}
    balances = dict(server.execute(f"SELECT id, balance FROM `{database}`.accounts"))
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


def committed_more(
    server: MariaDBServer, n: int, database: str = DB
) -> Callable[[], Awaitable[bool]]:
    """A predicate for :func:`until`: ``n`` more transfers committed than when it was made
    (False while the server is down)."""
    start: list[int] = []

    def count() -> int | None:
        try:
            return int(server.execute(f"SELECT count(*) FROM `{database}`.transfers")[0][0])
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


def figure(name: str, line: str) -> None:
    print(f"\n[{name}] {line}")


POLICY = RetryPolicy(
    attempts=60, initial_backoff=0.01, max_backoff=0.5, deadline=60, retry_lock_timeouts=True
)
