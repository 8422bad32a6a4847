"""Bulk writes address columns by name, rows by key: every path, every driver (scenario S31).

A ``Column``'s ``key`` (what rows, ORM attributes and ``table.c`` use) can
differ from its ``name`` (what the database knows). The table here swaps two
of them -- key ``a`` is the column named ``b`` and the other way round -- so a
path that confuses the two writes each value into the other column without
any error; a third is renamed, and is the conflict target of the upserts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
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
    UniqueConstraint,
    create_engine,
    text,
)
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import bulk_insert
from sqlalchemy_resilience.batch import bulk_update, bulk_update_sync
from sqlalchemy_resilience.schema import create_batch_tables
from tests.pgharness import PgServer

metadata = MetaData()
keyed = Table(
    "bulk_keyed",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("b", Integer, key="a"),
    Column("a", Integer, key="b"),
    Column("label_col", String(20), key="label", nullable=False),
)
UniqueConstraint(keyed.c.label, name="bulk_keyed_label_key")


class Base(DeclarativeBase):
    pass


class Keyed(Base):
    """The ORM view of the same table: attributes are the column keys."""

    __table__ = keyed


def _rows(n: int, start: int = 0, *, bump: int = 0) -> Iterator[dict[str, Any]]:
    for i in range(start, start + n):
        yield {"id": i, "a": 10 * i + bump, "b": 10 * i + 1 + bump, "label": f"l{i}"}


def _expected(n: int, start: int = 0, *, bump: int = 0) -> list[tuple[int, int, int, str]]:
    # As the database names them: column "b" holds key a's value, "a" holds key b's.
    return [(i, 10 * i + 1 + bump, 10 * i + bump, f"l{i}") for i in range(start, start + n)]


def _stored(url: str) -> list[tuple[int, int, int, str]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, a, b, label_col FROM bulk_keyed ORDER BY id"))
            return [(r[0], r[1], r[2], r[3]) for r in rows]
    finally:
        engine.dispose()


def _fresh(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            metadata.drop_all(conn)
            metadata.create_all(conn)
            conn.execute(text("DROP TABLE IF EXISTS sqlalchemy_resilience_batch_job"))
            create_batch_tables(conn)
    finally:
        engine.dispose()


# (async driver, path asked for with use_copy, the path bulk_insert reports)
ASYNC_CASES = [
    ("sqlite+aiosqlite", None, "insertmanyvalues"),
    pytest.param("postgresql+asyncpg", None, "copy", marks=pytest.mark.postgresql),
    pytest.param("postgresql+asyncpg", False, "insertmanyvalues", marks=pytest.mark.postgresql),
    pytest.param("postgresql+psycopg", None, "copy", marks=pytest.mark.postgresql),
    pytest.param("postgresql+psycopg", False, "insertmanyvalues", marks=pytest.mark.postgresql),
]


@pytest.fixture
def sync_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The sync URL of the database a case writes to (a SQLite file, or the module's PostgreSQL)."""
    driver: str = request.node.callspec.params["driver"]
    if driver.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'keys.sqlite'}"
    else:
        server: PgServer = request.getfixturevalue("pg_server")
        database: str = request.getfixturevalue("pg_database")
        url = server.app_url(database, driver="psycopg").render_as_string(hide_password=False)
    _fresh(url)
    return url


@pytest.fixture
async def engine(sync_url: str, request: pytest.FixtureRequest) -> AsyncIterator[AsyncEngine]:
    driver: str = request.node.callspec.params["driver"]
    url = sync_url.replace("sqlite://", f"{driver}://", 1).replace(
        "postgresql+psycopg://", f"{driver}://", 1
    )
    engine = create_async_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.mark.parametrize(("driver", "use_copy", "path"), ASYNC_CASES)
async def test_insert_and_upsert_put_values_in_their_columns(
    engine: AsyncEngine, sync_url: str, driver: str, use_copy: bool | None, path: str
) -> None:
    """Insert (COPY or INSERT), then upsert on the renamed column (COPY+merge or ON CONFLICT), then update by key."""
    result = await bulk_insert(engine, keyed, _rows(25), chunk_size=10, use_copy=use_copy)
    assert result.path == path and result.rows == 25
    assert _stored(sync_url) == _expected(25)
    # Rows 20..29 again with new values: 20..24 conflict on label_col, 25..29 are new.
    upsert = await bulk_insert(
        engine,
        Keyed,
        _rows(10, 20, bump=5),
        chunk_size=4,
        on_conflict="update",
        conflict_columns=[keyed.c.label],
        use_copy=use_copy,
    )
    assert upsert.path == ("copy+merge" if path == "copy" else path)
    assert _stored(sync_url) == _expected(20) + _expected(10, 20, bump=5)
    ignored = await bulk_insert(
        engine,
        keyed,
        _rows(3, 28, bump=7),
        on_conflict="ignore",
        conflict_columns=["label"],
        use_copy=use_copy,
    )
    assert ignored.rows == 3
    assert _stored(sync_url)[28:] == _expected(2, 28, bump=5) + _expected(1, 30, bump=7)
    await bulk_update(engine, keyed, [{"label": "l3", "a": -1, "b": -2}], key=["label"])
    assert _stored(sync_url)[3] == (3, -2, -1, "l3")


@pytest.mark.parametrize(
    ("driver", "use_copy", "path"),
    [
        ("sqlite", None, "insertmanyvalues"),
        pytest.param("postgresql+psycopg", None, "copy", marks=pytest.mark.postgresql),
        pytest.param("postgresql+psycopg", False, "insertmanyvalues", marks=pytest.mark.postgresql),
    ],
)
def test_sync_twins_put_values_in_their_columns(
    sync_url: str, driver: str, use_copy: bool | None, path: str, sync_engines: list[Engine]
) -> None:
    """bulk_insert_sync (COPY through psycopg's cursor.copy, or INSERT) / bulk_update_sync with renamed and swapped keys."""
    engine = create_engine(sync_url)
    sync_engines.append(engine)
    result = sr.bulk_insert_sync(engine, keyed, _rows(12), chunk_size=5, use_copy=use_copy)
    assert result.path == path and result.rows == 12
    upsert = sr.bulk_insert_sync(
        engine,
        keyed,
        _rows(4, 10, bump=5),
        on_conflict="update",
        conflict_columns=["label"],
        use_copy=use_copy,
    )
    assert upsert.path == ("copy+merge" if path == "copy" else path)
    bulk_update_sync(engine, Keyed, [{"id": 1, "a": 7, "b": 8}])
    assert _stored(sync_url) == (
        [*_expected(1), (1, 8, 7, "l1"), *_expected(8, 2), *_expected(4, 10, bump=5)]
    )
