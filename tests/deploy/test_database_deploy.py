"""The deployment parts wired into ``Database``: a pooler, a password provider, a replica.

Each against the real server it needs: the PgBouncer of this package's
conftest, a role whose password the provider supplies, a streaming replica.
"""

from __future__ import annotations

import json
import secrets
import uuid
import warnings
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

import sqlalchemy_resilience as sr
from sqlalchemy_resilience.database import PoolSettings
from sqlalchemy_resilience.deploy import Credential, PoolerWarning
from tests.chaos.workload import check, run_bank, setup_bank
from tests.pgbouncer import PgBouncer
from tests.pgharness import PgServer
from tests.waiting import until


def _url(server: PgServer, database: str, **changes: object) -> str:
    return (
        server.app_url(database, driver="asyncpg")
        .set(**changes)
        .render_as_string(  # type: ignore[arg-type]
            hide_password=False
        )
    )


async def test_behind_pgbouncer_with_pooler_transaction(
    pg_server: PgServer, pg_database: str, pgbouncer: PgBouncer
) -> None:
    setup_bank(pg_server, pg_database)
    url = _url(pg_server, pg_database, port=pgbouncer.port)
    db = sr.Database(url, pooler="transaction", pool=PoolSettings(size=50, max_overflow=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PoolerWarning)
        async with db:
            report = db.pooler_report
            assert report is not None and report.transaction_pooling and report.safe
            history, _ = await run_bank(db.engine, seconds=2.0, workers=50, retry=db.retry)
            assert db.snapshot()["pooler"]["transaction_pooling"] is True
    verdict = check(pg_server, pg_database, history, [])
    assert history.errors == {}
    assert verdict.lost == 0 and verdict.ledger_consistent
    # Without the option the start-up check warns.
    with pytest.warns(PoolerWarning, match="pooler_safe_options"):
        async with sr.Database(url) as unsafe:
            assert unsafe.pooler_report is not None and not unsafe.pooler_report.safe


async def test_password_provider(pg_server: PgServer, pg_database: str) -> None:
    from psycopg import sql

    role, password = "facade_rotating", "pw-" + secrets.token_hex(8)
    with pg_server.admin() as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(pg_database), sql.Identifier(role)
            )
        )
    asked = 0

    async def provider() -> Credential:
        nonlocal asked
        asked += 1
        return Credential(password, expires_at=10**10)

    url = pg_server.app_url(pg_database, driver="asyncpg", username=role).set(password=None)
    async with sr.Database(url, password_provider=provider) as db:
        assert await db.fetch_value("SELECT current_user") == role
        everything = json.dumps([db.snapshot(), (await db.health()).to_dict(), repr(db)])
    assert asked >= 1
    assert password not in everything


@pytest.fixture(scope="module")
def primary_and_replica() -> Iterator[tuple[PgServer, PgServer]]:
    primary = PgServer.start_embedded()
    primary.setup_roles()
    primary.create_database("facade")
    primary.execute("CREATE TABLE notes (id uuid PRIMARY KEY)", database="facade")
    primary.execute("GRANT ALL ON notes TO app", database="facade")
    standby = primary.require_owned().start_standby()
    replica = PgServer(standby.url(driver="psycopg"), standby)
    replica.app_password = primary.app_password
    try:
        yield primary, replica
    finally:
        replica.close()
        primary.close()


@pytest.mark.postgresql
async def test_replicas(primary_and_replica: tuple[PgServer, PgServer]) -> None:
    primary, replica = primary_and_replica
    db = sr.Database(_url(primary, "facade"), replicas=[_url(replica, "facade")], max_replica_lag=5)
    async with db:
        for _ in range(5):
            await db.fetch_value("SELECT count(*) FROM notes")  # replica
        key = uuid.uuid4()

        async def write_then_read(session: AsyncSession) -> int:
            await session.execute(text("INSERT INTO notes (id) VALUES (:k)"), {"k": key})
            found = await session.scalar(
                text("SELECT count(*) FROM notes WHERE id = :k"), {"k": key}
            )
            return int(found or 0)

        assert await db.run_transaction(write_then_read) == 1  # primary, read-your-writes
        routed = db.snapshot()["replicas"]["routed"]
        replica_name = db.replicas.status()[0].name
        assert routed[replica_name] == 5 and routed["primary"] == 1
        assert (await db.health()).status == "healthy"
        # The replica down: out of rotation, reads go to the primary, health says so.
        replica.require_owned().stop(mode="immediate")
        try:
            for _ in range(3):
                assert await db.fetch_value("SELECT count(*) FROM notes") >= 1
            await until(lambda: not db.replicas.status()[0].eligible, what="out of rotation")
            report = await db.health()
            assert report.status == "degraded"
            assert any("out of rotation" in w for w in report.warnings)
        finally:
            replica.require_owned().start()
