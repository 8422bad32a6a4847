"""docs/deployments.md's examples as a program: a pooler, a rotating password, failover pings, replicas.

It needs PostgreSQL, and takes its servers from the environment::

    PGBOUNCER_URL=postgresql+asyncpg://app:pw@127.0.0.1:6432/app \\
    PRIMARY_URL=postgresql+asyncpg://app@127.0.0.1:5432/app \\
    DB_PASSWORD_FILE=/run/secrets/db-password \\
    REPLICA_URLS=postgresql+asyncpg://app:pw@127.0.0.1:5433/app,... \\
    python examples/deploy_tour.py

``PRIMARY_URL`` has no password: it comes from the file, read again whenever
the one in hand has expired (what Vault Agent or a Kubernetes secret keeps
current). Each section prints one line.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine


async def pooler() -> None:
    # [pooler]
    from sqlalchemy.ext.asyncio import create_async_engine

    from sqlalchemy_resilience import instrument
    from sqlalchemy_resilience.deploy import check_pooler, pooler_safe_options

    url = os.environ["PGBOUNCER_URL"]  # postgresql+asyncpg://app@pgbouncer:6432/app
    engine = create_async_engine(url, **pooler_safe_options(url), pool_size=20)
    instrument(engine)
    report = await check_pooler(engine)  # at start-up: warns if the engine does not fit the pooler
    # [/pooler]
    print("pooler: transaction pooling", report.transaction_pooling, "safe", report.safe)
    await engine.dispose()


async def rotating_password() -> None:
    # [password]
    import time
    from pathlib import Path

    from sqlalchemy_resilience import instrument
    from sqlalchemy_resilience.deploy import Credential, use_password_provider

    secret = Path(os.environ["DB_PASSWORD_FILE"])  # kept current by Vault Agent, Kubernetes...

    def current_password() -> Credential:
        return Credential(secret.read_text().strip(), expires_at=time.time() + 60)

    engine = create_async_engine(os.environ["PRIMARY_URL"])  # no password in the URL
    instrument(engine)
    use_password_provider(engine, current_password)
    # [/password]
    async with engine.connect() as conn:
        user = (await conn.execute(text("SELECT current_user"))).scalar_one()
    print("password: connected as", user, "with the password from the file")
    await engine.dispose()


def primary_engine() -> AsyncEngine:
    """The primary, its password read from the file (as in rotating_password)."""
    from sqlalchemy_resilience.deploy import use_password_provider

    engine = create_async_engine(os.environ["PRIMARY_URL"])
    secret = Path(os.environ["DB_PASSWORD_FILE"])
    use_password_provider(engine, lambda: secret.read_text().strip())
    return engine


async def failover_pings() -> None:
    engine = primary_engine()
    # [ping]
    from sqlalchemy_resilience.pool import ping_idle_connections

    writes = ping_idle_connections(engine, after=5, timeout=2, require_writer=True)
    # [/ping]
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    print("pings: writer check on, idle after", writes.after, "s")
    writes.detach()
    await engine.dispose()


async def work(session: AsyncSession) -> bool:
    """A read: whether it ran on a standby."""
    return bool((await session.execute(text("SELECT pg_is_in_recovery()"))).scalar_one())


async def replicas() -> None:
    from sqlalchemy_resilience import run_transaction
    from sqlalchemy_resilience.deploy import ReplicaSet, routing_sessionmaker

    primary = primary_engine()
    # [replicas]
    replicas = [create_async_engine(url) for url in os.environ["REPLICA_URLS"].split(",")]
    replica_set = ReplicaSet(primary, replicas, max_lag=2.0)
    Session = routing_sessionmaker(replica_set, expire_on_commit=False)

    async with replica_set:  # starts the background probe, stops it on exit
        await run_transaction(Session, work)
        # [/replicas]
        on_standby = [await run_transaction(Session, work) for _ in range(4)]
    print("replicas: reads on a standby", on_standby)
    for engine in (primary, *replicas):
        await engine.dispose()


async def main() -> None:
    await pooler()
    await rotating_password()
    await failover_pings()
    await replicas()


if __name__ == "__main__":
    asyncio.run(main())
