"""bulk_insert and bulk_update on MariaDB: chunks, upserts through ON DUPLICATE KEY, data errors."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import bulk_insert
from sqlalchemy_resilience.batch import bulk_update

metadata = MetaData()
items = Table(
    "batch_items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(10), nullable=False),
    Column("qty", Integer, nullable=False),
)


@pytest.fixture
async def engine(mariadb_engine: AsyncEngine) -> AsyncEngine:
    engine = mariadb_engine
    async with engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
    return engine


async def _rows(engine: AsyncEngine) -> list[tuple[int, str, int]]:
    async with engine.connect() as conn:
        result = await conn.execute(select(items).order_by(items.c.id))
        return [tuple(row) for row in result]  # type: ignore[misc]


async def test_chunks_upserts_and_updates(engine: AsyncEngine) -> None:
    result = await bulk_insert(
        engine, items, ({"id": i, "name": f"n{i}", "qty": i} for i in range(1, 251)), chunk_size=100
    )
    assert (result.rows, result.chunks, result.path) == (250, 3, "insertmanyvalues")
    again = [{"id": 1, "name": "changed", "qty": 0}, {"id": 300, "name": "new", "qty": 3}]
    await bulk_insert(engine, items, again, on_conflict="ignore")
    rows = await _rows(engine)
    assert rows[0] == (1, "n1", 1) and rows[-1] == (300, "new", 3)  # 1 kept as it was
    await bulk_insert(engine, items, [{"id": 1, "name": "changed", "qty": 0}], on_conflict="update")
    assert (await _rows(engine))[0] == (1, "changed", 0)
    await bulk_update(engine, items, ({"id": i, "qty": 1000 + i} for i in range(1, 11)))
    assert [r[2] for r in (await _rows(engine))[:10]] == [1000 + i for i in range(1, 11)]


async def test_a_value_too_long_is_an_error_even_when_ignoring_conflicts(
    engine: AsyncEngine,
) -> None:
    """on_conflict="ignore" ignores duplicate keys only: a value too long for its column
    still fails (INSERT IGNORE would have truncated it with a warning)."""
    with pytest.raises(sr.BatchChunkFailed) as failed:
        await bulk_insert(
            engine, items, [{"id": 1, "name": "x" * 50, "qty": 1}], on_conflict="ignore"
        )
    assert isinstance(failed.value.__cause__, sr.InvalidData)
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT COUNT(*) FROM batch_items"))).scalar() == 0
