"""Instrumentation.stats: normalization, per-statement figures, LRU cap, thread safety."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import sqlalchemy.exc as sa_exc
from sqlalchemy import Column, Engine, Integer, MetaData, Table, create_engine, select
from sqlalchemy.ext.asyncio import AsyncEngine

from sqlalchemy_resilience import instrument
from sqlalchemy_resilience.observe import QueryStats, normalize_statement

metadata = MetaData()
items = Table("items", metadata, Column("id", Integer, primary_key=True), Column("v", Integer))


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("SELECT v FROM t WHERE id = $1", "SELECT v FROM t WHERE id = ?"),
        ("SELECT v FROM t WHERE id = %(id_1)s", "SELECT v FROM t WHERE id = ?"),
        ("SELECT v FROM t WHERE id = ?", "SELECT v FROM t WHERE id = ?"),
        ("SELECT v FROM t WHERE id = :id", "SELECT v FROM t WHERE id = ?"),
        ("SELECT * FROM t WHERE id IN ($1, $2, $3)", "SELECT * FROM t WHERE id IN (...)"),
        ("SELECT * FROM t WHERE id IN (1,2)", "SELECT * FROM t WHERE id IN (...)"),
        (
            "SELECT * FROM t WHERE id IN ($1::INTEGER, $2::INTEGER)",
            "SELECT * FROM t WHERE id IN (...)",
        ),
        ("SELECT 'it''s', 42, 4.5e3, -7 FROM t", "SELECT ?, ?, ?, ? FROM t"),
        ('SELECT "col1", t2.c3 FROM "t1" t2', 'SELECT "col1", t2.c3 FROM "t1" t2'),
        ("SELECT a::int FROM t", "SELECT a::int FROM t"),
        ("SELECT 1 -- trailing 5\n  FROM t", "SELECT ? /* trailing 5 */ FROM t"),
        (
            "INSERT INTO t (a, b) VALUES ($1, $2), ($3, $4), ($5, $6)",
            "INSERT INTO t (a, b) VALUES (?, ?), ...",
        ),
        ("SELECT $$a 'quoted' 1$$", "SELECT ?"),
    ],
)
def test_normalize_statement(raw: str, normalized: str) -> None:
    """Literals, bind markers, IN-lists and repeated VALUES rows fold; identifiers stay."""
    assert normalize_statement(raw) == normalized


def test_percentiles_follow_recorded_durations() -> None:
    """p50/p95/p99 of 1..1000 ms are within the 2% bucket width of the true values."""
    stats = QueryStats()
    for ms in range(1, 1001):
        stats.record("SELECT ?", "SELECT", None, ms / 1000, 1)
    (entry,) = stats.all()
    assert entry.calls == 1000
    assert entry.rows == 1000
    assert entry.min == pytest.approx(0.001)
    assert entry.max == pytest.approx(1.0)
    assert entry.mean == pytest.approx(0.5005)
    assert entry.p50 == pytest.approx(0.500, rel=0.02)
    assert entry.p95 == pytest.approx(0.950, rel=0.02)
    assert entry.p99 == pytest.approx(0.990, rel=0.02)


def test_bad_arguments_name_the_value() -> None:
    """max_statements, top(n) and top(by=) reject bad values with a clear error."""
    with pytest.raises(ValueError, match="max_statements must be >= 1, got 0"):
        QueryStats(max_statements=0)
    with pytest.raises(TypeError, match="max_statements must be an int"):
        QueryStats(max_statements="10")  # type: ignore[arg-type]
    stats = QueryStats()
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        stats.top(0)
    with pytest.raises(ValueError, match="by must be one of total, mean"):
        stats.top(3, by="median")  # type: ignore[arg-type]


@pytest.fixture
def sqlite_engine(sync_engines: list[Engine], tmp_path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{tmp_path / 's.sqlite'}")
    sync_engines.append(engine)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(items.insert(), [{"id": i, "v": i} for i in range(1, 101)])
    return engine


def _run_point(engine: Engine, ident: int) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(items.c.v).where(items.c.id == ident)).scalar_one())


def test_same_statement_from_two_call_sites_is_one_entry(sqlite_engine: Engine) -> None:
    """Different values and call sites fold into one entry; sampled call sites are kept apart."""
    instr = instrument(sqlite_engine, stats_call_sites=True)
    for i in range(1, 65):
        _run_point(sqlite_engine, i)
    for i in range(1, 65):
        with sqlite_engine.connect() as conn:
            conn.execute(select(items.c.v).where(items.c.id == i)).scalar_one()
    assert instr.stats is not None
    entries = [s for s in instr.stats.all() if s.operation == "SELECT"]
    assert len(entries) == 1
    (entry,) = entries
    assert entry.calls == 128
    assert entry.collection == "items"
    assert entry.statement == "SELECT items.v FROM items WHERE items.id = ?"
    functions = {site.rsplit(" in ", 1)[1] for site in entry.call_sites}
    assert functions == {"_run_point", "test_same_statement_from_two_call_sites_is_one_entry"}
    assert sum(entry.call_sites.values()) == 128 // 16
    assert all(site.startswith("tests/observe/test_stats.py:") for site in entry.call_sites)


def test_in_lists_of_any_length_are_one_entry(sqlite_engine: Engine) -> None:
    """An expanding IN of 1, 5 and 50 values is one statement."""
    instr = instrument(sqlite_engine)
    with sqlite_engine.connect() as conn:
        for n in (1, 5, 50):
            conn.execute(select(items.c.v).where(items.c.id.in_(list(range(1, n + 1))))).all()
    assert instr.stats is not None
    (entry,) = [s for s in instr.stats.all() if "IN" in s.statement]
    assert entry.calls == 3
    assert entry.statement == "SELECT items.v FROM items WHERE items.id IN (...)"


def test_lru_cap_keeps_the_most_recent_statements(sqlite_engine: Engine) -> None:
    """With max_statements=5, 20 distinct statements leave the 5 most recent; 15 are evicted."""
    instr = instrument(sqlite_engine, max_statements=5)
    with sqlite_engine.connect() as conn:
        for i in range(20):
            conn.execute(select(items.c.v.label(f"c{i}")).where(items.c.id == 1)).all()
    assert instr.stats is not None
    assert len(instr.stats) == 5
    assert instr.stats.evicted == 15
    kept = [s.statement for s in instr.stats.all()]
    assert [f"AS c{i} " in s for i, s in zip(range(15, 20), kept, strict=True)] == [True] * 5


def test_concurrent_threads_lose_no_count(sync_engines: list[Engine], tmp_path: Path) -> None:
    """8 threads x 300 statements on one engine: exactly 2400 calls are counted."""
    engine = create_engine(f"sqlite:///{tmp_path / 't.sqlite'}", pool_size=8)
    sync_engines.append(engine)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(items.insert(), [{"id": 1, "v": 1}])
    instr = instrument(engine)
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        for _ in range(300):
            _run_point(engine, 1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert instr.stats is not None
    (entry,) = [s for s in instr.stats.all() if s.collection == "items" and s.operation == "SELECT"]
    assert entry.calls == 2400
    assert instr.pool_stats()["checkouts"] == 2400


async def test_postgresql_figures_errors_top_snapshot_reset(pg_engine: AsyncEngine) -> None:
    """Calls, rows, errors by class, top(), snapshot() and reset() on a real server."""
    instr = instrument(pg_engine)
    async with pg_engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
        await conn.execute(items.insert(), [{"id": i, "v": i} for i in range(1, 11)])
    for i in range(1, 11):
        async with pg_engine.connect() as conn:
            # SQLAlchemy's asyncio adapters hold a SELECT's rows once it ran:
            # counted from that buffer, unread and with or without preserve_rowcount.
            stmt = select(items.c.v).where(items.c.id == i)
            await conn.execute(stmt.execution_options(preserve_rowcount=i <= 5))
    async with pg_engine.begin() as conn:
        result = await conn.execute(items.update().where(items.c.id <= 4).values(v=0))
        assert result.rowcount == 4
    for _ in range(2):
        with pytest.raises(sa_exc.IntegrityError):
            async with pg_engine.begin() as conn:
                await conn.execute(items.insert().values(id=1, v=1))
    assert instr.stats is not None
    # asyncpg's statements carry casts ("= $1::INTEGER"), psycopg's do not.
    select_entry = next(
        s for s in instr.stats.all() if s.operation == "SELECT" and s.collection == "items"
    )
    assert select_entry.statement.startswith("SELECT items.v FROM items WHERE items.id = ?")
    assert select_entry.calls == 10
    assert select_entry.rows == 10
    assert select_entry.errors == {}
    assert 0 < select_entry.p50 <= select_entry.p95 <= select_entry.p99 <= select_entry.max
    update_entry = next(s for s in instr.stats.all() if s.operation == "UPDATE")
    assert update_entry.rows == 4
    assert update_entry.collection == "items"
    insert_entry = next(s for s in instr.stats.all() if s.operation == "INSERT" and s.errors)
    assert insert_entry.errors == {"UniqueViolation": 2}
    assert insert_entry.error_count == 2
    assert instr.stats.top(1, by="errors")[0].statement == insert_entry.statement
    assert instr.stats.top(1, by="calls")[0].statement == select_entry.statement
    snapshot = json.loads(json.dumps(instr.stats.snapshot()))
    assert snapshot["max_statements"] == 5000
    assert {s["statement"] for s in snapshot["statements"]} >= {select_entry.statement}
    # Values never reach the statistics: only bind markers.
    assert "'" not in json.dumps(snapshot)
    instr.stats.reset()
    assert len(instr.stats) == 0
    assert instr.stats.all() == []
