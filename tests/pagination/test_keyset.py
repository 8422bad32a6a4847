"""paginate() on a real SQLite file and PostgreSQL (asyncpg): orders, NULLs, ties, stability, cursors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    Numeric,
    String,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.selectable import Select

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import InvalidCursor, paginate, paginate_sync
from sqlalchemy_resilience.pagination import Page

from .reference import portable

KEY = "test-key-0123456789abcdef"
OLD_KEY = "old-key-0123456789abcdef"


class Base(DeclarativeBase):
    pass


class Team(Base):
    __tablename__ = "page_teams"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))


class Person(Base):
    __tablename__ = "page_people"
    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("page_teams.id"))
    group: Mapped[str] = mapped_column(String(10))
    score: Mapped[int | None] = mapped_column(Integer)
    nickname: Mapped[str | None] = mapped_column(String(30))
    joined: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    active: Mapped[bool] = mapped_column(Boolean)
    balance: Mapped[Decimal] = mapped_column(Numeric(10, 2))


T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def _people(n: int = 57) -> Iterator[dict[str, Any]]:
    for i in range(1, n + 1):
        yield {
            "id": i,
            "team_id": None if i % 7 == 0 else i % 3 + 1,
            "group": "abc"[i % 3],
            "score": None if i % 4 == 0 else i % 5,
            "nickname": None if i % 5 == 0 else f"nick{i % 6}",
            "joined": T0 + timedelta(minutes=i % 9),
            "active": i % 2 == 0,
            "balance": Decimal(i % 8) / 4,
        }


@pytest.fixture
async def engine(any_engine: AsyncEngine) -> AsyncEngine:
    async with any_engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(insert(Team), [{"id": i, "name": f"team {i}"} for i in (1, 2, 3)])
        await conn.execute(insert(Person), list(_people()))
    return any_engine


async def _walk(
    session: AsyncSession, stmt: Select[Any], size: int, after: str | None = None
) -> tuple[list[Any], list[Page[Any]]]:
    pages = [await paginate(session, stmt, page_size=size, secret=KEY, after=after)]
    while pages[-1].has_next:
        pages.append(
            await paginate(session, stmt, page_size=size, secret=KEY, after=pages[-1].next_cursor)
        )
    return [item for page in pages for item in page.items], pages


async def _walk_back(
    session: AsyncSession, stmt: Select[Any], size: int, last: Page[Any]
) -> list[Any]:
    items: list[Any] = []
    page = last
    while page.has_previous:
        page = await paginate(
            session, stmt, page_size=size, secret=KEY, before=page.previous_cursor
        )
        items = list(page.items) + items
    return items


ORDERINGS = {
    "id": lambda: [Person.id],
    "group, score desc (nullable)": lambda: [Person.group, Person.score.desc()],
    "nickname nulls first, joined desc": lambda: [
        Person.nickname.asc().nulls_first(),
        Person.joined.desc(),
    ],
    "score desc nulls last, active": lambda: [Person.score.desc().nulls_last(), Person.active],
    "active desc, balance, nickname desc": lambda: [
        Person.active.desc(),
        Person.balance,
        Person.nickname.desc(),
    ],
    "expression: score * 2 + id % 3": lambda: [
        (func.coalesce(Person.score, 9) * 2 + Person.id % 3)
    ],
    "joined (ties), no tiebreaker given": lambda: [Person.joined],
}


@pytest.mark.parametrize("ordering", list(ORDERINGS))
async def test_pages_follow_the_statements_order_both_ways(
    engine: AsyncEngine, ordering: str
) -> None:
    """Walking forwards then backwards gives exactly the rows of ORDER BY ..., id -- once each."""
    order = ORDERINGS[ordering]()
    stmt = select(Person).order_by(*order)
    async with AsyncSession(engine) as session:
        reference = select(Person).order_by(*portable(order, engine.dialect.name), Person.id)
        expected = list((await session.scalars(reference)).all())
        forward, pages = await _walk(session, stmt, 7)
        assert [p.id for p in forward] == [p.id for p in expected]
        assert len(pages) == 9 and not pages[0].has_previous and pages[0].previous_cursor is None
        assert not pages[-1].has_next and pages[-1].next_cursor is None
        assert all(len(page) == 7 for page in pages[:-1]) and len(pages[-1]) == 57 - 56
        backward = await _walk_back(session, stmt, 7, pages[-1])
        assert [p.id for p in backward] == [p.id for p in expected][: 57 - 1]


async def test_orm_entities_core_rows_and_every_target(engine: AsyncEngine) -> None:
    """A session returns entities for select(Entity); rows otherwise; a connection and an engine work."""
    async with AsyncSession(engine) as session:
        page = await paginate(session, select(Person).order_by(Person.id), page_size=3, secret=KEY)
        assert all(isinstance(p, Person) for p in page) and [p.id for p in page] == [1, 2, 3]
        rows = await paginate(
            session,
            select(Person.id, Person.nickname).order_by(Person.nickname),
            page_size=3,
            secret=KEY,
        )
        assert rows.items[0]._fields == ("id", "nickname")
    table = Person.__table__
    stmt = select(table.c.id, table.c.score).order_by(table.c.score.desc(), table.c.id)
    async with engine.connect() as conn:
        first = await paginate(conn, stmt, page_size=5, secret=KEY)
        second = await paginate(conn, stmt, page_size=5, secret=KEY, after=first.next_cursor)
    again = await paginate(engine, stmt, page_size=5, secret=KEY, after=first.next_cursor)
    assert [tuple(r) for r in second] == [tuple(r) for r in again]
    assert len({r.id for r in first} | {r.id for r in second}) == 10
    assert list(second.items[0]._mapping) == ["id", "score"]  # no key column leaks into the row


async def test_one_select_per_page_with_the_same_sql_text(engine: AsyncEngine) -> None:
    """Each page is one statement; its text is the same on every page (cache- and pg_stat-friendly)."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    stmt = select(Person).order_by(Person.nickname.desc(), Person.joined)
    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        async with AsyncSession(engine) as session:
            _, pages = await _walk(session, stmt, 10)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    assert len(seen) == len(pages) == 6
    # The cursor's NULL-ness picks one of a few shapes; never one text per page.
    assert len(set(seen[1:])) <= 2


async def test_pages_stay_stable_when_rows_are_inserted_and_deleted(engine: AsyncEngine) -> None:
    """Rows inserted before the cursor never appear; rows after it appear once; none is repeated."""
    stmt = select(Person).order_by(Person.joined, Person.id)
    async with AsyncSession(engine) as session:
        first = await paginate(session, stmt, page_size=10, secret=KEY)
        boundary = first.items[-1]
        seen = [p.id for p in first]
        async with engine.begin() as conn:
            # One row sorting before the boundary, one after it, and a seen row deleted.
            await conn.execute(
                insert(Person),
                [
                    {
                        **next(_people(1)),
                        "id": 1000,
                        "joined": boundary.joined - timedelta(hours=1),
                    },
                    {
                        **next(_people(1)),
                        "id": 1001,
                        "joined": boundary.joined + timedelta(hours=1),
                    },
                ],
            )
            await conn.execute(Person.__table__.delete().where(Person.id == seen[0]))
        # The next page is a request of its own: a transaction kept open would,
        # on MySQL's REPEATABLE READ, still read the snapshot of the first page.
        await session.rollback()
        session.expunge_all()
        rest, _ = await _walk(session, stmt, 10, after=first.next_cursor)
        ids = seen + [p.id for p in rest]
    assert (
        len(ids) == len(set(ids)) == 57 - 0 + 1
    )  # 57 originals (one deleted after it was seen) + 1001
    assert 1000 not in ids and 1001 in ids


async def test_joins_outer_joins_and_group_by(engine: AsyncEngine) -> None:
    """A LEFT JOIN's columns count as nullable; both tables' keys make the order unique; GROUP BY works."""
    stmt = (
        select(Person.id, Team.name)
        .join(Team, Person.team_id == Team.id, isouter=True)
        .order_by(Team.name.desc())
    )
    async with AsyncSession(engine) as session:
        reference = (await session.execute(stmt.order_by(Person.id, Team.id))).all()
        got, _ = await _walk(session, stmt, 8)
        assert [tuple(r) for r in got] == [tuple(r) for r in reference]
        assert sum(1 for r in got if r.name is None) == 8  # ids divisible by 7: no team
        grouped = (
            select(Person.group, func.count().label("n"))
            .group_by(Person.group)
            .order_by(func.count().desc(), Person.group)
        )
        counts, pages = await _walk(session, grouped, 2)
        assert [tuple(r) for r in counts] == [("a", 19), ("b", 19), ("c", 19)] and len(pages) == 2
        with pytest.raises(ValueError, match="GROUP BY expression"):
            await paginate(
                session,
                select(Person.group, func.count()).group_by(Person.group).order_by(func.count()),
                secret=KEY,
            )


async def test_cursors_are_checked_before_any_sql(engine: AsyncEngine) -> None:
    """Tampered, foreign, other-query and wrong-direction cursors: InvalidCursor, 0 statements."""
    stmt = select(Person).order_by(Person.joined.desc())
    async with AsyncSession(engine) as session:
        page = await paginate(session, stmt, page_size=5, secret=KEY)
        cursor = page.next_cursor
        assert cursor is not None and len(cursor) < 120 and cursor.isascii()
        other = await paginate(
            session, select(Person).order_by(Person.joined), page_size=5, secret=KEY
        )
        foreign = await paginate(session, stmt, page_size=5, secret="another-key-0123456789")
        executed: list[str] = []
        event.listen(engine.sync_engine, "before_cursor_execute", lambda *a: executed.append(a[2]))
        cases = {
            "malformed": [cursor[:-3] + "!!!", "%27%3B--", "\x00"],
            "signature": [cursor[:-1] + ("A" if cursor[-1] != "A" else "B"), foreign.next_cursor],
            "other_query": [other.next_cursor],
            "direction": [page.next_cursor],
            "too_long": ["A" * 5000],
        }
        for reason, bad in cases.items():
            for value in bad:
                kwargs = {"before": value} if reason == "direction" else {"after": value}
                with pytest.raises(InvalidCursor) as info:
                    await paginate(session, stmt, secret=KEY, **kwargs)
                assert info.value.reason == reason, (value, info.value)
                assert isinstance(info.value, ValueError)
                assert value not in str(info.value) or len(value) < 4
                assert "link" in info.value.user_message("en")
        assert executed == []


async def test_key_rotation_and_the_environment_secret(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """secret=[new, old] accepts old cursors and signs with new; the env variable is the default."""
    stmt = select(Person).order_by(Person.id)
    async with AsyncSession(engine) as session:
        old = await paginate(session, stmt, page_size=5, secret=OLD_KEY)
        rotated = await paginate(
            session, stmt, page_size=5, secret=[KEY, OLD_KEY], after=old.next_cursor
        )
        assert [p.id for p in rotated] == [6, 7, 8, 9, 10]
        assert rotated.next_cursor is not None
        await paginate(
            session, stmt, secret=KEY, after=rotated.next_cursor
        )  # signed with the new key
        with pytest.raises(InvalidCursor):
            await paginate(session, stmt, secret=OLD_KEY, after=rotated.next_cursor)
        monkeypatch.setenv(sr.pagination.SECRET_ENV, KEY)
        from_env = await paginate(session, stmt, page_size=5, after=rotated.next_cursor)
        assert [p.id for p in from_env] == [11, 12, 13, 14, 15]
        monkeypatch.delenv(sr.pagination.SECRET_ENV)
        with pytest.raises(ValueError, match="SQLALCHEMY_RESILIENCE_CURSOR_SECRET"):
            await paginate(session, stmt)
        with pytest.raises(ValueError, match="at least 16 bytes, got 5"):
            await paginate(session, stmt, secret="short")


async def test_single_cursor_parameter_and_the_end_of_the_list(engine: AsyncEngine) -> None:
    """cursor= takes either kind; past the end the page is empty and points back; empty tables work."""
    stmt = select(Person).order_by(Person.id)
    async with AsyncSession(engine) as session:
        first = await paginate(session, stmt, page_size=50, secret=KEY)
        second = await paginate(session, stmt, page_size=50, secret=KEY, cursor=first.next_cursor)
        assert [p.id for p in second] == list(range(51, 58)) and not second.has_next
        back = await paginate(
            session, stmt, page_size=50, secret=KEY, cursor=second.previous_cursor
        )
        assert [p.id for p in back] == list(range(1, 51))
        await session.execute(Person.__table__.delete().where(Person.id > 50))
        empty = await paginate(session, stmt, page_size=50, secret=KEY, after=first.next_cursor)
        assert empty.items == [] and not empty.has_next and empty.has_previous
        last = await paginate(session, stmt, page_size=10, secret=KEY, before=empty.previous_cursor)
        assert [p.id for p in last] == list(range(41, 51))
        await session.execute(Person.__table__.delete())
        nothing = await paginate(session, stmt, secret=KEY)
        assert (nothing.items, nothing.next_cursor, nothing.previous_cursor) == ([], None, None)
        await session.rollback()


async def test_bad_arguments_are_refused_before_any_sql(engine: AsyncEngine) -> None:
    """SQL text ordering, LIMIT, sizes, two cursors, sync/async mix-ups: clear errors, nothing run."""
    stmt = select(Person).order_by(Person.id)
    async with AsyncSession(engine) as session:
        refusals: list[tuple[Any, type[Exception], str]] = [
            ({"stmt": select(Person).order_by(text("id desc"))}, ValueError, "not SQL text"),
            ({"stmt": select(Person).order_by("nickname")}, ValueError, "not SQL text"),
            ({"stmt": stmt.limit(5)}, ValueError, "sets LIMIT and OFFSET itself"),
            ({"stmt": stmt, "page_size": 0}, ValueError, "between 1 and 100000, got 0"),
            ({"stmt": stmt, "page_size": True}, TypeError, "page_size must be an int"),
            ({"stmt": stmt, "after": "a", "before": "b"}, ValueError, "at most one of"),
            ({"stmt": text("select 1")}, TypeError, "takes a select"),
        ]
        for kwargs, error, message in refusals:
            target_stmt = kwargs.pop("stmt")
            with pytest.raises(error, match=message):
                await paginate(session, target_stmt, secret=KEY, **kwargs)
        with pytest.raises(TypeError, match="paginate_sync"):
            await paginate(engine.sync_engine, stmt, secret=KEY)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="await paginate"):
            paginate_sync(session, stmt, secret=KEY)  # type: ignore[arg-type]


async def test_page_serialises_to_json(engine: AsyncEngine) -> None:
    """to_dict()/to_json(): rows and entities as objects, datetimes ISO, decimals as strings; pydantic too."""
    async with AsyncSession(engine) as session:
        page = await paginate(session, select(Person).order_by(Person.id), page_size=2, secret=KEY)
        rows = await paginate(
            session,
            select(Person.id, Person.joined, Person.balance).order_by(Person.id),
            page_size=2,
            secret=KEY,
        )
    body = json.loads(page.to_json())
    assert body["items"][0]["id"] == 1 and body["items"][0]["joined"].startswith("2026-12-02T09:01")
    assert body["next_cursor"] == page.next_cursor and body["has_next"] is True
    assert rows.to_dict()["items"][1] == {
        "id": 2,
        "joined": rows.items[1].joined.isoformat(),
        "balance": "0.50",
    }
    pydantic = pytest.importorskip("pydantic")
    dumped = pydantic.TypeAdapter(Page[Any]).dump_python(rows, mode="json")
    assert dumped == json.loads(rows.to_json())
