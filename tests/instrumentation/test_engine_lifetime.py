"""An instrumented engine the application drops is freed, ORM use included (S40).

SQLAlchemy's ORM keeps compiled statements in caches held by the mapped
classes, keyed by the dialect: whatever the dialect holds lives as long as
the model classes -- the whole process. Nothing the package puts on the
dialect may hold the engine, or every engine that ever ran a flush (and its
pool, and its open connections) would stay alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import String, create_engine, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sqlalchemy_resilience import instrument
from tests.pgharness import PgServer


class Base(DeclarativeBase):
    pass


class Thing(Base):
    __tablename__ = "lifetime_things"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))


def _orm_round_trip_sync(url: str, options: dict[str, Any]) -> weakref.ref[Any]:
    engine = create_engine(url)
    instrument(engine, **options)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Thing(name="a"))
        session.flush()  # the ORM's persistence caches see this engine's dialect
        session.execute(select(Thing)).scalars().all()
        session.get(Thing, 1)
        session.commit()
    engine.dispose()
    return weakref.ref(engine)


async def _orm_round_trip_async(url: str, options: dict[str, Any]) -> weakref.ref[Any]:
    engine = create_async_engine(url)
    instrument(engine, **options)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with AsyncSession(engine) as session:
        session.add(Thing(name="a"))
        await session.flush()
        (await session.execute(select(Thing))).scalars().all()
        await session.commit()
    await engine.dispose()
    return weakref.ref(engine.sync_engine)


FEATURES: list[dict[str, Any]] = [
    {},
    {"slow_query_threshold": 0.0, "long_running_threshold": 5.0, "leak_threshold": 5.0},
]


@pytest.mark.parametrize("options", FEATURES, ids=["defaults", "every-part"])
def test_a_dropped_sync_engine_that_ran_a_flush_is_freed(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    """pysqlite: 5 engines, each with an ORM flush, dropped after dispose(): 0 alive."""
    refs = [
        _orm_round_trip_sync(f"sqlite:///{tmp_path / f'e{i}.sqlite'}", options) for i in range(5)
    ]
    gc.collect()
    assert [r() for r in refs].count(None) == 5


@pytest.mark.parametrize("options", FEATURES, ids=["defaults", "every-part"])
def test_a_dropped_async_engine_that_ran_a_flush_is_freed(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    """aiosqlite: the same, through AsyncSession."""

    async def main() -> list[weakref.ref[Any]]:
        return [
            await _orm_round_trip_async(f"sqlite+aiosqlite:///{tmp_path / f'a{i}.sqlite'}", options)
            for i in range(5)
        ]

    refs = asyncio.run(main())
    gc.collect()
    assert [r() for r in refs].count(None) == 5


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
def test_a_dropped_postgresql_engine_that_ran_a_flush_is_freed(
    pg_server: PgServer, pg_database: str, driver: str
) -> None:
    """asyncpg and psycopg: freed, and none of its connections is left open on the server."""
    url = pg_server.app_url(pg_database, driver=driver).render_as_string(hide_password=False)

    every = {**FEATURES[1], "explain_slow_queries": True}

    async def main() -> list[weakref.ref[Any]]:
        return [await _orm_round_trip_async(url, every) for _ in range(3)]

    refs = asyncio.run(main())
    sync_url = pg_server.app_url(pg_database, driver="psycopg").render_as_string(
        hide_password=False
    )
    refs.append(_orm_round_trip_sync(sync_url, every))

    # A plan still being fetched in the background holds its engine until it
    # ends (at most the EXPLAIN's 5 s timeout): the harness polls for the state.
    def freed() -> bool:
        gc.collect()
        return all(r() is None for r in refs)

    with contextlib.suppress(TimeoutError):
        pg_server.wait_for(freed, timeout=15)
    assert [r() for r in refs].count(None) == 4
    rows = pg_server.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND usename = 'app'",
        (pg_database,),
    )
    assert rows[0][0] == 0
