"""Pool management, measured in one run.

1. Checkout + checkin cost (``async with engine.connect(): SELECT 1`` on
   PostgreSQL, a bare checkout on SQLite) of plain SQLAlchemy against
   ``instrument()`` with every pool feature on: leak detection, ``max_waiting``,
   a running :class:`PoolMaintainer` (keepalive, jittered recycle, min size)
   and a running :class:`PoolAutosizer`. Interleaved rounds, paired ratios.
2. The autosizer against fixed small and large pools under a bursty load
   (PostgreSQL): bursts of 24 concurrent requests, each holding a connection
   for 20 ms, 2 s apart; p99 checkout wait and the connections the server
   had to keep open (peak and time-weighted mean).

    python -m benchmarks.pool                      # SQLite part only
    python -m benchmarks.pool --embedded-postgres  # both parts on PostgreSQL too
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from sqlalchemy_resilience import instrument
from sqlalchemy_resilience.pool import (
    AsyncResizableQueuePool,
    PoolAutosizer,
    PoolMaintainer,
    ResizableQueuePool,
    pool_stats,
)

from .overhead import measure_async, measure_sync, table

POOL = 10


def bench_sqlite_checkout(rounds: int, ops: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'pool.sqlite'}"
        plain = create_engine(url, pool_size=POOL)
        features = create_engine(url, poolclass=ResizableQueuePool, pool_size=POOL)
        monitors = [instrument(features, leak_threshold=30, max_waiting=100).pool]
        no_leaks = create_engine(url, poolclass=ResizableQueuePool, pool_size=POOL)
        monitors.append(instrument(no_leaks, max_waiting=100).pool)
        background = []
        for engine, monitor in zip((features, no_leaks), monitors, strict=True):
            maintainer = PoolMaintainer(engine, keepalive=30, recycle=1800, min_size=2, interval=1)
            maintainer.start_sync()
            sizer = PoolAutosizer(engine, monitor=monitor, min_size=2, max_size=POOL, interval=1)
            sizer.start_sync()
            background += [maintainer, sizer]

        def checkout(engine: Engine) -> Callable[[int], None]:
            def run(n: int) -> None:
                for _ in range(n):
                    with engine.connect():
                        pass

            return run

        variants = {
            "plain SQLAlchemy": checkout(plain),
            "all pool features on": checkout(features),
            "all but leak detection": checkout(no_leaks),
        }
        results = measure_sync(variants, rounds, ops)
        for worker in background:
            worker.detach()
        for engine in (plain, features, no_leaks):
            engine.dispose()
    return table(
        f"SQLite (sqlite3): checkout + checkin, {rounds} rounds x {ops}", results, unit="checkout"
    )


async def bench_postgres_checkout(url: URL, rounds: int, ops: int) -> str:
    plain = create_async_engine(url, pool_size=POOL)
    features = create_async_engine(url, poolclass=AsyncResizableQueuePool, pool_size=POOL)
    monitors = [instrument(features, leak_threshold=30, max_waiting=100).pool]
    no_leaks = create_async_engine(url, poolclass=AsyncResizableQueuePool, pool_size=POOL)
    monitors.append(instrument(no_leaks, max_waiting=100).pool)
    maintainers = []
    sizers = []
    for engine, monitor in zip((features, no_leaks), monitors, strict=True):
        maintainer = PoolMaintainer(engine, keepalive=30, recycle=1800, min_size=2, interval=1)
        await maintainer.start()
        sizer = PoolAutosizer(engine, monitor=monitor, min_size=2, max_size=POOL, interval=1)
        await sizer.start()
        maintainers.append(maintainer)
        sizers.append(sizer)
    probe = text("SELECT 1")

    def checkout(engine: AsyncEngine) -> Callable[[int], Awaitable[None]]:
        async def run(n: int) -> None:
            for _ in range(n):
                async with engine.connect() as conn:
                    await conn.execute(probe)

        return run

    variants = {
        "plain SQLAlchemy": checkout(plain),
        "all pool features on": checkout(features),
        "all but leak detection": checkout(no_leaks),
    }
    # Every pool keeps two connections open (the maintainer's min_size), so
    # all alternate between two server backends alike.
    for engine in (plain, features, no_leaks):
        held = [await engine.connect() for _ in range(2)]
        for conn in held:
            await conn.execute(probe)
            await conn.close()
    results = await measure_async(variants, rounds, ops)
    for maintainer in maintainers:
        maintainer.detach()
    for sizer in sizers:
        sizer.detach()
    for engine in (plain, features, no_leaks):
        await engine.dispose()
    return table(
        f"PostgreSQL (asyncpg): checkout + SELECT 1 + checkin, {rounds} rounds x {ops}",
        results,
        unit="checkout",
    )


GAP = 2.0


async def _bursty(engine: AsyncEngine, bursts: int, sampler: Callable[[], int]) -> dict[str, Any]:
    """Bursts of 24 requests holding a connection 20 ms, GAP s apart; samples open connections."""
    samples: list[int] = []
    times: list[float] = []
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            samples.append(sampler())
            times.append(time.monotonic() - start)
            await asyncio.sleep(0.01)

    async def request() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT pg_sleep(0.02)"))

    # One burst and a quiet period before measuring: connection set-up is not the subject.
    await asyncio.gather(*(request() for _ in range(24)))
    await asyncio.sleep(GAP)
    pool_stats(engine, pop=True)
    start = time.monotonic()
    watcher = asyncio.create_task(sample())
    for _ in range(bursts):
        await asyncio.gather(*(request() for _ in range(24)))
        await asyncio.sleep(GAP)
    elapsed = time.monotonic() - start
    stop.set()
    await watcher
    stats = pool_stats(engine)
    return {
        "p99": stats["wait_time_p99"],
        "peak": max(samples),
        "mean": statistics.fmean(samples),
        "elapsed": elapsed,
        "series": (times, samples),
    }


def plot_autosizer(rows: list[tuple[str, dict[str, Any]]], path: Path) -> None:
    """Connections open over time for each pool under the same bursts (an SVG for the docs)."""
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("agg")
    matplotlib.rcParams["svg.fonttype"] = "none"
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, result in rows:
        times, samples = result["series"]
        ax.step(
            times, samples, where="post", label=f"{name} (p99 wait {result['p99'] * 1000:.0f} ms)"
        )
    ax.set_xlabel("seconds (a burst of 24 requests x 20 ms every 2 s)")
    ax.set_ylabel("connections open")
    ax.set_title("Connections the server keeps open under bursts")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, **({"metadata": {"Date": None}} if path.suffix == ".svg" else {"dpi": 110}))
    print(f"plot written to {path}")


async def bench_autosizer(url: URL, bursts: int, plot: Path | None = None) -> str:
    rows = []
    for name, size, auto in (
        ("fixed pool of 4", 4, False),
        ("fixed pool of 24", 24, False),
        ("autosizer 2..24", 2, True),
    ):
        engine = create_async_engine(
            url,
            poolclass=AsyncResizableQueuePool,
            pool_size=size,
            max_overflow=0,
            pool_timeout=60,
        )
        monitor = instrument(engine).pool
        pool = engine.sync_engine.pool
        sizer = None
        if auto:
            sizer = PoolAutosizer(
                engine, monitor=monitor, min_size=2, max_size=24, interval=0.2, shrink_after=4
            )
            await sizer.start()
        result = await _bursty(engine, bursts, lambda p=pool: p.checkedin() + p.checkedout())  # type: ignore[misc]
        if sizer is not None:
            sizer.detach()
            result["decisions"] = len(sizer.decisions)
        await engine.dispose()
        rows.append((name, result))
    if plot is not None:
        plot_autosizer(rows, plot)
    lines = [
        f"\nPostgreSQL: {bursts} bursts of 24 requests x 20 ms, {GAP:g} s apart",
        "| pool | p99 checkout wait | peak connections | mean connections open | resizes |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['p99'] * 1000:.1f} ms | {r['peak']} | {r['mean']:.1f} | "
            f"{r.get('decisions', '-')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--bursts", type=int, default=8)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--postgres-url", help="postgresql+asyncpg:// URL")
    group.add_argument("--embedded-postgres", action="store_true")
    parser.add_argument(
        "--plot", help="write an SVG of connections open over time under bursts (matplotlib)"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.ops < 1 or args.bursts < 1:
        parser.error("--rounds, --ops and --bursts must be at least 1")
    import sqlalchemy

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"SQLAlchemy {sqlalchemy.__version__}"
    )
    print(bench_sqlite_checkout(args.rounds, args.ops))

    async def postgres(url: URL) -> None:
        print(await bench_postgres_checkout(url, args.rounds, args.ops // 2))
        print(await bench_autosizer(url, args.bursts, Path(args.plot) if args.plot else None))

    if args.postgres_url:
        asyncio.run(postgres(make_url(args.postgres_url)))
    elif args.embedded_postgres:
        from sqlalchemy_resilience.testing.embedded import EmbeddedPostgres

        with EmbeddedPostgres(settings={"max_connections": "100"}) as pg:
            asyncio.run(postgres(pg.url(driver="asyncpg")))


if __name__ == "__main__":
    main()
