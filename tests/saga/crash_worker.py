"""One app instance for test_saga_crash: recover, then run sagas s000..sNNN (killed at random by the test).

``python -m tests.saga.crash_worker APP_URL EXTERNAL_DB COUNT WAIT_FIRST``

Runs 8 sagas at a time, as a server would; waits WAIT_FIRST seconds (for a
killed instance's leases to run out) before recovering.

Two saga definitions share the steps: ``order3`` (reserve, charge, ship) and
``order4`` (the same plus confirm, which rejects every fourth order, so those
compensate). ``reserve``/``ship``/``confirm`` write to the app database and a
``shop_step_log`` row in the same transaction; ``charge`` calls a simulated
payment service (a SQLite file) that records every call and applies each
idempotency key once. Prints one JSON line per recovery and a final summary.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import sys
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from sqlalchemy_resilience import (
    RetryPolicy,
    Saga,
    SagaCompensated,
    SagaInProgress,
    SagaLeaseLost,
    instrument,
)
from sqlalchemy_resilience.saga import SagaContext, recover_sagas

LEASE = 1.0


class Payments:
    """The external system: a SQLite file of its own, deduplicating by idempotency key."""

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, timeout=60, isolation_level=None)

    def call(self, ctx: SagaContext) -> dict[str, Any]:
        key = ctx.idempotency_key
        self.db.execute("BEGIN IMMEDIATE")
        self.db.execute("INSERT INTO calls (key) VALUES (?)", (key,))
        self.db.execute("INSERT OR IGNORE INTO effects (key) VALUES (?)", (key,))
        self.db.execute("COMMIT")
        return {"payment": key}


async def _pause() -> None:
    await asyncio.sleep(random.uniform(0, 0.004))  # widen the windows a kill can land in


def build(payments: Payments) -> tuple[Saga, Saga]:
    async def log(ctx: SagaContext, kind: str) -> None:
        await ctx.session.execute(
            text("INSERT INTO shop_step_log (saga_id, step, kind) VALUES (:s, :t, :k)"),
            {"s": ctx.saga_id, "t": ctx.step, "k": kind},
        )

    async def reserve(ctx: SagaContext) -> str:
        await ctx.session.execute(
            text("INSERT INTO shop_orders (saga_id) VALUES (:s)"), {"s": ctx.saga_id}
        )
        await log(ctx, "do")
        await _pause()
        return "reserved"

    async def release(ctx: SagaContext) -> None:
        await ctx.session.execute(
            text("DELETE FROM shop_orders WHERE saga_id = :s"), {"s": ctx.saga_id}
        )
        await log(ctx, "undo")

    async def charge(ctx: SagaContext) -> dict[str, Any]:
        await _pause()
        result = payments.call(ctx)
        await _pause()
        return result

    async def refund(ctx: SagaContext) -> None:
        await _pause()
        payments.call(ctx)

    async def ship(ctx: SagaContext) -> str:
        await ctx.session.execute(
            text("INSERT INTO shop_shipments (saga_id) VALUES (:s)"), {"s": ctx.saga_id}
        )
        await log(ctx, "do")
        await _pause()
        return "shipped"

    async def unship(ctx: SagaContext) -> None:
        await ctx.session.execute(
            text("DELETE FROM shop_shipments WHERE saga_id = :s"), {"s": ctx.saga_id}
        )
        await log(ctx, "undo")

    async def confirm(ctx: SagaContext) -> str:
        if ctx.data["i"] % 4 == 0:
            raise ValueError("order rejected")
        await log(ctx, "do")
        return "confirmed"

    retry = RetryPolicy(attempts=5, initial_backoff=0.01, max_backoff=0.2)
    base = (
        Saga("order3", retry=retry, lease=LEASE)
        .step("reserve", reserve, compensate=release)
        .step("charge", charge, compensate=refund, external=True)
        .step("ship", ship, compensate=unship)
    )
    order4 = Saga("order4", retry=retry, lease=LEASE)
    for step in base.steps:
        order4 = order4.step(
            step.name, step.action, compensate=step.compensation, external=step.external
        )
    return base, order4.step("confirm", confirm)


CONCURRENCY = 8


async def main(url: str, external: str, count: int, wait_first: float) -> None:
    sqlite = url.startswith("sqlite")
    engine = create_async_engine(url, connect_args={"timeout": 60} if sqlite else {})
    instrument(engine)
    Session = async_sessionmaker(engine)
    payments = Payments(external)
    order3, order4 = build(payments)
    if wait_first:
        await asyncio.sleep(wait_first)  # let the killed instance's leases run out
    report = await recover_sagas(Session, [order3, order4])
    print(json.dumps({"recovered": report.recovered, "errors": report.errors}), flush=True)
    done = 0
    lost = [0]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def run_one(i: int) -> None:
        saga = order4 if i % 2 == 0 else order3
        while True:
            try:
                await saga.execute({"i": i}, saga_id=f"s{i:03d}", sessionmaker=Session)
            except SagaCompensated:
                pass
            except SagaInProgress as busy:
                # A client honouring retry_after, as told.
                await asyncio.sleep(busy.retry_after + 0.05)
                continue
            except SagaLeaseLost:
                # Too slow for the lease (a loaded machine): the other instance
                # took it over; starting it again returns its outcome.
                lost[0] += 1
                await asyncio.sleep(0.05)  # a client's pause before trying again (not a wait)
                continue
            return

    async def task() -> None:
        nonlocal done
        while not queue.empty():
            await run_one(queue.get_nowait())
            done += 1

    # Several sagas in flight at once, as in a server: a kill interrupts several.
    await asyncio.gather(*(task() for _ in range(CONCURRENCY)))
    print(json.dumps({"done": done, "lease_lost": lost[0]}), flush=True)
    await engine.dispose()
    payments.db.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
