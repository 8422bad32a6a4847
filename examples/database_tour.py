"""docs/database.md's example as a program you can run (SQLite through aiosqlite, no server).

Run it::

    python examples/database_tour.py                 # a SQLite file in a temporary directory
    DATABASE_URL=postgresql+asyncpg://app:pw@localhost/app python examples/database_tour.py
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from pathlib import Path

from sqlalchemy import String, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqlalchemy_resilience.schema import metadata as package_tables


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "tour_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)


async def place_order(session: AsyncSession) -> None:
    """A unit of work: may run more than once, does not commit (run_transaction does)."""
    session.add(User(email=f"{uuid.uuid4().hex[:8]}@example.com"))


async def main(url: str) -> None:
    request_id = str(uuid.uuid4())
    # [database]
    from sqlalchemy_resilience import Database
    from sqlalchemy_resilience.database import PoolSettings
    from sqlalchemy_resilience.instrumentation import InstrumentOptions

    db = Database(
        url,
        pool=PoolSettings(size=20, min_size=5),
        instrumentation=InstrumentOptions(slow_query_threshold=0.25, leak_threshold=60),
    )

    async with db:  # connects (fails fast if it cannot), starts the background parts
        # [/database]
        async with db.engine.begin() as conn:  # a real service runs its migrations instead
            await conn.run_sync(Base.metadata.create_all)
            await conn.run_sync(package_tables.create_all)
            await conn.execute(User.__table__.insert().values(email="ada@example.com"))
        # [work]
        email = await db.fetch_value(select(User.email).order_by(User.id).limit(1))
        await db.run_transaction(place_order, idempotency_key=request_id)
        report = await db.health()
        # [/work]
        print(email, report.status, len(await db.fetch_all(select(User.id))))
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
    # closed: background parts stopped, hooks removed, the engine disposed


if __name__ == "__main__":
    default = f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp()) / 'tour.db'}"
    asyncio.run(main(os.environ.get("DATABASE_URL", default)))
