"""Cost of ``transaction()`` against a bare ``session.begin()`` and the raw driver, in one run.

Workload: one transaction = a point SELECT and an UPDATE of the same row, on
an instrumented engine (the package's usual setting; plain SQLAlchemy's
instrumentation cost is measured by ``benchmarks.overhead``). Variants:

* raw driver (asyncpg ``conn.transaction()``; aiosqlite ``BEGIN``/``COMMIT``);
* ``async with Session() as s, s.begin():`` -- the hand-written version;
* ``async with transaction(Session):`` with no options;
* ``transaction(Session, statement_timeout=5, lock_timeout=1)`` (one more round trip
  on PostgreSQL: ``SELECT set_config(...)``).

On SQLite ``transaction()`` begins with ``BEGIN IMMEDIATE`` (a statement
sqlite3 does not send for the bare version, which begins implicitly before the
UPDATE and runs its SELECT outside the transaction): the ratio there is the
price of a read that is part of its transaction.

A second table prices a durable saga: three database steps (one INSERT each,
each step its own transaction with its saga-log record, plus the saga's own
start and finish records) against the same three INSERTs in one
``run_transaction`` -- what exactly-once-per-step and crash recovery cost.

Rounds are interleaved in a shuffled order; each ratio is the median over
rounds of the variant's time divided by the baseline's in the same round.

    python -m benchmarks.transactions                      # SQLite
    python -m benchmarks.transactions --embedded-postgres  # + PostgreSQL via asyncpg
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from benchmarks._postgres import add_postgres_arguments, asyncpg_connect, postgres_url
from sqlalchemy_resilience import Saga, instrument, run_transaction, transaction
from sqlalchemy_resilience.saga import SagaContext
from sqlalchemy_resilience.schema import create_saga_tables

Variant = Callable[[int], Awaitable[None]]

SELECT = "SELECT v FROM sr_bench_tx WHERE id = 1"
UPDATE = "UPDATE sr_bench_tx SET v = v + 1 WHERE id = 1"


async def _raw_variant(url: URL) -> tuple[Variant, Callable[[], Awaitable[None]]]:
    if url.get_backend_name() == "postgresql":
        conn: Any = await asyncpg_connect(url)

        async def raw_pg(n: int) -> None:
            for _ in range(n):
                async with conn.transaction():
                    await conn.fetchval(SELECT)
                    await conn.execute(UPDATE)

        return raw_pg, conn.close
    import aiosqlite

    db: Any = await aiosqlite.connect(url.database or ":memory:", isolation_level=None)

    async def raw_sqlite(n: int) -> None:
        for _ in range(n):
            await db.execute("BEGIN IMMEDIATE")
            async with db.execute(SELECT) as cursor:
                await cursor.fetchone()
            await db.execute(UPDATE)
            await db.execute("COMMIT")

    return raw_sqlite, db.close


async def _measure(variants: dict[str, Variant], rounds: int, n: int, base: str) -> str:
    for fn in variants.values():
        await fn(max(n // 5, 20))  # warm caches and the pool
    ratios: dict[str, list[float]] = {name: [] for name in variants}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        order = list(variants.items())
        random.shuffle(order)
        took: dict[str, float] = {}
        for name, fn in order:
            start = time.perf_counter()
            await fn(n)
            took[name] = (time.perf_counter() - start) / n
        for name, value in took.items():
            times[name].append(value)
            ratios[name].append(value / took[base])
    lines = [f"| variant | median µs/transaction | vs {base} |", "|---|---:|---:|"]
    for name in variants:
        lines.append(
            f"| {name} | {statistics.median(times[name]) * 1e6:.1f} "
            f"| {statistics.median(ratios[name]):.3f} |"
        )
    return "\n".join(lines)


async def transaction_cost(url: URL, rounds: int, n: int) -> str:
    engine = create_async_engine(url)
    instrument(engine)
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS sr_bench_tx"))
        await conn.execute(text("CREATE TABLE sr_bench_tx (id int PRIMARY KEY, v int)"))
        await conn.execute(text("INSERT INTO sr_bench_tx VALUES (1, 0)"))
    Session = async_sessionmaker(engine)
    select_stmt, update_stmt = text(SELECT), text(UPDATE)

    async def work(session: AsyncSession) -> None:
        (await session.execute(select_stmt)).scalar_one()
        await session.execute(update_stmt)

    async def bare(k: int) -> None:
        for _ in range(k):
            async with Session() as session, session.begin():
                await work(session)

    async def helper(k: int) -> None:
        for _ in range(k):
            async with transaction(Session) as session:
                await work(session)

    async def helper_timeouts(k: int) -> None:
        for _ in range(k):
            async with transaction(Session, statement_timeout=5, lock_timeout=1) as session:
                await work(session)

    raw, close_raw = await _raw_variant(url)
    variants: dict[str, Variant] = {
        "raw driver": raw,
        "bare session.begin()": bare,
        "transaction()": helper,
    }
    if url.get_backend_name() == "postgresql":
        variants["transaction(statement_timeout=, lock_timeout=)"] = helper_timeouts
    try:
        return await _measure(variants, rounds, n, "bare session.begin()")
    finally:
        await close_raw()
        await engine.dispose()


async def saga_cost(url: URL, rounds: int, n: int) -> str:
    engine = create_async_engine(url)
    instrument(engine)
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS sr_bench_saga_rows"))
        await conn.execute(text("DROP TABLE IF EXISTS sqlalchemy_resilience_saga_step"))
        await conn.execute(text("DROP TABLE IF EXISTS sqlalchemy_resilience_saga"))
        await conn.execute(text("CREATE TABLE sr_bench_saga_rows (k varchar(250), step int)"))
        await conn.run_sync(create_saga_tables)
    Session = async_sessionmaker(engine)
    insert = text("INSERT INTO sr_bench_saga_rows VALUES (:k, :s)")
    counter = [0]

    def step(number: int) -> Callable[[SagaContext], Awaitable[int]]:
        async def write(ctx: SagaContext) -> int:
            await ctx.session.execute(insert, {"k": ctx.saga_id, "s": number})
            return number

        return write

    saga = Saga("bench").step("one", step(1)).step("two", step(2)).step("three", step(3))

    async def three_writes(session: AsyncSession) -> None:
        counter[0] += 1
        for number in (1, 2, 3):
            await session.execute(insert, {"k": f"rt-{counter[0]}", "s": number})

    async def one_transaction(k: int) -> None:
        for _ in range(k):
            await run_transaction(Session, three_writes)

    async def durable_saga(k: int) -> None:
        for _ in range(k):
            counter[0] += 1
            await saga.execute(saga_id=f"bench-{counter[0]}", sessionmaker=Session)

    variants: dict[str, Variant] = {
        "3 INSERTs in one run_transaction()": one_transaction,
        "3-step durable Saga": durable_saga,
    }
    try:
        return await _measure(variants, rounds, n, "3 INSERTs in one run_transaction()")
    finally:
        await engine.dispose()


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_url = make_url(f"sqlite+aiosqlite:///{Path(tmp) / 'tx.sqlite'}")
        print(
            f"\nSQLite (aiosqlite, file), {args.rounds} rounds x {args.transactions} transactions"
        )
        print(await transaction_cost(sqlite_url, args.rounds, args.transactions))
        print(await saga_cost(sqlite_url, args.rounds, max(args.transactions // 5, 10)))
    with postgres_url(args) as pg_url:
        if pg_url is not None:
            print(
                f"\nPostgreSQL (asyncpg), {args.rounds} rounds x {args.transactions} transactions"
            )
            print(await transaction_cost(pg_url, args.rounds, args.transactions))
            print(await saga_cost(pg_url, args.rounds, max(args.transactions // 5, 10)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="transaction() against session.begin()")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--transactions", type=int, default=300)
    add_postgres_arguments(parser)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.transactions < 1:
        parser.error("--rounds and --transactions must be positive")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
