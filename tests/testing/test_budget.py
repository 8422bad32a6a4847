"""The query budget on real databases: an ORM N+1 caught with its call site, the fix passing.

Each test runs on a SQLite file and on PostgreSQL (psycopg for the sync
session, asyncpg for the async one); the statements counted are the ones the
driver was asked to run, read back from the failure's text.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import ForeignKey, create_engine, insert, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    selectinload,
    sessionmaker,
)

from sqlalchemy_resilience.testing import (
    QueryBudgetExceeded,
    assert_max_queries,
    count_queries,
)
from tests.pgharness import PgServer


class Base(AsyncAttrs, DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "budget_author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    books: Mapped[list[Book]] = relationship(back_populates="author")


class Book(Base):
    __tablename__ = "budget_book"
    id: Mapped[int] = mapped_column(primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("budget_author.id"))
    title: Mapped[str]
    author: Mapped[Author] = relationship(back_populates="books")


AUTHORS = 6


def _fill(engine: Engine) -> None:
    with engine.begin() as conn:
        _fill_on(conn)


def _fill_on(conn: Connection) -> None:
    Base.metadata.drop_all(conn)
    Base.metadata.create_all(conn)
    conn.execute(insert(Author), [{"id": i, "name": f"a{i}"} for i in range(1, AUTHORS + 1)])
    conn.execute(
        insert(Book),
        [{"author_id": i, "title": f"b{i}-{j}"} for i in range(1, AUTHORS + 1) for j in (1, 2)],
    )


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        eng = create_engine(f"sqlite:///{tmp_path / 'budget.sqlite'}")
    else:
        server: PgServer = request.getfixturevalue("pg_server")
        database: str = request.getfixturevalue("pg_database")
        eng = create_engine(server.app_url(database, driver="psycopg"))
    _fill(eng)
    try:
        yield eng
    finally:
        eng.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
async def async_engine(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[AsyncEngine]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'budget.sqlite'}"
    else:
        server: PgServer = request.getfixturevalue("pg_server")
        database: str = request.getfixturevalue("pg_database")
        url = server.app_url(database, driver="asyncpg").render_as_string(hide_password=False)
    eng = create_async_engine(url)
    async with eng.begin() as conn:
        await conn.run_sync(_fill_on)
    try:
        yield eng
    finally:
        await eng.dispose()


def _titles_lazily(session: Session) -> int:
    authors = session.scalars(select(Author).order_by(Author.id)).all()
    return sum(len(a.books) for a in authors)  # one SELECT per author: the N+1


async def _books_lazily(session: AsyncSession) -> None:
    with assert_max_queries(session, 1, max_repeats=2):
        authors = (await session.scalars(select(Author))).all()
        for author in authors:
            await author.awaitable_attrs.books  # one SELECT each


def test_n_plus_one_fails_with_the_statements_and_the_line(engine: Engine) -> None:
    with (
        Session(engine) as session,
        pytest.raises(QueryBudgetExceeded) as caught,
        assert_max_queries(session, 2),
    ):
        _titles_lazily(session)
    message = str(caught.value)
    assert message.startswith(f"{1 + AUTHORS} statements ran, the budget is 2")
    # The lazy loads are folded into one line with their count and the
    # application line that triggered them (the generator in _titles_lazily).
    assert f"2-{1 + AUTHORS}. {AUTHORS}x SELECT budget_book.id" in message
    assert "tests/testing/test_budget.py:" in message
    assert "in _titles_lazily" in message or "in <genexpr>" in message
    assert len(caught.value.counter) == 1 + AUTHORS
    # No bound values in the report: parameters are folded.
    assert "a1" not in message


def test_the_fix_passes_and_the_counter_shows_it(engine: Engine) -> None:
    with Session(engine) as session, assert_max_queries(session, 2, max_repeats=1) as counter:
        authors = session.scalars(
            select(Author).options(selectinload(Author.books)).order_by(Author.id)
        ).all()
        assert sum(len(a.books) for a in authors) == AUTHORS * 2
    assert len(counter) == 2
    assert [s.statement.split()[0] for s in counter.statements] == ["SELECT", "SELECT"]


def test_max_repeats_flags_the_n_plus_one_inside_the_budget(engine: Engine) -> None:
    with (
        Session(engine) as session,
        pytest.raises(QueryBudgetExceeded) as caught,
        assert_max_queries(session, 100, max_repeats=3),
    ):
        _titles_lazily(session)
    message = str(caught.value)
    assert f"{AUTHORS}x the same statement from tests/testing/test_budget.py:" in message
    assert "(at most 3; an N+1 pattern?" in message
    assert "statements ran" not in message.splitlines()[0]


def test_executemany_is_one_statement_and_savepoints_are_not_counted(engine: Engine) -> None:
    with engine.connect() as conn, assert_max_queries(conn, 1) as counter:
        trans = conn.begin()
        nested = conn.begin_nested()
        conn.execute(insert(Author), [{"id": 1000 + i, "name": f"x{i}"} for i in range(50)])
        nested.commit()
        trans.rollback()
    assert len(counter) == 1
    # With the batched insert marked; SQLAlchemy may use insertmanyvalues
    # (one multi-row INSERT) or executemany depending on the dialect.
    assert counter.statements[0].statement.startswith("INSERT INTO budget_author")
    with (
        engine.connect() as conn,
        count_queries(conn, include_transaction_control=True) as c2,
        conn.begin(),
        conn.begin_nested(),
    ):
        conn.execute(text("SELECT 1"))
    assert [s.statement.split()[0] for s in c2.statements] == ["SAVEPOINT", "SELECT", "RELEASE"]


def test_other_threads_count_and_the_listener_goes_away(engine: Engine) -> None:
    def work() -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    with count_queries(engine) as counter:
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(counter) == 4
    work()
    assert len(counter) == 4  # stopped counting on exit


def test_an_error_in_the_block_propagates_unchanged(engine: Engine) -> None:
    def over_budget_then_fail(session: Session) -> None:
        with assert_max_queries(session, 0):
            session.execute(text("SELECT 1"))
            raise ZeroDivisionError

    with Session(engine) as session, pytest.raises(ZeroDivisionError):
        over_budget_then_fail(session)
    with engine.connect() as conn, count_queries(conn) as counter:
        conn.execute(text("SELECT 1"))
    assert len(counter) == 1  # the failed budget left no listener behind


async def test_async_session_lazy_loads_are_caught(async_engine: AsyncEngine) -> None:
    async with AsyncSession(async_engine) as session:
        with pytest.raises(QueryBudgetExceeded) as caught:
            await _books_lazily(session)
    message = str(caught.value)
    assert f"{1 + AUTHORS} statements ran, the budget is 1" in message
    assert "in _books_lazily" in message


def test_sessionmaker_targets_and_bad_arguments(engine: Engine) -> None:
    factory = sessionmaker(engine)
    with factory() as session, assert_max_queries(factory, 1):
        session.execute(text("SELECT 1"))
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        assert_max_queries(engine, -1).__enter__()
    with pytest.raises(TypeError, match="n must be an int, got '3'"):
        assert_max_queries(engine, "3").__enter__()  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_repeats must be >= 1, got 0"):
        assert_max_queries(engine, 3, max_repeats=0).__enter__()
    with pytest.raises(TypeError, match="got str"):
        count_queries("sqlite://")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no bind="):
        count_queries(sessionmaker())


def test_the_pytest_fixtures(
    engine: Engine, assert_max_queries: object, count_queries: object
) -> None:
    """The plugin's fixtures, loaded by ``pytest_plugins`` in the suite's conftest.py."""
    budget = assert_max_queries
    with budget(engine, 1), engine.connect() as conn:  # type: ignore[operator]
        conn.execute(text("SELECT 1"))
    counter = count_queries(engine).start()  # type: ignore[operator]
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert len(counter) == 1  # left running: the fixture stops it at teardown


def test_the_plugin_is_not_loaded_into_other_projects() -> None:
    """Installed, the package adds no pytest11 entry point: another project's run never loads it."""
    from importlib.metadata import entry_points

    plugins = [ep.value for ep in entry_points(group="pytest11")]
    assert not [p for p in plugins if p.startswith("sqlalchemy_resilience")]
