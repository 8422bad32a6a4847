"""Cost of run_transaction and the circuit breaker, measured in one run.

1. Success path: ``run_transaction(Session, fn)`` against the same work in a
   bare ``async with Session() as s, s.begin()``, point query per transaction,
   interleaved rounds, medians and the ratio.
2. Fail-fast: an open breaker refusing ``run_transaction`` (median latency,
   network attempts).
3. Database down: concurrent callers against a closed port with a shared
   retry budget (connect attempts per second).

    python -m benchmarks.retry                      # SQLite only
    python -m benchmarks.retry --embedded-postgres  # + PostgreSQL via asyncpg
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import socket
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from sqlalchemy_resilience import (
    CircuitBreaker,
    CircuitOpenError,
    DatabaseUnavailable,
    RetryPolicy,
    instrument,
    run_transaction,
)
from sqlalchemy_resilience.retry import RetryBudget


async def success_path(url: URL | str, rounds: int, transactions: int) -> str:
    engine = create_async_engine(url)
    instrument(engine)
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS sr_bench_rt"))
        await conn.execute(text("CREATE TABLE sr_bench_rt (id int PRIMARY KEY, v int)"))
        await conn.execute(text("INSERT INTO sr_bench_rt VALUES (1, 1)"))
    Session = async_sessionmaker(engine)
    stmt = text("SELECT v FROM sr_bench_rt WHERE id = 1")

    async def work(session: AsyncSession) -> int:
        return int((await session.execute(stmt)).scalar_one())

    async def bare(n: int) -> None:
        for _ in range(n):
            async with Session() as session, session.begin():
                await work(session)

    async def wrapped(n: int) -> None:
        for _ in range(n):
            await run_transaction(Session, work)

    variants: dict[str, Callable[[int], Awaitable[None]]] = {
        "bare AsyncSession": bare,
        "run_transaction()": wrapped,
    }
    for fn in variants.values():
        await fn(200)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        order = list(variants.items())
        random.shuffle(order)
        for name, fn in order:
            start = time.perf_counter()
            await fn(transactions)
            samples[name].append((time.perf_counter() - start) / transactions)
    await engine.dispose()
    base = statistics.median(samples["bare AsyncSession"])
    lines = ["| variant | median µs/transaction | vs bare |", "|---|---:|---:|"]
    for name, values in samples.items():
        med = statistics.median(values)
        lines.append(f"| {name} | {med * 1e6:.1f} | {med / base:.3f} |")
    return "\n".join(lines)


async def fail_fast(url: URL | str, calls: int) -> str:
    engine = create_async_engine(url)
    connects: list[object] = []
    event.listen(engine.sync_engine, "checkout", lambda *a: connects.append(a))
    breaker = CircuitBreaker(failure_threshold=1, recovery_timeout=3600)
    breaker.force_open()
    Session = async_sessionmaker(engine)

    async def work(session: AsyncSession) -> None:
        await session.execute(text("SELECT 1"))

    timings = []
    for _ in range(calls):
        start = time.perf_counter()
        with contextlib.suppress(CircuitOpenError):
            await run_transaction(Session, work, breaker=breaker)
        timings.append(time.perf_counter() - start)
    await engine.dispose()
    timings.sort()
    p99 = timings[int(len(timings) * 0.99) - 1]
    return (
        f"open breaker, {calls} calls: median {statistics.median(timings) * 1e6:.1f} µs, "
        f"p99 {p99 * 1e6:.1f} µs, pool checkouts {len(connects)}"
    )


async def database_down(driver: str, callers: int, seconds: float) -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    if driver == "sqlite":
        raise ValueError("database_down needs a network driver")
    engine = create_async_engine(f"postgresql+{driver}://u:p@127.0.0.1:{port}/x?ssl=disable")
    instrument(engine)
    connects: list[float] = []
    event.listen(engine.sync_engine, "do_connect", lambda *a: connects.append(time.monotonic()))
    Session = async_sessionmaker(engine)
    budget = RetryBudget(ratio=0.1, min_per_second=2)
    policy = RetryPolicy(budget=budget, deadline=seconds)

    async def work(session: AsyncSession) -> None:
        await session.execute(text("SELECT 1"))

    requests = 0
    stop_at = time.monotonic() + seconds

    async def caller() -> None:
        nonlocal requests
        while time.monotonic() < stop_at:
            requests += 1
            try:
                await run_transaction(Session, work, retry=policy)
            except DatabaseUnavailable:
                await asyncio.sleep(0.01)  # a client pacing its own requests

    await asyncio.gather(*(caller() for _ in range(callers)))
    await engine.dispose()
    retries = len(connects) - requests
    return (
        f"database down, {callers} callers for {seconds:.0f} s: {requests} requests, "
        f"{len(connects)} connect attempts ({len(connects) / seconds:.0f}/s), "
        f"{max(retries, 0)} retries (budget denied {budget.denied})"
    )


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_url = f"sqlite+aiosqlite:///{Path(tmp) / 'rt.sqlite'}"
        print(f"\nSQLite (aiosqlite), {args.rounds} rounds x {args.transactions} transactions")
        print(await success_path(sqlite_url, args.rounds, args.transactions))
        print(await fail_fast(sqlite_url, 10_000))
    pg_url: URL | None = make_url(args.postgres_url) if args.postgres_url else None
    if args.embedded_postgres:
        from sqlalchemy_resilience.testing.embedded import EmbeddedPostgres

        pg = EmbeddedPostgres()
        pg.start()
        pg_url = pg.url(driver="asyncpg")
    try:
        if pg_url is not None:
            print(
                f"\nPostgreSQL (asyncpg), {args.rounds} rounds x {args.transactions} transactions"
            )
            print(await success_path(pg_url, args.rounds, args.transactions))
            print(await fail_fast(pg_url, 10_000))
        print()
        print(await database_down("asyncpg", 8, args.down_seconds))
    finally:
        if args.embedded_postgres:
            pg.stop(cleanup=True)


def main(argv: list[str] | None = None) -> None:
    # Retry warnings would drown the table; the counts are printed instead.
    logging.getLogger("sqlalchemy_resilience").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description="run_transaction and breaker costs")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--transactions", type=int, default=1000)
    parser.add_argument("--down-seconds", type=float, default=5.0)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--postgres-url")
    group.add_argument("--embedded-postgres", action="store_true")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.transactions < 1 or args.down_seconds <= 0:
        parser.error("--rounds, --transactions and --down-seconds must be positive")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
