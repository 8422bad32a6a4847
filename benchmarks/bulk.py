"""Batch-insert throughput: ``bulk_insert`` against the raw driver and the usual SQLAlchemy ways.

100,000 rows (int, text, timestamptz, jsonb) into an empty table per variant,
on PostgreSQL through asyncpg, in one run:

* raw asyncpg ``copy_records_to_table`` (the limit);
* ``bulk_insert`` (the COPY path), chunks of 10,000;
* ``bulk_insert(on_conflict="ignore")`` (``INSERT ... ON CONFLICT DO NOTHING``
  through insertmanyvalues), chunks of 10,000;
* SQLAlchemy Core ``conn.execute(insert(table), rows)`` (insertmanyvalues), one transaction;
* the ORM: ``session.add_all(objects)`` + flush, one transaction;
* the hand-written loop: ``text("INSERT ...")`` executemany in chunks of 1,000,
  a commit per chunk.

Each variant runs ``--rounds`` times in shuffled order; the table shows the
median rows/s and the ratio to raw COPY. Then peak memory (tracemalloc) of
``bulk_insert`` streaming 100,000 and 1,000,000 rows from a generator.

On MariaDB (``--embedded-mariadb`` or ``--mysql-url``), through PyMySQL: raw
``LOAD DATA LOCAL INFILE`` (the limit), PyMySQL's own ``executemany`` (it
folds the rows into multi-row INSERTs), ``bulk_insert`` on its LOAD DATA path
and on insertmanyvalues, and Core ``insert()`` executemany.

    python -m benchmarks.bulk --embedded-postgres
    python -m benchmarks.bulk --postgres-url postgresql+asyncpg://u:p@host/db
    python -m benchmarks.bulk --embedded-mariadb
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    insert,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase

from benchmarks._postgres import add_postgres_arguments, asyncpg_connect, postgres_url
from sqlalchemy_resilience import bulk_insert, bulk_insert_sync, instrument

metadata = MetaData()
rows_table = Table(
    "sr_bench_bulk",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("name", Text, nullable=False),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("doc", JSONB, nullable=False),
)


# A light table: the per-chunk cost of a write shows here, where the server's
# own work per row (JSONB parsing, wide rows) does not hide it.
light_table = Table(
    "sr_bench_bulk_light",
    metadata,
    Column("id", BigInteger, primary_key=True),
    Column("name", Text, nullable=False),
    Column("n", BigInteger, nullable=False),
)


class Base(DeclarativeBase):
    pass


class BenchRow(Base):
    __table__ = rows_table


WHEN = datetime(2026, 12, 2, tzinfo=UTC)


def rows(n: int) -> Iterator[dict[str, Any]]:
    for i in range(n):
        yield {"id": i, "name": f"row number {i}", "created": WHEN, "doc": {"i": i, "tag": "x"}}


async def _reset(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)


async def _interleaved(
    engine: AsyncEngine, variants: dict[str, Callable[[], Awaitable[Any]]], n: int, rounds: int
) -> dict[str, list[float]]:
    """rows/s of each variant per round, the variants in a new shuffled order each round."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        order = list(variants.items())
        random.shuffle(order)
        for name, fn in order:
            await _reset(engine)
            start = time.perf_counter()
            await fn()
            samples[name].append(n / (time.perf_counter() - start))
    return samples


async def throughput(url: URL, n: int, rounds: int) -> str:
    engine = create_async_engine(url)
    instrument(engine)
    Session = async_sessionmaker(engine)

    async def raw_copy() -> None:

        conn: Any = await asyncpg_connect(url)
        try:
            await conn.copy_records_to_table(
                "sr_bench_bulk",
                records=[(r["id"], r["name"], r["created"], json.dumps(r["doc"])) for r in rows(n)],
                columns=["id", "name", "created", "doc"],
            )
        finally:
            await conn.close()

    async def ours_copy() -> None:
        await bulk_insert(engine, rows_table, rows(n), chunk_size=10_000)

    async def ours_conflict() -> None:
        await bulk_insert(engine, rows_table, rows(n), chunk_size=10_000, on_conflict="ignore")

    async def core_executemany() -> None:
        async with engine.begin() as conn:
            await conn.execute(insert(rows_table), list(rows(n)))

    async def orm_add_all() -> None:
        async with Session() as session, session.begin():
            session.add_all(BenchRow(**r) for r in rows(n))
            await session.flush()

    async def hand_written() -> None:
        statement = text(
            "INSERT INTO sr_bench_bulk (id, name, created, doc) "
            "VALUES (:id, :name, :created, CAST(:doc AS jsonb))"
        )
        chunk: list[dict[str, Any]] = []
        for r in rows(n):
            chunk.append({**r, "doc": json.dumps(r["doc"])})
            if len(chunk) == 1000:
                async with engine.begin() as conn:
                    await conn.execute(statement, chunk)
                chunk = []
        if chunk:
            async with engine.begin() as conn:
                await conn.execute(statement, chunk)

    variants: dict[str, Callable[[], Awaitable[None]]] = {
        "raw asyncpg copy_records_to_table": raw_copy,
        "bulk_insert (COPY path)": ours_copy,
        "bulk_insert(on_conflict='ignore')": ours_conflict,
        "Core insert() executemany (insertmanyvalues)": core_executemany,
        "ORM add_all + flush": orm_add_all,
        "hand-written chunked executemany (1000)": hand_written,
    }
    samples = await _interleaved(engine, variants, n, rounds)
    await engine.dispose()
    base = statistics.median(samples["raw asyncpg copy_records_to_table"])
    lines = ["| variant | median rows/s | time vs raw COPY |", "|---|---:|---:|"]
    for name, values in samples.items():
        med = statistics.median(values)
        lines.append(f"| {name} | {med:,.0f} | {base / med:.2f} |")
    return "\n".join(lines)


def light_rows(n: int) -> Iterator[dict[str, Any]]:
    for i in range(n):
        yield {"id": i, "name": f"row number {i}", "n": i * 7}


SWEEP_SIZES = (1_000, 5_000, 10_000, 25_000, 50_000, 100_000)


async def chunk_sweep(url: URL, n: int, rounds: int) -> str:
    """bulk_insert's COPY path by chunk size, on the light and the heavy table, vs raw COPY."""

    engine = create_async_engine(url)
    instrument(engine)
    tables = {
        "light (bigint, text, bigint)": (
            light_table,
            light_rows,
            lambda r: (r["id"], r["name"], r["n"]),
        ),
        "heavy (bigint, text, timestamptz, jsonb)": (
            rows_table,
            rows,
            lambda r: (r["id"], r["name"], r["created"], json.dumps(r["doc"])),
        ),
    }
    lines = [
        "| table | chunk_size | median rows/s | time vs raw COPY |",
        "|---|---:|---:|---:|",
    ]
    for label, (table, make, as_record) in tables.items():

        async def raw(table: Table = table, make: Any = make, as_record: Any = as_record) -> None:
            conn: Any = await asyncpg_connect(url)
            try:
                await conn.copy_records_to_table(
                    table.name,
                    records=[as_record(r) for r in make(n)],
                    columns=[c.name for c in table.columns],
                )
            finally:
                await conn.close()

        variants: dict[str, Callable[[], Awaitable[Any]]] = {"raw": raw}
        for size in SWEEP_SIZES:
            variants[str(size)] = lambda size=size, table=table, make=make: bulk_insert(
                engine, table, make(n), chunk_size=size
            )
        samples = await _interleaved(engine, variants, n, rounds)
        base = statistics.median(samples["raw"])
        for name, values in samples.items():
            med = statistics.median(values)
            shown = "raw copy_records_to_table" if name == "raw" else f"{int(name):,}"
            lines.append(f"| {label} | {shown} | {med:,.0f} | {base / med:.2f} |")
    await engine.dispose()
    return "\n".join(lines)


async def memory(url: URL, sizes: list[int]) -> str:
    engine = create_async_engine(url)
    instrument(engine)
    lines = ["| rows streamed | peak traced memory | time |", "|---:|---:|---:|"]
    for n in sizes:
        await _reset(engine)
        tracemalloc.start()
        start = time.perf_counter()
        await bulk_insert(engine, rows_table, rows(n), chunk_size=10_000)
        took = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        lines.append(f"| {n:,} | {peak / 2**20:.1f} MB | {took:.1f} s |")
    await engine.dispose()
    return "\n".join(lines)


mysql_metadata = MetaData()
mysql_table = Table(
    "sr_bench_bulk_mysql",
    mysql_metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("name", String(100), nullable=False),
    Column("n", BigInteger, nullable=False),
    Column("created", DateTime, nullable=False),
)


def mysql_rows(n: int) -> Iterator[dict[str, Any]]:
    created = datetime(2026, 12, 7, 12, 0, 0)
    for i in range(n):
        yield {"id": i, "name": f"row number {i}", "n": i * 7, "created": created}


def throughput_mariadb(url: URL, n: int, rounds: int) -> str:
    """The MariaDB table: LOAD DATA and multi-row INSERT, raw and through bulk_insert."""
    import os
    import tempfile

    import pymysql

    url = url.set(drivername="mysql+pymysql")
    engine = create_engine(url, connect_args={"local_infile": True})
    instrument(engine)

    def raw_connect() -> Any:
        return pymysql.connect(
            host=url.host,
            port=url.port or 3306,
            user=url.username,
            password=url.password or "",
            database=url.database,
            local_infile=True,
        )

    def raw_load_data() -> None:
        conn = raw_connect()
        fd, path = tempfile.mkstemp(suffix=".tsv")
        try:
            with os.fdopen(fd, "w") as file:
                for r in mysql_rows(n):
                    file.write(f"{r['id']}\t{r['name']}\t{r['n']}\t{r['created']}\n")
            with conn.cursor() as cursor:
                cursor.execute(
                    "LOAD DATA LOCAL INFILE %s INTO TABLE sr_bench_bulk_mysql (id, name, n, created)",
                    (path,),
                )
            conn.commit()
        finally:
            os.unlink(path)
            conn.close()

    def raw_executemany() -> None:
        conn = raw_connect()
        try:
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO sr_bench_bulk_mysql (id, name, n, created) VALUES (%s, %s, %s, %s)",
                    [(r["id"], r["name"], r["n"], r["created"]) for r in mysql_rows(n)],
                )
            conn.commit()
        finally:
            conn.close()

    def core_executemany() -> None:
        with engine.begin() as conn:
            conn.execute(insert(mysql_table), list(mysql_rows(n)))

    variants: dict[str, Callable[[], Any]] = {
        "raw PyMySQL LOAD DATA LOCAL INFILE": raw_load_data,
        "raw PyMySQL executemany (multi-row INSERT)": raw_executemany,
        "bulk_insert (LOAD DATA path)": lambda: bulk_insert_sync(
            engine, mysql_table, mysql_rows(n), chunk_size=10_000
        ),
        "bulk_insert(use_copy=False) (insertmanyvalues)": lambda: bulk_insert_sync(
            engine, mysql_table, mysql_rows(n), use_copy=False
        ),
        "Core insert() executemany (insertmanyvalues)": core_executemany,
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for _ in range(rounds):
            order = list(variants.items())
            random.shuffle(order)
            for name, fn in order:
                mysql_metadata.drop_all(engine)
                mysql_metadata.create_all(engine)
                start = time.perf_counter()
                fn()
                samples[name].append(n / (time.perf_counter() - start))
        mysql_metadata.drop_all(engine)
    finally:
        engine.dispose()
    base = statistics.median(samples["raw PyMySQL LOAD DATA LOCAL INFILE"])
    lines = ["| variant | median rows/s | time vs raw LOAD DATA |", "|---|---:|---:|"]
    for name, values in samples.items():
        med = statistics.median(values)
        lines.append(f"| {name} | {med:,.0f} | {base / med:.2f} |")
    return "\n".join(lines)


def _mariadb(args: argparse.Namespace) -> None:
    title = f"\nMariaDB (PyMySQL), {args.rows:,} rows x {args.rounds} rounds"
    if args.mysql_url:
        print(title)
        print(throughput_mariadb(make_url(args.mysql_url), args.rows, args.rounds))
        return
    from sqlalchemy_resilience.testing.embedded_mariadb import EmbeddedMariaDB

    with EmbeddedMariaDB() as db:
        db.execute_as_admin("CREATE DATABASE sr_bench")
        print(title)
        print(
            throughput_mariadb(
                db.url(driver="pymysql", database="sr_bench"), args.rows, args.rounds
            )
        )


async def main_async(args: argparse.Namespace) -> None:
    mariadb = args.embedded_mariadb or args.mysql_url
    with postgres_url(args) as url:
        if url is None:
            if mariadb:
                return
            raise SystemExit(
                "give --embedded-postgres or --postgres-url (COPY), or --embedded-mariadb or "
                "--mysql-url (LOAD DATA)"
            )
        if args.sweep:
            print(f"\nCOPY path by chunk size, {args.rows:,} rows x {args.rounds} rounds")
            print(await chunk_sweep(url, args.rows, args.rounds))
            return
        print(f"\nPostgreSQL (asyncpg), {args.rows:,} rows x {args.rounds} rounds")
        print(await throughput(url, args.rows, args.rounds))
        print("\nbulk_insert streaming from a generator, chunks of 10,000 (tracemalloc)")
        print(await memory(url, [100_000, 1_000_000]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="bulk_insert throughput and memory")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="only the COPY path by chunk size, on a light and a heavy table",
    )
    add_postgres_arguments(parser)
    parser.add_argument(
        "--embedded-mariadb", action="store_true", help="start a throwaway MariaDB for the run"
    )
    parser.add_argument("--mysql-url", help="an existing MySQL/MariaDB (PyMySQL) to measure on")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.rounds < 1:
        parser.error("--rows and --rounds must be positive")
    asyncio.run(main_async(args))
    if args.embedded_mariadb or args.mysql_url:
        _mariadb(args)


if __name__ == "__main__":
    main()
