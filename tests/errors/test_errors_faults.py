"""Error translation under server faults: shutdowns and ambiguous COMMITs (recipes e6, e7, e9).

These tests own their server (``fault_server``): they stop it, reconfigure it
with ALTER SYSTEM and terminate backends mid-COMMIT.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import instrument
from tests.pgharness import PgServer
from tests.waiting import until


@pytest.fixture
def fault_db(fault_server: PgServer) -> PgServer:
    """The fault server with the transfers table and the commit-delay trigger of recipe e7."""
    fault_server.execute("DROP TABLE IF EXISTS transfers", database="faults")
    fault_server.execute(
        "CREATE TABLE transfers (request_id uuid PRIMARY KEY, note text)", database="faults"
    )
    fault_server.execute("GRANT ALL ON transfers TO app", database="faults")
    fault_server.install_commit_delay("transfers", database="faults")
    return fault_server


@pytest.fixture
async def fault_engine(fault_db: PgServer, pg_driver: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(fault_db.app_url("faults", driver=pg_driver))
    instr = instrument(engine)
    try:
        yield engine
    finally:
        instr.detach()
        await engine.dispose()


def _row_exists(server: PgServer, request_id: uuid.UUID) -> bool:
    rows = server.execute(
        "SELECT 1 FROM transfers WHERE request_id = %s", (request_id,), database="faults"
    )
    return bool(rows)


def _xact_status(server: PgServer, xid: str) -> str:
    return str(server.execute("SELECT pg_xact_status(%s::xid8)", (xid,))[0][0])


async def _commit_and_kill_when(
    server: PgServer, engine: AsyncEngine, note: str, wait_event: str
) -> tuple[BaseException, uuid.UUID, str]:
    """Run one INSERT + COMMIT; terminate the backend once COMMIT waits on ``wait_event``."""
    request_id = uuid.uuid4()
    conn = await engine.connect()
    try:
        await conn.begin()
        await conn.execute(text("SET LOCAL synchronous_commit = 'on'"))
        await conn.execute(
            text("INSERT INTO transfers (request_id, note) VALUES (:r, :n)"),
            {"r": request_id, "n": note},
        )
        xid = str((await conn.execute(text("SELECT pg_current_xact_id()"))).scalar_one())
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        commit = asyncio.ensure_future(conn.commit())

        def committing() -> bool:
            rows = server.execute("SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (pid,))
            return bool(rows) and rows[0][0] == wait_event

        await asyncio.to_thread(server.wait_for, committing, timeout=20)
        server.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(sr.ResilienceError) as info:
            await asyncio.wait_for(commit, 20)
        return info.value, request_id, xid
    finally:
        await conn.close()


async def test_commit_lost_after_server_committed_is_unknown(
    fault_db: PgServer, fault_engine: AsyncEngine
) -> None:
    """Recipe e6: killed while COMMIT waits for a (missing) sync standby -> CommitOutcomeUnknown.

    The transaction did commit locally; the error must not claim otherwise or invite a blind retry.
    """
    fault_db.execute("ALTER SYSTEM SET synchronous_standby_names = 'ghost_standby'")
    fault_db.execute("ALTER SYSTEM SET synchronous_commit = 'local'")
    fault_db.execute("SELECT pg_reload_conf()")
    try:
        err, request_id, xid = await _commit_and_kill_when(
            fault_db, fault_engine, "sync-rep", "SyncRep"
        )
    finally:
        fault_db.execute("ALTER SYSTEM RESET synchronous_standby_names")
        fault_db.execute("ALTER SYSTEM RESET synchronous_commit")
        fault_db.execute("SELECT pg_reload_conf()")
    assert isinstance(err, sr.CommitOutcomeUnknown), repr(err)
    assert err.retryable is False
    assert not isinstance(err, sr.ConnectionLost)
    assert err.user_message("en").startswith("We could not confirm")
    assert _row_exists(fault_db, request_id)
    assert _xact_status(fault_db, xid) == "committed"


async def test_commit_killed_by_fatal_is_definite(
    fault_db: PgServer, fault_engine: AsyncEngine
) -> None:
    """Recipe e7: the server answers COMMIT with FATAL 57P01 -> not committed, a retryable ConnectionLost."""
    err, request_id, xid = await _commit_and_kill_when(
        fault_db, fault_engine, "chaos-delay-commit", "PgSleep"
    )
    assert not _row_exists(fault_db, request_id)
    assert _xact_status(fault_db, xid) == "aborted"
    assert isinstance(err, sr.ConnectionLost), repr(err)
    assert err.retryable is True
    assert err.sqlstate == "57P01"


async def test_shutting_down_server_refuses_with_57p03(
    fault_server: PgServer, pg_driver: str
) -> None:
    """Recipe e9: a smart shutdown waiting on a session makes new connects fail with 57P03."""
    pg = fault_server.require_owned()
    engine = create_async_engine(fault_server.app_url("faults", driver=pg_driver))
    instrument(engine)
    holder = await engine.connect()
    await holder.execute(text("SELECT 1"))
    stopper = asyncio.create_task(asyncio.to_thread(pg.stop, mode="smart", timeout=30))
    try:
        refusals: list[sr.DatabaseUnavailable] = []

        async def refused() -> bool:
            try:
                async with engine.connect() as conn:
                    await conn.invalidate()  # the shutdown has not begun: connect anew next time
                    return False
            except sr.DatabaseUnavailable as exc:
                refusals.append(exc)
                return True

        await until(refused, what="the smart shutdown refusing connections")
        assert refusals[-1].retryable is True
        assert refusals[-1].sqlstate == "57P03"
    finally:
        await holder.close()
        await engine.dispose()
        await stopper
        pg.start()


async def test_immediate_shutdown_is_connection_lost(
    fault_server: PgServer, pg_driver: str
) -> None:
    """Recipe e9: an immediate stop drops open sessions -> ConnectionLost; reconnect refused -> DatabaseUnavailable."""
    pg = fault_server.require_owned()
    engine = create_async_engine(fault_server.app_url("faults", driver=pg_driver))
    instrument(engine)
    try:
        async with engine.connect() as conn:
            await conn.begin()
            await conn.execute(text("SELECT 1"))
            await asyncio.to_thread(pg.stop, mode="immediate")
            with pytest.raises(sr.ConnectionLost) as lost:
                await conn.execute(text("SELECT 1"))
        assert lost.value.retryable is True
        with pytest.raises(sr.DatabaseUnavailable) as refused:
            async with engine.connect():
                pass
        assert refused.value.retryable is True
    finally:
        await engine.dispose()
        pg.start()
