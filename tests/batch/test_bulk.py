"""bulk_insert / bulk_update on a real SQLite file and PostgreSQL (asyncpg: the COPY path)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, sessionmaker

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import RetryPolicy, bulk_insert
from sqlalchemy_resilience.batch import bulk_update, bulk_update_sync
from sqlalchemy_resilience.errors import JobInputMismatch
from sqlalchemy_resilience.schema import create_batch_tables
from sqlalchemy_resilience.testing import inject_fault
from tests.pgharness import PgServer

metadata = MetaData()
items = Table(
    "bulk_items",
    metadata,
    # Ids start at 0: MySQL would turn an inserted 0 into the next
    # AUTO_INCREMENT value (unless sql_mode has NO_AUTO_VALUE_ON_ZERO).
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("name", String(100), nullable=False),
    Column("seen", DateTime(timezone=True)),
    Column("doc", JSON),
    Column("code", String(20)),
    UniqueConstraint("code", name="bulk_items_code_key"),
)
stamped = Table(
    "bulk_stamped",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("source", String(20), default="python-side"),
)


class Base(DeclarativeBase):
    pass


class Item(Base):
    __table__ = items


@pytest.fixture
async def engine(any_engine: AsyncEngine) -> AsyncEngine:
    """SQLite, PostgreSQL and MariaDB, with ``bulk_items`` and the batch-job table, empty."""
    async with any_engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
        await conn.execute(text("DROP TABLE IF EXISTS sqlalchemy_resilience_batch_job"))
        await conn.run_sync(create_batch_tables)
    return any_engine


def _rows(n: int, start: int = 0) -> Iterator[dict[str, Any]]:
    when = datetime(2026, 12, 2, tzinfo=UTC)
    for i in range(start, start + n):
        yield {
            "id": i,
            "name": f"item {i}",
            "seen": when,
            "doc": {"i": i, "tags": ["a"]},
            "code": f"c{i}",
        }


async def _count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(items))).scalar_one())


async def test_inserts_a_generator_in_chunks_with_progress(engine: AsyncEngine) -> None:
    """2,500 rows from a generator in chunks of 1,000: 3 transactions, progress after each, the path named."""
    seen: list[int] = []
    result = await bulk_insert(
        engine, items, _rows(2500), chunk_size=1000, progress=lambda done, rate: seen.append(done)
    )
    expected_path = "copy" if engine.dialect.name == "postgresql" else "insertmanyvalues"
    assert (result.rows, result.chunks, result.path) == (2500, 3, expected_path)
    assert seen == [1000, 2000, 2500]
    assert await _count(engine) == 2500
    async with engine.connect() as conn:
        row = (await conn.execute(select(items).where(items.c.id == 7))).one()
    assert row.doc == {"i": 7, "tags": ["a"]} and row.seen.year == 2026 and row.code == "c7"
    assert result.rows_per_second > 0


async def test_each_chunk_is_its_own_transaction(engine: AsyncEngine) -> None:
    """A permanent failure in chunk 2 stops the run; chunks 0-1 stay committed; the bad row is named."""
    rows = list(_rows(25))
    rows[23]["code"] = "c3"  # duplicates row 3's unique code
    with pytest.raises(sr.BatchChunkFailed) as info:
        await bulk_insert(engine, items, rows, chunk_size=10)
    failed = info.value
    assert (failed.chunk, failed.first_row, failed.last_row, failed.bad_row) == (2, 20, 24, 23)
    assert failed.rows_committed == 20
    assert isinstance(failed.__cause__, sr.UniqueViolation)
    assert "chunk 2 (rows 20-24) failed at row 23" in str(failed)
    assert await _count(engine) == 20


async def test_a_python_side_default_left_out_is_applied(engine: AsyncEngine) -> None:
    """Rows that leave out a column with Column(default=...) go through INSERT, the one
    path that applies it (COPY and LOAD DATA would leave it NULL)."""
    result = await bulk_insert(engine, stamped, [{"id": i} for i in range(3)])
    assert result.path == "insertmanyvalues"
    async with engine.connect() as conn:
        sources = (await conn.execute(select(stamped.c.source))).scalars().all()
    assert sources == ["python-side"] * 3


async def test_upserts_and_returning(engine: AsyncEngine) -> None:
    """on_conflict='ignore' and 'update' (by the key or named columns); returning in input order."""
    await bulk_insert(engine, items, _rows(10))
    changed = [{"id": i, "name": f"renamed {i}", "code": f"c{i}"} for i in range(5, 15)]
    result = await bulk_insert(
        engine, items, changed, on_conflict="update", returning=["id", items.c.name]
    )
    assert result.path == "insertmanyvalues"
    assert [tuple(r) for r in result.returned or []] == [(i, f"renamed {i}") for i in range(5, 15)]
    upserted = await bulk_insert(
        engine, items, [{"id": 1, "name": "upserted", "code": "c1"}], on_conflict="update"
    )
    merge_path = "copy+merge" if engine.dialect.name == "postgresql" else "insertmanyvalues"
    assert upserted.path == merge_path
    ignored = await bulk_insert(
        engine,
        Item,
        [{"id": 100, "name": "dup code", "code": "c1"}],
        on_conflict="ignore",
        conflict_columns=["code"],
    )
    assert ignored.rows == 1  # submitted; the database skipped it
    async with engine.connect() as conn:
        names = dict((await conn.execute(select(items.c.id, items.c.name))).all())
    assert len(names) == 15 and names[4] == "item 4" and names[9] == "renamed 9"
    assert names[1] == "upserted"
    assert 100 not in names


async def test_update_by_key(engine: AsyncEngine) -> None:
    """bulk_update sets the named columns of the rows matched by the primary key or key=."""
    await bulk_insert(engine, items, _rows(50))
    result = await bulk_update(
        engine, items, ({"id": i, "name": "gold"} for i in range(0, 50, 2)), chunk_size=7
    )
    assert (result.rows, result.chunks, result.path) == (25, 4, "executemany")
    await bulk_update(
        engine,
        "bulk_items",
        [("c1", "by code")],
        key=["code"],
        columns=["code", "name"],
        metadata=metadata,
    )
    async with engine.connect() as conn:
        names = dict((await conn.execute(select(items.c.id, items.c.name))).all())
    assert sum(1 for n in names.values() if n == "gold") == 25
    assert names[1] == "by code" and names[3] == "item 3"


async def test_resumable_job_skips_what_it_committed(engine: AsyncEngine) -> None:
    """A job that failed at chunk 3 resumes at chunk 3 with the same name: no duplicates, no gaps."""
    rows = list(_rows(40))
    broken = [dict(r) for r in rows]
    broken[35]["name"] = None  # NOT NULL: chunk 3 (rows 30-39) fails
    with pytest.raises(sr.BatchChunkFailed) as info:
        await bulk_insert(engine, items, broken, chunk_size=10, job="backfill-1")
    assert info.value.chunk == 3 and info.value.bad_row == 35
    assert await _count(engine) == 30
    resumed = await bulk_insert(engine, items, rows, chunk_size=10, job="backfill-1")
    assert (resumed.skipped_chunks, resumed.rows, resumed.chunks) == (3, 10, 1)
    assert await _count(engine) == 40
    again = await bulk_insert(engine, items, rows, chunk_size=10, job="backfill-1")
    assert (again.rows, again.skipped_chunks) == (0, 4)  # finished: nothing written
    with pytest.raises(ValueError, match="same chunk_size"):
        await bulk_insert(engine, items, rows, chunk_size=20, job="backfill-1")


async def test_resume_after_a_short_last_chunk_is_exact(engine: AsyncEngine) -> None:
    """S32: 25 rows in chunks of 10 commit (the last one short), the run dies before it is marked
    finished; resumed over an input grown to 40 rows it writes exactly rows 25-39."""
    with (
        inject_fault(engine, "disconnect", match="SET status"),
        pytest.raises(sr.ConnectionLost),
    ):
        await bulk_insert(engine, items, _rows(25), chunk_size=10, job="grown-1")
    assert await _count(engine) == 25
    resumed = await bulk_insert(engine, items, _rows(40), chunk_size=10, job="grown-1")
    assert (resumed.skipped_chunks, resumed.rows, resumed.chunks) == (3, 15, 2)
    async with engine.connect() as conn:
        ids = (await conn.execute(select(items.c.id).order_by(items.c.id))).scalars().all()
    assert ids == list(range(40))  # no gap at 25-29, no duplicate


async def test_resume_over_a_shorter_input_is_refused(engine: AsyncEngine) -> None:
    """S32: an input shorter than the rows the job committed is not its input: refused, nothing written."""
    rows = list(_rows(30))
    rows[25]["name"] = None  # chunk 2 fails: 20 rows committed
    with pytest.raises(sr.BatchChunkFailed):
        await bulk_insert(engine, items, rows, chunk_size=10, job="shrunk-1")
    with pytest.raises(JobInputMismatch, match="only 15 rows") as info:
        await bulk_insert(engine, items, _rows(15), chunk_size=10, job="shrunk-1")
    assert info.value.rows_done == 20 and isinstance(info.value, ValueError)
    assert await _count(engine) == 20


async def test_bulk_update_resume_after_a_short_last_chunk_is_exact(engine: AsyncEngine) -> None:
    """S32 for bulk_update: 7 updates in chunks of 3, cut before finishing; resumed over 12, each row updated."""
    await bulk_insert(engine, items, _rows(12))
    updates = [{"id": i, "name": f"renamed {i}"} for i in range(12)]
    with (
        inject_fault(engine, "disconnect", match="SET status"),
        pytest.raises(sr.ConnectionLost),
    ):
        await bulk_update(engine, items, updates[:7], chunk_size=3, job="rename-1")
    resumed = await bulk_update(engine, items, updates, chunk_size=3, job="rename-1")
    assert (resumed.skipped_chunks, resumed.rows) == (3, 5)
    async with engine.connect() as conn:
        names = (await conn.execute(select(items.c.name).order_by(items.c.id))).scalars().all()
    assert names == [f"renamed {i}" for i in range(12)]


async def test_targets(engine: AsyncEngine) -> None:
    """An AsyncConnection and an async_sessionmaker work; a session or connection in a transaction is refused."""
    async with engine.connect() as conn:
        result = await bulk_insert(conn, items, _rows(5), chunk_size=2)
        assert result.chunks == 3
        await conn.execute(text("SELECT 1"))
        with pytest.raises(ValueError, match="is in a transaction"):
            await bulk_insert(conn, items, _rows(1, 100))
        await conn.rollback()
    Session = async_sessionmaker(engine)
    await bulk_insert(Session, items, _rows(5, 10))
    async with Session() as session:
        await session.execute(text("SELECT 1"))
        with pytest.raises(ValueError, match="is in a transaction"):
            await bulk_insert(session, items, _rows(1, 200))
    assert await _count(engine) == 10


async def test_bad_input_is_refused_before_sql(engine: AsyncEngine) -> None:
    """Unknown tables, columns and options, mixed rows: a clear error, 0 statements run."""
    ran: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda c, cur, s, *r: ran.append(s))
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"table": "nope", "metadata": metadata}, LookupError, "not in the given MetaData"),
        ({"table": 42}, TypeError, "table must be a Table"),
        ({"rows": [{"id": 1, "name; DROP TABLE bulk_items": "x"}]}, ValueError, "is not a column"),
        ({"rows": [(1, "x")]}, TypeError, "pass columns="),
        ({"rows": [(1,)], "columns": ["id", "name"]}, ValueError, "has 1 values for 2 columns"),
        ({"rows": [{"id": 1, "name": "a"}, {"id": 2}]}, ValueError, "row 1 has other columns"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be an int >= 1"),
        ({"on_conflict": "replace"}, ValueError, "on_conflict must be"),
        ({"conflict_columns": ["nope"]}, ValueError, "conflict column 'nope'"),
        ({"returning": ["id", "id"]}, ValueError, "named twice"),
        ({"progress": 5}, TypeError, "progress must be a callable"),
        ({"retry": 3}, TypeError, "retry must be a RetryPolicy"),
        ({"job": ""}, ValueError, "job must be a string"),
        ({"rows": [object()]}, TypeError, "row 0 must be a mapping or a tuple"),
    ]
    for case, error, message in cases:
        options = {"table": items, "rows": [{"id": 1, "name": "a"}], **case}
        table, rows = options.pop("table"), options.pop("rows")
        with pytest.raises(error, match=message):
            await bulk_insert(engine, table, rows, **options)
    with pytest.raises(TypeError, match="for the other kind use bulk_\\*_sync"):
        await bulk_insert(engine.sync_engine, items, [])  # type: ignore[arg-type]
    if engine.dialect.name == "sqlite":
        with pytest.raises(ValueError, match="use_copy=True needs"):
            await bulk_insert(engine, items, [], use_copy=True)
    assert [s for s in ran if "bulk_items" in s] == []


def test_sync_twins(tmp_path: Path) -> None:
    """bulk_insert_sync / bulk_update_sync on a sync engine and a sessionmaker."""
    engine = create_engine(f"sqlite:///{tmp_path / 'sync.sqlite'}")
    metadata.create_all(engine)
    create_batch_tables(engine)
    try:
        result = sr.bulk_insert_sync(engine, items, _rows(30), chunk_size=8, job="sync-job")
        assert (result.rows, result.chunks) == (30, 4)
        bulk_update_sync(sessionmaker(engine), items, [{"id": 3, "name": "three"}])
        with engine.connect() as conn:
            assert conn.execute(select(items.c.name).where(items.c.id == 3)).scalar_one() == "three"
            assert conn.execute(select(func.count()).select_from(items)).scalar_one() == 30
    finally:
        engine.dispose()


@pytest.mark.parametrize("fault", ["disconnect", "serialization_failure"])
async def test_transient_chunk_failure_is_retried(engine: AsyncEngine, fault: str) -> None:
    """Chunk 1's transaction fails with a lost connection / a 40001 (SQLite: BUSY; MySQL:
    deadlock 1213, its whole-transaction rollback): it is re-run; every row lands once."""
    if fault == "serialization_failure":
        fault = {"sqlite": "busy", "mysql": "deadlock"}.get(engine.dialect.name, fault)
    statements: list[str] = []
    event.listen(
        engine.sync_engine,
        "before_cursor_execute",
        lambda c, cur, s, *r: statements.append(s) if "batch_job" in s and "UPDATE" in s else None,
    )
    policy = RetryPolicy(attempts=3, initial_backoff=0.001, max_backoff=0.01)
    # The 2nd job record update is chunk 1's first statement.
    with inject_fault(engine, fault, nth=2, match="UPDATE sqlalchemy_resilience_batch_job"):  # type: ignore[arg-type]
        result = await bulk_insert(
            engine, items, _rows(30), chunk_size=10, job="retried", retry=policy
        )
    assert (result.rows, result.chunks) == (30, 3)
    assert await _count(engine) == 30
    # chunks 0, 1 (failed), 1 again, 2, and the job's finish record
    assert len(statements) == 5


@pytest.mark.postgresql
def test_sync_twin_copies_through_psycopg(pg_server: PgServer, pg_database: str) -> None:
    """bulk_insert_sync takes psycopg's COPY by default: timestamps, JSON and NULLs land as
    written, the job record commits with each chunk; use_copy=False takes INSERT."""
    engine = create_engine(pg_server.app_url(pg_database, driver="psycopg"))
    try:
        with engine.begin() as conn:
            metadata.drop_all(conn)
            metadata.create_all(conn)
            conn.execute(text("DROP TABLE IF EXISTS sqlalchemy_resilience_batch_job"))
            create_batch_tables(conn)
        rows = list(_rows(23))
        rows[3]["doc"] = None
        rows[4]["seen"] = None
        result = sr.bulk_insert_sync(engine, items, rows, chunk_size=5, job="sync-copy")
        assert (result.path, result.rows, result.chunks) == ("copy", 23, 5)
        more = sr.bulk_insert_sync(engine, items, _rows(2, 23), use_copy=False)
        assert more.path == "insertmanyvalues"
        # Default chunking: 10,000 rows a chunk on COPY, 1,000 on INSERT ... VALUES.
        copied = sr.bulk_insert_sync(engine, items, _rows(12_000, 1_000))
        inserted = sr.bulk_insert_sync(engine, items, _rows(2_500, 20_000), use_copy=False)
        assert (copied.path, copied.chunks) == ("copy", 2)
        assert (inserted.path, inserted.chunks) == ("insertmanyvalues", 3)
        with engine.connect() as conn:
            stored = [tuple(r) for r in conn.execute(select(items).order_by(items.c.id))]
            job = conn.execute(
                text("SELECT rows_done, chunks_done FROM sqlalchemy_resilience_batch_job")
            ).one()
        expected = [*rows, *_rows(2, 23), *_rows(12_000, 1_000), *_rows(2_500, 20_000)]
        assert stored == [(r["id"], r["name"], r["seen"], r["doc"], r["code"]) for r in expected]
        assert tuple(job) == (23, 5)
    finally:
        engine.dispose()
