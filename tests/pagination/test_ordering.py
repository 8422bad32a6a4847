"""How paginate makes an ORDER BY total: tiebreakers, refusals, custom types, cursors of the wrong shape."""

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
    TypeDecorator,
    create_engine,
    event,
    func,
    insert,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from sqlalchemy_resilience import InvalidCursor, paginate, paginate_sync
from sqlalchemy_resilience.pagination.cursor import CursorCodec, resolve_secret
from sqlalchemy_resilience.pagination.ordering import ordering_of

from .reference import portable

KEY = "ordering-key-0123456789abcdef"


class Shouting(TypeDecorator[str]):
    """Stored upper-case: a bind processor the keyset condition must apply to cursor values."""

    impl = String(30)
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else value.upper()

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        return None if value is None else value.lower()


metadata = MetaData()
tags = Table(
    "order_tags",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("label", Shouting, nullable=False),
    Column("code", String(10), nullable=False, unique=True),
    Column("rank", Integer, nullable=False),
)
notes = Table(
    "order_notes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("tag_id", Integer, nullable=False),
)
ROWS = [{"id": i, "label": f"tag{i % 7}", "code": f"c{i:03d}", "rank": i % 3} for i in range(1, 41)]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'ordering.sqlite'}")
    with engine.begin() as conn:
        metadata.create_all(conn)
        conn.execute(insert(tags), ROWS)
        conn.execute(insert(notes), [{"id": i, "tag_id": i % 5 + 1} for i in range(1, 11)])
    try:
        yield engine
    finally:
        engine.dispose()


def _keys(stmt: Any, dialect: Any = None) -> list[str]:
    ordering = ordering_of(stmt, dialect or sqlite.dialect())
    return [f"{k.kind}:{'+' if k.ascending else '-'}:{k.target}" for k in ordering.keys]


def test_tiebreakers_are_added_only_when_needed() -> None:
    """A unique NOT NULL column or the key itself: nothing added; otherwise the primary key, per table."""
    assert _keys(select(tags).order_by(tags.c.code.desc())) == ["value:-:order_tags.code"]
    assert _keys(select(tags).order_by(tags.c.rank)) == [
        "value:+:order_tags.rank",
        "value:+:order_tags.id",
    ]
    assert _keys(select(tags)) == ["value:+:order_tags.id"]
    joined = select(tags.c.id, notes.c.id).join_from(tags, notes, tags.c.id == notes.c.tag_id)
    assert _keys(joined.order_by(tags.c.rank)) == [
        "value:+:order_tags.rank",
        "value:+:order_tags.id",
        "value:+:order_notes.id",
    ]
    outer = select(tags.c.id, notes.c.id).outerjoin_from(tags, notes, tags.c.id == notes.c.tag_id)
    # The optional side's key may be NULL: paged by its NULL flag first (NULLs
    # first on SQLite: the flag descends, True before False).
    assert _keys(outer.order_by(tags.c.id)) == [
        "value:+:order_tags.id",
        "null_flag:-:order_notes.id",
        "nullable_value:+:order_notes.id",
    ]
    # NULLs sort last for ASC on PostgreSQL, first on SQLite: the flag follows the dialect.
    nullable = select(notes).order_by(func.lower(notes.c.tag_id))
    assert _keys(nullable)[0].startswith("null_flag:-:")
    assert _keys(nullable, postgresql.dialect())[0].startswith("null_flag:+:")


def test_orders_that_cannot_be_made_unique_are_refused(engine: Engine) -> None:
    """A keyless subquery, DISTINCT that a key would change: ValueError naming the fix; order_is_unique opts out."""
    sub = select(tags.c.rank, func.count().label("n")).group_by(tags.c.rank).subquery()
    with pytest.raises(ValueError, match="has no primary key to add as a tiebreaker"):
        paginate_sync(engine, select(sub).order_by(sub.c.n), secret=KEY)
    page = paginate_sync(
        engine, select(sub).order_by(sub.c.rank), secret=KEY, order_is_unique=True, page_size=2
    )
    assert [tuple(r) for r in page] == [(0, 13), (1, 14)]
    more = paginate_sync(
        engine,
        select(sub).order_by(sub.c.rank),
        secret=KEY,
        order_is_unique=True,
        after=page.next_cursor,
    )
    assert [tuple(r) for r in more] == [(2, 13)]
    with pytest.raises(ValueError, match="SELECT DISTINCT"):
        paginate_sync(engine, select(tags.c.rank).distinct().order_by(tags.c.rank), secret=KEY)


def test_custom_types_get_their_bind_processing_in_the_condition(engine: Engine) -> None:
    """A TypeDecorator sort key: the cursor's value is stored form again in the WHERE, pages are exact."""
    stmt = select(tags.c.id, tags.c.label).order_by(tags.c.label, tags.c.id)
    with engine.connect() as conn:
        expected = [r.id for r in conn.execute(stmt)]
        seen: list[int] = []
        cursor = None
        while True:
            page = paginate_sync(conn, stmt, page_size=6, after=cursor, secret=KEY)
            seen += [r.id for r in page]
            if not page.has_next:
                break
            cursor = page.next_cursor
    assert seen == expected and all(r.label.islower() for r in page)


def test_signed_cursors_whose_values_do_not_fit_the_ordering(engine: Engine) -> None:
    """Right key and fingerprint, wrong values (a deploy changed a column's type): InvalidCursor('values')."""
    stmt = select(tags).order_by(tags.c.rank, tags.c.id)
    ran: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: ran.append(a[2]))
    codec = CursorCodec(resolve_secret(KEY), ordering_of(stmt, engine.dialect).fingerprint)
    for place, problem in (
        (("one", 2), "holds a str, not a int"),
        ((1,), "holds 1 values for an ordering of 2 keys"),
        ((1, None), "must not be NULL"),
        ((True, 3), "holds a bool, not a int"),
    ):
        with pytest.raises(InvalidCursor, match=problem) as info:
            paginate_sync(engine, stmt, after=codec.encode(place, backwards=False), secret=KEY)
        assert info.value.reason == "values"
    with pytest.raises(TypeError, match="custom_bookmark_type"):
        codec.encode((object(), 1), backwards=False)
    assert ran == []


async def test_nullable_and_boolean_keys_on_both_databases(any_engine: AsyncEngine) -> None:
    """A custom type, a nullable key and mixed directions on aiosqlite, asyncpg and aiomysql
    (which has no NULLS FIRST: paginate orders by the NULL flag): the SQL order, exactly."""
    async with any_engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
        await conn.execute(insert(tags), ROWS)
        await conn.execute(insert(notes), [{"id": i, "tag_id": i % 5 + 1} for i in range(1, 11)])
    order = [tags.c.label.desc(), notes.c.id.asc().nulls_first(), tags.c.rank]
    joined = select(tags.c.id, tags.c.label, notes.c.id.label("note")).outerjoin_from(
        tags, notes, tags.c.id == notes.c.tag_id
    )
    stmt = joined.order_by(*order)
    reference = joined.order_by(*portable(order, any_engine.dialect.name), tags.c.id)
    async with any_engine.connect() as conn:
        expected = [tuple(r) for r in await conn.execute(reference)]
        seen: list[tuple[Any, ...]] = []
        cursor = None
        while True:
            page = await paginate(conn, stmt, page_size=7, after=cursor, secret=KEY)
            seen += [tuple(r) for r in page]
            if not page.has_next:
                break
            cursor = page.next_cursor
    assert seen == expected and len(seen) == 45  # tags 1-5 have two notes each
