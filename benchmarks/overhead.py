"""Per-query cost of ``instrument()`` against plain SQLAlchemy, the raw driver and the
OpenTelemetry SQLAlchemy instrumentation, all measured in one run.

Workloads: point queries (``SELECT v FROM t WHERE id = :id``) with a pool
checkout per query, and 50 concurrent tasks sharing a pool of 10. Variants:

* raw driver (asyncpg / sqlite3 / aiosqlite / PyMySQL / aiomysql);
* plain SQLAlchemy;
* ``instrument()`` with defaults and no OpenTelemetry SDK (the API's no-op meter);
* ``instrument()`` with defaults and an SDK ``MeterProvider``, and the same
  with statement durations only (``transaction_metrics=False, row_metrics=False``:
  the metric set the straightforward design records);
* ``instrument()`` with everything on (statistics with sampled call sites,
  in-flight watchdog, slow-query log, metrics), without and with an SDK;
* plain SQLAlchemy with two empty ``before/after_cursor_execute`` listeners: what
  SQLAlchemy's event path costs per statement before a listener does any work;
* the straightforward design: ``before/after_cursor_execute`` and pool
  ``checkout``/``checkin`` listeners feeding the same statistics and SDK histograms;
* ``opentelemetry-instrumentation-sqlalchemy`` with SDK tracer and meter
  providers (when installed).

Rounds are short and interleaved in a shuffled order; each variant's ratio is
the median over rounds of its time divided by plain SQLAlchemy's time in the
same round, so drift of a shared machine cancels out.

    python -m benchmarks.overhead                       # SQLite
    python -m benchmarks.overhead --embedded-postgres   # + PostgreSQL via asyncpg
    python -m benchmarks.overhead --postgres-url postgresql+asyncpg://u:p@host/db
    python -m benchmarks.overhead --no-sqlite --embedded-mariadb  # MariaDB: PyMySQL, aiomysql
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from sqlalchemy_resilience import instrument
from sqlalchemy_resilience.observe import QueryStats, normalize_statement

ROWS = 1000
TASKS = 50
POOL = 10

Sync = Callable[[int], None]
Async = Callable[[int], Awaitable[None]]


# -- OpenTelemetry SDK set-ups ---------------------------------------------------


def _sdk_meter_provider() -> Any:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    return MeterProvider(metric_readers=[InMemoryMetricReader()])


def _otel_instrumentation(engine: Engine) -> bool:
    """Attach opentelemetry-instrumentation-sqlalchemy to one engine; False if not installed.

    ``SQLAlchemyInstrumentor().instrument(engine=...)`` also wraps
    ``Engine.connect`` for every engine in the process, which would slow the
    other variants of this benchmark too; the same two pieces it installs
    (the per-engine ``EngineTracer`` and the connect-span wrapper) are
    applied to this engine only.
    """
    try:
        from opentelemetry.instrumentation.sqlalchemy.engine import (
            EngineTracer,
            _wrap_connect,
        )
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )
    except ImportError:
        return False

    class _Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(_Discard()))
    tracer = tracer_provider.get_tracer("opentelemetry.instrumentation.sqlalchemy")
    meter = _sdk_meter_provider().get_meter("opentelemetry.instrumentation.sqlalchemy")
    usage = meter.create_up_down_counter(
        name="db.client.connections.usage",
        unit="connections",
        description="The number of connections that are currently in state described by the state attribute.",
    )
    EngineTracer(tracer, engine, usage, False, {}, False)
    wrapper = _wrap_connect(tracer)
    original = engine.connect
    engine.connect = lambda: wrapper(original, engine, (), {})  # type: ignore[method-assign]
    return True


def _straightforward(engine: Engine, meter_provider: Any) -> None:
    """The obvious design: Connection and pool listeners, stats and SDK histograms."""
    stats = QueryStats()
    meter = meter_provider.get_meter("benchmark.straightforward")
    duration = meter.create_histogram("bench.db.client.operation.duration", unit="s")
    wait = meter.create_histogram("bench.db.client.connection.wait_time", unit="s")
    use = meter.create_histogram("bench.db.client.connection.use_time", unit="s")
    attrs = {"db.system.name": engine.dialect.name}
    normalized: dict[str, str] = {}

    @event.listens_for(engine, "before_cursor_execute")
    def before(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        context._bench_start = time.perf_counter()

    @event.listens_for(engine, "after_cursor_execute")
    def after(
        conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        elapsed = time.perf_counter() - context._bench_start
        key = normalized.get(statement)
        if key is None:
            key = normalized[statement] = normalize_statement(statement)
        stats.record(key, "SELECT", None, elapsed, cursor.rowcount)
        duration.record(elapsed, attrs)

    @event.listens_for(engine, "checkout")
    def checkout(dbapi_conn: Any, record: Any, proxy: Any) -> None:
        record.info["bench_out"] = time.perf_counter()
        wait.record(0.0, attrs)

    @event.listens_for(engine, "checkin")
    def checkin(dbapi_conn: Any, record: Any) -> None:
        out = record.info.pop("bench_out", None)
        if out is not None:
            use.record(time.perf_counter() - out, attrs)


def _nothing(*args: Any) -> None:
    pass


def _variants_of(make: Callable[[], Any]) -> dict[str, Any]:
    """Build every SQLAlchemy variant from an engine factory (Engine or AsyncEngine)."""
    sdk = _sdk_meter_provider()
    variants: dict[str, Any] = {"plain SQLAlchemy": make()}
    variants["instrument() defaults, no SDK"] = make()
    instrument(variants["instrument() defaults, no SDK"])
    variants["instrument() defaults, SDK"] = make()
    instrument(variants["instrument() defaults, SDK"], meter_provider=sdk)
    variants["instrument() durations only, SDK"] = make()
    instrument(
        variants["instrument() durations only, SDK"],
        meter_provider=sdk,
        transaction_metrics=False,
        row_metrics=False,
    )
    for label, provider in (("no SDK", None), ("SDK", sdk)):
        engine = variants[f"instrument() everything on, {label}"] = make()
        instrument(
            engine,
            meter_provider=provider,
            long_running_threshold=5.0,
            stats_call_sites=True,
            slow_query_threshold=1.0,
        )
    # What the public-events design pays before doing any work: SQLAlchemy's
    # event path for every statement once a Connection-level listener exists
    # (the lower bound of timing statements with them instead of the wrap).
    events = variants["plain + empty cursor_execute listeners"] = make()
    event.listen(_sync(events), "before_cursor_execute", _nothing)
    event.listen(_sync(events), "after_cursor_execute", _nothing)
    straightforward = make()
    _straightforward(_sync(straightforward), sdk)
    variants["straightforward listeners, SDK"] = straightforward
    otel = make()
    if _otel_instrumentation(_sync(otel)):
        variants["opentelemetry-instrumentation-sqlalchemy"] = otel
    return variants


def _sync(engine: Any) -> Engine:
    return engine.sync_engine if isinstance(engine, AsyncEngine) else engine  # type: ignore[no-any-return]


# -- measuring -----------------------------------------------------------------------


def table(
    title: str, seconds: dict[str, list[float]], base: str = "plain SQLAlchemy", unit: str = "query"
) -> str:
    """A Markdown table: median µs per operation and the median paired ratio to ``base``."""
    lines = [
        f"\n{title}",
        f"| variant | median µs/{unit} | vs {base} |",
        "|---|---:|---:|",
    ]
    base_runs = seconds[base]
    for name, runs in seconds.items():
        ratios = [run / ref for run, ref in zip(runs, base_runs, strict=True)]
        lines.append(
            f"| {name} | {statistics.median(runs) * 1e6:.1f} | {statistics.median(ratios):.3f} |"
        )
    return "\n".join(lines)


def _settle() -> None:
    # Everything built so far (engines, SDK objects) is long-lived: keep the
    # cyclic GC from re-scanning it during the timed rounds.
    gc.collect()
    gc.freeze()


def measure_sync(variants: dict[str, Sync], rounds: int, ops: int) -> dict[str, list[float]]:
    """Seconds per operation of each variant, per round (shuffled order each round)."""
    for fn in variants.values():
        fn(max(50, ops // 2))
    _settle()
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        order = list(variants.items())
        random.shuffle(order)
        for name, fn in order:
            start = time.perf_counter()
            fn(ops)
            results[name].append((time.perf_counter() - start) / ops)
    return results


async def measure_async(
    variants: dict[str, Async], rounds: int, ops: int
) -> dict[str, list[float]]:
    """:func:`measure_sync` for coroutine functions."""
    for fn in variants.values():
        await fn(max(50, ops // 2))
    _settle()
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        order = list(variants.items())
        random.shuffle(order)
        for name, fn in order:
            start = time.perf_counter()
            await fn(ops)
            results[name].append((time.perf_counter() - start) / ops)
    return results


def _point_sync(engine: Engine, stmt: Any) -> Sync:
    def run(n: int) -> None:
        for i in range(n):
            with engine.connect() as conn:
                conn.execute(stmt, {"id": i % ROWS}).scalar_one()

    return run


def _point_async(engine: AsyncEngine, stmt: Any) -> Async:
    async def run(n: int) -> None:
        for i in range(n):
            async with engine.connect() as conn:
                (await conn.execute(stmt, {"id": i % ROWS})).scalar_one()

    return run


def _concurrent_async(engine: AsyncEngine, stmt: Any) -> Async:
    async def one(task: int, per_task: int) -> None:
        for i in range(per_task):
            async with engine.connect() as conn:
                (await conn.execute(stmt, {"id": (task * per_task + i) % ROWS})).scalar_one()

    async def run(n: int) -> None:
        per_task = max(1, n // TASKS)
        await asyncio.gather(*(one(t, per_task) for t in range(TASKS)))

    return run


# -- SQLite --------------------------------------------------------------------------


def bench_sqlite(rounds: int, ops: int) -> str:
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.sqlite"
        setup = sqlite3.connect(path)
        setup.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
        setup.executemany("INSERT INTO t VALUES (?, ?)", [(i, i) for i in range(ROWS)])
        setup.commit()
        setup.close()
        stmt = text("SELECT v FROM t WHERE id = :id")

        raw = sqlite3.connect(path, check_same_thread=False)

        def run_raw(n: int) -> None:
            for i in range(n):
                raw.execute("SELECT v FROM t WHERE id = ?", (i % ROWS,)).fetchone()

        engines = _variants_of(lambda: create_engine(f"sqlite:///{path}"))
        variants: dict[str, Sync] = {"raw sqlite3": run_raw}
        variants.update({name: _point_sync(engine, stmt) for name, engine in engines.items()})
        out.append(
            table(
                f"SQLite (sqlite3, file), point queries, {rounds} rounds x {ops}",
                measure_sync(variants, rounds, ops),
            )
        )
        raw.close()
        for engine in engines.values():
            engine.dispose()
        out.append(asyncio.run(_sqlite_concurrent(path, rounds, ops)))
    return "\n".join(out)


async def _sqlite_concurrent(path: Path, rounds: int, ops: int) -> str:
    import aiosqlite

    stmt = text("SELECT v FROM t WHERE id = :id")
    engines = _variants_of(
        lambda: create_async_engine(f"sqlite+aiosqlite:///{path}", pool_size=POOL, max_overflow=0)
    )
    pool: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
    for _ in range(POOL):
        pool.put_nowait(await aiosqlite.connect(path))

    async def raw_one(task: int, per_task: int) -> None:
        for i in range(per_task):
            conn = await pool.get()
            try:
                async with conn.execute(
                    "SELECT v FROM t WHERE id = ?", ((task * per_task + i) % ROWS,)
                ) as cursor:
                    await cursor.fetchone()
            finally:
                pool.put_nowait(conn)

    async def run_raw(n: int) -> None:
        per_task = max(1, n // TASKS)
        await asyncio.gather(*(raw_one(t, per_task) for t in range(TASKS)))

    variants: dict[str, Async] = {"raw aiosqlite": run_raw}
    variants.update({name: _concurrent_async(e, stmt) for name, e in engines.items()})
    rounds = max(3, rounds // 3)
    result = table(
        f"SQLite (aiosqlite), {TASKS} tasks over a pool of {POOL}, {rounds} rounds x {ops}",
        await measure_async(variants, rounds, ops),
    )
    while not pool.empty():
        await pool.get_nowait().close()
    for engine in engines.values():
        await engine.dispose()
    return result


# -- PostgreSQL ----------------------------------------------------------------------


async def bench_postgres(url: URL, rounds: int, ops: int) -> str:
    import asyncpg

    setup = create_async_engine(url)
    async with setup.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS sr_bench_t"))
        await conn.execute(text("CREATE TABLE sr_bench_t (id int PRIMARY KEY, v int)"))
        await conn.execute(
            text("INSERT INTO sr_bench_t SELECT g, g FROM generate_series(0, :n) g"), {"n": ROWS}
        )
    await setup.dispose()
    stmt = text("SELECT v FROM sr_bench_t WHERE id = :id")
    raw_pool = await asyncpg.create_pool(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        database=url.database,
        ssl=False,
        min_size=POOL,
        max_size=POOL,
    )

    async def raw_point(n: int) -> None:
        for i in range(n):
            async with raw_pool.acquire() as conn:
                await conn.fetchval("SELECT v FROM sr_bench_t WHERE id = $1", i % ROWS)

    async def raw_one(task: int, per_task: int) -> None:
        for i in range(per_task):
            async with raw_pool.acquire() as conn:
                await conn.fetchval(
                    "SELECT v FROM sr_bench_t WHERE id = $1", (task * per_task + i) % ROWS
                )

    async def raw_concurrent(n: int) -> None:
        per_task = max(1, n // TASKS)
        await asyncio.gather(*(raw_one(t, per_task) for t in range(TASKS)))

    engines = _variants_of(lambda: create_async_engine(url, pool_size=POOL, max_overflow=0))
    point: dict[str, Async] = {"raw asyncpg": raw_point}
    point.update({name: _point_async(e, stmt) for name, e in engines.items()})
    concurrent: dict[str, Async] = {"raw asyncpg": raw_concurrent}
    concurrent.update({name: _concurrent_async(e, stmt) for name, e in engines.items()})
    out = [
        table(
            f"PostgreSQL (asyncpg, loopback), point queries, {rounds} rounds x {ops // 2}",
            await measure_async(point, rounds, ops // 2),
        ),
        table(
            f"PostgreSQL (asyncpg), {TASKS} tasks over a pool of {POOL}, {rounds} rounds x {ops}",
            await measure_async(concurrent, rounds, ops),
        ),
    ]
    await raw_pool.close()
    for engine in engines.values():
        await engine.dispose()
    return "\n".join(out)


# -- MariaDB / MySQL ---------------------------------------------------------------


async def bench_mariadb(url: URL, rounds: int, ops: int) -> str:
    """Point queries through PyMySQL (sync) and aiomysql, each against its raw driver."""
    import aiomysql
    import pymysql

    sync_url = url.set(drivername="mysql+pymysql")
    async_url = url.set(drivername="mysql+aiomysql")
    setup = create_engine(sync_url)
    with setup.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS sr_bench_t"))
        conn.execute(text("CREATE TABLE sr_bench_t (id int PRIMARY KEY, v int)"))
        conn.execute(
            text("INSERT INTO sr_bench_t VALUES (:id, :v)"),
            [{"id": i, "v": i} for i in range(ROWS)],
        )
    setup.dispose()
    stmt = text("SELECT v FROM sr_bench_t WHERE id = :id")
    login = {
        "host": url.host,
        "port": url.port or 3306,
        "user": url.username,
        "password": url.password or "",
        "database": url.database,
    }
    # The raw drivers have no pool of their own in the sync case: one
    # connection kept open, which is what a pool hands out.
    raw = pymysql.connect(**login, autocommit=True)

    def raw_point(n: int) -> None:
        with raw.cursor() as cursor:
            for i in range(n):
                cursor.execute("SELECT v FROM sr_bench_t WHERE id = %s", (i % ROWS,))
                cursor.fetchone()

    engines = _variants_of(lambda: create_engine(sync_url, pool_size=POOL, max_overflow=0))
    sync_variants: dict[str, Sync] = {"raw PyMySQL": raw_point}
    sync_variants.update({name: _point_sync(e, stmt) for name, e in engines.items()})
    out = [
        table(
            f"MariaDB (PyMySQL, loopback), point queries, {rounds} rounds x {ops // 2}",
            measure_sync(sync_variants, rounds, ops // 2),
        )
    ]
    raw.close()
    for engine in engines.values():
        engine.dispose()

    # aiomysql still names the database "db".
    aio_login = {**{k: v for k, v in login.items() if k != "database"}, "db": url.database}
    raw_pool = await aiomysql.create_pool(**aio_login, autocommit=True, minsize=POOL, maxsize=POOL)

    async def raw_async_point(n: int) -> None:
        for i in range(n):
            async with raw_pool.acquire() as conn, conn.cursor() as cursor:
                await cursor.execute("SELECT v FROM sr_bench_t WHERE id = %s", (i % ROWS,))
                await cursor.fetchone()

    async_engines = _variants_of(
        lambda: create_async_engine(async_url, pool_size=POOL, max_overflow=0)
    )
    async_variants: dict[str, Async] = {"raw aiomysql": raw_async_point}
    async_variants.update({name: _point_async(e, stmt) for name, e in async_engines.items()})
    out.append(
        table(
            f"MariaDB (aiomysql, loopback), point queries, {rounds} rounds x {ops // 2}",
            await measure_async(async_variants, rounds, ops // 2),
        )
    )
    raw_pool.close()
    await raw_pool.wait_closed()
    for engine in async_engines.values():
        await engine.dispose()
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=60, help="interleaved rounds (default 60)")
    parser.add_argument("--queries", type=int, default=200, help="queries per round (default 200)")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite tables")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--postgres-url", help="postgresql+asyncpg:// URL to benchmark against")
    group.add_argument("--embedded-postgres", action="store_true")
    maria = parser.add_mutually_exclusive_group()
    maria.add_argument("--mysql-url", help="a mysql:// URL (MariaDB or MySQL) to benchmark against")
    maria.add_argument(
        "--embedded-mariadb", action="store_true", help="start a throwaway MariaDB for the run"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.queries < 4:
        parser.error("--rounds must be at least 1 and --queries at least 4")
    import sqlalchemy

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"SQLAlchemy {sqlalchemy.__version__}"
    )
    if not args.no_sqlite:
        print(bench_sqlite(args.rounds, args.queries))
    if args.postgres_url:
        print(asyncio.run(bench_postgres(make_url(args.postgres_url), args.rounds, args.queries)))
    elif args.embedded_postgres:
        from sqlalchemy_resilience.testing.embedded import EmbeddedPostgres

        # Eight engines with a pool of 10 each, plus the raw pool.
        with EmbeddedPostgres(settings={"max_connections": "200"}) as pg:
            print(asyncio.run(bench_postgres(pg.url(driver="asyncpg"), args.rounds, args.queries)))
    if args.mysql_url:
        print(asyncio.run(bench_mariadb(make_url(args.mysql_url), args.rounds, args.queries)))
    elif args.embedded_mariadb:
        from sqlalchemy_resilience.testing.embedded_mariadb import EmbeddedMariaDB

        with EmbeddedMariaDB(settings={"max-connections": "300"}) as db:
            db.execute_as_admin("CREATE DATABASE sr_bench")
            url = db.url(driver="pymysql", database="sr_bench")
            print(asyncio.run(bench_mariadb(url, args.rounds, args.queries)))


if __name__ == "__main__":
    main()
