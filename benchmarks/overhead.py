"""Per-query cost of ``instrument()`` against plain SQLAlchemy and the raw driver, in one run.

Point queries (``SELECT v FROM t WHERE id = :id``), a pool checkout per query,
interleaved rounds so drift hits every variant alike; the table reports the
median microseconds per query and the ratio to plain SQLAlchemy.

    python -m benchmarks.overhead                       # SQLite (sqlite3)
    python -m benchmarks.overhead --embedded-postgres   # + PostgreSQL via asyncpg
    python -m benchmarks.overhead --postgres-url postgresql+asyncpg://u:p@host/db
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from sqlalchemy_resilience import instrument

QUERY = "SELECT v FROM t WHERE id = :id"
ROWS = 1000


def _sqlite_variants(path: Path) -> dict[str, Callable[[int], None]]:
    setup = sqlite3.connect(path)
    setup.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v INTEGER)")
    setup.executemany("INSERT OR REPLACE INTO t VALUES (?, ?)", [(i, i) for i in range(ROWS)])
    setup.commit()
    setup.close()

    raw = sqlite3.connect(path, check_same_thread=False)
    plain = create_engine(f"sqlite:///{path}")
    instrumented = create_engine(f"sqlite:///{path}")
    instrument(instrumented)
    stmt = text(QUERY)

    def run_raw(n: int) -> None:
        for i in range(n):
            raw.execute("SELECT v FROM t WHERE id = ?", (i % ROWS,)).fetchone()

    def make_sa(engine: object) -> Callable[[int], None]:
        def run(n: int) -> None:
            for i in range(n):
                with engine.connect() as conn:  # type: ignore[attr-defined]
                    conn.execute(stmt, {"id": i % ROWS}).scalar_one()

        return run

    return {
        "raw sqlite3": run_raw,
        "plain SQLAlchemy": make_sa(plain),
        "instrument()": make_sa(instrumented),
    }


async def _postgres_variants(url: URL) -> dict[str, Callable[[int], Awaitable[None]]]:
    import asyncpg

    plain = create_async_engine(url, pool_size=5)
    instrumented = create_async_engine(url, pool_size=5)
    instrument(instrumented)
    async with plain.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS sr_bench_t"))
        await conn.execute(text("CREATE TABLE sr_bench_t (id int PRIMARY KEY, v int)"))
        await conn.execute(
            text("INSERT INTO sr_bench_t SELECT g, g FROM generate_series(0, :n) g"), {"n": ROWS}
        )
    raw_pool = await asyncpg.create_pool(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        database=url.database,
        ssl=False,
        min_size=5,
        max_size=5,
    )
    stmt = text(QUERY.replace(" t ", " sr_bench_t "))

    async def run_raw(n: int) -> None:
        for i in range(n):
            async with raw_pool.acquire() as conn:
                await conn.fetchval("SELECT v FROM sr_bench_t WHERE id = $1", i % ROWS)

    def make_sa(engine: object) -> Callable[[int], Awaitable[None]]:
        async def run(n: int) -> None:
            for i in range(n):
                async with engine.connect() as conn:  # type: ignore[attr-defined]
                    (await conn.execute(stmt, {"id": i % ROWS})).scalar_one()

        return run

    return {
        "raw asyncpg": run_raw,
        "plain SQLAlchemy": make_sa(plain),
        "instrument()": make_sa(instrumented),
    }


def _table(title: str, per_query: dict[str, list[float]]) -> str:
    base = statistics.median(per_query["plain SQLAlchemy"])
    lines = [f"\n{title}", "| variant | median µs/query | vs plain SQLAlchemy |", "|---|---:|---:|"]
    for name, samples in per_query.items():
        med = statistics.median(samples)
        lines.append(f"| {name} | {med * 1e6:.1f} | {med / base:.3f} |")
    return "\n".join(lines)


def bench_sqlite(rounds: int, queries: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        variants = _sqlite_variants(Path(tmp) / "bench.sqlite")
        for fn in variants.values():
            fn(200)  # warm caches and the pool
        results: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            order = list(variants.items())
            random.shuffle(order)
            for name, fn in order:
                start = time.perf_counter()
                fn(queries)
                results[name].append((time.perf_counter() - start) / queries)
    return _table(f"SQLite (sqlite3, file), {rounds} rounds x {queries} queries", results)


async def bench_postgres(url: URL, rounds: int, queries: int) -> str:
    variants = await _postgres_variants(url)
    for fn in variants.values():
        await fn(200)
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        order = list(variants.items())
        random.shuffle(order)
        for name, fn in order:
            start = time.perf_counter()
            await fn(queries)
            results[name].append((time.perf_counter() - start) / queries)
    return _table(f"PostgreSQL (asyncpg, 127.0.0.1), {rounds} rounds x {queries} queries", results)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--queries", type=int, default=2000)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--postgres-url", help="postgresql+asyncpg:// URL to benchmark against")
    group.add_argument("--embedded-postgres", action="store_true")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.queries < 1:
        parser.error("--rounds and --queries must be at least 1")
    import sqlalchemy

    print(
        f"machine: {platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}"
    )
    print(bench_sqlite(args.rounds, args.queries))
    if args.postgres_url:
        print(asyncio.run(bench_postgres(make_url(args.postgres_url), args.rounds, args.queries)))
    elif args.embedded_postgres:
        from sqlalchemy_resilience.embedded import EmbeddedPostgres

        with EmbeddedPostgres() as pg:
            print(asyncio.run(bench_postgres(pg.url(driver="asyncpg"), args.rounds, args.queries)))


if __name__ == "__main__":
    main()
