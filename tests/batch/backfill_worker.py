"""A backfill for test_backfill_crash: ``python -m tests.batch.backfill_worker URL ROWS CHUNK``.

Inserts rows 0..ROWS-1 into ``backfill_target`` (no unique key, so a row
written twice would show) with ``job="backfill"``, printing a line after
each committed chunk so the test can kill it mid-way.
"""

from __future__ import annotations

import asyncio
import sys
import time

from sqlalchemy import Column, Integer, MetaData, String, Table
from sqlalchemy.ext.asyncio import create_async_engine

from sqlalchemy_resilience import bulk_insert, instrument

metadata = MetaData()
target = Table(
    "backfill_target",
    metadata,
    Column("n", Integer, nullable=False),
    Column("label", String(40), nullable=False),
)


async def main(url: str, rows: int, chunk: int) -> None:
    engine = create_async_engine(url)
    instrument(engine)

    def progress(done: int, rate: float) -> None:
        print(done, flush=True)
        time.sleep(0.01)  # a backfill throttled to spare the database

    result = await bulk_insert(
        engine,
        target,
        ({"n": i, "label": f"row {i}"} for i in range(rows)),
        chunk_size=chunk,
        job="backfill",
        progress=progress,
    )
    print(f"done {result.rows} skipped {result.skipped_chunks}", flush=True)
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
