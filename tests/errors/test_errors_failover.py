"""25006 from a read-only server and 08P01 protocol violations, against a real PostgreSQL.

A failover leaves the application's pool holding connections to a server that
no longer accepts writes. These tests make the module's own server read-only
the way a fencing failover does (``default_transaction_read_only`` on, picked
up by the sessions already open) and check that a write gets
:class:`ReadOnlyServer`, that the connection and every pooled connection
opened before it are discarded, and that ``run_transaction`` re-runs the unit
of work on a fresh connection once the server accepts writes again. A
transaction the application itself made READ ONLY is a bug, not a failover:
:class:`ReadOnlyTransaction`, not retried, nothing discarded.

The protocol-violation tests put the fault proxy in front of the server and
send a frontend message with an invalid type byte; the server answers FATAL
08P01 and closes the session.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import RetryPolicy, instrument, run_transaction
from sqlalchemy_resilience.errors.translate import reported_read_only
from sqlalchemy_resilience.retry import is_infrastructure_failure
from tests.faultproxy import FaultProxy
from tests.pgharness import PgServer

DB = "faults"
FAST = RetryPolicy(attempts=5, initial_backoff=0.01, max_backoff=0.05)


def _set_read_only(server: PgServer, on: bool) -> None:
    """What a fencing failover does to the old primary: no more writes, sessions stay."""
    if on:
        server.execute("ALTER SYSTEM SET default_transaction_read_only = on")
    else:
        server.execute("ALTER SYSTEM RESET default_transaction_read_only")
    server.execute("SELECT pg_reload_conf()")

    def applied() -> bool:
        # A fresh session sees the reloaded value once the postmaster re-read the file.
        rows = server.execute("SHOW default_transaction_read_only", database=DB)
        return bool(rows) and rows[0][0] == ("on" if on else "off")

    server.wait_for(applied, timeout=10)


@pytest.fixture
def ledger(fault_server: PgServer) -> Iterator[PgServer]:
    """The fault server with an ``entries`` table; always left writable."""
    fault_server.execute("DROP TABLE IF EXISTS entries", database=DB)
    fault_server.execute("CREATE TABLE entries (id serial PRIMARY KEY, note text)", database=DB)
    fault_server.execute("GRANT ALL ON entries, entries_id_seq TO app", database=DB)
    try:
        yield fault_server
    finally:
        _set_read_only(fault_server, False)


@pytest.fixture
async def engine(ledger: PgServer, pg_driver: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(ledger.app_url(DB, driver=pg_driver), pool_size=3, max_overflow=0)
    instr = instrument(eng)
    try:
        yield eng
    finally:
        instr.detach()
        await eng.dispose()


async def _warm_pids(engine: AsyncEngine, n: int) -> set[int]:
    """Open ``n`` pooled connections at once and return their backend pids."""
    conns = [await engine.connect() for _ in range(n)]
    try:
        return {(await c.execute(text("SELECT pg_backend_pid()"))).scalar_one() for c in conns}
    finally:
        for c in conns:
            await c.close()


async def test_write_on_read_only_server_is_read_only_server_and_discards_the_pool(
    engine: AsyncEngine, ledger: PgServer
) -> None:
    """25006 from a server that reports itself read-only: ReadOnlyServer, retryable; that
    connection and the pool's older ones are replaced at their next checkout."""
    before = await _warm_pids(engine, 3)
    _set_read_only(ledger, True)
    with pytest.raises(sr.ReadOnlyServer) as info:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO entries (note) VALUES ('x')"))
    err = info.value
    assert err.retryable is True and err.sqlstate == "25006"
    assert err.connection_invalidated is True
    assert is_infrastructure_failure(err)
    assert "try again in a moment" in err.user_message("en")
    _set_read_only(ledger, False)
    after = await _warm_pids(engine, 3)
    assert before.isdisjoint(after), (before, after)
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO entries (note) VALUES ('after')"))


async def test_run_transaction_reaches_the_writable_server_after_a_failover(
    engine: AsyncEngine, ledger: PgServer
) -> None:
    """run_transaction re-runs the unit of work after ReadOnlyServer; it commits once the
    server accepts writes, on a connection opened after the failure."""
    before = await _warm_pids(engine, 3)
    _set_read_only(ledger, True)
    attempts: list[int] = []

    async def write(session: AsyncSession) -> int:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 2:
            # The failover completes while the application backs off.
            await asyncio.to_thread(_set_read_only, ledger, False)
        await session.execute(text("INSERT INTO entries (note) VALUES ('transfer')"))
        pid: int = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        return pid

    pid = await run_transaction(async_sessionmaker(engine), write, retry=FAST)
    assert attempts == [1, 2]
    assert pid not in before
    rows = ledger.execute("SELECT count(*) FROM entries WHERE note = 'transfer'", database=DB)
    assert rows[0][0] == 1


async def test_read_only_transaction_of_the_app_is_not_retried(
    engine: AsyncEngine, ledger: PgServer
) -> None:
    """A write in a transaction the application made READ ONLY, on a writable server:
    ReadOnlyTransaction (a bug), one attempt, the connection kept."""
    before = await _warm_pids(engine, 1)
    attempts: list[int] = []

    async def write(session: AsyncSession) -> None:
        attempts.append(1)
        await session.execute(text("INSERT INTO entries (note) VALUES ('x')"))

    with pytest.raises(sr.ReadOnlyTransaction) as info:
        await run_transaction(async_sessionmaker(engine), write, retry=FAST, read_only=True)
    assert len(attempts) == 1
    assert info.value.retryable is False
    assert isinstance(info.value, sr.InvalidStatement)
    assert not is_infrastructure_failure(info.value)
    assert await _warm_pids(engine, 1) == before


@pytest.fixture
async def proxied(
    ledger: PgServer, pg_driver: str
) -> AsyncIterator[tuple[AsyncEngine, FaultProxy]]:
    proxy = FaultProxy("127.0.0.1", ledger.port)
    eng = create_async_engine(ledger.app_url(DB, driver=pg_driver).set(port=proxy.port))
    instr = instrument(eng)
    try:
        yield eng, proxy
    finally:
        instr.detach()
        await eng.dispose()
        proxy.close()


async def _count(server: PgServer, note: str) -> int:
    rows = server.execute("SELECT count(*) FROM entries WHERE note = %s", (note,), database=DB)
    return int(rows[0][0])


async def test_protocol_violation_mid_transaction_is_retried_once(
    proxied: tuple[AsyncEngine, FaultProxy], ledger: PgServer
) -> None:
    """08P01 before COMMIT: ConnectionLost, retryable, re-run once; a second one in a row is raised."""
    engine, proxy = proxied
    Session = async_sessionmaker(engine)
    attempts: list[int] = []

    async def write(session: AsyncSession) -> None:
        attempts.append(1)
        await session.execute(text("INSERT INTO entries (note) VALUES ('once')"))

    async with engine.connect() as conn:  # open the pooled connection first
        await conn.execute(text("SELECT 1"))
    proxy.garble_messages = 1
    await run_transaction(Session, write, retry=FAST)
    assert (len(attempts), proxy.garbled) == (2, 1)
    assert await _count(ledger, "once") == 1

    attempts.clear()
    proxy.garble_messages = 2  # the first message of each of two attempts
    with pytest.raises(sr.ConnectionLost) as info:
        await run_transaction(Session, write, retry=FAST)
    assert len(attempts) == 2
    assert info.value.sqlstate == "08P01" and info.value.retryable is True
    assert await _count(ledger, "once") == 1


async def test_protocol_violation_while_connecting_is_database_unavailable(
    proxied: tuple[AsyncEngine, FaultProxy],
) -> None:
    """08P01 during authentication: nothing was sent, so DatabaseUnavailable, retryable."""
    engine, proxy = proxied
    proxy.garble_messages, proxy.garble_during_startup = 1, True
    with pytest.raises(sr.DatabaseUnavailable) as info:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    assert proxy.garbled == 1
    assert info.value.retryable is True


async def test_protocol_violation_at_commit_is_commit_outcome_unknown(
    proxied: tuple[AsyncEngine, FaultProxy], ledger: PgServer
) -> None:
    """08P01 in reply to COMMIT: CommitOutcomeUnknown (the same rule as any loss at COMMIT), not re-run."""
    engine, proxy = proxied
    attempts: list[int] = []

    async def write(session: AsyncSession) -> None:
        attempts.append(1)
        await session.execute(text("INSERT INTO entries (note) VALUES ('commit')"))

    proxy.garble_commit = True
    with pytest.raises(sr.CommitOutcomeUnknown) as info:
        await run_transaction(async_sessionmaker(engine), write, retry=FAST)
    assert len(attempts) == 1
    assert info.value.sqlstate == "08P01"
    # This COMMIT never reached the server's parser, so nothing was applied;
    # the client cannot know that, which is why the outcome is "unknown".
    assert await _count(ledger, "commit") == 0


async def test_a_hot_standby_refuses_then_its_promotion_takes_the_retry(
    ledger: PgServer, pg_driver: str
) -> None:
    """Connected to a real hot standby (streaming replica): a write is ReadOnlyServer (the
    server reports in_hot_standby); the failover promotes it while run_transaction backs
    off; the re-run commits on a connection opened after the failure."""
    standby = ledger.require_owned().start_standby()
    engine = create_async_engine(
        ledger.app_url(DB, driver=pg_driver).set(port=standby.port), pool_size=3, max_overflow=0
    )
    instrument(engine)
    try:
        before = await _warm_pids(engine, 3)
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            assert reported_read_only(raw.driver_connection) is True  # in_hot_standby = on
        errors: list[BaseException] = []
        attempts: list[int] = []

        async def write(session: AsyncSession) -> int:
            attempts.append(len(attempts) + 1)
            if len(attempts) == 2:
                await asyncio.to_thread(standby.promote)
            try:
                await session.execute(text("INSERT INTO entries (note) VALUES ('failover')"))
            except Exception as exc:
                errors.append(exc)
                raise
            pid: int = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            return pid

        pid = await run_transaction(async_sessionmaker(engine), write, retry=FAST)
        assert attempts == [1, 2]
        assert isinstance(errors[0], sr.ReadOnlyServer) and errors[0].retryable
        assert pid not in before
        async with engine.connect() as conn:
            count = (
                await conn.execute(text("SELECT count(*) FROM entries WHERE note = 'failover'"))
            ).scalar_one()
        assert count == 1
    finally:
        await engine.dispose()
        standby.stop(cleanup=True)
