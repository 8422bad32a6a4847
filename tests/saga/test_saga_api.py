"""Saga definitions and options: validation, the sync twin, in-memory sagas, logs and counters."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import RetryPolicy, Saga
from sqlalchemy_resilience.saga import (
    SagaContext,
    get_saga,
    get_saga_sync,
    recover_sagas,
    recover_sagas_sync,
)
from sqlalchemy_resilience.schema import create_saga_tables


def test_definitions_are_validated() -> None:
    """Names, duplicate steps, callables, policies and leases: a clear error naming the value."""
    cases: list[tuple[Any, type[Exception], str]] = [
        (lambda: Saga(""), ValueError, "name must be a string of 1 to 200"),
        (lambda: Saga("has space"), ValueError, "letters, digits"),
        (lambda: Saga("x", retry=3), TypeError, "retry must be a RetryPolicy"),  # type: ignore[arg-type]
        (lambda: Saga("x", lease=0), ValueError, "lease must be > 0"),
        (lambda: Saga("x").step("a", print).step("a", print), ValueError, "already in saga"),
        (lambda: Saga("x").step("a", "print"), TypeError, "must be callable"),  # type: ignore[arg-type]
        (lambda: Saga("x").step("a", print, compensate=1), TypeError, "compensate of step"),  # type: ignore[arg-type]
        (lambda: Saga("x").step("a;drop", print), ValueError, "letters, digits"),
        (lambda: Saga("x").step("a", print, external="yes"), TypeError, "external must be"),  # type: ignore[arg-type]
    ]
    for build, error, message in cases:
        with pytest.raises(error, match=message):
            build()
    saga = Saga("x").step("a", print)
    assert (
        saga.step("b", print) is not saga and len(saga.steps) == 1
    )  # frozen: step() returns a new saga
    assert repr(saga.step("b", print)) == "<Saga 'x' steps=['a', 'b']>"


async def test_run_arguments_are_validated(tmp_path: Path) -> None:
    """Bad saga ids, non-JSON data, a database step without a database, the wrong sessionmaker kind."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'v.sqlite'}")
    async with engine.begin() as conn:
        await conn.run_sync(create_saga_tables)
    statements: list[str] = []
    event.listen(
        engine.sync_engine, "before_cursor_execute", lambda c, cur, s, *r: statements.append(s)
    )
    Session = async_sessionmaker(engine)
    saga = Saga("x").step("db", lambda ctx: None).step("api", lambda ctx: None, external=True)
    try:
        with pytest.raises(ValueError, match="saga_id may hold"):
            await saga.execute(saga_id="x' OR 1=1 --", sessionmaker=Session)
        with pytest.raises(TypeError, match="the saga's data must be JSON-serializable"):
            await saga.execute({"when": object()}, sessionmaker=Session)
        with pytest.raises(ValueError, match="is a database step"):
            await saga.execute()
        with pytest.raises(ValueError, match="durable saga needs sessionmaker"):
            await saga.execute(durable=True)
        with pytest.raises(TypeError, match="execute\\(\\) needs an async_sessionmaker"):
            await saga.execute(sessionmaker=sessionmaker())  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="has no steps"):
            await Saga("empty").execute()
        # The blocking twin needs no event loop of its own (it blocks this one while it runs).
        assert Saga("z").step("a", lambda ctx: ctx.attempt, external=True).execute_sync() == {
            "a": 1
        }
        with pytest.raises(TypeError, match="recover_sagas needs an async_sessionmaker"):
            await recover_sagas(sessionmaker(), [saga])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="needs the Saga definitions"):
            await recover_sagas(Session, [])
        with pytest.raises(ValueError, match="two sagas are named"):
            await recover_sagas(Session, [saga, Saga("x").step("a", print)])
        with pytest.raises(ValueError, match="limit must be"):
            await recover_sagas(Session, [saga], limit=0)
        assert statements == []
        with pytest.raises(
            sr.SagaCompensated, match="result of step 'db' must be JSON-serializable"
        ):
            await (
                Saga("y")
                .step("db", lambda ctx: {1, 2})
                .execute(saga_id="bad-result", sessionmaker=Session)
            )
        record = await get_saga(Session, "bad-result")
        assert (
            record is not None and record.status == "compensated"
        )  # the step rolled back: nothing to undo
    finally:
        await engine.dispose()


async def test_in_memory_saga_without_a_database() -> None:
    """No sessionmaker: external steps only, compensated in reverse; nothing is stored."""
    done: list[str] = []

    async def step(ctx: SagaContext) -> int:
        done.append(ctx.step)
        if ctx.step == "c":
            raise KeyError(ctx.step)
        return len(ctx.results)

    def undo(ctx: SagaContext) -> None:
        done.append(f"undo {ctx.step} ({ctx.result})")

    saga = (
        Saga("memory")
        .step("a", step, compensate=undo, external=True)
        .step("b", step, compensate=undo, external=True)
        .step("c", step, compensate=undo, external=True)
    )
    assert await Saga("ok").step("a", step, external=True).execute() == {"a": 0}
    with pytest.raises(sr.SagaCompensated) as info:
        await saga.execute(saga_id="m-1")
    assert done == ["a", "a", "b", "c", "undo b (1)", "undo a (0)"]
    assert info.value.compensated == ("b", "a")


async def test_non_durable_saga_with_database_steps(tmp_path: Path) -> None:
    """durable=False with a sessionmaker: each database step in its own transaction, no log written."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'nd.sqlite'}")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (k varchar(50))"))
    Session = async_sessionmaker(engine)

    async def write(ctx: SagaContext) -> str:
        await ctx.session.execute(text("INSERT INTO t VALUES (:k)"), {"k": ctx.step})
        return ctx.step

    async def erase(ctx: SagaContext) -> None:
        await ctx.session.execute(text("DELETE FROM t WHERE k = :k"), {"k": ctx.result})

    saga = (
        Saga("nd")
        .step("a", write, compensate=erase)
        .step("b", write, compensate=erase)
        .step("c", lambda ctx: 1 / 0, external=True)
    )
    try:
        with pytest.raises(sr.SagaCompensated) as info:
            await saga.execute(saga_id="nd-1", sessionmaker=Session, durable=False)
        assert info.value.compensated == ("b", "a")
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM t"))).scalar_one() == 0
            tables = (
                (await conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'table'")))
                .scalars()
                .all()
            )
        assert tables == ["t"]  # no saga log was needed or touched
    finally:
        await engine.dispose()


def test_sync_twin(tmp_path: Path) -> None:
    """execute_sync with a sessionmaker and plain functions: durable, compensating, recoverable."""
    engine = create_engine(f"sqlite:///{tmp_path / 's.sqlite'}")
    create_saga_tables(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (k varchar(200) PRIMARY KEY)"))
    Session = sessionmaker(engine)

    def insert(ctx: SagaContext) -> str:
        ctx.session.execute(text("INSERT INTO t VALUES (:k)"), {"k": ctx.idempotency_key})
        return ctx.idempotency_key

    def delete(ctx: SagaContext) -> None:
        ctx.session.execute(text("DELETE FROM t WHERE k = :k"), {"k": ctx.result})

    def fail(ctx: SagaContext) -> None:
        if ctx.data["fail"]:
            raise ValueError("no")

    saga = Saga("sync").step("a", insert, compensate=delete).step("b", fail)
    try:
        assert saga.execute_sync({"fail": False}, saga_id="s-1", sessionmaker=Session) == {
            "a": "s-1:a",
            "b": None,
        }
        with pytest.raises(sr.SagaCompensated):
            saga.execute_sync({"fail": True}, saga_id="s-2", sessionmaker=Session)
        with engine.connect() as conn:
            assert conn.execute(text("SELECT k FROM t")).scalars().all() == ["s-1:a"]
        record = get_saga_sync(Session, "s-2")
        assert record is not None and record.status == "compensated"
        assert recover_sagas_sync(Session, [saga]).recovered == []

        async def not_sync(ctx: SagaContext) -> None:
            pass

        with pytest.raises(TypeError, match="plain functions"):
            Saga("bad").step("a", not_sync).execute_sync(saga_id="s-3", sessionmaker=Session)
    finally:
        engine.dispose()


async def test_logs_and_counters(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, global_metrics_reader: Any
) -> None:
    """A record per step and transition with the saga id; counters outside db.client.*."""
    caplog.set_level(logging.DEBUG, logger="sqlalchemy_resilience.saga")
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'l.sqlite'}")
    async with engine.begin() as conn:
        await conn.run_sync(create_saga_tables)
    Session = async_sessionmaker(engine)
    quick = RetryPolicy(attempts=1)
    ok = Saga("counted").step("a", lambda ctx: 1, external=True)
    bad = (
        Saga("counted_bad", compensation_retry=quick)
        .step("a", lambda ctx: 1, compensate=lambda ctx: 1 / 0, external=True)
        .step("b", lambda ctx: 1 / 0, external=True)
    )
    try:
        await ok.execute(saga_id="c-1", sessionmaker=Session)
        with pytest.raises(sr.SagaCompensationFailed):
            await bad.execute(saga_id="c-2", sessionmaker=Session)
    finally:
        await engine.dispose()
    ids = {getattr(r, "sqlalchemy_resilience.saga_id", None) for r in caplog.records}
    assert {"c-1", "c-2"} <= ids
    messages = [r.getMessage() for r in caplog.records]
    assert "saga c-1 (counted): completed" in messages
    assert any("c-2" in m and "left for an operator" in m for m in messages)
    names: dict[str, float] = {}
    data = global_metrics_reader.get_metrics_data()
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    if str(point.attributes.get("sqlalchemy_resilience.saga.name", "")).startswith(
                        "counted"
                    ):
                        key = f"{metric.name}/{point.attributes['sqlalchemy_resilience.saga.name']}"
                        names[key] = point.value
    assert names == {
        "sqlalchemy_resilience.sagas.started/counted": 1,
        "sqlalchemy_resilience.sagas.completed/counted": 1,
        "sqlalchemy_resilience.sagas.started/counted_bad": 1,
        "sqlalchemy_resilience.sagas.failed/counted_bad": 1,
    }


def test_saga_errors_have_user_messages() -> None:
    """SagaCompensated and SagaInProgress are ResilienceErrors with end-user wording in en and ja."""
    compensated = sr.SagaCompensated("o-1", "charge", "ValueError: declined", ["reserve"])
    assert compensated.user_message("en").startswith("Your request could not be completed")
    assert compensated.user_message("ja")
    busy = sr.SagaInProgress("o-1", 2.5)
    assert busy.retryable and busy.retry_after == 2.5
    assert "processed" in busy.user_message()
    asyncio.run(asyncio.sleep(0))
