"""docs/patterns.md as a program: each hand-written pattern beside the package's equivalent.

Run it::

    python examples/patterns.py                 # SQLite through aiosqlite, no server
    DATABASE_URL=postgresql+asyncpg://app:pw@localhost/app python examples/patterns.py

Each section prints one line; the "before" versions run too where they can,
so the page shows code that works, and the differences the page describes are
the ones a reader can see here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import ForeignKey, String, event, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqlalchemy_resilience import (
    CircuitBreaker,
    ConstraintViolation,
    Database,
    RetryPolicy,
    Saga,
    bulk_insert,
    instrument,
    paginate,
    run_transaction,
    transaction,
)
from sqlalchemy_resilience.pool import AsyncResizableQueuePool, PoolAutosizer, pool_stats
from sqlalchemy_resilience.saga import SagaContext, recover_sagas
from sqlalchemy_resilience.schema import metadata as package_tables

log = logging.getLogger("app")
CURSOR_KEY = "a-key-of-at-least-32-characters-for-the-cursors"


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "patterns_accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    balance: Mapped[int] = mapped_column(default=0)


class Event(Base):
    __tablename__ = "patterns_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("patterns_accounts.id"))
    kind: Mapped[str] = mapped_column(String(20))


async def work(session: AsyncSession) -> None:
    """The unit of work the retry sections run: may run more than once, never commits."""
    account = await session.get(Account, 1)
    assert account is not None
    account.balance += 1


# -- a pool wrapper with stats --------------------------------------------------------


async def pool_wrapper(url: str) -> None:
    engine = create_async_engine(url)

    # [pool-stats-before]
    class PoolManager:
        def __init__(self, engine: Any) -> None:
            self.engine = engine

        def stats(self) -> dict[str, int]:
            pool = self.engine.pool
            return {"size": pool.size(), "checked_out": pool.checkedout()}

    # [/pool-stats-before]
    before = PoolManager(engine.sync_engine).stats()
    # [pool-stats-after]
    instrument(engine)  # + db.client.connection.* OpenTelemetry metrics
    figures = pool_stats(engine)  # size, in use, idle, overflow, waiters, timeouts
    # [/pool-stats-after]
    print(
        "pool:", sorted(before), "->", len(figures), "figures, waiting", figures["requests_waiting"]
    )
    await engine.dispose()


# -- an adaptive pool resizer ---------------------------------------------------------


async def pool_resizer(url: str) -> None:
    engine = create_async_engine(url, poolclass=AsyncResizableQueuePool, pool_size=2)
    # [resizer-after]
    sizer = PoolAutosizer(engine, monitor=instrument(engine).pool, min_size=2, max_size=20)
    await sizer.start()
    # [/resizer-after]
    print("autosizer: running, pool size", engine.pool.size())
    sizer.detach()
    await engine.dispose()


# -- retries and a circuit breaker ----------------------------------------------------


async def retries(url: str, Session: async_sessionmaker[AsyncSession]) -> None:
    session = Session()
    # [retry-before]
    for attempt in range(5):
        try:
            async with session.begin():
                await work(session)
            break
        except OperationalError:
            await asyncio.sleep(2**attempt)
    # [/retry-before]
    await session.close()
    # [retry-after]
    await run_transaction(Session, work, retry=RetryPolicy(attempts=5))
    # [/retry-after]
    # [breaker-after]
    breaker = CircuitBreaker(failure_threshold=5, recovery_timeout=10)
    await run_transaction(Session, work, breaker=breaker)
    # [/breaker-after]
    async with Session() as check:
        account = await check.get(Account, 1)
        assert account is not None
        print("retry: balance", account.balance, "breaker", breaker.state.name.lower())


# -- a transaction context manager (PostgreSQL: SQLite has no statement timeout) ------


# [tx-before]
@asynccontextmanager
async def tx(session: AsyncSession, timeout_ms: int) -> AsyncIterator[AsyncSession]:
    async with session.begin():
        await session.execute(text(f"SET statement_timeout = {timeout_ms}"))
        yield session


# [/tx-before]


async def transactions(url: str, Session: async_sessionmaker[AsyncSession]) -> None:
    async with Session() as session:
        async with tx(session, 5000):
            pass
        # The hand-written SET outlived its transaction, on a pooled connection.
        leaked = (await session.execute(text("SHOW statement_timeout"))).scalar_one()
        await session.rollback()
    engine = create_async_engine(url)
    async with AsyncSession(engine) as session:
        # [tx-after]
        async with transaction(session, statement_timeout=5, lock_timeout=1) as s:
            inside = (await s.execute(text("SHOW statement_timeout"))).scalar_one()
        # [/tx-after]
        after = (await session.execute(text("SHOW statement_timeout"))).scalar_one()
        await session.rollback()
    await engine.dispose()
    print("transaction: by hand leaves", leaked, "| SET LOCAL:", inside, "then", after)


# -- a saga ---------------------------------------------------------------------------


async def reserve(ctx: SagaContext) -> dict[str, int]:
    return {"reserved": ctx.data["qty"]}


async def release(ctx: SagaContext) -> None:
    pass


async def charge(ctx: SagaContext) -> dict[str, str]:
    return {"charge_id": f"ch-{ctx.idempotency_key[:8]}"}


async def refund(ctx: SagaContext) -> None:
    pass


async def sagas(Session: async_sessionmaker[AsyncSession]) -> None:
    data, order_id = {"qty": 2}, "order-1"
    # [saga-after]
    order = (
        Saga("order")
        .step("reserve", reserve, compensate=release)
        .step("charge", charge, compensate=refund, external=True)
    )
    await order.execute(data, saga_id=order_id, sessionmaker=Session)
    await recover_sagas(Session, [order])  # at start-up
    # [/saga-after]
    print("saga: completed, nothing left to recover")


# -- a query monitor ------------------------------------------------------------------


async def query_monitor(url: str) -> None:
    by_hand = create_async_engine(url)
    engine = by_hand.sync_engine

    # [monitor-before]
    @event.listens_for(engine, "before_cursor_execute")
    def start(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        conn.info["t0"] = time.time()

    @event.listens_for(engine, "after_cursor_execute")
    def stop(conn, cursor, statement, *args):  # type: ignore[no-untyped-def]
        if time.time() - conn.info["t0"] > 1:
            log.warning("slow query: %s %s", statement, args)

    # [/monitor-before]
    async with by_hand.connect() as conn:
        await conn.execute(text("SELECT 1"))
    await by_hand.dispose()

    engine = create_async_engine(url)
    async with engine.connect() as conn:
        for _ in range(3):
            await conn.execute(select(Account.email).where(Account.id == 1))
    # [monitor-after]
    instr = instrument(engine, slow_query_threshold=1.0)
    instr.stats.top(5, by="p95")
    # [/monitor-after]
    async with engine.connect() as conn:
        for i in range(3):
            await conn.execute(select(Account.email).where(Account.id == i))
    top = instr.stats.top(5, by="p95")[0]
    print("monitor:", top.calls, "calls of", top.statement)
    instr.detach()
    await engine.dispose()


# -- a batch processor ----------------------------------------------------------------


def chunks(rows: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


async def batches(engine: AsyncEngine, Session: async_sessionmaker[AsyncSession]) -> None:
    rows = [{"id": i, "account_id": 1, "kind": "click"} for i in range(1, 2001)]
    async with Session() as session:
        # [batch-before]
        for chunk in chunks(rows, 1000):
            await session.execute(insert(Event), chunk)
        await session.commit()
        # [/batch-before]
    async with engine.begin() as conn:
        await conn.execute(Event.__table__.delete())
    # [batch-after]
    await bulk_insert(engine, Event, rows, chunk_size=5000, job="backfill-1")
    # [/batch-after]
    again = await bulk_insert(engine, Event, rows, chunk_size=5000, job="backfill-1")
    async with Session() as session:
        count = (await session.execute(select(func.count()).select_from(Event))).scalar_one()
    print("batch:", count, "rows; the finished job re-run wrote", again.rows)


# -- pagination -----------------------------------------------------------------------


async def pages(Session: async_sessionmaker[AsyncSession]) -> None:
    stmt = select(Event).order_by(Event.id)
    page_number, size = 2, 50
    async with Session() as session:
        # [page-before]
        stmt.offset((page_number - 1) * size).limit(size)
        # [/page-before]
        cursor = None
        # [page-after]
        page = await paginate(session, stmt, page_size=50, after=cursor, secret=CURSOR_KEY)
        # [/page-after]
        second = await paginate(
            session, stmt, page_size=50, after=page.next_cursor, secret=CURSOR_KEY
        )
    print("pages: second page starts at", second.items[0].id)


# -- a DB-error-to-message handler ----------------------------------------------------


async def create_account_by_hand(session: AsyncSession, email: str) -> dict[str, str]:
    # [errors-before]
    try:
        session.add(Account(email=email))
        await session.commit()
    except IntegrityError as exc:
        if "duplicate key" in str(exc):
            return {"error": "Already exists"}
        # [/errors-before]
        await session.rollback()
        return {"error": str(exc).splitlines()[0]}
    return {}


async def create_account(session: AsyncSession, email: str, locale: str) -> dict[str, str]:
    # [errors-after]
    try:
        session.add(Account(email=email))
        await session.commit()
    except ConstraintViolation as exc:  # still an IntegrityError
        return {"error": exc.user_message(locale), "error_id": exc.error_id}
    # [/errors-after]
    return {}


async def errors(engine: AsyncEngine, Session: async_sessionmaker[AsyncSession]) -> None:
    async with Session() as session:
        by_hand = await create_account_by_hand(session, "ada@example.com")
    instr = instrument(engine)
    async with Session() as session:
        translated = await create_account(session, "ada@example.com", "en")
    instr.detach()
    print("errors: by hand ->", by_hand["error"][:40], "| package ->", translated["error"])


# -- an all-in-one database manager ---------------------------------------------------


class MyBreaker:
    """Whatever the application wrote as its circuit breaker."""


# [manager-before]
class DatabaseManager:
    def __init__(self, url: str) -> None:
        self.engine = create_async_engine(url, pool_pre_ping=True)
        self.breaker = MyBreaker()

    async def execute(self, stmt: Any) -> Any: ...  # with a retry decorator
    async def health(self) -> bool: ...  # SELECT 1 without a timeout


# [/manager-before]


async def manager(url: str) -> None:
    await DatabaseManager(url).engine.dispose()
    stmt = update(Account).where(Account.id == 1).values(balance=Account.balance + 1)
    # [manager-after]
    async with Database(url) as db:
        await db.execute(stmt)
        await db.health()
        # [/manager-after]
        print("database: health", (await db.health()).status)


async def main(url: str) -> None:
    engine = create_async_engine(url)
    Session = async_sessionmaker(engine, expire_on_commit=False)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.run_sync(package_tables.create_all)
        await conn.execute(insert(Account).values(id=1, email="ada@example.com"))
    try:
        await pool_wrapper(url)
        await pool_resizer(url)
        await retries(url, Session)
        if engine.dialect.name == "postgresql":
            await transactions(url, Session)
        await sagas(Session)
        await query_monitor(url)
        await batches(engine, Session)
        await pages(Session)
        await errors(engine, Session)
        await manager(url)
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(package_tables.drop_all)
        await engine.dispose()


if __name__ == "__main__":
    default = f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp()) / 'patterns.db'}"
    asyncio.run(main(os.environ.get("DATABASE_URL", default)))
