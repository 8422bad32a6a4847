"""Page time from page 1 to page 10,000 on a 1,000,000-row table: keyset against offset, in one run.

The table has 1,000,000 rows (bigint id, timestamptz ``created`` with three
rows per second, so the order needs its tiebreaker, text, jsonb) and an index
on ``(created, id)``; pages are 100 rows of ``ORDER BY created DESC, id DESC``.
Measured at pages 1, 10, 100, 1,000, 5,000 and 10,000:

* ``paginate()`` (keyset, signed cursors): the whole list is walked page by
  page, as a client following ``next`` links does, and each checkpoint's time
  is the median of the 21 pages around it;
* sqlakeyset's ``select_page`` (what fastapi-pagination uses) from the same
  positions;
* the same keyset query hand-written with plain SQLAlchemy
  (``WHERE (created, id) < (:c, :i) ORDER BY ... LIMIT 101``) and with the
  raw driver (asyncpg), from the same positions: the package's own cost;
* ``paginate_offset()`` (LIMIT/OFFSET), ``--rounds`` times per checkpoint.

    python -m benchmarks.pagination --embedded-postgres [--plot docs/_static/pagination.svg]
    python -m benchmarks.pagination --postgres-url postgresql+asyncpg://u:p@host/db
    python -m benchmarks.pagination --sqlite        # the embedded default, aiosqlite on a file

``--plot`` needs matplotlib (``pip install matplotlib``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Index, MetaData, Table, Text, select, tuple_
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from benchmarks._postgres import add_postgres_arguments, asyncpg_connect, postgres_url
from sqlalchemy_resilience import bulk_insert, paginate
from sqlalchemy_resilience.pagination import paginate_offset

metadata = MetaData()
pages_table = Table(
    "sr_bench_pages",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("title", Text, nullable=False),
    Column("body", Text, nullable=False),
    Index("sr_bench_pages_created_id", "created", "id"),
)
KEY = "benchmark-key-0123456789abcdef"
PAGE = 100
CHECKPOINTS = [1, 10, 100, 1_000, 5_000, 10_000]
WINDOW = 10  # pages each side of a checkpoint whose median is reported
T0 = datetime(2026, 1, 1, tzinfo=UTC)
STMT = select(pages_table).order_by(pages_table.c.created.desc(), pages_table.c.id.desc())


def _rows(n: int) -> Iterator[dict[str, Any]]:
    for i in range(n):
        yield {
            "id": i,
            "created": T0 + timedelta(seconds=i // 3),
            "title": f"post {i}",
            "body": "lorem ipsum " * 8,
        }


async def load(engine: AsyncEngine, n: int) -> float:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
    start = time.perf_counter()
    await bulk_insert(engine, pages_table, _rows(n), chunk_size=50_000)
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        if engine.dialect.name == "postgresql":
            await conn.exec_driver_sql("VACUUM ANALYZE sr_bench_pages")
        else:
            await conn.exec_driver_sql("ANALYZE")
    return time.perf_counter() - start


async def keyset_walk(engine: AsyncEngine, pages: int) -> tuple[dict[int, float], dict[int, Any]]:
    """Times of every page of a full walk, and the boundary row before each checkpoint window."""
    times: dict[int, float] = {}
    starts: dict[int, Any] = {}
    wanted = {max(1, c - WINDOW) for c in CHECKPOINTS}
    cursor = None
    async with engine.connect() as conn:
        previous_last: Any = None
        for number in range(1, pages + 1):
            if number in wanted:
                starts[number] = previous_last
            began = time.perf_counter()
            page = await paginate(conn, STMT, page_size=PAGE, after=cursor, secret=KEY)
            times[number] = time.perf_counter() - began
            cursor = page.next_cursor
            previous_last = (page.items[-1].created, page.items[-1].id) if page.items else None
            if cursor is None:
                break
    return times, starts


async def hand_written(engine: AsyncEngine, starts: dict[int, Any]) -> dict[int, float]:
    """The same pages by a hand-written keyset query in plain SQLAlchemy."""
    times: dict[int, float] = {}
    c = pages_table.c
    async with engine.connect() as conn:
        for first, place in sorted(starts.items()):
            for number in range(first, first + 2 * WINDOW + 1):
                stmt = STMT.limit(PAGE + 1)
                if place is not None:
                    stmt = stmt.where(tuple_(c.created, c.id) < tuple_(*place))
                began = time.perf_counter()
                rows = (await conn.execute(stmt)).all()
                times[number] = time.perf_counter() - began
                place = (rows[PAGE - 1].created, rows[PAGE - 1].id) if len(rows) > PAGE else None
                if place is None:
                    break
    return times


async def sqlakeyset_pages(engine: AsyncEngine, starts: dict[int, Any]) -> dict[int, float]:
    """The same pages through sqlakeyset's own ``select_page`` (unsigned bookmarks, no NULL handling)."""
    from sqlakeyset.asyncio import select_page

    times: dict[int, float] = {}
    async with engine.connect() as conn:
        for first, place in sorted(starts.items()):
            for number in range(first, first + 2 * WINDOW + 1):
                began = time.perf_counter()
                page = await select_page(conn, STMT, per_page=PAGE, after=place)
                times[number] = time.perf_counter() - began
                if not page.paging.has_next:
                    break
                place = page.paging.next.place
    return times


async def raw_driver(url: URL, starts: dict[int, Any]) -> dict[int, float]:
    """The same pages through asyncpg directly."""

    conn: Any = await asyncpg_connect(url)
    first_sql = "SELECT id, created, title, body FROM sr_bench_pages ORDER BY created DESC, id DESC LIMIT $1"
    next_sql = (
        "SELECT id, created, title, body FROM sr_bench_pages WHERE (created, id) < ($1, $2) "
        "ORDER BY created DESC, id DESC LIMIT $3"
    )
    times: dict[int, float] = {}
    try:
        for first, place in sorted(starts.items()):
            for number in range(first, first + 2 * WINDOW + 1):
                began = time.perf_counter()
                if place is None:
                    rows = await conn.fetch(first_sql, PAGE + 1)
                else:
                    rows = await conn.fetch(next_sql, place[0], place[1], PAGE + 1)
                times[number] = time.perf_counter() - began
                place = (
                    (rows[PAGE - 1]["created"], rows[PAGE - 1]["id"]) if len(rows) > PAGE else None
                )
                if place is None:
                    break
    finally:
        await conn.close()
    return times


async def offset_pages(engine: AsyncEngine, rounds: int) -> dict[int, float]:
    times: dict[int, list[float]] = {c: [] for c in CHECKPOINTS}
    async with engine.connect() as conn:
        for _ in range(rounds):
            for number in CHECKPOINTS:
                began = time.perf_counter()
                await paginate_offset(conn, STMT, page=number, page_size=PAGE)
                times[number].append(time.perf_counter() - began)
    return {n: statistics.median(v) for n, v in times.items()}


def _around(times: dict[int, float], checkpoint: int) -> float:
    window = [times[n] for n in range(checkpoint - WINDOW, checkpoint + WINDOW + 1) if n in times]
    return statistics.median(window)


def table(columns: dict[str, dict[int, float]], baseline: str) -> str:
    names = list(columns)
    lines = [
        "| page | "
        + " | ".join(f"{n} (ms)" for n in names)
        + f" | keyset / {baseline} | offset / keyset |",
        "|---:|" + "---:|" * (len(names) + 2),
    ]
    for c in CHECKPOINTS:
        values = {n: columns[n].get(c) for n in names}
        cells = " | ".join("" if v is None else f"{v * 1000:.2f}" for v in values.values())
        keyset, base, offset = (
            values.get("paginate()"),
            values.get(baseline),
            values.get("paginate_offset()"),
        )
        ratio = f"{keyset / base:.2f}" if keyset and base else ""
        growth = f"{offset / keyset:.1f}x" if keyset and offset else ""
        lines.append(f"| {c:,} | {cells} | {ratio} | {growth} |")
    return "\n".join(lines)


def plot(columns: dict[str, dict[int, float]], title: str, path: Path) -> None:
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # text as text: a small, searchable SVG
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    fig, ax = plt.subplots(figsize=(7, 4))
    from matplotlib.ticker import FuncFormatter  # type: ignore[import-not-found, unused-ignore]

    last = max(columns["paginate()"])
    for name, marker in (("paginate()", "o"), ("paginate_offset()", "s")):
        xs = [c for c in CHECKPOINTS if c in columns[name] and c <= last]
        ax.plot(xs, [columns[name][c] * 1000 for c in xs], marker=marker, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    ax.set_xlabel("page number (100 rows per page)")
    ax.set_ylabel("time per page (ms)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, **({"metadata": {"Date": None}} if path.suffix == ".svg" else {"dpi": 110}))
    print(f"plot written to {path}")


async def run(url: URL, args: argparse.Namespace) -> None:
    engine = create_async_engine(url)
    try:
        took = await load(engine, args.rows)
        pages = -(-args.rows // PAGE)
        print(
            f"\n{engine.dialect.name} ({engine.dialect.driver}): {args.rows:,} rows loaded in {took:.1f} s; "
            f"{pages:,} pages of {PAGE}, ORDER BY created DESC, id DESC"
        )
        walk, starts = await keyset_walk(engine, pages)
        columns: dict[str, dict[int, float]] = {
            "paginate()": {c: _around(walk, c) for c in CHECKPOINTS if c in walk},
        }
        plain = await hand_written(engine, starts)
        columns["plain SQLAlchemy keyset"] = {
            c: _around(plain, c) for c in CHECKPOINTS if c in walk
        }
        baseline = "plain SQLAlchemy keyset"
        sk = await sqlakeyset_pages(engine, starts)
        columns["sqlakeyset select_page"] = {c: _around(sk, c) for c in CHECKPOINTS if c in walk}
        if engine.dialect.name == "postgresql":
            raw = await raw_driver(url, starts)
            columns["raw asyncpg keyset"] = {c: _around(raw, c) for c in CHECKPOINTS if c in walk}
        columns["paginate_offset()"] = await offset_pages(engine, args.rounds)
        print(table(columns, baseline))
        total = sum(walk.values())
        print(
            f"whole keyset walk: {len(walk):,} pages in {total:.1f} s ({total / len(walk) * 1000:.2f} ms/page)"
        )
        if args.plot:
            title = f"{args.rows:,} rows, {engine.dialect.name} ({engine.dialect.driver})"
            plot(columns, title, Path(args.plot))
    finally:
        await engine.dispose()


async def main_async(args: argparse.Namespace) -> None:
    if args.sqlite:
        with tempfile.TemporaryDirectory() as folder:
            await run(make_url(f"sqlite+aiosqlite:///{Path(folder) / 'pages.sqlite'}"), args)
        return
    with postgres_url(args) as url:
        if url is None:
            raise SystemExit("give --embedded-postgres, --postgres-url or --sqlite")
        await run(url, args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="keyset against offset pagination, page 1 to 10,000"
    )
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--plot", help="write an SVG plot of both curves here (needs matplotlib)")
    group = add_postgres_arguments(parser)
    group.add_argument("--sqlite", action="store_true", help="aiosqlite on a temporary file")
    args = parser.parse_args(argv)
    if args.rows < PAGE or args.rounds < 1:
        parser.error(f"--rows must be at least {PAGE} and --rounds positive")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
