"""transaction() and on_commit when the connection dies while COMMIT is in flight (recipe e6, own server)."""

from __future__ import annotations

import asyncio
import uuid
from functools import partial

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import RetryPolicy, instrument, on_commit, run_transaction, transaction
from sqlalchemy_resilience.schema import metadata
from tests.pgharness import PgServer

FAST = RetryPolicy(attempts=4, initial_backoff=0.001, max_backoff=0.01, deadline=30)


@pytest.mark.parametrize("instrumented", [True, False])
async def test_lost_commit_is_unknown_and_runs_no_callback(
    syncrep: PgServer, pg_driver: str, instrumented: bool
) -> None:
    """The backend dies in its COMMIT: CommitOutcomeUnknown (not retryable), no on_commit callback ran; the row did commit."""
    engine = create_async_engine(syncrep.app_url("faults", driver=pg_driver))
    if instrumented:
        instrument(engine)
    key = uuid.uuid4()
    seen: list[str] = []
    try:
        killer = asyncio.create_task(asyncio.to_thread(syncrep.kill_first_syncrep_waiter))
        with pytest.raises(sr.CommitOutcomeUnknown) as info:
            async with transaction(engine) as conn:
                await conn.execute(text("SET LOCAL synchronous_commit = 'on'"))
                await conn.execute(text("INSERT INTO ledger VALUES (:k)"), {"k": key})
                on_commit(partial(seen.append, "ran"))
        await killer
        assert engine.pool.checkedout() == 0
    finally:
        await engine.dispose()
    assert info.value.retryable is False
    assert seen == []
    assert syncrep.ledger_rows(key) == 1


@pytest.mark.parametrize("resolver", ["idempotency_key", "pg_xact_status"])
async def test_resolved_commit_runs_the_first_attempts_callbacks_once(
    syncrep: PgServer, pg_driver: str, resolver: str
) -> None:
    """The lost COMMIT is resolved as committed: the callbacks of the attempt that committed run, once."""
    engine = create_async_engine(syncrep.app_url("faults", driver=pg_driver))
    instrument(engine)
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    key = uuid.uuid4()
    seen: list[int] = []
    attempts = 0

    async def work(session: object) -> int:
        nonlocal attempts
        attempts += 1
        execute = session.execute  # type: ignore[attr-defined]
        await execute(text("SET LOCAL synchronous_commit = 'on'"))
        await execute(text("INSERT INTO ledger VALUES (:k)"), {"k": key})
        on_commit(partial(seen.append, attempts))
        return attempts

    try:
        killer = asyncio.create_task(asyncio.to_thread(syncrep.kill_first_syncrep_waiter))
        if resolver == "idempotency_key":
            result = await run_transaction(
                async_sessionmaker(engine), work, retry=FAST, idempotency_key=f"oc-{key}"
            )
        else:
            result = await run_transaction(
                async_sessionmaker(engine), work, retry=FAST, resolve_commit_outcome=True
            )
        await killer
    finally:
        await engine.dispose()
    # The key (found by attempt 2 before it ran the work) or pg_xact_status says
    # attempt 1 committed: its result is returned and its callbacks run, once.
    assert attempts == 1
    assert result == 1 and seen == [1]
    assert syncrep.ledger_rows(key) == 1
