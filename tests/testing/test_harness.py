"""The fault-injection controls of the harness work on a real server: crash, restart, pause, terminate."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import instrument
from sqlalchemy_resilience.testing.embedded import EmbeddedPostgres, find_pg_bin
from tests.pgharness import PgServer


def test_crash_restart_keeps_committed_rows(fault_server: PgServer) -> None:
    """An immediate stop + crash recovery keeps every committed row and changes the postmaster."""
    pg = fault_server.require_owned()
    fault_server.execute("DROP TABLE IF EXISTS survivors", database="faults")
    fault_server.execute("CREATE TABLE survivors (id int PRIMARY KEY)", database="faults")
    fault_server.execute("INSERT INTO survivors SELECT generate_series(1, 500)", database="faults")
    before = pg.postmaster_pid()
    pg.crash_restart()
    assert pg.running
    assert pg.postmaster_pid() != before
    count = fault_server.execute("SELECT count(*) FROM survivors", database="faults")[0][0]
    assert count == 500


async def test_paused_postmaster_hangs_new_connects(fault_server: PgServer) -> None:
    """While the postmaster is SIGSTOPped, existing sessions work and new connects time out."""
    pg = fault_server.require_owned()
    url = fault_server.app_url("faults", driver="asyncpg")
    engine = create_async_engine(url, connect_args={"timeout": 1})
    instrument(engine)
    try:
        async with engine.connect() as existing:
            await existing.execute(text("SELECT 1"))
            with pg.paused():
                assert (await existing.execute(text("SELECT 2"))).scalar_one() == 2
                started = time.monotonic()
                with pytest.raises(sr.DatabaseUnavailable) as info:
                    async with engine.connect() as fresh:
                        await fresh.execute(text("SELECT 3"))
                elapsed = time.monotonic() - started
        assert info.value.retryable is True
        assert 0.9 <= elapsed < 5.0
        async with engine.connect() as after:
            assert (await after.execute(text("SELECT 4"))).scalar_one() == 4
    finally:
        await engine.dispose()


async def test_terminate_backends_and_wait_for(fault_server: PgServer) -> None:
    """terminate_backends kills the app role's sessions; wait_for observes it without sleeping blindly."""
    engine = create_async_engine(fault_server.app_url("faults", driver="asyncpg"))
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        # The connection now idles in the pool, as in a stale-pool fault.
        assert fault_server.backend_pids(database="faults")
        assert fault_server.terminate_backends(database="faults") >= 1
        await asyncio.to_thread(
            fault_server.wait_for, lambda: not fault_server.backend_pids(database="faults")
        )
    finally:
        await engine.dispose()


@pytest.mark.postgresql
def test_embedded_postgres_validation_and_binaries() -> None:
    """Bad options are refused with a clear error; the binaries directory holds the server programs."""
    bin_dir = find_pg_bin()
    assert (bin_dir / "pg_ctl").is_file()
    with pytest.raises(ValueError, match="port must be between 1 and 65535"):
        EmbeddedPostgres(port=70000)
    pg = EmbeddedPostgres()
    with pytest.raises(ValueError, match="mode must be"):
        pg.stop(mode="graceful")
    pg.stop(cleanup=True)
