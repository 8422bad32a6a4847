"""docs/batch.md's examples as a program: batch writes, a resumed job, keyset and offset pages.

Run it::

    python examples/batch_tour.py                 # SQLite through aiosqlite, no server
    DATABASE_URL=postgresql+asyncpg://app:pw@localhost/app python examples/batch_tour.py
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, DateTime, String, func, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

CURSOR_KEY = "a-key-of-at-least-32-characters-for-the-cursors"
START = datetime(2026, 12, 1, tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class Event(Base):
    __tablename__ = "batch_tour_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class User(Base):
    __tablename__ = "batch_tour_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    tier: Mapped[str] = mapped_column(String(20), default="basic")


class Order(Base):
    __tablename__ = "batch_tour_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


users = User.__table__
events = Event.__table__


def rows_from_the_export() -> Iterator[dict[str, Any]]:
    """What a real import reads from a file or an API, one row at a time."""
    for i in range(1, 12_001):
        yield {"id": i, "kind": "import", "payload": {"line": i}}


class Crash(Exception):
    """Stands in for the deploy or the OOM kill that stops an import half-way."""


def crashing_after(rows: Iterator[dict[str, Any]], n: int) -> Iterator[dict[str, Any]]:
    for i, row in enumerate(rows):
        if i == n:
            raise Crash
        yield row


async def main(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(users.insert(), [{"id": i} for i in range(1, 101)])
    gold_ids = range(1, 101, 10)
    try:
        # [bulk]
        from sqlalchemy_resilience import bulk_insert
        from sqlalchemy_resilience.batch import bulk_update

        result = await bulk_insert(
            engine,
            Event,  # a Table, an ORM class, or a name
            ({"id": i, "kind": "click", "payload": {"n": i}} for i in range(1, 100_001)),
            chunk_size=10_000,
            progress=lambda done, rate: print(f"{done:,} rows"),
        )
        print(result.path, result.rows, result.chunks)

        await bulk_update(engine, users, ({"id": uid, "tier": "gold"} for uid in gold_ids))
        # [/bulk]
        async with engine.begin() as conn:
            await conn.execute(events.delete())
            gold = await conn.scalar(select(func.count()).where(users.c.tier == "gold"))
        print("gold users:", gold)

        # [resumable]
        from sqlalchemy_resilience.schema import create_batch_tables

        async with engine.begin() as conn:
            await conn.run_sync(create_batch_tables)  # or the Alembic revision 0003_batch_jobs
        # [/resumable]
        with contextlib.suppress(Crash):  # the first run dies after 7,500 rows: 2 chunks done
            await bulk_insert(
                engine,
                events,
                crashing_after(rows_from_the_export(), 7_500),
                chunk_size=5000,
                job="import-2026-12-02",
            )
        # [resume]
        await bulk_insert(
            engine, events, rows_from_the_export(), chunk_size=5000, job="import-2026-12-02"
        )
        # [/resume]
        async with engine.connect() as conn:
            stored = await conn.scalar(select(func.count(func.distinct(events.c.id))))
        print("after the crash and the re-run:", stored, "rows, each once")

        async with engine.begin() as conn:
            await conn.execute(
                Order.__table__.insert(),
                [
                    {"id": i, "customer_id": 7, "created_at": START + timedelta(minutes=i // 3)}
                    for i in range(1, 201)
                ],
            )
        cid = 7
        async with AsyncSession(engine) as session:
            # [keyset]
            from sqlalchemy_resilience import paginate

            stmt = select(Order).where(Order.customer_id == cid).order_by(Order.created_at.desc())

            page = await paginate(session, stmt, page_size=50, secret=CURSOR_KEY)
            orders = page.items  # [Order, ...] -- rows as the session returns them
            after = page.next_cursor  # "AUlQ3sYh...": after= for the next page (None on the last)
            before = page.previous_cursor  # before= for the page before (None on the first)
            more_either_side = page.has_next, page.has_previous

            more = await paginate(
                session, stmt, page_size=50, after=page.next_cursor, secret=CURSOR_KEY
            )
            # [/keyset]
            assert (
                len(orders) == 50 and after and before is None and more_either_side == (True, False)
            )
            print(
                "keyset: page 2 starts at order",
                more.items[0].id,
                "has_previous",
                more.has_previous,
            )
            # [offset]
            from sqlalchemy_resilience.pagination import paginate_offset

            page = await paginate_offset(session, stmt, page=3, page_size=20, with_total=True)
            orders, number, total, pages = page.items, page.page, page.total, page.pages
            # [/offset]
            print("offset: page", number, "of", pages, "total", total, "rows", len(orders))
    finally:
        from sqlalchemy_resilience.schema import batch_jobs

        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(lambda sync: batch_jobs.drop(sync, checkfirst=True))
        await engine.dispose()


if __name__ == "__main__":
    default = f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp()) / 'batch.db'}"
    asyncio.run(main(os.environ.get("DATABASE_URL", default)))
