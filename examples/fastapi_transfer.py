"""docs/retry.md's handlers as a FastAPI app that CI drives (SQLite by default).

Run it::

    pip install ".[aiosqlite]" fastapi uvicorn
    uvicorn examples.fastapi_transfer:app
    curl -X POST localhost:8000/transfer -H 'content-type: application/json' \\
        -d '{"src": 1, "dst": 2, "amount": 10}'

What it shows, each part included by docs/retry.md:

* ``/transfer/naive``: the handler as applications write it, one transaction
  that a deadlock, a serialization failure or a restart turns into a 500;
* ``/transfer``: the same work under ``run_transaction`` with a circuit
  breaker, re-run whole when that is safe, errors mapped to 409/503 with the
  user message and ``Retry-After``;
* ``/accounts/{id}/owner``: code that does not wrap its work in a function,
  on ``resilient_sessionmaker`` sessions (the first call retried, COMMIT never);
* ``/accounts/{id}``: a read guarded by a breaker with a time window.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from math import ceil

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel
from sqlalchemy import String, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqlalchemy_resilience import (
    CircuitBreaker,
    CircuitOpenError,
    ResilienceError,
    instrument,
    run_transaction,
)
from sqlalchemy_resilience.retry import resilient_sessionmaker


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "transfer_accounts"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    balance: Mapped[int]


class TransferIn(BaseModel):
    src: int
    dst: int
    amount: int


async def debit(session: AsyncSession, account: int, amount: int) -> None:
    await session.execute(
        update(Account).where(Account.id == account).values(balance=Account.balance - amount)
    )


async def credit(session: AsyncSession, account: int, amount: int) -> None:
    await session.execute(
        update(Account).where(Account.id == account).values(balance=Account.balance + amount)
    )


def create_app(url: str) -> FastAPI:
    """The app on ``url``; two accounts of 100 are created at start-up."""
    engine = create_async_engine(url)
    instrument(engine)
    Session = async_sessionmaker(engine, expire_on_commit=False)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
            if not await conn.scalar(select(Account.id).limit(1)):
                await conn.execute(
                    Account.__table__.insert(),
                    [
                        {"id": 1, "owner": "ann", "balance": 100},
                        {"id": 2, "owner": "bo", "balance": 100},
                    ],
                )
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    # [before]
    @app.post("/transfer/naive")
    async def transfer_naive(req: TransferIn) -> dict[str, str]:
        async with Session() as session, session.begin():
            await debit(session, req.src, req.amount)
            await credit(session, req.dst, req.amount)
        return {"status": "ok"}

    # [/before]

    # [after]
    breaker = CircuitBreaker(name="transfers")  # opens on half the last 20 calls failing

    @app.post("/transfer")
    async def transfer(req: TransferIn) -> dict[str, str]:
        async def work(session: AsyncSession) -> None:  # may run more than once
            await debit(session, req.src, req.amount)
            await credit(session, req.dst, req.amount)

        try:
            await run_transaction(Session, work, breaker=breaker, isolation_level="SERIALIZABLE")
        except CircuitOpenError as exc:
            raise HTTPException(
                503, exc.user_message(), headers={"Retry-After": str(ceil(exc.retry_after))}
            ) from exc
        except ResilienceError as exc:
            raise HTTPException(409 if not exc.retryable else 503, exc.user_message()) from exc
        return {"status": "ok"}

    # [/after]

    # [session]
    Sessions = resilient_sessionmaker(engine, breaker=breaker, expire_on_commit=False)

    @app.post("/accounts/{account_id}/owner")
    async def rename(account_id: int, owner: str) -> dict[str, str]:
        async with Sessions() as session:
            account = await session.get(Account, account_id)  # retried on a stale connection
            if account is None:
                raise HTTPException(404, "no such account")
            account.owner = owner
            await session.commit()  # never retried
        return {"owner": owner}

    # [/session]

    # [window]
    reads = CircuitBreaker(
        name="reads",
        failure_threshold=None,
        failure_rate_threshold=0.5,
        window_duration=timedelta(seconds=30),
        minimum_calls=20,
    )

    @app.get("/accounts/{account_id}")
    async def balance(account_id: int) -> dict[str, int | None]:
        async with reads.guard(), Session() as session:
            return {
                "balance": await session.scalar(select(Account.balance).filter_by(id=account_id))
            }

    # [/window]

    return app


app = create_app(os.environ.get("DATABASE_URL", "sqlite+aiosqlite:///example_transfers.sqlite"))
