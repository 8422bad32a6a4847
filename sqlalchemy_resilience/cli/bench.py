"""``sqlalchemy-resilience bench``: what ``instrument()`` costs per query, against plain SQLAlchemy and the raw driver.

A point query (``SELECT ... WHERE id = ?`` on a 1,000-row table, a checkout
each time) run by each variant in short interleaved rounds, shuffled every
round; each ratio is the median over rounds of the variant's time divided by
plain SQLAlchemy's in the same round, so a machine that is busy now and idle
later does not favour anyone. SQLite (sqlite3) by default; ``--url`` or
``--embedded-postgres`` for PostgreSQL through asyncpg. The full suite, with
the OpenTelemetry instrumentation and more operations, is ``benchmarks/`` in
the source tree.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Integer, MetaData, String, Table, bindparam, create_engine, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from sqlalchemy_resilience.instrumentation import instrument

from .common import (
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CommandError,
    check_driver,
    parse_url,
)
from .output import print_table, progress_bar

__all__ = ["add_bench_command"]

BASE = "plain SQLAlchemy"
ROWS = 1000

_metadata = MetaData()
_items = Table(
    "sr_bench_items",
    _metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(20)),
)
_POINT = select(_items.c.id, _items.c.name).where(_items.c.id == bindparam("id"))

Variant = Callable[[int], Any]


def add_bench_command(sub: Any) -> None:
    """Register ``bench`` on the command's subparsers."""
    bench = sub.add_parser(
        "bench",
        help="what instrument() costs per query: ratios to plain SQLAlchemy and the raw driver",
        description=(
            "What instrument() costs per query: plain SQLAlchemy, instrument() with its "
            "defaults, with an OpenTelemetry SDK, and the raw driver, measured in one run "
            "as ratios to plain SQLAlchemy."
        ),
    )
    target = bench.add_mutually_exclusive_group()
    target.add_argument(
        "--url", help="a postgresql+asyncpg:// URL (a table is created and dropped)"
    )
    target.add_argument(
        "--embedded-postgres", action="store_true", help="start a throwaway PostgreSQL"
    )
    bench.add_argument("--rounds", type=int, default=20, help="interleaved rounds (default 20)")
    bench.add_argument("--queries", type=int, default=300, help="queries per round (default 300)")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")
    bench.set_defaults(func=_cmd_bench)


def _sdk_provider() -> Any | None:
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    except ImportError:
        return None
    return MeterProvider(metric_readers=[InMemoryMetricReader()])


def _progress() -> Any:
    return progress_bar("measuring", "rounds")


def _measure(
    variants: dict[str, Callable[[int], Any]],
    rounds: int,
    queries: int,
    run: Callable[[Any], Any],
) -> dict[str, list[float]]:
    for fn in variants.values():
        run(fn(max(20, queries // 4)))  # warm every path up
    gc.collect()
    results: dict[str, list[float]] = {name: [] for name in variants}
    progress = _progress()
    with progress:
        task = progress.add_task("rounds", total=rounds)
        for _ in range(rounds):
            order = list(variants.items())
            random.shuffle(order)
            for name, fn in order:
                start = time.perf_counter()
                run(fn(queries))
                results[name].append((time.perf_counter() - start) / queries)
            progress.advance(task)
    return results


def _sqlite_variants(path: Path) -> tuple[dict[str, Variant], Callable[[], None]]:
    url = f"sqlite:///{path}"
    plain = create_engine(url)
    _metadata.create_all(plain)
    with plain.begin() as conn:
        conn.execute(_items.insert(), [{"id": i, "name": f"n{i}"} for i in range(1, ROWS + 1)])
    instrumented = create_engine(url)
    instrument(instrumented)
    variants: dict[str, Variant] = {}
    raw = sqlite3.connect(str(path), check_same_thread=False)

    def raw_driver(n: int) -> None:
        for i in range(n):
            raw.execute(
                "SELECT id, name FROM sr_bench_items WHERE id = ?", (i % ROWS + 1,)
            ).fetchone()

    def with_engine(engine: Any) -> Variant:
        def run(n: int) -> None:
            for i in range(n):
                with engine.connect() as conn:
                    conn.execute(_POINT, {"id": i % ROWS + 1}).first()

        return run

    variants["raw sqlite3"] = raw_driver
    variants[BASE] = with_engine(plain)
    variants["instrument() defaults"] = with_engine(instrumented)
    provider = _sdk_provider()
    engines = [plain, instrumented]
    if provider is not None:
        with_sdk = create_engine(url)
        instrument(with_sdk, meter_provider=provider)
        variants["instrument() + OpenTelemetry SDK"] = with_engine(with_sdk)
        engines.append(with_sdk)

    def close() -> None:
        raw.close()
        for engine in engines:
            engine.dispose()

    return variants, close


async def _postgres_variants(url: URL) -> tuple[dict[str, Variant], Callable[[], Awaitable[None]]]:
    import asyncpg

    plain = create_async_engine(url, pool_size=2)
    async with plain.begin() as conn:
        await conn.run_sync(_metadata.drop_all)
        await conn.run_sync(_metadata.create_all)
        await conn.execute(
            _items.insert(), [{"id": i, "name": f"n{i}"} for i in range(1, ROWS + 1)]
        )
    instrumented = create_async_engine(url, pool_size=2)
    instrument(instrumented)
    raw_pool = await asyncpg.create_pool(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        database=url.database,
        min_size=2,
        max_size=2,
    )

    def raw_driver(n: int) -> Awaitable[None]:
        async def run() -> None:
            for i in range(n):
                async with raw_pool.acquire() as conn:
                    await conn.fetchrow(
                        "SELECT id, name FROM sr_bench_items WHERE id = $1", i % ROWS + 1
                    )

        return run()

    def with_engine(engine: Any) -> Variant:
        def start(n: int) -> Awaitable[None]:
            async def run() -> None:
                for i in range(n):
                    async with engine.connect() as conn:
                        (await conn.execute(_POINT, {"id": i % ROWS + 1})).first()

            return run()

        return start

    variants: dict[str, Variant] = {
        "raw asyncpg": raw_driver,
        BASE: with_engine(plain),
        "instrument() defaults": with_engine(instrumented),
    }
    engines = [plain, instrumented]
    provider = _sdk_provider()
    if provider is not None:
        with_sdk = create_async_engine(url, pool_size=2)
        instrument(with_sdk, meter_provider=provider)
        variants["instrument() + OpenTelemetry SDK"] = with_engine(with_sdk)
        engines.append(with_sdk)

    async def close() -> None:
        await raw_pool.close()
        async with plain.begin() as conn:
            await conn.run_sync(_metadata.drop_all)
        for engine in engines:
            await engine.dispose()

    return variants, close


def _rows(results: dict[str, list[float]]) -> list[dict[str, Any]]:
    base = results[BASE]
    return [
        {
            "variant": name,
            "median_us": round(statistics.median(runs) * 1e6, 1),
            "ratio": round(statistics.median(r / b for r, b in zip(runs, base, strict=True)), 3),
        }
        for name, runs in results.items()
    ]


def _machine() -> str:
    import sqlalchemy

    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}, SQLAlchemy {sqlalchemy.__version__}"
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.rounds < 1 or args.queries < 10:
        raise CommandError(EXIT_USAGE, "--rounds must be >= 1 and --queries >= 10")
    if args.url or args.embedded_postgres:
        rows, database = _bench_postgres(args)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            variants, close = _sqlite_variants(Path(tmp) / "bench.sqlite")
            try:
                results = _measure(variants, args.rounds, args.queries, lambda r: r)
            finally:
                close()
        rows, database = _rows(results), "SQLite (sqlite3)"
    if args.json:
        print(json.dumps({"database": database, "machine": _machine(), "variants": rows}, indent=2))
        return 0
    print_table(
        f"{database}: point query, checkout each time; {args.rounds} rounds x {args.queries}",
        [("variant", "left"), ("median µs/query", "right"), (f"vs {BASE}", "right")],
        [[row["variant"], f"{row['median_us']:.1f}", f"{row['ratio']:.3f}x"] for row in rows],
    )
    print(f"machine: {_machine()}")
    return 0


def _bench_postgres(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str]:
    async def run(url: URL) -> list[dict[str, Any]]:
        variants, close = await _postgres_variants(url)
        loop_results: dict[str, list[float]] = {name: [] for name in variants}
        try:
            for fn in variants.values():
                await fn(max(20, args.queries // 4))
            gc.collect()
            progress = _progress()
            with progress:
                task = progress.add_task("rounds", total=args.rounds)
                for _ in range(args.rounds):
                    order = list(variants.items())
                    random.shuffle(order)
                    for name, fn in order:
                        start = time.perf_counter()
                        await fn(args.queries)
                        loop_results[name].append((time.perf_counter() - start) / args.queries)
                    progress.advance(task)
        finally:
            await close()
        return _rows(loop_results)

    if args.url:
        url = parse_url(args.url, "--url")
        if url.get_driver_name() != "asyncpg":
            raise CommandError(
                EXIT_USAGE, f"--url needs postgresql+asyncpg://, got {url.drivername!r}"
            )
        check_driver(url)
        try:
            return asyncio.run(run(url)), "PostgreSQL (asyncpg)"
        except Exception as exc:
            from sqlalchemy_resilience.errors import translate_error
            from sqlalchemy_resilience.errors.translate import describe

            raise CommandError(
                EXIT_UNAVAILABLE,
                f"could not benchmark {url.render_as_string(hide_password=True)}: "
                f"{describe(translate_error(exc))}",
            ) from None
    from sqlalchemy_resilience.testing.embedded import EmbeddedPostgres, EmbeddedPostgresError

    check_driver(URL.create("postgresql+asyncpg"))
    try:
        with EmbeddedPostgres() as pg:
            return asyncio.run(run(pg.url(driver="asyncpg"))), "PostgreSQL (asyncpg, embedded)"
    except EmbeddedPostgresError as exc:
        raise CommandError(
            EXIT_UNAVAILABLE, f"could not start an embedded PostgreSQL: {exc}"
        ) from None
