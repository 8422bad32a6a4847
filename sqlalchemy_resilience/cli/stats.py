"""``sqlalchemy-resilience stats``: the top statements of a database, or of a demo run in process.

``stats URL`` reads PostgreSQL's ``pg_stat_statements`` (where the extension
is installed in that database); ``stats --demo`` runs a short workload on a
throwaway SQLite file through an instrumented engine and prints the
package's own statistics, which is what ``instr.stats.top()`` shows an
application. A table on a terminal (colour only there), ``--json`` for machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    column,
    create_engine,
    desc,
    func,
    select,
)
from sqlalchemy import table as sql_table
from sqlalchemy import text as sql_text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from sqlalchemy_resilience.observe.stats import SortKey

from .common import EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_USAGE, CommandError, check_driver, parse_url
from .output import TableColumn, print_table

__all__ = ["add_stats_command"]

_ORDERS = ("calls", "mean", "total")

# pg_stat_statements' view, as SQLAlchemy constructs (column names since PostgreSQL 13).
_pss = sql_table(
    "pg_stat_statements",
    column("query"),
    column("calls"),
    column("total_exec_time"),
    column("mean_exec_time"),
    column("rows"),
)


def add_stats_command(sub: Any) -> None:
    """Register ``stats`` on the command's subparsers."""
    stats = sub.add_parser(
        "stats",
        help="top statements: pg_stat_statements of a database, or a demo run in process",
        description=(
            "Print the top statements by total time, mean time or calls: from "
            "pg_stat_statements (URL), or from the package's own statistics of a short "
            "demo workload (--demo)."
        ),
    )
    target = stats.add_mutually_exclusive_group(required=True)
    target.add_argument("url", nargs="?", help="a PostgreSQL URL (the password is never printed)")
    target.add_argument("--demo", action="store_true", help="run a demo workload on SQLite")
    stats.add_argument("--top", type=int, default=10, help="how many statements (default 10)")
    stats.add_argument("--by", choices=_ORDERS, default="total", help="order by (default total)")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    stats.set_defaults(func=_cmd_stats)


def _pg_stat_statements(url: URL, top: int, by: str) -> list[dict[str, Any]]:
    order = {
        "total": desc(_pss.c.total_exec_time),
        "mean": desc(_pss.c.mean_exec_time),
        "calls": desc(_pss.c.calls),
    }[by]
    stmt = (
        select(
            _pss.c.query,
            _pss.c.calls,
            _pss.c.total_exec_time,
            _pss.c.mean_exec_time,
            _pss.c.rows,
        )
        .order_by(order)
        .limit(top)
    )
    installed = (
        select(func.count())
        .select_from(sql_table("pg_extension", column("extname")))
        .where(column("extname") == "pg_stat_statements")
    )

    def read(conn: Any) -> list[dict[str, Any]]:
        if not conn.scalar(installed):
            raise CommandError(
                EXIT_FAILED,
                "pg_stat_statements is not installed in this database: CREATE EXTENSION "
                "pg_stat_statements (the server needs shared_preload_libraries = "
                "'pg_stat_statements')",
            )
        return [
            {
                "statement": row.query,
                "calls": int(row.calls),
                "total_ms": round(float(row.total_exec_time), 3),
                "mean_ms": round(float(row.mean_exec_time), 3),
                "rows": int(row.rows),
            }
            for row in conn.execute(stmt)
        ]

    if url.get_dialect().is_async:

        async def run() -> list[dict[str, Any]]:
            engine = create_async_engine(url)
            try:
                async with engine.connect() as conn:
                    rows: list[dict[str, Any]] = await conn.run_sync(read)
                    return rows
            finally:
                await engine.dispose()

        return asyncio.run(run())
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return read(conn)
    finally:
        engine.dispose()


def _demo_statistics(top: int, by: str) -> list[dict[str, Any]]:
    from sqlalchemy_resilience.instrumentation import instrument

    metadata = MetaData()
    items = Table(
        "items",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("name", String(20)),
        Column("stock", Integer),
    )
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'stats.sqlite'}")
        instr = instrument(engine, slow_query_threshold=None)
        try:
            metadata.create_all(engine)
            with engine.begin() as conn:
                conn.execute(
                    items.insert(),
                    [{"id": i, "name": f"item {i}", "stock": i % 7} for i in range(1, 201)],
                )
            for _ in range(300):
                with engine.begin() as conn:
                    wanted = rng.randint(1, 200)
                    conn.execute(select(items).where(items.c.id == wanted)).all()
                    conn.execute(
                        items.update().where(items.c.id == wanted).values(stock=items.c.stock + 1)
                    )
                    if wanted % 10 == 0:
                        conn.execute(
                            sql_text("SELECT count(*) FROM items WHERE stock > :s"), {"s": 3}
                        ).all()
            stats = instr.stats
            assert stats is not None
            key: SortKey = "total" if by == "total" else "mean" if by == "mean" else "calls"
            return [
                {
                    "statement": s.statement,
                    "calls": s.calls,
                    "total_ms": round(s.total * 1000, 3),
                    "mean_ms": round(s.mean * 1000, 3),
                    "p95_ms": round(s.p95 * 1000, 3),
                    "rows": s.rows,
                }
                for s in stats.top(top, by=key)
            ]
        finally:
            instr.detach()
            engine.dispose()


def _print_table(rows: list[dict[str, Any]], title: str) -> None:
    names = [k for k in ("calls", "total_ms", "mean_ms", "p95_ms", "rows") if rows and k in rows[0]]
    columns: list[TableColumn] = [(name.replace("_ms", " ms"), "right") for name in names]
    columns.append(("statement", "left"))
    print_table(
        title,
        columns,
        [[*(f"{row[name]:,}" for name in names), str(row["statement"])] for row in rows],
    )


def _cmd_stats(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise CommandError(EXIT_USAGE, f"--top must be >= 1, got {args.top}")
    if args.demo:
        rows = _demo_statistics(args.top, args.by)
        title = (
            f"top {len(rows)} statements of the demo workload, by {args.by} (in-process statistics)"
        )
    else:
        url = parse_url(args.url, "URL")
        if url.get_backend_name() != "postgresql":
            raise CommandError(
                EXIT_USAGE,
                f"stats URL reads pg_stat_statements, so it needs PostgreSQL; got "
                f"{url.get_backend_name()!r} (stats --demo shows the in-process statistics)",
            )
        check_driver(url)
        try:
            rows = _pg_stat_statements(url, args.top, args.by)
        except CommandError:
            raise
        except Exception as exc:
            from sqlalchemy_resilience.errors import translate_error
            from sqlalchemy_resilience.errors.translate import describe

            raise CommandError(
                EXIT_UNAVAILABLE,
                f"could not read statistics from {url.render_as_string(hide_password=True)}: "
                f"{describe(translate_error(exc))}",
            ) from None
        title = f"top {len(rows)} statements by {args.by} (pg_stat_statements)"
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        _print_table(rows, title)
    return 0
