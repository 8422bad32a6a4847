"""transaction() on MariaDB: timeouts as session variables put back afterwards, READ ONLY, savepoints."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import instrument, on_commit, transaction
from sqlalchemy_resilience.errors import translate
from sqlalchemy_resilience.transactions.options import READ_ONLY_TRANSACTION_KEY
from tests.mysqlharness import MariaDBServer


@pytest.fixture
async def engine(
    mariadb_server: MariaDBServer, mariadb_database: str
) -> AsyncIterator[AsyncEngine]:
    # One pooled connection: the test sees the session variables it left behind.
    engine = create_async_engine(
        mariadb_server.app_url(mariadb_database), pool_size=1, max_overflow=1
    )
    instr = instrument(engine)
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS items"))
        await conn.execute(text("CREATE TABLE items (id int PRIMARY KEY, name varchar(20) UNIQUE)"))
        await conn.execute(text("INSERT INTO items VALUES (1, 'one')"))
    try:
        yield engine
    finally:
        instr.detach()
        await engine.dispose()


async def _session_variables(engine: AsyncEngine) -> tuple[object, ...]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT @@SESSION.innodb_lock_wait_timeout, @@SESSION.max_statement_time,"
                    " @@SESSION.idle_transaction_timeout"
                )
            )
        ).one()
    return tuple(row)


async def test_lock_timeout_ends_the_wait_and_is_put_back(engine: AsyncEngine) -> None:
    before = await _session_variables(engine)
    async with engine.connect() as holder:
        await holder.execute(text("SELECT * FROM items WHERE id = 1 FOR UPDATE"))
        started = time.monotonic()
        with pytest.raises(sr.LockNotAvailable) as locked:
            async with transaction(engine, lock_timeout=1) as conn:
                await conn.execute(text("UPDATE items SET name = 'uno' WHERE id = 1"))
        waited = time.monotonic() - started
        await holder.rollback()
    assert locked.value.driver_code == "1205"
    assert locked.value.retryable is True  # the unit is rolled back and re-run
    assert waited < 10  # innodb_lock_wait_timeout's default is 50 s
    assert await _session_variables(engine) == before


async def test_statement_and_idle_timeouts_are_put_back(engine: AsyncEngine) -> None:
    before = await _session_variables(engine)
    with pytest.raises(sr.QueryTimeout) as slow:
        async with transaction(engine, statement_timeout=0.1, idle_in_transaction_timeout=30) as c:
            await c.execute(text("SELECT SLEEP(2)"))
    assert slow.value.driver_code == "1969"
    assert await _session_variables(engine) == before
    async with transaction(engine, statement_timeout=5, lock_timeout=2) as conn:
        inside = (
            await conn.execute(
                text("SELECT @@SESSION.innodb_lock_wait_timeout, @@SESSION.max_statement_time")
            )
        ).one()
    assert tuple(inside) == (2, 5.0)
    assert await _session_variables(engine) == before


async def test_read_only_refuses_writes_without_discarding_the_pool(engine: AsyncEngine) -> None:
    """A 1792 inside transaction(read_only=True) is the application's own READ ONLY
    transaction: ReadOnlyTransaction, not retried, and the pool keeps its connections."""
    assert translate._MYSQL_READ_ONLY_TRANSACTION == READ_ONLY_TRANSACTION_KEY
    with pytest.raises(sr.ReadOnlyTransaction) as refused:
        async with transaction(engine, read_only=True) as conn:
            assert (await conn.execute(text("SELECT name FROM items"))).scalar_one() == "one"
            await conn.execute(text("INSERT INTO items VALUES (2, 'two')"))
    assert (refused.value.driver_code, refused.value.retryable) == ("1792", False)
    assert refused.value.connection_invalidated is False
    async with engine.connect() as conn:  # the next transaction may write again
        await conn.execute(text("INSERT INTO items VALUES (3, 'three')"))
        await conn.commit()


async def test_savepoints_and_on_commit(engine: AsyncEngine) -> None:
    ran: list[str] = []
    async with transaction(engine) as conn:
        await conn.execute(text("INSERT INTO items VALUES (10, 'ten')"))
        with pytest.raises(sr.UniqueViolation):
            async with transaction(conn):  # SAVEPOINT
                on_commit(lambda: ran.append("inner"))
                await conn.execute(text("INSERT INTO items VALUES (11, 'one')"))
        on_commit(lambda: ran.append("outer"))
    async with engine.connect() as conn:
        ids = (await conn.execute(text("SELECT id FROM items ORDER BY id"))).scalars().all()
    assert 10 in ids and 11 not in ids
    assert ran == ["outer"]  # the rolled-back savepoint's callback never runs


async def test_deferrable_is_refused_on_mariadb(engine: AsyncEngine) -> None:
    Session = async_sessionmaker(engine)
    with pytest.raises(sr.NotSupported, match="deferrable"):
        async with transaction(
            Session, read_only=True, deferrable=True, isolation_level="SERIALIZABLE"
        ):
            pass


async def test_a_transaction_that_lost_a_statement_is_never_committed(
    engine: AsyncEngine,
) -> None:
    """1205 rolls back only the statement that waited: an application that catches it and
    goes on would commit the rest without it. transaction() rolls back instead, and
    run_transaction re-runs the whole unit of work."""
    Session = async_sessionmaker(engine)
    async with engine.connect() as holder:
        await holder.execute(text("SELECT * FROM items WHERE id = 1 FOR UPDATE"))
        with pytest.raises(sr.LockNotAvailable, match="rolled back instead of committed"):
            async with transaction(engine, lock_timeout=1) as conn:
                await conn.execute(text("INSERT INTO items VALUES (20, 'twenty')"))
                with contextlib.suppress(sr.LockNotAvailable):  # swallowed by the application
                    await conn.execute(text("UPDATE items SET name = 'uno' WHERE id = 1"))
        attempts = 0

        async def work(session: AsyncSession) -> None:
            nonlocal attempts
            attempts += 1
            await session.execute(text("SET SESSION innodb_lock_wait_timeout = 1"))
            await session.execute(text("INSERT INTO items VALUES (21, 'twenty-one')"))
            if attempts == 1:
                try:
                    await session.execute(text("UPDATE items SET name = 'uno' WHERE id = 1"))
                except sr.LockNotAvailable:
                    await holder.rollback()  # the lock goes: the re-run can take it

        await sr.run_transaction(Session, work, retry=sr.RetryPolicy(attempts=3, initial_backoff=0))
    async with engine.connect() as conn:
        ids = (await conn.execute(text("SELECT id FROM items ORDER BY id"))).scalars().all()
    assert 20 not in ids  # the swallowed failure's transaction was rolled back
    assert 21 in ids and attempts == 2  # re-run whole, committed once
