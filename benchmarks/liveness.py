"""What a liveness check costs per checkout, measured in one run.

Variants, interleaved rounds, paired ratios against "no ping":

* no ping: plain SQLAlchemy;
* ``pool_pre_ping=True``: SQLAlchemy's own pre-ping, a round trip at every checkout;
* ``ping_idle_connections(after=30)``: a ping only for a connection idle 30 s
  (none in this loop: every connection was used a moment ago).

Two operations: a bare checkout + checkin, and a request (checkout, ``SELECT 1``,
checkin). PostgreSQL through asyncpg and psycopg (async), SQLite through sqlite3.

    python -m benchmarks.liveness                      # SQLite only
    python -m benchmarks.liveness --embedded-postgres  # and PostgreSQL
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from sqlalchemy_resilience.pool import ping_idle_connections

from ._postgres import add_postgres_arguments, postgres_url
from .overhead import measure_async, measure_sync, table

BASE = "no ping"
PROBE = text("SELECT 1")


def bench_sqlite(rounds: int, ops: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'live.sqlite'}"
        plain = create_engine(url)
        pre_ping = create_engine(url, pool_pre_ping=True)
        idle = create_engine(url)
        ping_idle_connections(idle, after=30)

        def checkout(engine: Engine) -> Callable[[int], None]:
            def run(n: int) -> None:
                for _ in range(n):
                    with engine.connect():
                        pass

            return run

        variants = {
            BASE: checkout(plain),
            "pool_pre_ping=True": checkout(pre_ping),
            "ping_idle_connections(after=30)": checkout(idle),
        }
        results = measure_sync(variants, rounds, ops)
        for engine in (plain, pre_ping, idle):
            engine.dispose()
    return table(
        f"SQLite (sqlite3): checkout + checkin, {rounds} rounds x {ops}",
        results,
        base=BASE,
        unit="checkout",
    )


async def bench_postgres(url: URL, driver: str, rounds: int, ops: int) -> list[str]:
    url = url.set(drivername=f"postgresql+{driver}")
    if driver != "asyncpg":
        url = url.difference_update_query(["ssl"])
    plain = create_async_engine(url, pool_size=2)
    pre_ping = create_async_engine(url, pool_size=2, pool_pre_ping=True)
    idle = create_async_engine(url, pool_size=2)
    ping_idle_connections(idle, after=30)
    engines = (plain, pre_ping, idle)

    def bare(engine: AsyncEngine) -> Callable[[int], Awaitable[None]]:
        async def run(n: int) -> None:
            for _ in range(n):
                async with engine.connect():
                    pass

        return run

    def request(engine: AsyncEngine) -> Callable[[int], Awaitable[None]]:
        async def run(n: int) -> None:
            for _ in range(n):
                async with engine.connect() as conn:
                    await conn.execute(PROBE)

        return run

    tables = []
    for label, op in (("checkout + checkin", bare), ("checkout + SELECT 1 + checkin", request)):
        variants = {
            BASE: op(plain),
            "pool_pre_ping=True": op(pre_ping),
            "ping_idle_connections(after=30)": op(idle),
        }
        results = await measure_async(variants, rounds, ops)
        tables.append(
            table(
                f"PostgreSQL ({driver}): {label}, {rounds} rounds x {ops}",
                results,
                base=BASE,
                unit="checkout",
            )
        )
    for engine in engines:
        await engine.dispose()
    return tables


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (default 30)")
    parser.add_argument("--ops", type=int, default=400, help="checkouts per round (default 400)")
    add_postgres_arguments(parser)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.ops < 4:
        parser.error("--rounds must be at least 1 and --ops at least 4")
    import sqlalchemy

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"SQLAlchemy {sqlalchemy.__version__}"
    )
    print(bench_sqlite(args.rounds, args.ops))
    with postgres_url(args) as url:
        if url is not None:
            for driver in ("asyncpg", "psycopg"):
                for line in asyncio.run(bench_postgres(url, driver, args.rounds, args.ops // 2)):
                    print(line)


if __name__ == "__main__":
    main()
