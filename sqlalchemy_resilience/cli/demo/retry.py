"""The retry part of ``sqlalchemy-resilience demo``.

On SQLite another writer holds the lock while ``run_transaction_sync`` rides
it out. On an embedded PostgreSQL (which the demo owns, so it may restart it)
four workers move money between accounts with ``run_transaction`` while the
server is restarted, and the books are checked afterwards: nothing lost,
nothing applied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sqlite3
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO

from sqlalchemy import Column, Integer, MetaData, Table, Uuid, create_engine, func, select, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_resilience.errors import ResilienceError
from sqlalchemy_resilience.instrumentation import instrument
from sqlalchemy_resilience.retry import (
    RetryBudget,
    RetryPolicy,
    run_transaction,
    run_transaction_sync,
)
from sqlalchemy_resilience.testing.embedded import EmbeddedPostgres

__all__ = ["restart_tour", "sqlite_busy_tour"]


@dataclass
class _RetryTally:
    """Retry records by error class, and the first record of each class as logged."""

    counts: dict[str, int] = field(default_factory=dict)
    first: dict[str, str] = field(default_factory=dict)

    def print_log(self, out: TextIO) -> None:
        if not self.first:
            return
        print("    the retry log (first record of each kind):", file=out)
        for message in self.first.values():
            for line in textwrap.wrap(
                message, 100, initial_indent="      ", subsequent_indent="        ", max_lines=2
            ):
                print(line, file=out)


@contextlib.contextmanager
def _counting_retries() -> Iterator[_RetryTally]:
    """Count retry records by error class instead of printing each one."""
    tally = _RetryTally()
    retry_logger = logging.getLogger("sqlalchemy_resilience.retry")

    class Counter(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            name = str(getattr(record, "sqlalchemy_resilience.error_type", "other"))
            tally.counts[name] = tally.counts.get(name, 0) + 1
            if name not in tally.first:
                tally.first[name] = f"{record.levelname} {record.name}: {record.getMessage()}"

    handler = Counter(logging.WARNING)
    previous = retry_logger.propagate
    retry_logger.addHandler(handler)
    retry_logger.propagate = False
    try:
        yield tally
    finally:
        retry_logger.removeHandler(handler)
        retry_logger.propagate = previous


def _retries(counts: dict[str, int]) -> str:
    if not counts:
        return "no retries"
    return ", ".join(f"{n} x {name}" for name, n in sorted(counts.items())) + " retried"


_metadata = MetaData()
_accounts = Table(
    "sr_demo_accounts",
    _metadata,
    Column("id", Integer, primary_key=True),
    Column("balance", Integer, nullable=False),
)
_transfers = Table(
    "sr_demo_transfers",
    _metadata,
    Column("request_id", Uuid, primary_key=True),
    Column("src", Integer, nullable=False),
    Column("dst", Integer, nullable=False),
    Column("amount", Integer, nullable=False),
)


def sqlite_busy_tour(url: URL, out: TextIO) -> bool:
    """Another connection holds SQLite's write lock for 0.3 s; the unit of work retries through it."""
    engine = create_engine(url.set(drivername="sqlite"), connect_args={"timeout": 0.05})
    instrument(engine)
    with engine.begin() as conn:
        _metadata.create_all(conn)
        conn.execute(_accounts.insert().values(id=1, balance=100))
    holder = sqlite3.connect(str(url.database), isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    attempts = 0

    def work(session: Session) -> None:
        nonlocal attempts
        attempts += 1
        session.execute(_accounts.update().values(balance=_accounts.c.balance + 1))

    print("\n[retry] another writer holds the SQLite lock for 0.3 s", file=out)
    started = time.monotonic()
    release.start()
    try:
        with _counting_retries() as tally:
            run_transaction_sync(
                sessionmaker(engine),
                work,
                retry=RetryPolicy(attempts=30, initial_backoff=0.01, max_backoff=0.05),
            )
    finally:
        release.join()
        holder.close()
        with engine.begin() as conn:
            balance = conn.execute(select(_accounts.c.balance)).scalar_one()
            _metadata.drop_all(conn)
        engine.dispose()
    tries = sum(tally.counts.values()) + 1
    tally.print_log(out)
    print(
        f"    run_transaction_sync committed on attempt {tries} after "
        f"{time.monotonic() - started:.2f} s ({_retries(tally.counts)} at BEGIN IMMEDIATE, before the "
        f"work ran); the work ran {attempts}x; balance 100 -> {balance}",
        file=out,
    )
    return bool(balance == 101 and attempts == 1)


async def restart_tour(
    server: EmbeddedPostgres, url: URL, out: TextIO, *, seconds: float = 4.0
) -> bool:
    """Four workers transfer money while the server restarts; then the books are checked."""
    engine = create_async_engine(url, pool_size=4)
    instrument(engine)
    async with engine.begin() as conn:
        await conn.run_sync(_metadata.drop_all)
        await conn.run_sync(_metadata.create_all)
        await conn.execute(_accounts.insert(), [{"id": i, "balance": 1000} for i in range(1, 11)])
    Session = async_sessionmaker(engine)
    policy = RetryPolicy(
        attempts=50,
        initial_backoff=0.02,
        max_backoff=0.5,
        deadline=30,
        budget=RetryBudget(min_per_second=50),
    )
    acked: set[uuid.UUID] = set()
    failed = 0
    stop_at = time.monotonic() + seconds

    async def worker(seed: int) -> None:
        nonlocal failed
        rng = random.Random(seed)
        while time.monotonic() < stop_at:
            request_id = uuid.uuid4()
            src, dst = sorted(rng.sample(range(1, 11), 2))
            amount = rng.randint(1, 10)

            async def transfer(
                session: AsyncSession,
                request_id: uuid.UUID = request_id,
                src: int = src,
                dst: int = dst,
                amount: int = amount,
            ) -> None:
                # The transfer's id is its idempotency key: a re-run after an
                # unknown COMMIT finds it and does nothing twice.
                stmt = text(
                    "INSERT INTO sr_demo_transfers (request_id, src, dst, amount)"
                    " VALUES (:r, :s, :d, :a) ON CONFLICT (request_id) DO NOTHING RETURNING 1"
                )
                params = {"r": request_id, "s": src, "d": dst, "a": amount}
                if (await session.execute(stmt, params)).first() is None:
                    return
                for account, delta in ((src, -amount), (dst, amount)):
                    await session.execute(
                        _accounts.update()
                        .where(_accounts.c.id == account)
                        .values(balance=_accounts.c.balance + delta)
                    )

            try:
                await run_transaction(Session, transfer, retry=policy, idempotent=True)
            except ResilienceError:
                failed += 1
            else:
                acked.add(request_id)

    async def restart() -> None:
        await asyncio.sleep(seconds / 3)
        print("    restarting PostgreSQL (pg_ctl restart -m fast) under load ...", file=out)
        await asyncio.to_thread(server.restart, mode="fast")

    print(
        f"\n[retry] 4 workers move money for {seconds:.0f} s; the server restarts midway", file=out
    )
    with _counting_retries() as tally:
        await asyncio.gather(*(worker(i) for i in range(4)), restart())
    async with engine.connect() as conn:
        present = set((await conn.execute(select(_transfers.c.request_id))).scalars())
        total = (await conn.execute(select(func.sum(_accounts.c.balance)))).scalar_one()
        rows = (await conn.execute(select(func.count()).select_from(_transfers))).scalar_one()
        await conn.run_sync(_metadata.drop_all)
        await conn.commit()
    await engine.dispose()
    lost = len(acked - present)
    duplicated = rows - len(present)
    tally.print_log(out)
    print(
        f"    {len(acked)} transfers acknowledged, {failed} refused ({_retries(tally.counts)}); "
        f"lost {lost}, duplicated {duplicated}, total balance {total} (expected 10000)",
        file=out,
    )
    return lost == 0 and duplicated == 0 and total == 10000
