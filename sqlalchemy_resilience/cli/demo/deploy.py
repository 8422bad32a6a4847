"""The deployments part of ``sqlalchemy-resilience demo``: what production set-ups need.

On any database: a query budget catching an N+1 with its call site, and the
idle-connection ping (a connection used a moment ago is not pinged, an idle
one is). On the embedded PostgreSQL, also: a streaming replica started next to
it and a ``Database`` with ``replicas=`` routing reads there while a unit of
work that writes reads its own write from the primary; and a role whose
password rotates, supplied by a password provider, with no failure seen.
"""

from __future__ import annotations

import asyncio
import secrets
import textwrap
import time
from collections.abc import Callable
from typing import TextIO, TypeVar

from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    insert,
    select,
    text,
)
from sqlalchemy.engine import URL, Connection, Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from sqlalchemy_resilience.database import Database
from sqlalchemy_resilience.deploy import Credential
from sqlalchemy_resilience.pool import ping_idle_connections
from sqlalchemy_resilience.testing.budget import QueryBudgetExceeded, assert_max_queries
from sqlalchemy_resilience.testing.embedded import EmbeddedPostgres

__all__ = ["deployment_tour"]

T = TypeVar("T")

_metadata = MetaData()
_authors = Table(
    "sr_demo_authors",
    _metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(40)),
)
_books = Table(
    "sr_demo_books",
    _metadata,
    Column("id", Integer, primary_key=True),
    Column("author_id", Integer, ForeignKey("sr_demo_authors.id"), nullable=False),
    Column("title", String(80)),
)


def _titles_one_by_one(conn: Connection) -> int:
    authors = conn.execute(select(_authors.c.id)).all()
    # The N+1: one query per author.
    return sum(
        len(conn.execute(select(_books.c.title).where(_books.c.author_id == a.id)).all())
        for a in authors
    )


def _titles_joined(conn: Connection) -> int:
    return len(conn.execute(select(_books.c.title).join(_authors)).all())


def _fill(conn: Connection) -> None:
    _metadata.drop_all(conn)
    _metadata.create_all(conn)
    conn.execute(insert(_authors), [{"id": i, "name": f"author {i}"} for i in range(1, 6)])
    conn.execute(
        insert(_books),
        [{"author_id": i, "title": f"book {i}.{j}"} for i in range(1, 6) for j in (1, 2)],
    )


async def _run(
    engine: AsyncEngine | Engine, fn: Callable[[Connection], T], *, commit: bool = False
) -> T:
    if isinstance(engine, AsyncEngine):
        async with engine.connect() as conn:
            result = await conn.run_sync(fn)
            if commit:
                await conn.commit()
            return result
    with engine.connect() as sync_conn:
        result = fn(sync_conn)
        if commit:
            sync_conn.commit()
        return result


async def _budget_part(engine: AsyncEngine | Engine, out: TextIO) -> bool:
    await _run(engine, _fill, commit=True)
    print("\n  assert_max_queries(engine, 2, max_repeats=1) around an N+1 loop:", file=out)
    caught = False
    try:
        with assert_max_queries(engine, 2, max_repeats=1):
            await _run(engine, _titles_one_by_one)
    except QueryBudgetExceeded as exc:
        caught = True
        # Wrapped, not cut: the advice and the statement are the point.
        for line in str(exc).splitlines()[:2]:
            wrapped = textwrap.wrap(
                line, 96, initial_indent="    ", subsequent_indent="      ", max_lines=4
            )
            print("\n".join(wrapped), file=out)
    with assert_max_queries(engine, 2, max_repeats=1) as counter:
        found = await _run(engine, _titles_joined)
    print(
        f"  the same with a join: {len(counter)} statement, {found} titles: within budget",
        file=out,
    )
    await _run(engine, _metadata.drop_all, commit=True)
    return caught and found == 10


async def _liveness_part(engine: AsyncEngine | Engine, out: TextIO) -> bool:
    ping = ping_idle_connections(engine, after=0.3, timeout=2)

    def one(conn: Connection) -> None:
        conn.execute(text("SELECT 1"))

    try:
        for _ in range(3):
            await _run(engine, one)
        busy = ping.pinged
        await asyncio.sleep(0.4)
        await _run(engine, one)
    finally:
        ping.detach()
    print(
        f"\n  ping_idle_connections(after=0.3 s): 3 back-to-back checkouts, {busy} pings; "
        f"after 0.4 s idle, {ping.pinged - busy} ping ({ping.dead} dead)",
        file=out,
    )
    return busy == 0 and ping.pinged == 1 and ping.dead == 0


async def _replica_part(server: EmbeddedPostgres, url: URL, out: TextIO) -> bool:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DROP TABLE IF EXISTS sr_demo_notes"))
            await conn.execute(text("CREATE TABLE sr_demo_notes (id int PRIMARY KEY, body text)"))
    finally:
        await engine.dispose()
    started = time.monotonic()
    standby = server.start_standby()
    try:
        print(
            f"\n  a streaming replica started beside it (pg_basebackup, port {standby.port}, "
            f"{time.monotonic() - started:.1f} s)",
            file=out,
        )
        replica_url = url.set(port=standby.port)
        db = Database(url, replicas=[replica_url], max_replica_lag=5, name="demo")
        async with db:
            await db.fetch_value("SELECT count(*) FROM sr_demo_notes")
            await db.fetch_value("SELECT count(*) FROM sr_demo_notes")

            async def write_then_read(session: AsyncSession) -> int:
                await session.execute(text("INSERT INTO sr_demo_notes VALUES (1, 'hello')"))
                seen = await session.scalar(text("SELECT count(*) FROM sr_demo_notes"))
                return int(seen or 0)

            seen = await db.run_transaction(write_then_read)
            routed = db.snapshot()["replicas"]["routed"]
        replica_reads = sum(n for name, n in routed.items() if name != "primary")
        print(
            f"  Database(replicas=[...]): 2 reads went to the replica ({replica_reads}); a unit "
            f"that wrote read its own row from the primary (count {seen}); routed {routed}",
            file=out,
        )
        return replica_reads == 2 and seen == 1
    finally:
        standby.stop(cleanup=True)


async def _set_password(url: URL, role: str, password: str) -> None:
    """CREATE or ALTER the role (as the demo's superuser): the name quoted and the
    password rendered as a literal by SQLAlchemy (DDL takes no parameters)."""
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            exists = await conn.scalar(
                text("SELECT count(*) FROM pg_roles WHERE rolname = :r"), {"r": role}
            )
            quoted = conn.dialect.identifier_preparer.quote_identifier(role)
            verb = "ALTER" if exists else "CREATE"
            statement = text(f"{verb} ROLE {quoted} LOGIN PASSWORD :p").bindparams(
                bindparam("p", type_=String(), literal_execute=True)
            )
            await conn.execute(statement, {"p": password})
    finally:
        await engine.dispose()


async def _password_part(url: URL, out: TextIO) -> bool:
    role = "sr_demo_rotating"
    current = {"password": "first-" + secrets.token_hex(6)}
    asked = 0

    async def provider() -> Credential:
        nonlocal asked
        asked += 1
        return Credential(current["password"], expires_at=time.time() + 900)

    failures = 0
    await _set_password(url, role, current["password"])
    db = Database(
        url.set(username=role, password=None),
        password_provider=provider,
        name="rotating",
        poolclass=NullPool,  # a new connection per request: the worst case
    )
    async with db:
        for round_ in range(3):
            if round_:
                current["password"] = f"rotated{round_}-" + secrets.token_hex(6)
                await _set_password(url, role, current["password"])
            try:
                if await db.fetch_value("SELECT current_user") != role:
                    failures += 1
            except Exception:
                failures += 1
    print(
        f"\n  password_provider: the role's password rotated twice; 3 connections, "
        f"{failures} failures, the provider asked {asked} times",
        file=out,
    )
    return failures == 0


def deployment_tour(url: URL, out: TextIO, server: EmbeddedPostgres | None = None) -> bool:
    """Run the deployments part; True when every step showed what it should.

    Example::

        deployment_tour(make_url("sqlite+aiosqlite:///demo.db"), sys.stdout)
    """
    extra = ", a read replica, rotating credentials" if server is not None else ""
    print(f"\nDeployments: a query budget, cheap liveness{extra}", file=out)

    async def tour() -> bool:
        engine: AsyncEngine | Engine = (
            create_async_engine(url) if url.get_dialect().is_async else create_engine(url)
        )
        try:
            ok = await _budget_part(engine, out)
            ok = await _liveness_part(engine, out) and ok
        finally:
            if isinstance(engine, AsyncEngine):
                await engine.dispose()
            else:
                engine.dispose()
        if server is not None and url.get_dialect().is_async:
            ok = await _replica_part(server, url, out) and ok
            ok = await _password_part(url, out) and ok
        return ok

    return asyncio.run(tour())
