"""MySQL/MariaDB errors through instrument(), on the real MariaDB the suite starts, per driver.

Classified by the server's error number (the drivers carry no SQLSTATE), into
the same typed tree as PostgreSQL's, with the constraint, table or column the
message names, values redacted from the package's own text.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import instrument
from tests.mysqlharness import MariaDBServer


@pytest.fixture
async def engine(mariadb_engine: AsyncEngine) -> AsyncEngine:
    engine = mariadb_engine
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS ch, p"))
        await conn.execute(
            text(
                "CREATE TABLE p (id int PRIMARY KEY, email varchar(50) UNIQUE,"
                " n int NOT NULL, CONSTRAINT chk_n CHECK (n >= 0))"
            )
        )
        await conn.execute(
            text(
                "CREATE TABLE ch (id int PRIMARY KEY, pid int,"
                " CONSTRAINT fk_p FOREIGN KEY (pid) REFERENCES p (id))"
            )
        )
        await conn.execute(text("INSERT INTO p VALUES (1, 'ada@example.com', 1)"))
    return engine


async def _fails(engine: AsyncEngine, sql: str) -> sr.DatabaseFailure:
    with pytest.raises(sr.DatabaseFailure) as info:
        async with engine.begin() as conn:
            await conn.execute(text(sql))
    return info.value


async def test_constraint_violations_name_what_they_are_about(engine: AsyncEngine) -> None:
    dup = await _fails(engine, "INSERT INTO p VALUES (2, 'ada@example.com', 1)")
    assert type(dup).__name__ == "UniqueViolation" and isinstance(dup, sr.UniqueViolation)
    assert (dup.driver_code, dup.constraint_name, dup.retryable) == ("1062", "email", False)
    assert "ada@example.com" not in dup.safe_text()  # the value stays out of the package's text
    fk = await _fails(engine, "INSERT INTO ch VALUES (1, 99)")
    assert isinstance(fk, sr.ForeignKeyViolation)
    assert (fk.driver_code, fk.constraint_name, fk.table_name, fk.column_name) == (
        "1452",
        "fk_p",
        "ch",
        "pid",
    )
    null = await _fails(engine, "INSERT INTO p VALUES (3, 'b@example.com', NULL)")
    assert isinstance(null, sr.NotNullViolation) and null.column_name == "n"
    check = await _fails(engine, "INSERT INTO p VALUES (4, 'c@example.com', -1)")
    assert isinstance(check, sr.CheckViolation)
    assert (check.driver_code, check.constraint_name, check.table_name) == ("4025", "chk_n", "p")
    assert check.user_message("en") and check.user_message("ja")


async def test_statement_errors_and_timeouts(engine: AsyncEngine) -> None:
    bad = await _fails(engine, "SELECT nosuch FROM p")
    assert isinstance(bad, sr.InvalidStatement) and bad.retryable is False
    slow = await _fails(engine, "SET STATEMENT max_statement_time=0.05 FOR SELECT SLEEP(2) FROM p")
    assert isinstance(slow, sr.QueryTimeout)
    assert (slow.driver_code, slow.retryable) == ("1969", False)


async def test_a_killed_connection_is_lost_and_retryable(
    engine: AsyncEngine, mariadb_server: MariaDBServer
) -> None:
    async with engine.connect() as conn:
        cid = (await conn.execute(text("SELECT CONNECTION_ID()"))).scalar_one()
        mariadb_server.execute(f"KILL CONNECTION {int(cid)}")
        with pytest.raises(sr.ConnectionLost) as info:
            await conn.execute(text("SELECT 1"))
    assert info.value.retryable is True
    assert info.value.connection_invalidated is True


async def test_a_write_on_a_read_only_server_discards_the_pool(
    engine: AsyncEngine, mariadb_server: MariaDBServer
) -> None:
    """1290 (what a demoted writer answers): retryable, and the pooled connections go
    (sqlalchemy#7839: the pool kept them, and writes failed until restart)."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    mariadb_server.execute("SET GLOBAL read_only = ON")
    try:
        err = await _fails(engine, "INSERT INTO p VALUES (9, 'z@example.com', 1)")
    finally:
        mariadb_server.execute("SET GLOBAL read_only = OFF")
    assert isinstance(err, sr.ReadOnlyServer)
    assert (err.driver_code, err.retryable, err.connection_invalidated) == ("1290", True, True)


async def test_connecting_fails_as_unavailable_or_refused(
    mariadb_server: MariaDBServer, mariadb_database: str
) -> None:
    url = mariadb_server.app_url(mariadb_database, driver="aiomysql")
    wrong = create_async_engine(url.set(password="wrong"))
    instrument(wrong)
    with pytest.raises(sr.AuthenticationFailed) as auth:
        async with wrong.connect():
            pass
    assert (auth.value.driver_code, auth.value.retryable) == ("1045", False)
    await wrong.dispose()
    nowhere = create_async_engine(url.set(port=1))
    instrument(nowhere)
    with pytest.raises(sr.DatabaseUnavailable) as down:
        async with nowhere.connect():
            pass
    assert (down.value.driver_code, down.value.retryable) == ("2003", True)
    await nowhere.dispose()
