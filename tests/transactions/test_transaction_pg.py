"""transaction() on a real PostgreSQL, both drivers: scoped settings, savepoints, durable, errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import instrument, run_transaction, transaction
from sqlalchemy_resilience.transactions import SQLiteSettings, configure_sqlite
from tests.pgharness import PgServer


@pytest.fixture
async def engine(
    pg_server: PgServer, pg_database: str, pg_driver: str
) -> AsyncIterator[AsyncEngine]:
    """An instrumented engine with ONE pooled connection, so 'the connection afterwards' is the same one."""
    eng = create_async_engine(
        pg_server.app_url(pg_database, driver=pg_driver), pool_size=1, max_overflow=0
    )
    instrument(eng)
    async with eng.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS tx_items"))
        await conn.execute(text("CREATE TABLE tx_items (id int PRIMARY KEY, note text)"))
    try:
        yield eng
    finally:
        await eng.dispose()


async def _settings(conn: AsyncConnection | AsyncSession) -> dict[str, str]:
    names = (
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "transaction_read_only",
        "transaction_isolation",
        "transaction_deferrable",
    )
    row = (
        await conn.execute(text("SELECT " + ", ".join(f"current_setting('{n}')" for n in names)))
    ).one()
    return dict(zip(names, row, strict=True))


async def _ids(engine: AsyncEngine) -> list[int]:
    async with engine.connect() as conn:
        return list((await conn.execute(text("SELECT id FROM tx_items ORDER BY id"))).scalars())


async def test_commits_on_success_and_rolls_back_on_error(engine: AsyncEngine) -> None:
    """Each kind of target: the block's work is committed, or rolled back with the error propagated."""
    Session = async_sessionmaker(engine)
    async with Session() as session, transaction(session) as s:
        assert s is session
        await s.execute(text("INSERT INTO tx_items VALUES (1, 'session')"))
    async with transaction(Session) as s:
        await s.execute(text("INSERT INTO tx_items VALUES (2, 'sessionmaker')"))
    async with transaction(engine) as conn:
        assert isinstance(conn, AsyncConnection)
        await conn.execute(text("INSERT INTO tx_items VALUES (3, 'engine')"))
    async with engine.connect() as own, transaction(own) as conn:
        assert conn is own
        await conn.execute(text("INSERT INTO tx_items VALUES (4, 'connection')"))
    with pytest.raises(KeyError):
        async with transaction(Session) as s:
            await s.execute(text("INSERT INTO tx_items VALUES (5, 'rolled back')"))
            raise KeyError("boom")
    with pytest.raises(sr.UniqueViolation):
        async with transaction(engine) as conn:
            await conn.execute(text("INSERT INTO tx_items VALUES (6, 'rolled back')"))
            await conn.execute(text("INSERT INTO tx_items VALUES (1, 'duplicate')"))
    assert await _ids(engine) == [1, 2, 3, 4]
    assert engine.pool.checkedout() == 0


async def test_settings_are_scoped_to_the_transaction(engine: AsyncEngine) -> None:
    """SET LOCAL semantics: inside, every option is in force; on the same pooled connection afterwards, none is."""
    Session = async_sessionmaker(engine)
    async with Session() as session:
        before = await _settings(session)
        await session.commit()
    async with transaction(
        Session,
        isolation_level="SERIALIZABLE",
        read_only=True,
        deferrable=True,
        statement_timeout=1.5,
        lock_timeout=timedelta(milliseconds=250),
        idle_in_transaction_timeout=30,
    ) as session:
        inside = await _settings(session)
    assert inside == {
        "statement_timeout": "1500ms",
        "lock_timeout": "250ms",
        "idle_in_transaction_session_timeout": "30s",
        "transaction_read_only": "on",
        "transaction_isolation": "serializable",
        "transaction_deferrable": "on",
    }
    async with Session() as session:
        after = await _settings(session)
    assert after == before
    assert before["transaction_isolation"] == "read committed"


async def test_statement_and_lock_timeouts_fire(
    engine: AsyncEngine, pg_server: PgServer, pg_database: str
) -> None:
    """statement_timeout raises QueryTimeout; lock_timeout raises LockNotAvailable, well before the lock is free."""
    with pytest.raises(sr.QueryTimeout) as timed_out:
        async with transaction(engine, statement_timeout=0.1) as conn:
            await conn.execute(text("SELECT pg_sleep(5)"))
    assert timed_out.value.sqlstate == "57014"
    async with transaction(engine) as conn:
        await conn.execute(text("INSERT INTO tx_items VALUES (10, 'locked')"))
    holder = create_async_engine(engine.url)
    try:
        async with holder.begin() as hold:
            await hold.execute(text("SELECT * FROM tx_items WHERE id = 10 FOR UPDATE"))
            started = time.monotonic()
            with pytest.raises(sr.LockNotAvailable) as locked:
                async with transaction(engine, lock_timeout=0.2) as conn:
                    await conn.execute(text("SELECT * FROM tx_items WHERE id = 10 FOR UPDATE"))
            waited = time.monotonic() - started
    finally:
        await holder.dispose()
    assert locked.value.sqlstate == "55P03"
    assert waited < 10  # the lock was held for as long as the test ran: the timeout ended the wait


async def test_idle_in_transaction_timeout_ends_the_session(
    engine: AsyncEngine, pg_server: PgServer
) -> None:
    """The server ends a transaction left idle past the timeout; the next statement reports a lost connection."""
    with pytest.raises(sr.ConnectionLost):
        async with transaction(engine, idle_in_transaction_timeout=0.2) as conn:
            pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            await asyncio.to_thread(pg_server.wait_for, lambda: not pg_server.backend_exists(pid))
            await conn.execute(text("SELECT 1"))
    async with transaction(engine) as conn:  # the pool replaced the dead connection
        assert (await conn.execute(text("SELECT 1"))).scalar() == 1


async def test_read_only_refuses_writes(engine: AsyncEngine) -> None:
    """read_only=True: a write fails as ReadOnlyTransaction (not retryable); nothing is written."""
    with pytest.raises(sr.ReadOnlyTransaction) as refused:
        async with transaction(engine, read_only=True) as conn:
            await conn.execute(text("INSERT INTO tx_items VALUES (20, 'no')"))
    assert refused.value.retryable is False
    assert 20 not in await _ids(engine)


async def test_nested_transaction_is_a_savepoint(engine: AsyncEngine) -> None:
    """A failing inner block rolls back to its savepoint; the outer one commits the rest."""
    statements: list[str] = []
    event.listen(
        engine.sync_engine,
        "before_cursor_execute",
        lambda c, cur, stmt, *rest: statements.append(stmt.split()[0]),
    )
    Session = async_sessionmaker(engine)
    async with Session() as session, transaction(session):
        await session.execute(text("INSERT INTO tx_items VALUES (30, 'outer')"))
        with pytest.raises(sr.UniqueViolation):
            async with transaction(session):
                await session.execute(text("INSERT INTO tx_items VALUES (31, 'inner')"))
                await session.execute(text("INSERT INTO tx_items VALUES (30, 'dup')"))
        async with transaction(session):
            await session.execute(text("INSERT INTO tx_items VALUES (32, 'inner ok')"))
    assert {30, 32} <= set(await _ids(engine)) and 31 not in await _ids(engine)
    assert statements.count("SAVEPOINT") == 2
    assert "RELEASE" in statements and "ROLLBACK" in statements


async def test_nested_timeouts_are_put_back_when_the_savepoint_ends(engine: AsyncEngine) -> None:
    """A savepoint's lock_timeout applies inside it; after RELEASE (or ROLLBACK TO) the outer value is back."""
    async with transaction(engine, lock_timeout=5) as conn:
        async with transaction(conn, lock_timeout=0.5, statement_timeout=2):
            inner = await _settings(conn)
        after_release = await _settings(conn)
        with pytest.raises(ZeroDivisionError):
            async with transaction(conn, lock_timeout=0.25):
                raise ZeroDivisionError
        after_rollback = await _settings(conn)
    assert (inner["lock_timeout"], inner["statement_timeout"]) == ("500ms", "2s")
    assert (after_release["lock_timeout"], after_release["statement_timeout"]) == ("5s", "0")
    assert after_rollback["lock_timeout"] == "5s"


async def test_durable_refuses_to_nest(engine: AsyncEngine) -> None:
    """durable=True inside a transaction (or inside run_transaction's unit of work) raises before any work."""
    Session = async_sessionmaker(engine)
    async with Session() as session, transaction(session):
        with pytest.raises(sr.DurableTransactionError):
            async with transaction(session, durable=True):
                pytest.fail("the durable block must not run")

    async def work(session: AsyncSession) -> None:
        async with transaction(session, durable=True):
            pytest.fail("the durable block must not run")

    with pytest.raises(sr.DurableTransactionError):
        await run_transaction(Session, work)
    async with transaction(Session, durable=True) as session:  # outermost: fine
        await session.execute(text("INSERT INTO tx_items VALUES (40, 'durable')"))
    assert 40 in await _ids(engine)
    assert engine.pool.checkedout() == 0


async def test_transaction_inside_run_transaction_is_a_savepoint(engine: AsyncEngine) -> None:
    """run_transaction owns the transaction; a transaction() in its unit of work nests as a savepoint."""
    Session = async_sessionmaker(engine)

    async def work(session: AsyncSession) -> None:
        await session.execute(text("INSERT INTO tx_items VALUES (50, 'unit')"))
        with pytest.raises(LookupError):
            async with transaction(session):
                await session.execute(text("INSERT INTO tx_items VALUES (51, 'inner')"))
                raise LookupError
        async with transaction(session, statement_timeout=3):
            await session.execute(text("INSERT INTO tx_items VALUES (52, 'inner ok')"))

    await run_transaction(Session, work)
    ids = await _ids(engine)
    assert 50 in ids and 52 in ids and 51 not in ids


async def test_bad_options_are_refused_before_any_sql(engine: AsyncEngine) -> None:
    """Wrong types, ranges and combinations: a clear error naming the option, and 0 statements run."""
    ran: list[str] = []
    event.listen(
        engine.sync_engine, "before_cursor_execute", lambda c, cur, stmt, *r: ran.append(stmt)
    )
    Session = async_sessionmaker(engine)
    cases: list[tuple[dict[str, object], type[Exception], str]] = [
        ({"isolation_level": "AUTOCOMMIT"}, ValueError, "cannot autocommit"),
        (
            {"isolation_level": "serializable; DROP TABLE x"},
            ValueError,
            "isolation_level must be one of",
        ),
        ({"read_only": "yes"}, TypeError, "read_only must be True or False"),
        ({"deferrable": True, "read_only": True}, ValueError, "deferrable=True needs"),
        ({"statement_timeout": -1}, ValueError, "statement_timeout must be >= 0"),
        ({"lock_timeout": "1s"}, TypeError, "lock_timeout must be seconds"),
        ({"idle_in_transaction_timeout": float("nan")}, ValueError, "finite"),
        ({"statement_timeout": 10**9}, ValueError, "at most"),
        ({"durable": 1}, TypeError, "durable must be True or False"),
    ]
    for options, error, message in cases:
        with pytest.raises(error, match=message):
            transaction(Session, **options)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AsyncSession, AsyncConnection, AsyncEngine"):
        transaction(object())  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="use transaction_sync"):
        transaction(engine.sync_engine)  # type: ignore[call-overload]
    async with engine.connect() as conn:
        with pytest.raises(ValueError, match="outlive the transaction"):
            async with transaction(conn, isolation_level="SERIALIZABLE"):
                pass
        assert not conn.in_transaction()
    async with Session() as session, transaction(session):
        with pytest.raises(ValueError, match="nested, so it is a savepoint"):
            async with transaction(session, read_only=True):
                pass
    assert ran == []
    assert engine.pool.checkedout() == 0


async def test_pooled_connection_is_clean_after_failures(engine: AsyncEngine) -> None:
    """After a timeout error, a rollback and a savepoint failure, the one pooled connection has default settings."""
    Session = async_sessionmaker(engine)
    async with Session() as session:
        before = await _settings(session)
    with pytest.raises(sr.QueryTimeout):
        async with transaction(Session, statement_timeout=0.05, lock_timeout=1) as s:
            await s.execute(text("SELECT pg_sleep(2)"))
    with pytest.raises(RuntimeError):
        async with transaction(Session, read_only=True, isolation_level="REPEATABLE READ"):
            raise RuntimeError
    async with Session() as session:
        assert await _settings(session) == before


async def test_sqlite_settings_refuse_a_postgresql_engine(engine: AsyncEngine) -> None:
    """configure_sqlite and instrument(sqlite=) on a PostgreSQL engine: a ValueError naming the dialect."""
    with pytest.raises(ValueError, match="needs a SQLite engine, not 'postgresql'"):
        configure_sqlite(engine)
    plain = create_async_engine(engine.url)
    try:
        with pytest.raises(ValueError, match="sqlite= needs a SQLite engine"):
            instrument(plain, sqlite=SQLiteSettings())
    finally:
        await plain.dispose()
