"""The saga part of ``sqlalchemy-resilience demo``: a saga that compensates, a crash and its recovery.

``place_order`` reserves stock (a row in the demo's database), charges a
simulated payment API (a SQLite file of its own that applies each
idempotency key once) and ships (another row). First it runs with shipping
failing: the charge is refunded and the stock released, in reverse. Then a
child process runs an order and dies (``os._exit``) right after the payment
API applied the charge, before the saga log knew; ``recover_sagas`` finishes
it, calling the API again with the same key -- applied once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Column, MetaData, String, Table, create_engine, delete, func, insert, select
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker

from sqlalchemy_resilience.instrumentation import instrument
from sqlalchemy_resilience.saga import (
    Saga,
    SagaCompensated,
    SagaContext,
    get_saga,
    get_saga_sync,
    recover_sagas,
    recover_sagas_sync,
)
from sqlalchemy_resilience.schema import create_saga_tables, saga_steps, sagas

__all__ = ["saga_tour"]

LEASE = 1.0
_CRASH_ENV = "SQLALCHEMY_RESILIENCE_DEMO_CRASH"
_URL_ENV = "SQLALCHEMY_RESILIENCE_DEMO_URL"  # not argv: a password there is visible to ps

_metadata = MetaData()
_stock = Table("sr_demo_reserved", _metadata, Column("order_id", String(100), primary_key=True))
_shipments = Table(
    "sr_demo_shipments", _metadata, Column("order_id", String(100), primary_key=True)
)


class Payments:
    """The simulated payment API: every call is recorded, each idempotency key applied once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT NOT NULL)")
            db.execute("CREATE TABLE IF NOT EXISTS applied (key TEXT PRIMARY KEY)")

    def charge(self, key: str) -> str:
        with contextlib.closing(sqlite3.connect(self.path, timeout=30)) as db, db:
            db.execute("INSERT INTO calls (key) VALUES (?)", (key,))
            db.execute("INSERT OR IGNORE INTO applied (key) VALUES (?)", (key,))
        return f"pay-{abs(hash(key)) % 100000:05d}"

    def counts(self, key: str) -> tuple[int, int]:
        with contextlib.closing(sqlite3.connect(self.path)) as db:
            calls = db.execute("SELECT count(*) FROM calls WHERE key = ?", (key,)).fetchone()[0]
            applied = db.execute("SELECT count(*) FROM applied WHERE key = ?", (key,)).fetchone()[0]
        return int(calls), int(applied)


def build(payments: Payments, *, is_async: bool, crash: bool = False) -> Saga:
    """``place_order`` with async or plain step functions (for ``execute`` / ``execute_sync``)."""

    def charge(ctx: SagaContext) -> dict[str, str]:
        payment = payments.charge(ctx.idempotency_key)
        if crash:
            os._exit(137)  # the process dies: no cleanup, the saga log never hears back
        return {"payment": payment}

    def refund(ctx: SagaContext) -> None:
        payments.charge(ctx.idempotency_key)

    def fail_if_asked(ctx: SagaContext) -> None:
        if ctx.data.get("courier") is None:
            raise RuntimeError("no courier available")

    if is_async:

        async def reserve(ctx: SagaContext) -> str:
            await ctx.session.execute(insert(_stock).values(order_id=ctx.saga_id))
            return "reserved"

        async def release(ctx: SagaContext) -> None:
            await ctx.session.execute(delete(_stock).where(_stock.c.order_id == ctx.saga_id))

        async def ship(ctx: SagaContext) -> str:
            fail_if_asked(ctx)
            await ctx.session.execute(insert(_shipments).values(order_id=ctx.saga_id))
            return str(ctx.data["courier"])

        steps: tuple[Any, ...] = (reserve, release, ship)
    else:

        def reserve_sync(ctx: SagaContext) -> str:
            ctx.session.execute(insert(_stock).values(order_id=ctx.saga_id))
            return "reserved"

        def release_sync(ctx: SagaContext) -> None:
            ctx.session.execute(delete(_stock).where(_stock.c.order_id == ctx.saga_id))

        def ship_sync(ctx: SagaContext) -> str:
            fail_if_asked(ctx)
            ctx.session.execute(insert(_shipments).values(order_id=ctx.saga_id))
            return str(ctx.data["courier"])

        steps = (reserve_sync, release_sync, ship_sync)
    reserve_fn, release_fn, ship_fn = steps
    return (
        Saga("place_order", lease=LEASE)
        .step("reserve", reserve_fn, compensate=release_fn)
        .step("charge", charge, compensate=refund, external=True)
        .step("ship", ship_fn)
    )


def _reset(conn: Any) -> None:
    _metadata.drop_all(conn)
    _metadata.create_all(conn)
    create_saga_tables(conn)
    conn.execute(delete(saga_steps).where(saga_steps.c.saga_id.like("demo-order-%")))
    conn.execute(delete(sagas).where(sagas.c.id.like("demo-order-%")))


def _child(url: str, payments_path: str) -> None:
    """The process that crashes: runs order ``demo-order-2`` and dies inside ``charge``."""
    parsed = make_url(url)
    payments = Payments(Path(payments_path))
    if parsed.get_dialect().is_async:
        engine = create_async_engine(parsed)
        saga = build(payments, is_async=True, crash=True)
        asyncio.run(
            saga.execute(
                {"courier": "kuroneko"},
                saga_id="demo-order-2",
                sessionmaker=async_sessionmaker(engine),
            )
        )
    else:
        saga = build(payments, is_async=False, crash=True)
        saga.execute_sync(
            {"courier": "kuroneko"},
            saga_id="demo-order-2",
            sessionmaker=sessionmaker(create_engine(parsed)),
        )


async def saga_tour(url: URL, out: TextIO) -> bool:
    """Run the saga part against ``url``; True when both stories ended as they should."""
    # The tour prints what happened itself; the saga log's warnings would repeat it.
    saga_logger = logging.getLogger("sqlalchemy_resilience.saga")
    propagate, quiet = saga_logger.propagate, logging.NullHandler()
    saga_logger.propagate = False
    saga_logger.addHandler(quiet)  # else logging's last-resort handler prints the warnings
    try:
        return await _tour(url, out)
    finally:
        saga_logger.removeHandler(quiet)
        saga_logger.propagate = propagate


async def _tour(url: URL, out: TextIO) -> bool:
    is_async = url.get_dialect().is_async
    print("\nsagas: one that compensates, and one whose process is killed mid-way", file=out)
    ok = True
    with tempfile.TemporaryDirectory(prefix="sr-demo-saga-") as tmp:
        payments = Payments(Path(tmp) / "payments.sqlite")
        engine: Any = create_async_engine(url) if is_async else create_engine(url)
        instrument(engine)
        try:
            if is_async:
                async with engine.begin() as conn:
                    await conn.run_sync(_reset)
                factory: Any = async_sessionmaker(engine)
            else:
                with engine.begin() as conn:
                    _reset(conn)
                factory = sessionmaker(engine)
            saga = build(payments, is_async=is_async)

            # 1. Shipping fails: the charge is refunded and the stock released, in reverse.
            try:
                if is_async:
                    await saga.execute(
                        {"courier": None}, saga_id="demo-order-1", sessionmaker=factory
                    )
                else:
                    # The sync API blocks and runs its own loop: off this one, in a thread.
                    await asyncio.to_thread(
                        partial(
                            saga.execute_sync,
                            {"courier": None},
                            saga_id="demo-order-1",
                            sessionmaker=factory,
                        )
                    )
                ok = False
                print("  demo-order-1: completed (unexpected)", file=out)
            except SagaCompensated as exc:
                print(
                    f"  demo-order-1: reserve, charge, then ship failed ({exc.error}); "
                    f"compensated {', '.join(exc.compensated)} -> {type(exc).__name__}",
                    file=out,
                )
            refund_calls, refunds = payments.counts("demo-order-1:charge:compensate")
            left = await _count_rows(engine, is_async, "demo-order-1")
            print(
                f"    payment refunded with key demo-order-1:charge:compensate ({refunds}x); "
                f"rows left behind: {left}",
                file=out,
            )
            ok = ok and refunds == 1 and left == 0 and refund_calls >= 1

            # 2. A process dies right after the payment API applied the charge.
            env = {
                **os.environ,
                _CRASH_ENV: "1",
                _URL_ENV: url.render_as_string(hide_password=False),
            }
            child = await asyncio.to_thread(_run_child, env, payments.path)
            record = (
                await get_saga(factory, "demo-order-2")
                if is_async
                else await asyncio.to_thread(get_saga_sync, factory, "demo-order-2")
            )
            where = (
                f"{record.status} at step {record.position} "
                f"(charge: {record.steps['charge'].status})"
                if record is not None and "charge" in record.steps
                else "missing"
            )
            print(
                f"  demo-order-2: the process running it died (exit {child.returncode}) after the "
                f"payment API applied the charge; saga log says {where}",
                file=out,
            )
            ok = (
                ok and child.returncode == 137 and record is not None and record.status == "running"
            )
            await asyncio.sleep(LEASE + 0.2)  # the dead owner's lease runs out
            report = (
                await recover_sagas(factory, [saga])
                if is_async
                else await asyncio.to_thread(recover_sagas_sync, factory, [saga])
            )
            calls, applied = payments.counts("demo-order-2:charge")
            shipped = await _count_rows(engine, is_async, "demo-order-2", _shipments)
            print(
                f"    after {LEASE:.0f} s recover_sagas completed {report.completed}; the payment API "
                f"got {calls} calls with key demo-order-2:charge and applied it {applied}x; "
                f"shipped: {shipped}",
                file=out,
            )
            ok = ok and report.completed == ["demo-order-2"] and applied == 1 and shipped == 1
        finally:
            if is_async:
                await engine.dispose()
            else:
                engine.dispose()
    return ok


def _run_child(env: dict[str, str], payments: Path) -> subprocess.CompletedProcess[str]:
    # This interpreter and this module; nothing from the command line or the user.
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "sqlalchemy_resilience.cli.demo.saga", str(payments)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def _count_rows(engine: Any, is_async: bool, order_id: str, table: Table = _stock) -> int:
    query = select(func.count()).select_from(table).where(table.c.order_id == order_id)
    if is_async:
        async with engine.connect() as conn:
            return int((await conn.execute(query)).scalar_one())
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


if __name__ == "__main__" and os.environ.get(_CRASH_ENV) == "1":  # pragma: no cover - a child
    _child(os.environ[_URL_ENV], sys.argv[1])
