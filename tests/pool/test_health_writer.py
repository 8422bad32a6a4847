"""health_check(writer=True): a server that answers but takes no writes is unhealthy, and
the report says why (PostgreSQL here and on SQLite; MariaDB in test_writer_check_mysql.py,
a Galera node in tests/galera/test_galera.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import create_async_engine

from sqlalchemy_resilience import Database, SyncDatabase, health_check, health_check_sync
from tests.pgharness import PgServer


async def test_a_read_only_postgresql_is_unhealthy_for_a_writer(
    pg_server: PgServer, pg_database: str
) -> None:
    """default_transaction_read_only (a fenced or demoted primary): SELECT 1 passes, so
    only the writer question tells; both twins, and Database.health() by default."""
    from psycopg import sql

    engine = create_async_engine(pg_server.app_url(pg_database))
    sync: Engine = create_engine(pg_server.app_url(pg_database, driver="psycopg"))
    db = Database(pg_server.app_url(pg_database))
    await db.start()  # while it still takes writes: start() refuses a read-only server
    try:
        report = await health_check(engine, timeout=2, writer=True)
        assert (report.status, report.writable) == ("healthy", True), report.warnings
        assert health_check_sync(sync, timeout=2).writable is None  # not asked
        pg_server.execute(
            sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on")
            .format(sql.Identifier(pg_database))
            .as_string()
        )
        for pooled in (engine, db.engine):
            await pooled.dispose()  # the setting applies to new sessions
        sync.dispose()
        try:
            report = await health_check(engine, timeout=2, writer=True)
            assert (report.status, report.writable) == ("unhealthy", False)
            assert "the server takes no writes: transaction_read_only" in report.warnings
            assert report.to_dict()["writable"] is False
            assert health_check_sync(sync, timeout=2, writer=True).warnings == report.warnings
            assert (await health_check(engine, timeout=2)).status == "healthy"  # not asked
            assert (await db.health()).writable is False  # as require_writer: on by default
            # Not asked, but the pool's own writer check refuses the probe's connection.
            unasked = await db.health(writer=False)
            assert (unasked.writable, unasked.error) == (False, "ReadOnlyServer")
        finally:
            pg_server.execute(
                sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only")
                .format(sql.Identifier(pg_database))
                .as_string()
            )
    finally:
        await db.close()
        await engine.dispose()
        sync.dispose()


def test_sqlite_has_no_server_role(tmp_path: Path) -> None:
    engine: Engine = create_engine(f"sqlite:///{tmp_path / 'w.sqlite'}")
    try:
        report = health_check_sync(engine, timeout=1, writer=True)
        assert (report.status, report.writable) == ("healthy", True)
        with SyncDatabase(engine) as db:
            assert db.health().writable is None  # require_writer is off off PostgreSQL
    finally:
        engine.dispose()


def test_writer_must_be_a_bool(tmp_path: Path) -> None:
    engine: Engine = create_engine(f"sqlite:///{tmp_path / 'w.sqlite'}")
    try:
        with pytest.raises(TypeError, match="writer must be True or False, got 'yes'"):
            health_check_sync(engine, writer="yes")  # type: ignore[arg-type]
    finally:
        engine.dispose()
