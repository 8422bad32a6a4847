"""docs/sagas.md's examples as a program: an order saga, its compensation, a redrive, recovery.

Run it::

    python examples/saga_tour.py                 # SQLite through aiosqlite, no server
    DATABASE_URL=postgresql+asyncpg://app:pw@localhost/app python examples/saga_tour.py

The payment service is a stand-in in this file that applies each idempotency
key once, as Stripe and most payment APIs do; everything else is real.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import String, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Stock(Base):
    __tablename__ = "saga_tour_stock"
    sku: Mapped[str] = mapped_column(String(20), primary_key=True)
    qty: Mapped[int]


class Shipment(Base):
    __tablename__ = "saga_tour_shipments"
    order_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    status: Mapped[str] = mapped_column(String(20))


class CardDeclined(Exception):
    """The payment service refused the charge (nothing was charged)."""


@dataclass
class Reply:
    id: str


@dataclass
class PaymentService:
    """A stand-in for an HTTP payment API: applies each idempotency key once."""

    charges: dict[str, int] = field(default_factory=dict)
    by_key: dict[str, str] = field(default_factory=dict)
    refunds_down: bool = False
    decline: bool = False

    async def charge(self, amount: int, *, idempotency_key: str) -> Reply:
        if self.decline:
            raise CardDeclined("card declined")
        if idempotency_key not in self.by_key:
            self.by_key[idempotency_key] = f"ch_{len(self.by_key) + 1}"
            self.charges[self.by_key[idempotency_key]] = amount
        return Reply(self.by_key[idempotency_key])

    async def refund(self, charge_id: str, *, idempotency_key: str) -> None:
        if self.refunds_down:
            raise ConnectionError("the payment service is unreachable")
        self.charges.pop(charge_id, None)


payments = PaymentService()
log = logging.getLogger("shop")
alerts: list[str] = []


def alert(message: str) -> None:
    alerts.append(message)


async def create_shipment(ctx: Any) -> None:
    ctx.session.add(Shipment(order_id=ctx.saga_id, status="booked"))
    if ctx.data.get("no_courier"):
        raise RuntimeError("no courier for this address")


async def cancel_shipment(ctx: Any) -> None:
    await ctx.session.execute(
        update(Shipment).where(Shipment.order_id == ctx.saga_id).values(status="cancelled")
    )


# [definition]
from sqlalchemy_resilience import Saga, SagaCompensated  # noqa: E402
from sqlalchemy_resilience.saga import SagaContext, recover_sagas  # noqa: E402


async def reserve_stock(ctx: SagaContext) -> dict[str, int]:
    await ctx.session.execute(
        update(Stock).where(Stock.sku == ctx.data["sku"]).values(qty=Stock.qty - ctx.data["qty"])
    )
    return {"reserved": ctx.data["qty"]}


async def release_stock(ctx: SagaContext) -> None:
    await ctx.session.execute(
        update(Stock)
        .where(Stock.sku == ctx.data["sku"])
        .values(qty=Stock.qty + ctx.result["reserved"])
    )


async def charge_card(ctx: SagaContext) -> dict[str, str]:
    reply = await payments.charge(ctx.data["amount"], idempotency_key=ctx.idempotency_key)
    return {"charge_id": reply.id}


async def refund_card(ctx: SagaContext) -> None:
    await payments.refund(ctx.result["charge_id"], idempotency_key=ctx.idempotency_key)


place_order = (
    Saga("place_order")
    .step("reserve", reserve_stock, compensate=release_stock)
    .step("charge", charge_card, compensate=refund_card, external=True)
    .step("ship", create_shipment, compensate=cancel_shipment)
)
# [/definition]


async def main(url: str) -> None:
    engine = create_async_engine(url)
    Session = async_sessionmaker(engine, expire_on_commit=False)
    # [tables]
    from sqlalchemy_resilience.schema import create_saga_tables

    async with engine.begin() as conn:
        await conn.run_sync(create_saga_tables)
    # [/tables]
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(Stock.__table__.insert().values(sku="A1", qty=10))

    async def stock() -> int:
        async with Session() as session:
            return int(await session.scalar(select(Stock.qty).where(Stock.sku == "A1")) or 0)

    try:
        order_id = 1
        # [execute]
        try:
            results = await place_order.execute(
                {"sku": "A1", "qty": 2, "amount": 1200},
                saga_id=f"order-{order_id}",
                sessionmaker=Session,
            )
        except SagaCompensated as exc:  # nothing is left behind
            log.warning("order %s undone after %s: %s", order_id, exc.failed_step, exc.error)
        # [/execute]
        print("order-1:", results["charge"], "stock", await stock())

        payments.decline = True
        try:
            await place_order.execute(
                {"sku": "A1", "qty": 3, "amount": 900}, saga_id="order-2", sessionmaker=Session
            )
        except SagaCompensated as exc:
            print(
                "order-2:",
                exc.failed_step,
                "failed; undone:",
                exc.compensated,
                "stock",
                await stock(),
            )
        payments.decline = False

        payments.refunds_down = True
        data, saga_id = {"sku": "A1", "qty": 1, "amount": 500, "no_courier": True}, "order-3"
        # [operator]
        from sqlalchemy_resilience import SagaCompensationFailed
        from sqlalchemy_resilience.saga import get_saga

        try:
            await place_order.execute(data, saga_id=saga_id, sessionmaker=Session)
        except SagaCompensationFailed as group:
            alert(f"saga {group.saga_id}: undo failed for {sorted(group.compensation_failures)}")

        record = await get_saga(Session, saga_id)  # what an operator sees
        print(record.status)
        for step in record.to_dict()["steps"]:  # statuses, errors, attempts
            print(" ", step["step"], step["status"], step["attempts"], step["error"] or "")
        # [/operator]
        payments.refunds_down = False  # the payment service is back
        try:
            # [redrive]
            await place_order.redrive(saga_id, sessionmaker=Session)  # after fixing the cause
            # [/redrive]
        except SagaCompensated:
            record = await get_saga(Session, saga_id)
            print("order-3:", alerts[0], "| after redrive:", record.status, "stock", await stock())
        print("charges left:", sorted(payments.charges.values()))
        # [recover]
        # at start-up, and then every minute or so:
        report = await recover_sagas(Session, [place_order])
        # [/recover]
        print("recovered:", report.recovered)
    finally:
        from sqlalchemy_resilience.schema import saga_steps, sagas

        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
            await conn.run_sync(lambda sync: saga_steps.drop(sync, checkfirst=True))
            await conn.run_sync(lambda sync: sagas.drop(sync, checkfirst=True))
        await engine.dispose()


if __name__ == "__main__":
    default = f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp()) / 'sagas.db'}"
    asyncio.run(main(os.environ.get("DATABASE_URL", default)))
