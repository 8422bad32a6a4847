"""run_transaction on MariaDB: deadlocks re-run whole, idempotency keys, a lost connection."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
)

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import run_transaction
from sqlalchemy_resilience.schema import metadata as package_tables
from tests.mysqlharness import MariaDBServer

FAST = sr.RetryPolicy(attempts=10, initial_backoff=0.001, max_backoff=0.01)


@pytest.fixture
async def engine(mariadb_engine: AsyncEngine) -> AsyncEngine:
    engine = mariadb_engine
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS accounts"))
        await conn.execute(text("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL)"))
        await conn.execute(text("INSERT INTO accounts VALUES (1, 100), (2, 100)"))
        await conn.run_sync(package_tables.drop_all)
        await conn.run_sync(package_tables.create_all)
    return engine


async def test_a_deadlock_is_rerun_whole_and_both_transfers_commit(engine: AsyncEngine) -> None:
    """Two transfers lock the accounts in opposite order: the server rolls one back (1213);
    run_transaction re-runs it whole, and the money adds up."""
    Session = async_sessionmaker(engine)
    both_hold_one = asyncio.Barrier(2)
    attempts = {"a": 0, "b": 0}

    def transfer(name: str, first: int, second: int):  # type: ignore[no-untyped-def]
        async def work(session: AsyncSession) -> None:
            attempts[name] += 1
            await session.execute(
                text("UPDATE accounts SET balance = balance - 10 WHERE id = :i"), {"i": first}
            )
            if attempts[name] == 1:
                await both_hold_one.wait()  # each holds its first row: a cycle follows
            await session.execute(
                text("UPDATE accounts SET balance = balance + 10 WHERE id = :i"), {"i": second}
            )

        return work

    await asyncio.gather(
        run_transaction(Session, transfer("a", 1, 2), retry=FAST),
        run_transaction(Session, transfer("b", 2, 1), retry=FAST),
    )
    async with engine.connect() as conn:
        total = (await conn.execute(text("SELECT SUM(balance) FROM accounts"))).scalar_one()
    assert total == 200
    assert sorted(attempts.values()) == [1, 2]  # one victim, re-run once


async def test_an_idempotency_key_applies_the_work_once(engine: AsyncEngine) -> None:
    Session = async_sessionmaker(engine)

    async def deposit(session: AsyncSession) -> None:
        await session.execute(text("UPDATE accounts SET balance = balance + 5 WHERE id = 1"))

    await run_transaction(Session, deposit, idempotency_key="req-1")
    with pytest.raises(sr.AlreadyApplied):
        await run_transaction(Session, deposit, idempotency_key="req-1")
    async with engine.connect() as conn:
        balance = (await conn.execute(text("SELECT balance FROM accounts WHERE id = 1"))).scalar()
    assert balance == 105


async def test_a_killed_session_is_rerun_on_a_new_connection(
    engine: AsyncEngine, mariadb_server: MariaDBServer
) -> None:
    Session = async_sessionmaker(engine)
    killed: list[int] = []

    async def work(session: AsyncSession) -> int:
        cid = int((await session.execute(text("SELECT CONNECTION_ID()"))).scalar_one())
        if not killed:
            killed.append(cid)
            mariadb_server.execute(f"KILL CONNECTION {cid}")
        await session.execute(text("UPDATE accounts SET balance = balance + 1 WHERE id = 2"))
        return cid

    cid = await run_transaction(Session, work, retry=FAST)
    assert cid != killed[0]
    async with engine.connect() as conn:
        balance = (await conn.execute(text("SELECT balance FROM accounts WHERE id = 2"))).scalar()
    assert balance == 101
