"""Hostile identifiers (FAULTS.md section 5.2) for the batch helpers: refused before any SQL runs.

Table names, column keys of rows, ``columns=``, ``conflict_columns=``,
``returning=`` and ``key=`` get quotes, ``;``, comments, NUL, CR/LF, unicode
confusables, reserved words, mixed case and names longer than PostgreSQL's
63 bytes. Each is resolved only through ``MetaData.tables`` / ``table.c``:
the result is a LookupError/ValueError/TypeError, a ``before_cursor_execute``
counter stays at 0, and no database error class is ever reached.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Column, Integer, MetaData, String, Table, event
from sqlalchemy.ext.asyncio import create_async_engine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience.batch import bulk_update

metadata = MetaData()
people = Table(
    "fuzz_people",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(50)),
)

HOSTILE = [
    "fuzz_people; DROP TABLE fuzz_people",
    "name'--",
    'name"',
    "name/* */",
    "na\x00me",
    "name\r\nDROP",
    "n\u0430me",  # a Cyrillic a
    "SELECT",
    "Name",
    "NAME",
    "x" * 64,
    "id ASC; DROP TABLE fuzz_people",
    "",
]
identifiers = st.one_of(st.sampled_from(HOSTILE), st.text(min_size=0, max_size=80)).filter(
    lambda s: s not in ("id", "name")
)


@pytest.fixture(scope="module")
def engine_and_counter(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path: Path = tmp_path_factory.mktemp("fuzz") / "fuzz.sqlite"
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    ran: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda c, cur, s, *r: ran.append(s))

    async def setup() -> None:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    asyncio.run(setup())
    ran.clear()
    yield engine, ran
    asyncio.run(engine.dispose())


REFUSED = (LookupError, ValueError, TypeError)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=identifiers,
    where=st.sampled_from(["table", "row", "columns", "conflict", "returning", "key"]),
)
def test_hostile_identifiers_never_reach_sql(
    engine_and_counter: Any, name: str, where: str
) -> None:
    """Every hostile name is refused by lookup, with 0 statements executed."""
    engine, ran = engine_and_counter
    table: Any = people
    rows: list[Any] = [{"id": 1, "name": "a"}]
    options: dict[str, Any] = {}
    if where == "table":
        table, options["metadata"] = name, metadata
    elif where == "row":
        rows = [{"id": 1, name: "a"}]
    elif where == "columns":
        rows, options["columns"] = [(1, "a")], ["id", name]
    elif where == "conflict":
        options.update(on_conflict="ignore", conflict_columns=[name])
    elif where == "returning":
        options["returning"] = [name]

    async def attempt() -> None:
        if where == "key":
            await bulk_update(engine, table, [{"id": 1, "name": "b"}], key=[name])
        else:
            await sr.bulk_insert(engine, table, rows, **options)

    with pytest.raises(REFUSED) as info:
        asyncio.run(attempt())
    assert not isinstance(info.value, sr.DatabaseFailure)
    assert ran == [], f"SQL ran for {name!r} in {where}: {ran}"


@pytest.mark.parametrize("name", ["na\x00me", "fuzz_people\x00", "fuzz\npeople", "\x1b[31m"])
def test_control_characters_in_a_reflected_table_name_never_reach_the_catalog(
    engine_and_counter: Any, name: str
) -> None:
    """S38: a table given by name and reflected: NUL or a control character is refused, 0 statements."""
    engine, ran = engine_and_counter
    with pytest.raises(ValueError, match="NUL or control characters"):
        asyncio.run(sr.bulk_insert(engine, name, [{"id": 1}]))
    assert ran == []


@pytest.mark.postgresql
def test_a_nul_in_a_reflected_table_name_never_reaches_postgresql(
    pg_server: Any, pg_database: str
) -> None:
    """S38 on PostgreSQL (asyncpg): refused before the catalog query, not a driver error."""
    engine = create_async_engine(pg_server.app_url(pg_database, driver="asyncpg"))
    ran: list[str] = []
    event.listen(engine.sync_engine, "before_cursor_execute", lambda c, cur, s, *r: ran.append(s))

    async def attempt() -> None:
        try:
            await sr.bulk_insert(engine, "na\x00me", [{"id": 1}])
        finally:
            await engine.dispose()

    with pytest.raises(ValueError, match="NUL"):
        asyncio.run(attempt())
    assert ran == []
