"""Canary leak test (FAULTS.md section 5.1): a planted password and parameter value never escape.

Everything is captured -- every log record at DEBUG (SQLAlchemy's engine and
pool loggers included, with echo on), warnings, and str()/repr() of every
exception and its cause chain -- and searched for the canaries. On an engine
created with ``hide_parameters=True`` neither canary appears anywhere. With
SQLAlchemy's defaults, SQLAlchemy's own text shows the parameter as it does
without the package; what the package itself writes never does, and the
password appears nowhere.
"""

from __future__ import annotations

import logging
import traceback
import uuid
import warnings

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import instrument
from sqlalchemy_resilience.saga import SagaContext, get_saga
from sqlalchemy_resilience.schema import create_saga_tables
from tests.pgharness import PgServer


def _chain_texts(err: BaseException) -> list[str]:
    out: list[str] = ["".join(traceback.format_exception(err))]
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        out += [str(item), repr(item)]
        if isinstance(item, sr.ResilienceError):
            out += [item.user_message("en"), item.user_message("ja")]
        stack += [item.__cause__, item.__context__, getattr(item, "orig", None)]
    return out


def _own_texts(err: BaseException) -> list[str]:
    """What the package itself writes about an error (and the errors it wraps)."""
    out: list[str] = []
    for item in (err, err.__cause__, err.__context__):
        if isinstance(item, sr.DatabaseFailure):
            out += [item.safe_text(), item.summary, item.facts_line(), repr(item)]
        if isinstance(item, sr.ResilienceError):
            out += [item.user_message("en"), item.user_message("ja")]
    return out


@pytest.mark.parametrize("hide_parameters", [True, False], ids=["hide", "sqlalchemy-default"])
async def test_no_canary_leaks(
    pg_server: PgServer,
    pg_database: str,
    pg_driver: str,
    caplog: pytest.LogCaptureFixture,
    hide_parameters: bool,
) -> None:
    """Failing runs with a planted password and parameter leave 0 canaries in logs, errors or messages."""
    pw_canary = f"CANARY-pw-{uuid.uuid4().hex}"
    param_canary = f"CANARY-param-{uuid.uuid4().hex}"
    role = "canary_" + uuid.uuid4().hex[:8]
    pg_server.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{pw_canary}'")
    pg_server.execute(f"GRANT ALL ON DATABASE {pg_database} TO {role}")
    pg_server.execute(f"GRANT ALL ON SCHEMA public TO {role}", database=pg_database)
    url = pg_server.app_url(pg_database, driver=pg_driver, username=role, password=pw_canary)
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    own: list[str] = []
    engine = create_async_engine(url, echo="debug", hide_parameters=hide_parameters)
    bad_pw = create_async_engine(
        url.set(password=pw_canary + "-wrong"), echo="debug", hide_parameters=hide_parameters
    )
    instrument(engine)
    instrument(bad_pw)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            async with engine.begin() as conn:
                await conn.execute(text("DROP TABLE IF EXISTS canary"))
                await conn.execute(
                    text("CREATE TABLE canary (k text PRIMARY KEY, n int CHECK (n > 0))")
                )
                await conn.execute(text("INSERT INTO canary VALUES (:k, 1)"), {"k": param_canary})
            attempts = [
                ("INSERT INTO canary VALUES (:k, 2)", {"k": param_canary}),  # 23505
                ("INSERT INTO canary VALUES (:k, -1)", {"k": param_canary + "x"}),  # 23514
                ("SELECT CAST(:k AS integer)", {"k": param_canary}),  # 22P02
                ("SELECT CAST(:k AS date)", {"k": param_canary}),  # 22007
                ("SELECT :k::text FROM no_table", {"k": param_canary}),  # 42P01
            ]
            failures = 0
            for sql, params in attempts:
                try:
                    async with engine.begin() as conn:
                        await conn.execute(text(sql), params)
                except sr.ResilienceError as err:
                    failures += 1
                    texts += _chain_texts(err)
                    own += _own_texts(err)
                    logging.getLogger("app").exception("request failed: %s", err)
            try:
                async with engine.begin() as conn:
                    await conn.execute(text("SET LOCAL statement_timeout = '20ms'"))
                    await conn.execute(text("SELECT pg_sleep(1), :k"), {"k": param_canary})
            except sr.QueryTimeout as err:
                failures += 1
                texts += _chain_texts(err)
                own += _own_texts(err)
            # A saga whose database step fails on the canary: its exception, its
            # log records and the saga log's stored error.
            async with engine.begin() as conn:
                await conn.run_sync(create_saga_tables)

            async def duplicate(ctx: SagaContext) -> None:
                await ctx.session.execute(
                    text("INSERT INTO canary VALUES (:k, 2)"), {"k": param_canary}
                )

            saga = sr.Saga("canary").step("dup", duplicate)
            Session = async_sessionmaker(engine)
            try:
                await saga.execute(saga_id=f"canary-{uuid.uuid4().hex[:8]}", sessionmaker=Session)
            except sr.SagaCompensated as err:
                failures += 1
                texts += _chain_texts(err)
                own += [*_own_texts(err), err.error]
                record = await get_saga(Session, err.saga_id)
                assert record is not None and record.error
                own += [record.error, str(record.to_dict())]
            # transaction() with a scoped timeout, failing with the canary in flight.
            try:
                async with sr.transaction(engine, statement_timeout=0.02) as conn:
                    await conn.execute(text("SELECT pg_sleep(1), :k"), {"k": param_canary})
            except sr.QueryTimeout as err:
                failures += 1
                texts += _chain_texts(err)
                own += _own_texts(err)
            try:
                async with bad_pw.connect():
                    pass
            except sr.AuthenticationFailed as err:
                failures += 1
                texts += _chain_texts(err)
                own += _own_texts(err)
                logging.getLogger("app").exception("connect failed")
            assert failures == len(attempts) + 4
        finally:
            await engine.dispose()
            await bad_pw.dispose()
            pg_server.execute("DROP TABLE IF EXISTS canary", database=pg_database)
            pg_server.execute(
                "DROP TABLE IF EXISTS sqlalchemy_resilience_saga_step, sqlalchemy_resilience_saga",
                database=pg_database,
            )
            pg_server.execute(f"REVOKE ALL ON SCHEMA public FROM {role}", database=pg_database)
            pg_server.execute(f"REVOKE ALL ON DATABASE {pg_database} FROM {role}")
            pg_server.execute(f"DROP ROLE {role}")
    texts += [str(w.message) for w in caught]
    for record in caplog.records:
        written = [record.getMessage()]
        if record.exc_info:
            written.append("".join(traceback.format_exception(*record.exc_info)))
        texts += written
        if record.name.startswith("sqlalchemy_resilience"):
            own += written
    assert len(caplog.records) > 20  # echo was really on
    assert len(own) > 30
    assert [t for t in own if pw_canary in t or param_canary in t] == []
    assert [t for t in texts if pw_canary in t] == []
    if hide_parameters:
        assert [t for t in texts if param_canary in t] == []
    else:
        # SQLAlchemy's own text (echo logs, str() of the error) shows it, as without the package.
        assert any(param_canary in t for t in texts)
