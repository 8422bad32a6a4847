"""on_commit: after the outermost COMMIT only; dropped on rollback, savepoint rollback and re-run attempts."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
)
from sqlalchemy.orm import Session, sessionmaker

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import (
    RetryPolicy,
    on_commit,
    run_transaction,
    run_transaction_sync,
    transaction,
    transaction_sync,
)

FAST = RetryPolicy(attempts=3, initial_backoff=0.001, max_backoff=0.01)


@pytest.fixture
async def engine(any_engine: AsyncEngine) -> AsyncEngine:
    """SQLite, then PostgreSQL, with an ``oc_items`` table."""
    eng = any_engine
    async with eng.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS oc_items"))
        await conn.execute(text("CREATE TABLE oc_items (id int PRIMARY KEY)"))
    return eng


async def test_runs_after_the_outermost_commit_only(engine: AsyncEngine) -> None:
    """Sync and async callbacks, in order, once the outer COMMIT is done -- not at a savepoint's release."""
    seen: list[str] = []
    Session = async_sessionmaker(engine)

    async def committed_rows() -> int:
        async with engine.connect() as conn:
            return int((await conn.execute(text("SELECT count(*) FROM oc_items"))).scalar_one())

    async def async_callback() -> None:
        seen.append(f"async saw {await committed_rows()} row(s)")

    async with transaction(Session) as session:
        await session.execute(text("INSERT INTO oc_items VALUES (1)"))
        on_commit(partial(seen.append, "first"))
        async with transaction(session):
            await session.execute(text("INSERT INTO oc_items VALUES (2)"))
            on_commit(async_callback)
        assert seen == []  # the savepoint was released, the transaction is still open
        on_commit(partial(seen.append, "last"))
    assert seen == ["first", "async saw 2 row(s)", "last"]


async def test_dropped_on_rollback_and_on_savepoint_rollback(engine: AsyncEngine) -> None:
    """A rolled-back transaction runs none; a rolled-back savepoint drops only its own."""
    seen: list[str] = []
    Session = async_sessionmaker(engine)
    with pytest.raises(KeyError):
        async with transaction(Session):
            on_commit(partial(seen.append, "outer rolled back"))
            raise KeyError
    async with transaction(Session) as session:
        on_commit(partial(seen.append, "kept"))
        with pytest.raises(sr.UniqueViolation):
            async with transaction(session):
                await session.execute(text("INSERT INTO oc_items VALUES (7)"))
                on_commit(partial(seen.append, "savepoint rolled back"))
                await session.execute(text("INSERT INTO oc_items VALUES (7)"))
    assert seen == ["kept"]


async def test_robust_callbacks_log_and_continue(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """robust=True: the failure is logged and later callbacks run; without it the error propagates after COMMIT."""
    seen: list[str] = []

    def broken() -> None:
        raise RuntimeError("mail server down")

    caplog.set_level(logging.ERROR, logger="sqlalchemy_resilience.transaction")
    async with transaction(engine) as conn:
        await conn.execute(text("INSERT INTO oc_items VALUES (1)"))
        on_commit(broken, robust=True)
        on_commit(partial(seen.append, "after robust"))
    assert seen == ["after robust"]
    assert "on_commit callback" in caplog.text and "mail server down" in caplog.text
    with pytest.raises(RuntimeError, match="mail server down"):
        async with transaction(engine) as conn:
            await conn.execute(text("INSERT INTO oc_items VALUES (2)"))
            on_commit(broken)
            on_commit(partial(seen.append, "never"))
    async with engine.connect() as conn:  # the work was committed all the same
        assert (await conn.execute(text("SELECT count(*) FROM oc_items"))).scalar_one() == 2
    assert seen == ["after robust"]


async def test_run_transaction_drops_the_callbacks_of_a_failed_attempt(
    engine: AsyncEngine,
) -> None:
    """Attempt 1 registers a callback and loses its connection; attempt 2 commits: each callback runs once."""
    seen: list[int] = []
    attempts = 0
    Session = async_sessionmaker(engine)

    async def work(session: AsyncSession) -> int:
        nonlocal attempts
        attempts += 1
        await session.execute(text("INSERT INTO oc_items VALUES (:id)"), {"id": attempts})
        on_commit(partial(seen.append, attempts))
        if attempts == 1:
            if engine.dialect.name == "postgresql":
                # The server ends this backend: a real ConnectionLost, retryable.
                await session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
            else:
                raise sr.SerializationFailure("attempt 1 conflicts (simulated on SQLite)")
        return attempts

    assert await run_transaction(Session, work, retry=FAST) == 2
    assert seen == [2]
    async with engine.connect() as conn:
        ids = (await conn.execute(text("SELECT id FROM oc_items"))).scalars().all()
    assert ids == [2]


async def test_registration_errors() -> None:
    """Outside a transaction, a non-callable, or a non-bool robust: a clear error."""
    with pytest.raises(RuntimeError, match="needs an enclosing transaction"):
        on_commit(print)
    with pytest.raises(TypeError, match="callable"):
        on_commit("print")  # type: ignore[arg-type]


async def test_unmanaged_outer_transaction_is_refused(engine: AsyncEngine) -> None:
    """A savepoint inside a transaction the application began itself cannot see the commit: refused."""
    Session = async_sessionmaker(engine)
    async with Session() as session, session.begin(), transaction(session):
        with pytest.raises(RuntimeError, match="outer transaction was not opened"):
            on_commit(print)
        with pytest.raises(TypeError, match="robust must be True or False"):
            on_commit(print, robust="yes")  # type: ignore[arg-type]


def test_sync_twins(tmp_path: Path) -> None:
    """transaction_sync and run_transaction_sync: the same rules; an async callback is refused at registration."""
    engine = create_engine(f"sqlite:///{tmp_path / 'sync.sqlite'}")
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (id int PRIMARY KEY)"))
        seen: list[str] = []
        Session = sessionmaker(engine)
        with transaction_sync(Session) as session:
            session.execute(text("INSERT INTO t VALUES (1)"))
            on_commit(partial(seen.append, "tx"))

            async def coro() -> None:
                pass

            with pytest.raises(TypeError, match="async but the transaction is synchronous"):
                on_commit(coro)
        with pytest.raises(ValueError, match="rolled back"), transaction_sync(Session):
            on_commit(partial(seen.append, "never"))
            raise ValueError("rolled back")

        def work(session: Session) -> None:
            session.execute(text("INSERT INTO t VALUES (2)"))
            on_commit(partial(seen.append, "unit"))

        run_transaction_sync(Session, work)
        assert seen == ["tx", "unit"]
    finally:
        engine.dispose()
