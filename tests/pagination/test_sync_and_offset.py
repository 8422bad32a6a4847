"""paginate_sync on sqlite3 and psycopg; paginate_offset and its sync twin on both databases."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    select,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from sqlalchemy_resilience import paginate_sync
from sqlalchemy_resilience.pagination import OffsetPage, paginate_offset, paginate_offset_sync
from tests.pgharness import PgServer

KEY = "sync-key-0123456789abcdef"

metadata = MetaData()
words = Table(
    "page_words",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("word", String(20), nullable=False),
    Column("length", Integer, nullable=False),
    Column("note", String(20)),
)
ROWS = [
    {"id": i, "word": f"w{i % 11:02d}", "length": i % 4, "note": None if i % 3 else f"n{i % 2}"}
    for i in range(1, 44)
]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def sync_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A sync engine on a SQLite file (sqlite3), then on PostgreSQL (psycopg), with 43 words."""
    if request.param == "sqlite":
        engine = create_engine(f"sqlite:///{tmp_path / 'sync.sqlite'}")
    else:
        server: PgServer = request.getfixturevalue("pg_server")
        engine = create_engine(
            server.app_url(request.getfixturevalue("pg_database"), driver="psycopg")
        )
    with engine.begin() as conn:
        metadata.drop_all(conn)
        metadata.create_all(conn)
        conn.execute(insert(words), ROWS)
    try:
        yield engine
    finally:
        engine.dispose()


def test_sync_pages_match_the_sql_order(sync_engine: Engine) -> None:
    """Forwards then backwards over (length desc, note nulls-by-dialect): the SQL order with id."""
    stmt = select(words).order_by(words.c.length.desc(), words.c.note)
    with Session(sync_engine) as session:
        expected = [r.id for r in session.execute(stmt.order_by(words.c.id))]
        pages = [paginate_sync(session, stmt, page_size=6, secret=KEY)]
        while pages[-1].has_next:
            pages.append(
                paginate_sync(session, stmt, page_size=6, secret=KEY, after=pages[-1].next_cursor)
            )
        assert [r.id for p in pages for r in p] == expected and len(pages) == 8
        back: list[int] = []
        page = pages[-1]
        while page.has_previous:
            page = paginate_sync(
                sync_engine, stmt, page_size=6, secret=KEY, before=page.previous_cursor
            )
            back = [r.id for r in page] + back
        assert back == expected[:42]


def _offset_walk(pages: list[OffsetPage[Any]]) -> list[int]:
    return [row.id for page in pages for row in page]


def test_offset_pages_sync(sync_engine: Engine) -> None:
    """Numbered pages with a total; the order gets the id tiebreaker; out-of-range pages are empty."""
    stmt = select(words).where(words.c.length > 0).order_by(words.c.word)
    with sync_engine.connect() as conn:
        expected = [r.id for r in conn.execute(stmt.order_by(words.c.id))]
        first = paginate_offset_sync(conn, stmt, page=1, page_size=10, with_total=True)
        assert (first.total, first.pages, first.has_next, first.has_previous) == (
            33,
            4,
            True,
            False,
        )
        pages = [first] + [
            paginate_offset_sync(conn, stmt, page=n, page_size=10) for n in (2, 3, 4)
        ]
        assert _offset_walk(pages) == expected
        assert not pages[-1].has_next and pages[-1].total is None and len(pages[-1]) == 3
        beyond = paginate_offset_sync(conn, stmt, page=9, page_size=10)
        assert beyond.items == [] and not beyond.has_next and beyond.has_previous
        assert first.to_dict()["pages"] == 4 and first.to_dict()["items"][0]["word"] == "w00"
    for bad, error in ((0, ValueError), (True, TypeError), (10**9, ValueError)):
        with pytest.raises(error, match="page must be"):
            paginate_offset_sync(sync_engine, stmt, page=bad)
    with pytest.raises(ValueError, match="sets LIMIT and OFFSET itself"):
        paginate_offset_sync(sync_engine, stmt.offset(3))


async def test_offset_pages_async(any_engine: AsyncEngine) -> None:
    """The async twin on aiosqlite and asyncpg; a GROUP BY statement's total counts its groups."""
    async with any_engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
        await conn.execute(insert(words), ROWS)
    async with AsyncSession(any_engine) as session:
        stmt = select(words.c.length, words.c.word).group_by(words.c.length, words.c.word)
        stmt = stmt.order_by(words.c.length, words.c.word)
        page = await paginate_offset(session, stmt, page=2, page_size=15, with_total=True)
        everything = (await session.execute(stmt)).all()
        assert (
            page.total == len(everything) == 4 * 11 - 1
        )  # (i % 4, i % 11) repeats only every 44 rows
        assert page.pages == 3 and page.has_next and page.has_previous
        assert [tuple(r) for r in page] == [tuple(r) for r in everything[15:30]]
        with pytest.raises(ValueError, match="GROUP BY expression"):
            await paginate_offset(session, stmt.order_by(None).order_by(words.c.length))
