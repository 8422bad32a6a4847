"""transaction() and configure_sqlite on real SQLite files, with sqlite3 and aiosqlite."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import (
    instrument,
    run_transaction,
    run_transaction_sync,
    transaction,
    transaction_sync,
)
from sqlalchemy_resilience.transactions import SQLiteSettings, configure_sqlite


def _record(engine: Engine) -> list[str]:
    statements: list[str] = []
    event.listen(
        engine, "before_cursor_execute", lambda c, cur, stmt, *rest: statements.append(stmt)
    )
    return statements


@pytest.fixture
async def aengine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """An instrumented aiosqlite engine on a file (busy_timeout 30 s by the driver's timeout)."""
    eng = create_async_engine(
        f"sqlite+aiosqlite:///{tmp_path / 'a.sqlite'}", connect_args={"timeout": 30}
    )
    instrument(eng)
    async with eng.begin() as conn:
        await conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
    try:
        yield eng
    finally:
        await eng.dispose()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """An instrumented sqlite3 engine on a file."""
    eng = create_engine(f"sqlite:///{tmp_path / 's.sqlite'}", connect_args={"timeout": 30})
    instrument(eng)
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
    try:
        yield eng
    finally:
        eng.dispose()


async def test_write_transactions_begin_immediate(aengine: AsyncEngine) -> None:
    """A write transaction takes the write lock at BEGIN; a read-only one begins deferred and refuses writes."""
    statements = _record(aengine.sync_engine)
    Session = async_sessionmaker(aengine)
    async with transaction(Session) as session:
        await session.execute(text("SELECT count(*) FROM t"))
        await session.execute(text("INSERT INTO t VALUES (1)"))
    assert statements[:3] == [
        "BEGIN IMMEDIATE",
        "SELECT count(*) FROM t",
        "INSERT INTO t VALUES (1)",
    ]
    statements.clear()
    with pytest.raises(sr.PermissionDenied):
        async with transaction(Session, read_only=True) as session:
            await session.execute(text("INSERT INTO t VALUES (2)"))
    assert statements[:2] == ["BEGIN DEFERRED", "PRAGMA query_only = ON"]
    assert "PRAGMA query_only = OFF" in statements
    async with transaction(Session) as session:  # the pooled connection is writable again
        await session.execute(text("INSERT INTO t VALUES (3)"))
        assert (await session.execute(text("PRAGMA query_only"))).scalar() == 0
    async with aengine.connect() as conn:
        assert (await conn.execute(text("SELECT id FROM t ORDER BY id"))).scalars().all() == [1, 3]


async def test_lock_timeout_is_busy_timeout_for_the_transaction(
    aengine: AsyncEngine, tmp_path: Path
) -> None:
    """lock_timeout bounds the wait for another writer's lock, then the connection's own busy_timeout is back."""
    holder = sqlite3.connect(tmp_path / "a.sqlite", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(sr.LockNotAvailable):
            async with transaction(aengine, lock_timeout=0.2) as conn:
                await conn.execute(text("INSERT INTO t VALUES (1)"))
        waited = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert waited < 15  # not the connection's 30 s
    async with transaction(aengine) as conn:
        assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 30000
        async with transaction(conn, lock_timeout=1.5):
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 1500
        assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar() == 30000


def test_savepoints_belong_to_the_transaction(engine: Engine, tmp_path: Path) -> None:
    """With sqlite3's legacy transaction control a released SAVEPOINT commits on its own; in transaction() it does not."""
    plain = create_engine(f"sqlite:///{tmp_path / 's.sqlite'}")
    try:
        with pytest.raises(ZeroDivisionError), plain.connect() as conn, conn.begin():
            with conn.begin_nested():
                conn.execute(text("INSERT INTO t VALUES (1)"))
            raise ZeroDivisionError  # roll back the outer transaction
    finally:
        plain.dispose()
    with pytest.raises(ZeroDivisionError), transaction_sync(engine) as conn:
        with transaction_sync(conn):
            conn.execute(text("INSERT INTO t VALUES (2)"))
        raise ZeroDivisionError
    with engine.connect() as conn:
        # The plain engine's row survived its rollback (the driver never sent BEGIN); ours did not.
        assert conn.execute(text("SELECT id FROM t")).scalars().all() == [1]


def test_options_sqlite_cannot_honour_are_refused(engine: Engine) -> None:
    """statement_timeout and idle_in_transaction_timeout: NotSupported naming the option, 0 statements run."""
    statements = _record(engine)
    for option in ("statement_timeout", "idle_in_transaction_timeout"):
        with (
            pytest.raises(sr.NotSupported, match=option) as refused,
            transaction_sync(engine, **{option: 1}),
        ):  # type: ignore[arg-type]
            pytest.fail("must not run")
        assert (refused.value.option, refused.value.dialect) == (option, "sqlite")
        assert isinstance(refused.value, NotImplementedError)
    assert statements == []
    assert engine.pool.checkedout() == 0


def test_configure_sqlite_sets_up_every_connection(tmp_path: Path) -> None:
    """Pragmas once per connection, BEGIN IMMEDIATE for plain Session code, deferred for read-only units, none in AUTOCOMMIT."""
    engine = create_engine(f"sqlite:///{tmp_path / 'c.sqlite'}")
    with engine.connect() as conn:  # a connection pooled before configuration gets the pragmas too
        conn.execute(text("SELECT 1"))
    configured = configure_sqlite(
        engine, SQLiteSettings(busy_timeout=2.5, synchronous="normal", foreign_keys=True)
    )
    assert configured.attached and configured.engine is engine
    statements = _record(engine)
    try:
        with engine.connect() as conn:
            pragmas = [
                conn.execute(text(f"PRAGMA {name}")).scalar()
                for name in ("journal_mode", "busy_timeout", "synchronous", "foreign_keys")
            ]
        assert pragmas == ["wal", 2500, 1, 1]
        statements.clear()
        with Session(engine) as session, session.begin():
            session.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
        assert statements[0] == "BEGIN IMMEDIATE"
        statements.clear()
        run_transaction_sync(
            sessionmaker(engine), lambda s: s.execute(text("SELECT 1")).all(), read_only=True
        )
        assert statements[0] == "BEGIN DEFERRED"
        statements.clear()
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
        assert not any(s.startswith("BEGIN") for s in statements)
        with pytest.raises(RuntimeError, match="already configured"):
            configure_sqlite(engine)
    finally:
        configured.detach()
    assert not configured.attached
    configured.detach()  # idempotent
    statements.clear()
    with Session(engine) as session, session.begin():
        session.execute(text("INSERT INTO t VALUES (2)"))
    assert not any(
        s.startswith("BEGIN") for s in statements
    )  # removed: the driver's own implicit BEGIN
    engine.dispose()


async def test_instrument_sqlite_option(tmp_path: Path) -> None:
    """instrument(engine, sqlite=SQLiteSettings()) installs the settings; detach() removes them."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'i.sqlite'}")
    instr = instrument(engine, sqlite=SQLiteSettings())
    statements = _record(engine.sync_engine)
    try:
        async with engine.begin() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
        assert statements[0] == "BEGIN IMMEDIATE"
        instr.detach()
        statements.clear()
        async with engine.begin() as conn:
            await conn.execute(text("SELECT 1"))
        assert statements == ["SELECT 1"]
    finally:
        await engine.dispose()


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    """Unknown modes, bad times and non-SQLite engines: a clear error naming the value."""
    for kwargs, error, message in [
        ({"journal_mode": "WAL2"}, ValueError, "journal_mode must be one of"),
        ({"synchronous": "fast"}, ValueError, "synchronous must be one of"),
        ({"begin": "exclusive"}, ValueError, "begin must be one of"),
        ({"busy_timeout": -1}, ValueError, "busy_timeout must be >= 0"),
        ({"busy_timeout": 10**8}, ValueError, "at most"),
        ({"foreign_keys": "on"}, TypeError, "foreign_keys must be"),
    ]:
        with pytest.raises(error, match=message):
            SQLiteSettings(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="SQLiteSettings"):
        configure_sqlite(create_engine("sqlite://"), {"journal_mode": "wal"})  # type: ignore[arg-type]
    memory = create_engine("sqlite://")
    configure_sqlite(memory)
    with memory.connect() as conn:  # an in-memory database keeps its journal mode
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "memory"
    memory.dispose()


async def test_run_transaction_on_sqlite_reads_inside_its_transaction(aengine: AsyncEngine) -> None:
    """run_transaction begins with BEGIN IMMEDIATE, so its SELECT is part of the transaction (no lost update)."""
    statements = _record(aengine.sync_engine)
    Session = async_sessionmaker(aengine)

    async def work(session: object) -> None:
        await session.execute(text("SELECT count(*) FROM t"))  # type: ignore[attr-defined]
        await session.execute(text("INSERT INTO t VALUES (9)"))  # type: ignore[attr-defined]

    await run_transaction(Session, work)
    assert statements[0] == "BEGIN IMMEDIATE"


def test_a_context_is_entered_once(engine: Engine) -> None:
    """Re-entering the object transaction() returned is refused (a new call makes a new transaction)."""
    block = transaction_sync(engine)
    with block as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
    with pytest.raises(RuntimeError, match="entered once"), block:
        pytest.fail("must not run")
    assert engine.pool.checkedout() == 0
