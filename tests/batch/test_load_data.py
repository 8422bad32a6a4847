"""bulk_insert through ``LOAD DATA LOCAL INFILE`` on the real MariaDB, per driver.

Every value comes back as the INSERT path stores it; what ``LOCAL`` turns into
warnings (a duplicate key, a value too long) fails exactly as INSERT fails;
the path is taken only where the engine and the server allow local files.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import enum
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    Enum,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    Time,
    create_engine,
    select,
)
from sqlalchemy.dialects.mysql import DATETIME
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import bulk_insert, instrument
from sqlalchemy_resilience.batch.load_data import encode_records
from tests.mysqlharness import MariaDBServer

pytestmark = pytest.mark.mariadb


class Colour(enum.Enum):
    red = "red"
    blue = "blue"


metadata = MetaData()


def _table(name: str) -> Table:
    return Table(
        name,
        metadata,
        Column("id", BigInteger, primary_key=True, autoincrement=False),
        Column("label", String(40), unique=True),
        Column("body", Text),
        Column("amount", Float),
        Column("price", Numeric(12, 4)),
        Column("flag", Boolean),
        Column("at", DATETIME(fsp=6)),
        Column("day", Date),
        Column("clock", Time),
        Column("blob", LargeBinary),
        Column("doc", JSON),
        Column("colour", Enum(Colour)),
    )


loaded = _table("ld_loaded")
inserted = _table("ld_inserted")
with_default = Table(
    "ld_default",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("source", String(20), default="python-side"),
)

AWKWARD = [
    "",
    "tab\there",
    "line\nbreak",
    "back\\slash",
    "nul\0byte",
    "\\N",
    "crlf\r\n",
    "ünï ✓ 🐍",
]


def _rows(n: int) -> Iterator[dict[str, Any]]:
    for i in range(n):
        yield {
            "id": i,
            "label": f"label {i}",
            "body": None if i % 7 == 0 else AWKWARD[i % len(AWKWARD)] + f" {i}",
            "amount": None if i % 5 == 0 else i / 3,
            "price": decimal.Decimal(i) / 7 if i % 3 else decimal.Decimal("-0.0001"),
            "flag": i % 2 == 0,
            "at": dt.datetime(2026, 12, 7, 12, 0, 0, i % 1_000_000, tzinfo=dt.UTC),
            "day": dt.date(2026, 1, 1) + dt.timedelta(days=i % 365),
            "clock": dt.time(i % 24, i % 60, i % 60),
            "blob": bytes([i % 256, 0, 9, 10, 13, 92, 255 - i % 256]) if i % 4 else None,
            "doc": {"i": i, "s": AWKWARD[i % len(AWKWARD)]},
            "colour": Colour.red if i % 2 else Colour.blue,
        }


class Bulk:
    """``bulk_insert`` through one driver: the async function, or for PyMySQL the sync twin."""

    def __init__(self, driver: str, url: URL) -> None:
        self.driver = driver
        self.engine = create_async_engine(
            url.set(drivername="mysql+aiomysql" if driver == "pymysql" else f"mysql+{driver}"),
            connect_args={"local_infile": True},
        )
        instrument(self.engine)
        self.blocking = create_engine(
            url.set(drivername="mysql+pymysql"), connect_args={"local_infile": True}
        )
        instrument(self.blocking)

    async def write(self, table: Table, rows: Any, **options: Any) -> sr.BulkResult:
        if self.driver == "pymysql":
            return await asyncio.to_thread(
                sr.bulk_insert_sync, self.blocking, table, rows, **options
            )
        return await bulk_insert(self.engine, table, rows, **options)

    async def all(self, table: Table) -> list[tuple[Any, ...]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(table).order_by(table.c.id))).all()
        return [tuple(row) for row in rows]


def _blobless(n: int) -> list[dict[str, Any]]:
    return [{**row, "blob": None} for row in _rows(n)]


@pytest.fixture(params=["pymysql", "aiomysql"])
async def bulk(
    request: pytest.FixtureRequest, mariadb_server: MariaDBServer, mariadb_database: str
) -> AsyncIterator[Bulk]:
    """Engines whose driver may send local files, on fresh tables."""
    writer = Bulk(request.param, mariadb_server.app_url(mariadb_database))
    async with writer.engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
    try:
        yield writer
    finally:
        await writer.engine.dispose()
        writer.blocking.dispose()


async def test_every_value_lands_as_insert_stores_it(
    bulk: Bulk, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1,500 rows of twelve types, the awkward strings and bytes included: LOAD DATA in
    chunks of 500 (none sent through INSERT instead) and INSERT give the same table; no
    file is left behind."""
    caplog.set_level(logging.INFO, logger="sqlalchemy_resilience.batch")
    rows = list(_rows(1_500))
    tempfile.tempdir = str(tmp_path)
    try:
        fast = await bulk.write(loaded, rows, chunk_size=500)
    finally:
        tempfile.tempdir = None
    # The reference goes through PyMySQL: aiomysql 0.3.2 cannot bind bytes with
    # PyMySQL 1.2 (it calls a name PyMySQL turned into a string, PyMySQL#1274).
    slow = await asyncio.to_thread(
        sr.bulk_insert_sync, bulk.blocking, inserted, rows, chunk_size=500, use_copy=False
    )
    assert (fast.path, slow.path) == ("load data", "insertmanyvalues")
    assert (fast.rows, fast.chunks) == (1_500, 3)
    assert not [r for r in caplog.records if "instead of LOAD DATA" in r.getMessage()]
    assert await bulk.all(loaded) == await bulk.all(inserted)
    assert os.listdir(tmp_path) == []


async def test_what_local_makes_a_warning_fails_as_insert_fails(bulk: Bulk) -> None:
    """A duplicate key (which LOCAL would skip) and a string too long (which it would cut):
    BatchChunkFailed naming the row, the chunk rolled back, the chunks before committed."""
    rows = _blobless(30)  # INSERT is the fallback: see the reference in the test above
    rows[25]["label"] = "label 3"  # duplicates row 3's unique label
    with pytest.raises(sr.BatchChunkFailed) as info:
        await bulk.write(loaded, rows, chunk_size=10)
    assert (info.value.chunk, info.value.bad_row, info.value.rows_committed) == (2, 25, 20)
    assert isinstance(info.value.__cause__, sr.UniqueViolation)
    assert len(await bulk.all(loaded)) == 20
    long = _blobless(40)[30:]
    long[4]["label"] = "x" * 41  # label is varchar(40); strict mode refuses it
    with pytest.raises(sr.BatchChunkFailed) as info:
        await bulk.write(loaded, long, chunk_size=10)
    assert info.value.bad_row == 4 and isinstance(info.value.__cause__, sr.InvalidData)
    assert len(await bulk.all(loaded)) == 20


async def test_the_path_needs_the_engine_and_the_server_to_allow_it(
    bulk: Bulk, mariadb_server: MariaDBServer, mariadb_database: str
) -> None:
    """No local_infile on the engine, or off on the server: INSERT; use_copy=True says which."""
    plain = create_async_engine(mariadb_server.app_url(mariadb_database, driver="aiomysql"))
    try:
        assert (await bulk_insert(plain, loaded, _blobless(5))).path == "insertmanyvalues"
        with pytest.raises(ValueError, match=r"connect_args=\{'local_infile': True\}"):
            await bulk_insert(plain, loaded, _rows(5), use_copy=True)
    finally:
        await plain.dispose()
    mariadb_server.execute("SET GLOBAL local_infile = OFF")
    try:
        assert (await bulk.write(inserted, _blobless(5))).path == "insertmanyvalues"
        with pytest.raises(ValueError, match="a server with local_infile on"):
            await bulk.write(inserted, _blobless(5), use_copy=True)
    finally:
        mariadb_server.execute("SET GLOBAL local_infile = ON")
    with pytest.raises(ValueError, match="on_conflict='error' on MySQL"):
        await bulk.write(inserted, _rows(5), use_copy=True, on_conflict="ignore")


async def test_a_python_side_default_left_out_goes_through_insert(bulk: Bulk) -> None:
    """Only INSERT applies a Column(default=...): rows that leave that column out take that path."""
    result = await bulk.write(with_default, [{"id": i} for i in range(3)])
    assert result.path == "insertmanyvalues"
    assert {row[1] for row in await bulk.all(with_default)} == {"python-side"}


def test_the_file_spells_values_as_the_server_reads_them() -> None:
    """NULL is \\N; tab, newline, CR, backslash and NUL are escaped, in text and in bytes."""
    record = (None, "a\tb\nc\\d\re\0f", b"\x00\t\\\xff", True, 1.5, dt.date(2026, 1, 2))
    assert encode_records([record]) == (
        b"\\N\ta\\tb\\nc\\\\d\\re\\0f\t\\0\\t\\\\\xff\t1\t1.5\t2026-01-02\n"
    )
