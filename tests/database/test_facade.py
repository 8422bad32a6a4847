"""The ``Database`` facade and its sync twin on real databases (a SQLite file, PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience.database import PoolSettings, settings_from_env
from sqlalchemy_resilience.instrumentation import instrumentation_of
from sqlalchemy_resilience.saga import SagaContext
from sqlalchemy_resilience.schema import create_saga_tables
from tests.mysqlharness import MariaDBServer
from tests.pgharness import PgServer

metadata = MetaData()
items = Table(
    "facade_items",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50), nullable=False, unique=True),
)


_SERVERS = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.postgresql),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
]


def _mariadb_url(request: pytest.FixtureRequest, driver: str) -> str:
    server: MariaDBServer = request.getfixturevalue("mariadb_server")
    database: str = request.getfixturevalue("mariadb_database")
    return server.app_url(database, driver=driver).render_as_string(hide_password=False)


@pytest.fixture(params=_SERVERS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'facade.sqlite'}"
    if request.param == "mariadb":
        return _mariadb_url(request, "aiomysql")
    server: PgServer = request.getfixturevalue("pg_server")
    database: str = request.getfixturevalue("pg_database")
    return server.app_url(database, driver="asyncpg").render_as_string(hide_password=False)


@pytest.fixture
async def db(url: str) -> AsyncIterator[sr.Database]:
    database = sr.Database(
        url, pool=PoolSettings(size=3, min_size=1, ping_after=60), cursor_secret="k" * 32
    )
    async with database:
        async with database.engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
            await conn.run_sync(metadata.create_all)
            await conn.run_sync(create_saga_tables)
        yield database


async def test_the_everyday_calls(db: sr.Database) -> None:
    # A batch's row count is the driver's: asyncpg reports none (-1) for executemany.
    assert await db.execute(insert(items), [{"name": "a"}, {"name": "b"}]) in (2, -1)
    assert await db.execute("UPDATE facade_items SET name = 'c' WHERE name = :n", {"n": "b"}) == 1
    rows = await db.fetch_all(select(items.c.name).order_by(items.c.name))
    assert [r.name for r in rows] == ["a", "c"]
    assert (await db.fetch_one(select(items.c.name).where(items.c.name == "a"))) is not None
    assert await db.fetch_one(select(items.c.name).where(items.c.name == "zz")) is None
    assert await db.fetch_value(select(func.count()).select_from(items)) == 2
    # execute() returns a row count: a select() is refused before anything runs.
    with pytest.raises(TypeError, match=r"fetch_all\(\), fetch_one\(\) or fetch_value\(\)"):
        await db.execute(select(items.c.name))

    async def add(session: AsyncSession) -> int:
        await session.execute(insert(items).values(name="d"))
        return 1

    assert await db.run_transaction(add) == 1
    async with db.transaction() as session:
        await session.execute(insert(items).values(name="e"))
    async with db.session() as session:
        assert await session.scalar(select(func.count()).select_from(items)) == 4
    # Typed errors with end-user messages in the database's locale, or another.
    with pytest.raises(sr.UniqueViolation) as caught:
        await db.execute(insert(items).values(name="a"))
    assert db.user_message(caught.value) == caught.value.user_message("en")
    assert db.user_message(caught.value, "ja") == caught.value.user_message("ja")
    assert db.user_message(ValueError("x")) == sr.ResilienceError("x").user_message("en")


async def test_bulk_insert_paginate_and_saga(db: sr.Database) -> None:
    result = await db.bulk_insert(
        items, [{"name": f"n{i:03d}"} for i in range(250)], chunk_size=100
    )
    assert result.rows == 250 and result.chunks == 3
    page = await db.paginate(select(items).order_by(items.c.id), page_size=100)
    assert len(page.items) == 100 and page.has_next
    second = await db.paginate(
        select(items).order_by(items.c.id), page_size=100, after=page.next_cursor
    )
    assert second.items[0].id == page.items[-1].id + 1

    async def reserve(ctx: SagaContext) -> str:
        assert ctx.session is not None
        await ctx.session.execute(insert(items).values(name="reserved"))
        return "ok"

    saga = sr.Saga("facade-order").step("reserve", reserve)
    assert await db.saga(saga, {"n": 1}, saga_id="order-1") == {"reserve": "ok"}
    assert await db.saga(saga, {"n": 1}, saga_id="order-1") == {"reserve": "ok"}  # once
    assert await db.fetch_value(select(func.count()).where(items.c.name == "reserved")) == 1
    report = await db.recover_sagas([saga])
    assert report.recovered == []


async def test_health_stats_and_pool(db: sr.Database) -> None:
    await db.fetch_all(select(items))
    report = await db.health()
    assert report.status == "healthy" and report.breaker == "closed"
    stats = db.snapshot(top=50)
    json.dumps(stats)
    assert stats["breaker"]["state"] == "closed"
    assert any("facade_items" in s["statement"] for s in stats["statements"])
    assert stats["pool"] == db.pool_stats()
    assert db.pool_stats()["pool_size"] == 3


async def test_close_removes_everything_it_added(url: str) -> None:
    db = sr.Database(url)
    async with db:
        engine = db.engine
        assert instrumentation_of(engine) is not None
    assert instrumentation_of(engine) is None
    await db.close()  # idempotent
    with pytest.raises(RuntimeError, match="is closed"):
        await db.start()


async def test_wrapping_an_engine_leaves_it_alone(url: str) -> None:
    engine = create_async_engine(url, pool_size=2, max_overflow=1)
    own = sr.instrument(engine, slow_query_threshold=0.5)
    try:
        async with sr.Database(engine) as db:
            assert db.engine is engine
            assert instrumentation_of(engine) is own  # the application's own, reused
            assert await db.fetch_value("SELECT 1") == 1
            assert engine.sync_engine.pool.size() == 2  # type: ignore[attr-defined]
        # Still the application's: instrumented and usable after the facade closed.
        assert instrumentation_of(engine) is own
        async with engine.connect() as conn:
            assert await conn.scalar(text("SELECT 2")) == 2
    finally:
        own.detach()
        await engine.dispose()


@pytest.mark.postgresql  # needs the asyncpg driver, not a server
async def test_unreachable_fails_fast_with_the_breaker_view() -> None:
    db = sr.Database(
        "postgresql+asyncpg://app:s3cret-pw@127.0.0.1:1/app",
        retry=sr.RetryPolicy(attempts=1),
    )
    assert "s3cret-pw" not in repr(db)
    with pytest.raises(sr.DatabaseUnavailable) as caught:
        await db.start(timeout=2)
    message = str(caught.value)
    assert "could not reach postgresql+asyncpg://app:***@127.0.0.1:1/app at start-up" in message
    assert "breaker '127.0.0.1:1/app' is closed" in message
    assert "s3cret-pw" not in message
    await db.close()


def test_wrong_settings_fail_at_construction(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match="Database needs an asyncio driver \\('sqlite' is not one\\)"
    ):
        sr.Database(f"sqlite:///{tmp_path / 'x.sqlite'}")
    with pytest.raises(ValueError, match="min_size must be <= size \\(2\\), got 3"):
        PoolSettings(size=2, min_size=3)
    with pytest.raises(ValueError, match="size must be >= 1, got 0"):
        PoolSettings(size=0)
    with pytest.raises(ValueError, match="ping_after"):
        PoolSettings(ping_after=-1)
    with pytest.raises(TypeError, match="breaker must be a CircuitBreaker or None"):
        sr.Database("sqlite+aiosqlite://", breaker="on")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="pool must be a PoolSettings"):
        sr.Database("sqlite+aiosqlite://", pool={"size": 3})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="pooler must be None, 'session', 'transaction'"):
        sr.Database("sqlite+aiosqlite://", pooler="txn")  # type: ignore[arg-type]
    sync_engine = create_engine("sqlite://")
    with pytest.raises(TypeError, match="Database wraps an AsyncEngine; url_or_engine is a Engine"):
        sr.Database(sync_engine)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="SyncDatabase wraps an Engine"):
        sr.SyncDatabase(create_async_engine("sqlite+aiosqlite://"))  # type: ignore[arg-type]


def test_settings_from_the_environment() -> None:
    env = {
        "DATABASE_URL": "sqlite+aiosqlite:///app.db",
        "SQLALCHEMY_RESILIENCE_POOL_SIZE": "7",
        "SQLALCHEMY_RESILIENCE_POOL_PING_AFTER": "off",
        "SQLALCHEMY_RESILIENCE_RETRY_ATTEMPTS": "4",
        "SQLALCHEMY_RESILIENCE_BREAKER": "off",
        "SQLALCHEMY_RESILIENCE_LOCALE": "ja",
        "SQLALCHEMY_RESILIENCE_REPLICA_URLS": "sqlite+aiosqlite:///r1.db, sqlite+aiosqlite:///r2.db",
        "SQLALCHEMY_RESILIENCE_TEST_URL": "ignored: not a facade setting",
    }
    settings = settings_from_env(env)
    assert settings["url_or_engine"] == "sqlite+aiosqlite:///app.db"
    assert settings["pool"].size == 7 and settings["pool"].ping_after is None
    assert settings["retry"].attempts == 4
    assert settings["breaker"] is None
    assert settings["locale"] == "ja"
    assert settings["replicas"] == ["sqlite+aiosqlite:///r1.db", "sqlite+aiosqlite:///r2.db"]
    db = sr.Database.from_env(env, name="app")
    assert repr(db) == "<Database app>" and db.breaker is None
    with pytest.raises(ValueError, match="DATABASE_URL is not set"):
        settings_from_env({})
    with pytest.raises(ValueError, match="SQLALCHEMY_RESILIENCE_POOL_SIZ is not a setting"):
        settings_from_env({"DATABASE_URL": "sqlite://", "SQLALCHEMY_RESILIENCE_POOL_SIZ": "3"})
    with pytest.raises(ValueError, match="SQLALCHEMY_RESILIENCE_POOL_SIZE must be a whole number"):
        settings_from_env({"DATABASE_URL": "sqlite://", "SQLALCHEMY_RESILIENCE_POOL_SIZE": "x"})
    with pytest.raises(ValueError, match="SQLALCHEMY_RESILIENCE_POOLER must be one of"):
        settings_from_env({"DATABASE_URL": "sqlite://", "SQLALCHEMY_RESILIENCE_POOLER": "tx"})


@pytest.fixture(params=_SERVERS)
def sync_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'facade_sync.sqlite'}"
    if request.param == "mariadb":
        return _mariadb_url(request, "pymysql")
    server: PgServer = request.getfixturevalue("pg_server")
    database: str = request.getfixturevalue("pg_database")
    return server.app_url(database, driver="psycopg").render_as_string(hide_password=False)


def test_sync_database(sync_url: str) -> None:
    with sr.SyncDatabase(
        sync_url, pool=PoolSettings(size=2, min_size=1), cursor_secret="k" * 32
    ) as db:
        metadata.drop_all(db.engine)
        metadata.create_all(db.engine)
        create_saga_tables(db.engine)
        assert db.execute(insert(items), [{"name": "a"}, {"name": "b"}]) in (2, -1)
        assert [r.name for r in db.fetch_all(select(items.c.name).order_by(items.c.name))] == [
            "a",
            "b",
        ]
        assert db.fetch_value(select(func.count()).select_from(items)) == 2
        with pytest.raises(TypeError, match="read a select"):
            db.execute(select(items.c.name))
        db.run_transaction(lambda s: s.execute(insert(items).values(name="c")))
        with db.transaction() as session:
            session.execute(insert(items).values(name="d"))
        result = db.bulk_insert(items, [{"name": f"s{i}"} for i in range(30)], chunk_size=10)
        assert result.rows == 30
        page = db.paginate(select(items).order_by(items.c.id), page_size=10)
        assert len(page.items) == 10

        def mark(ctx: Any) -> int:
            ctx.session.execute(insert(items).values(name="saga"))
            return 7

        saga = sr.Saga("facade-sync").step("mark", mark)
        assert db.saga(saga, saga_id="s1") == {"mark": 7}
        assert db.saga(saga, saga_id="s1") == {"mark": 7}  # once
        assert db.fetch_value(select(func.count()).where(items.c.name == "saga")) == 1
        assert db.recover_sagas([saga]).recovered == []
        assert db.health().status == "healthy"
        assert db.snapshot()["pool"]["pool_size"] == 2
        with pytest.raises(sr.UniqueViolation):
            db.execute(insert(items).values(name="a"))
    assert instrumentation_of(db.engine) is None


async def test_an_async_engine_given_to_a_wrapping_engine_check(url: str) -> None:
    engine: AsyncEngine = create_async_engine(url)
    try:
        db = sr.Database(engine, pool=PoolSettings(ping_after=None))
        async with db:
            assert await db.fetch_value("SELECT 1") == 1
    finally:
        await engine.dispose()


def test_every_environment_variable_is_documented() -> None:
    from sqlalchemy_resilience.database import ENV_VARIABLES

    page = (Path(__file__).parents[2] / "docs" / "database.md").read_text()
    missing = [name for name in ENV_VARIABLES if f"`{name}`" not in page]
    assert missing == []


@pytest.mark.postgresql  # needs the asyncpg driver, not a server
async def test_the_breaker_is_named_short_never_after_the_url() -> None:
    """A multi-host URL's query string stays out of the breaker's name (and so out of every
    CircuitOpenError): host/database, or the database's own name when given."""
    url = (
        "postgresql+asyncpg://app:secret@/shop?host=db1:5432&host=db2:5432"
        "&target_session_attrs=read-write"
    )
    db = sr.Database(url)
    named = sr.Database(url, name="shop")
    try:
        assert db.breaker is not None and named.breaker is not None
        assert "host=" not in db.breaker.name and "secret" not in db.breaker.name
        assert db.breaker.name == "postgresql:shop"
        assert named.breaker.name == "shop"
    finally:
        await db.close()
        await named.close()
