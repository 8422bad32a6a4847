"""docs/transactions.md's examples as a program: timeouts, savepoints, on_commit, SQLite settings.

Run it::

    python examples/transactions_tour.py          # SQLite through aiosqlite, no server
    DATABASE_URL=postgresql+asyncpg://app:pw@localhost/app python examples/transactions_tour.py

The first example sets a statement timeout, which SQLite does not have: it
runs on PostgreSQL only; the SQLite settings run on SQLite only.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from sqlalchemy import ForeignKey, String, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqlalchemy_resilience import UniqueViolation


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "tx_tour_accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    balance: Mapped[int]


class Order(Base):
    __tablename__ = "tx_tour_orders"
    id: Mapped[int] = mapped_column(primary_key=True)


class CouponUse(Base):
    __tablename__ = "tx_tour_coupon_uses"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(20), unique=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("tx_tour_orders.id"))


sent: list[str] = []


async def notify(account_id: int) -> None:
    sent.append(f"account {account_id} notified")


def send_confirmation_email(order_id: int) -> None:
    sent.append(f"order {order_id} confirmed")


def publish_order_event() -> None:
    raise ConnectionError("the broker is down")  # robust=True: logged, the others still run


async def first_example(Session: async_sessionmaker[AsyncSession]) -> None:
    # [overview]
    from datetime import timedelta
    from functools import partial

    from sqlalchemy_resilience import on_commit, transaction

    async with transaction(
        Session,
        isolation_level="SERIALIZABLE",
        statement_timeout=5,
        lock_timeout=timedelta(seconds=1),
    ) as session:
        account = await session.get(Account, 1, with_for_update=True)
        account.balance -= 10
        on_commit(partial(notify, account.id))  # after COMMIT, never after a rollback
    # [/overview]


async def main(url: str) -> None:
    from functools import partial

    from sqlalchemy_resilience import instrument, on_commit, transaction

    engine = create_async_engine(url)
    instr = instrument(engine)  # driver errors arrive as the package's typed errors
    Session = async_sessionmaker(engine, expire_on_commit=False)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(Account.__table__.insert().values(id=1, balance=100))
        await conn.execute(Order.__table__.insert().values(id=1))
        await conn.execute(CouponUse.__table__.insert().values(code="WELCOME", order_id=1))
    try:
        if engine.dialect.name == "postgresql":
            await first_example(Session)
        order, order_id = Order(id=2), 3
        async with Session() as session:
            coupon_use = CouponUse(code="WELCOME", order_id=2)
            # [savepoint]
            async with transaction(session):
                session.add(order)
                try:
                    async with transaction(session):  # SAVEPOINT
                        session.add(coupon_use)
                        await session.flush()  # UniqueViolation: coupon already used
                except UniqueViolation:
                    pass  # ROLLBACK TO SAVEPOINT; the order stays
            # [/savepoint]
            # [on-commit]
            async with transaction(session):
                session.add(Order(id=order_id))
                on_commit(partial(send_confirmation_email, order_id))
                on_commit(publish_order_event, robust=True)
            # [/on-commit]
            orders = await session.scalar(select(func.count()).select_from(Order))
            uses = await session.scalar(select(func.count()).select_from(CouponUse))
        print("orders", orders, "coupon uses", uses, "|", "; ".join(sent))
        if engine.dialect.name == "sqlite":
            await sqlite_settings(url)
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
        instr.detach()
        await engine.dispose()


async def sqlite_settings(url: str) -> None:
    # [sqlite]
    from sqlalchemy_resilience import instrument
    from sqlalchemy_resilience.transactions import SQLiteSettings

    engine = create_async_engine(url)
    instrument(engine, sqlite=SQLiteSettings(synchronous="normal", foreign_keys=True))
    # [/sqlite]
    async with engine.connect() as conn:
        mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar()
        keys = (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar()
    print("sqlite:", mode, "foreign_keys", keys)
    await engine.dispose()


if __name__ == "__main__":
    default = f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp()) / 'transactions.db'}"
    asyncio.run(main(os.environ.get("DATABASE_URL", default)))
