"""The five steps of docs/getting-started.md as one program you can run.

Run it, from a clone of the repository (until the first release is on PyPI)::

    pip install ".[aiosqlite]"
    python examples/tutorial.py                      # SQLite in a temporary directory
    DATABASE_URL=postgresql+asyncpg://app:pw@localhost/app python examples/tutorial.py

Each step prints what it shows:

1. ``instrument(engine)`` on an engine the application already has;
2. a duplicate e-mail arrives as ``UniqueViolation`` (still an
   ``IntegrityError``) with an end-user message in English and Japanese;
3. a transfer under ``run_transaction`` with an idempotency key: the same
   request sent twice is applied once (``AlreadyApplied`` the second time);
4. the slow-query log, the statistics' top statements, the pool and health;
5. the same work through one ``Database`` object.

The tables it creates are dropped at the end.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import ForeignKey, String, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqlalchemy_resilience import (
    AlreadyApplied,
    CircuitBreaker,
    Database,
    UniqueViolation,
    health_check,
    instrument,
    run_transaction,
)
from sqlalchemy_resilience.pool import pool_stats
from sqlalchemy_resilience.schema import metadata as package_tables


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "tutorial_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)


class Account(Base):
    __tablename__ = "tutorial_accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("tutorial_users.id"))
    balance: Mapped[int]


# [typed-errors]
async def register(Session: async_sessionmaker[AsyncSession], email: str) -> dict[str, str]:
    """Step 2: the handler a web framework would call."""
    try:
        async with Session() as session, session.begin():
            session.add(User(email=email))
    except UniqueViolation as exc:  # still a sqlalchemy.exc.IntegrityError
        return {
            "error": exc.user_message("en"),
            "error_ja": exc.user_message("ja"),
            "error_id": exc.error_id,
        }
    return {"status": "registered"}


# [/typed-errors]


# [unit-of-work]
def transfer_of(amount: int, source: int, target: int) -> Callable[[AsyncSession], Awaitable[int]]:
    """Step 3: a unit of work that may run more than once (no commit: run_transaction commits)."""

    async def transfer(session: AsyncSession) -> int:
        for account, delta in ((source, -amount), (target, amount)):
            await session.execute(
                update(Account).where(Account.id == account).values(balance=Account.balance + delta)
            )
        total = await session.scalar(select(func.sum(Account.balance)))
        return int(total or 0)

    return transfer


# [/unit-of-work]


# A statement well over the 0.25 s threshold: on SQLite, counting to six million
# (about 1 s on a 2-core VM; SQLite has no sleep), on PostgreSQL a 0.3 s sleep.
_SLOW = {
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c"
    " WHERE x < 6000000) SELECT count(*) FROM c",
    "postgresql": "SELECT pg_sleep(0.3)",
}


async def main(url: str) -> int:
    # 1. Plug it into the engine you have: nothing else about the engine changes.
    # [plug-in]
    engine = create_async_engine(url)
    instr = instrument(engine, slow_query_threshold=0.25)
    stats = instr.stats
    assert stats is not None  # statistics are on by default (query_stats=True)
    Session = async_sessionmaker(engine, expire_on_commit=False)
    # [/plug-in]
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.run_sync(package_tables.create_all)  # the idempotency keys' table
    print(f"1. instrumented {engine.url.render_as_string(hide_password=True)}")

    try:
        stats.reset()  # the statistics of the work, not of the DDL above

        # 2. Errors become typed and safe to show.
        print("2. first registration:", await register(Session, "ann@example.com"))
        answer = await register(Session, "ann@example.com")
        print(f"   the same e-mail again: {answer['error']} / {answer['error_ja']}")

        # 3. Units of work that survive failures, applied once per request id.
        async with Session() as session, session.begin():
            owner = await session.scalar(select(User.id))
            session.add_all(
                [
                    Account(id=1, owner_id=owner, balance=100),
                    Account(id=2, owner_id=owner, balance=0),
                ]
            )
        # [run-transaction]
        breaker = CircuitBreaker(name="tutorial")
        request_id = str(uuid.uuid4())
        work = transfer_of(30, 1, 2)
        total = await run_transaction(Session, work, breaker=breaker, idempotency_key=request_id)
        try:  # the client did not hear back and sent the same request again
            await run_transaction(Session, work, breaker=breaker, idempotency_key=request_id)
        except AlreadyApplied:
            again = "AlreadyApplied, nothing changed"
        # [/run-transaction]
        else:
            print("   the same request was applied twice")
            return 1
        async with Session() as session:
            balances = (await session.scalars(select(Account.balance).order_by(Account.id))).all()
        print(
            f"3. transfer applied (total still {total}); sent again: {again}; balances {balances}"
        )

        # 4. See what the database is doing.
        # Logged on sqlalchemy_resilience.slow_query with this line as its call site.
        # [observe]
        slow = _SLOW.get(engine.dialect.name, _SLOW["postgresql"])
        async with engine.connect() as conn:
            await conn.execute(text(slow))
        print("4. top statements by total time:")
        for entry in stats.top(3, by="total"):
            print(
                f"     {entry.calls:>3} calls {entry.total * 1000:8.1f} ms  {entry.statement[:60]}"
            )
        pool = pool_stats(engine)
        print(f"   pool: {pool['connections_in_use']} in use, {pool['connections_idle']} idle")
        report = await health_check(engine, timeout=1, monitor=instr.pool)
        print(f"   health: {report.status}")
        # [/observe]
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
        await engine.dispose()

    # 5. Or let one object hold it all.
    # [database]
    async with Database(url, name="tutorial") as db:
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        try:
            await db.execute(insert(User).values(email="bo@example.com"))
            emails = await db.fetch_all(select(User.email))
            print(
                f"5. Database: {[row.email for row in emails]}, health {(await db.health()).status}"
            )
        finally:
            async with db.engine.begin() as conn:
                await conn.run_sync(Base.metadata.drop_all)
    # [/database]
    return 0


if __name__ == "__main__":
    # The package's records (the slow-query log) in line with the steps' output.
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stdout, format="   log: %(name)s: %(message)s"
    )
    default = f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp()) / 'tutorial.db'}"
    sys.exit(asyncio.run(main(os.environ.get("DATABASE_URL", default))))
