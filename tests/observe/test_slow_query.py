"""Slow-query log, in-flight watchdog and EXPLAIN of slow SELECTs, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from sqlalchemy_resilience import QueryTimeout, instrument
from tests.pgharness import PgServer
from tests.waiting import until, wait_until

LOGGER = "sqlalchemy_resilience.slow_query"
SECRET = "canary-parameter-8731"


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER]


def _extra(record: logging.LogRecord, key: str) -> object:
    return record.__dict__[f"sqlalchemy_resilience.{key}"]


class _OnRecord(logging.Handler):
    """Keeps the records that ``matches`` and sets ``event`` (a wait without a sleep).

    Read the records from here, not from ``caplog``: this handler sits on the
    logger itself, so it runs before the record propagates to caplog's handler
    on the root logger -- from the logging thread, while the waiter is awake.
    """

    def __init__(
        self, matches: Callable[[logging.LogRecord], bool], event: threading.Event
    ) -> None:
        super().__init__()
        self._matches = matches
        self._event = event
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self._matches(record):
            self.records.append(record)
            self._event.set()


def _everything(record: logging.LogRecord) -> str:
    return record.getMessage() + repr(record.__dict__)


async def _sleepy_select(engine: AsyncEngine, seconds: float) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT pg_sleep(:s), :tag AS tag"), {"s": seconds, "tag": SECRET})


async def test_slow_statement_is_logged_once_with_its_facts(
    pg_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """A statement over the threshold gives one record: normalized text, duration, rows, db, call site."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    instrument(pg_engine, slow_query_threshold=0.1)
    async with pg_engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
    await _sleepy_select(pg_engine, 0.15)
    (record,) = _records(caplog)
    assert record.levelno == logging.WARNING
    duration = _extra(record, "duration")
    assert isinstance(duration, float)
    assert 0.15 <= duration < 5
    statement = _extra(record, "statement")
    assert isinstance(statement, str)
    assert statement.startswith("SELECT pg_sleep(") and "AS tag" in statement
    assert _extra(record, "rowcount") == 1
    url = pg_engine.url
    assert _extra(record, "database") == url.database
    assert _extra(record, "host") == f"{url.host}:{url.port}"
    call_site = _extra(record, "call_site")
    assert isinstance(call_site, str)
    assert call_site.startswith("tests/observe/test_slow_query.py:")
    assert call_site.endswith(" in _sleepy_select")
    message = record.getMessage()
    assert call_site in message and statement in message and f"{duration:.3f} s" in message
    # Never a parameter value or a password unless asked.
    assert SECRET not in _everything(record)
    assert str(url.password) not in _everything(record)


async def test_parameters_only_with_log_parameters(
    pg_server: PgServer, pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """log_parameters=True shows SQLAlchemy's parameter repr, but never on a hide_parameters engine."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    shown = create_async_engine(pg_server.app_url(pg_database))
    hidden = create_async_engine(pg_server.app_url(pg_database), hide_parameters=True)
    try:
        instrument(shown, slow_query_threshold=0.05, log_parameters=True)
        instrument(hidden, slow_query_threshold=0.05, log_parameters=True)
        await _sleepy_select(shown, 0.06)
        await _sleepy_select(hidden, 0.06)
    finally:
        await shown.dispose()
        await hidden.dispose()
    first, second = _records(caplog)
    assert SECRET in str(_extra(first, "parameters"))
    assert SECRET in first.getMessage()
    assert SECRET not in _everything(second)


async def test_threshold_changes_at_runtime(
    pg_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """slow_query_threshold is settable (seconds or timedelta, None = off) and validated."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    instr = instrument(pg_engine, slow_query_threshold=10)
    await _sleepy_select(pg_engine, 0.05)
    assert _records(caplog) == []
    instr.slow_query_threshold = timedelta(milliseconds=20)
    assert instr.slow_query_threshold == pytest.approx(0.02)
    await _sleepy_select(pg_engine, 0.05)
    assert len(_records(caplog)) == 1
    instr.slow_query_threshold = None
    await _sleepy_select(pg_engine, 0.05)
    assert len(_records(caplog)) == 1
    with pytest.raises(ValueError, match="slow_query_threshold must be >= 0"):
        instr.slow_query_threshold = -1
    with pytest.raises(TypeError, match="slow_query_threshold must be seconds"):
        instr.slow_query_threshold = "1s"  # type: ignore[assignment]


async def test_failed_slow_statement_names_its_error(
    pg_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """A statement cancelled by statement_timeout after the threshold is logged with its error class."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    instrument(pg_engine, slow_query_threshold=0.05)
    async with pg_engine.begin() as conn:
        await conn.execute(text("SET LOCAL statement_timeout = 150"))
        with pytest.raises(QueryTimeout):
            await conn.execute(text("SELECT pg_sleep(2)"))
        await conn.rollback()
    (record,) = _records(caplog)
    assert _extra(record, "error") == "QueryTimeout"
    assert "failed with QueryTimeout" in record.getMessage()


async def test_watchdog_reports_a_running_statement_once(
    pg_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """A statement past long_running_threshold is reported while in flight, once, with its call site."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    instrument(pg_engine, long_running_threshold=0.2, slow_query_threshold=None)
    started = time.monotonic()
    await _sleepy_select(pg_engine, 1.0)
    finished = time.monotonic()
    (record,) = _records(caplog)
    assert _extra(record, "in_flight") is True
    assert record.created < time.time() - (time.monotonic() - finished) - 0.3
    assert 0.2 <= float(_extra(record, "duration")) < finished - started  # type: ignore[arg-type]
    assert str(_extra(record, "call_site")).endswith(" in _sleepy_select")
    assert "still running" in record.getMessage()
    assert SECRET not in _everything(record)


def test_watchdog_on_a_sync_engine_names_the_thread_call_site(
    pg_server: PgServer, pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """For a sync Engine the in-flight report finds the call site on the blocked thread's stack."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    engine = create_engine(pg_server.app_url(pg_database, driver="psycopg"))
    try:
        instr = instrument(engine, slow_query_threshold=None)
        instr.long_running_threshold = 0.2  # switched on at runtime

        def blocked_worker() -> None:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_sleep(0.8)"))

        worker = threading.Thread(target=blocked_worker)
        worker.start()
        worker.join()
        instr.long_running_threshold = None
    finally:
        engine.dispose()
    (record,) = _records(caplog)
    assert str(_extra(record, "call_site")).endswith(" in blocked_worker")


async def test_explain_attaches_the_plan_of_a_slow_select(
    pg_engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    """explain_slow_queries: the slow SELECT's record carries its JSON plan; rate-limited per statement."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    async with pg_engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS explained"))
        await conn.execute(text("CREATE TABLE explained (id int PRIMARY KEY, v text)"))
        await conn.execute(
            text("INSERT INTO explained SELECT g, 'x' FROM generate_series(1, 100) g")
        )
    instr = instrument(pg_engine, slow_query_threshold=0.05, explain_slow_queries=True)
    query = text("SELECT v, pg_sleep(0.06) FROM explained WHERE id = :id")
    async with pg_engine.connect() as conn:
        pool_before = instr.pool_stats()["connections_created"]
        await conn.execute(query, {"id": 7})
        await conn.execute(query, {"id": 8})  # same statement inside the interval: no plan

    await until(lambda: len(_records(caplog)) >= 2, what="two slow-query records")
    records = _records(caplog)
    assert len(records) == 2
    with_plan = [r for r in records if "sqlalchemy_resilience.plan" in r.__dict__]
    assert len(with_plan) == 1
    plan = _extra(with_plan[0], "plan")
    assert isinstance(plan, list)
    assert plan[0]["Plan"]["Relation Name"] == "explained" or "Plans" in plan[0]["Plan"]
    assert "Index Scan" in json.dumps(plan) or "Seq Scan" in json.dumps(plan)
    # The EXPLAIN connection is not one of the pool's.
    assert instr.pool_stats()["connections_created"] == pool_before


def test_explain_on_a_sync_engine_and_only_for_select(
    pg_server: PgServer, pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A sync engine explains in its worker thread; a slow UPDATE is logged without a plan."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    engine = create_engine(pg_server.app_url(pg_database, driver="psycopg"))
    try:
        instrument(engine, slow_query_threshold=0.05, explain_slow_queries=True)
        with engine.begin() as conn:
            conn.execute(text("CREATE TEMP TABLE tmp_e (id int)"))
            conn.execute(text("INSERT INTO tmp_e VALUES (0)"))
            conn.execute(text("UPDATE tmp_e SET id = 1 WHERE pg_sleep(0.06) IS NOT NULL"))
            conn.execute(text("SELECT pg_sleep(0.06)"))
        wait_until(lambda: len(_records(caplog)) >= 2, what="two slow-query records")
    finally:
        engine.dispose()
    select, update = sorted(_records(caplog), key=lambda r: str(_extra(r, "statement")))
    assert str(_extra(update, "statement")).startswith("UPDATE")
    assert "sqlalchemy_resilience.plan" not in update.__dict__
    assert isinstance(_extra(select, "plan"), list)


@pytest.mark.parametrize(
    ("options", "shown"),
    [
        ({}, False),
        ({"log_parameters": True, "hide_parameters": True}, False),
        ({"log_parameters": True}, True),
    ],
    ids=["default", "hide_parameters", "log_parameters"],
)
def test_plans_hold_no_bound_value_unless_parameters_may_be_logged(
    pg_server: PgServer,
    pg_database: str,
    caplog: pytest.LogCaptureFixture,
    options: dict[str, bool],
    shown: bool,
) -> None:
    """S33: PostgreSQL writes bound values into a plan's Filter; the record's plan folds them to ?."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    planned = threading.Event()
    handler = _OnRecord(lambda record: "sqlalchemy_resilience.plan" in record.__dict__, planned)
    logging.getLogger(LOGGER).addHandler(handler)
    log_parameters = options.get("log_parameters", False)
    engine = create_engine(
        pg_server.app_url(pg_database, driver="psycopg"),
        hide_parameters=options.get("hide_parameters", False),
    )
    try:
        instrument(
            engine,
            slow_query_threshold=0.05,
            explain_slow_queries=True,
            log_parameters=log_parameters,
        )
        with engine.begin() as conn:
            # A table the EXPLAIN's own connection sees (not a temporary one).
            conn.execute(text("DROP TABLE IF EXISTS redacted"))
            conn.execute(text("CREATE TABLE redacted (id int, v text)"))
            conn.execute(text("INSERT INTO redacted VALUES (1, 'x')"))
        with engine.connect() as conn:
            conn.execute(
                text(
                    "SELECT pg_sleep(0.06), "
                    "(SELECT count(*) FROM redacted WHERE v = :v AND id > :n)"
                ),
                {"v": SECRET, "n": 424242},
            )
        # The plan comes from the explainer's thread: wait for its record.
        assert planned.wait(timeout=10), "no record with a plan"
    finally:
        logging.getLogger(LOGGER).removeHandler(handler)
        engine.dispose()
    (record,) = handler.records
    plan = json.dumps(_extra(record, "plan"))
    assert "Filter" in plan
    assert (SECRET in plan, "424242" in plan) == (shown, shown)
    assert (SECRET in _everything(record)) == shown


def test_slow_records_are_logged_when_the_loop_ends_first(
    pg_server: PgServer, pg_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """S33: 8 slow SELECTs, the loop ends before their EXPLAINs do: 8 records (plan or no plan)."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    engine = create_async_engine(pg_server.app_url(pg_database, driver="asyncpg"))
    instrument(engine, slow_query_threshold=0.01, explain_slow_queries=True)

    async def main() -> None:
        async with engine.connect() as conn:
            for i in range(8):
                await conn.execute(text(f"SELECT pg_sleep(0.02), {i} AS n{i}"))
        await engine.dispose()

    asyncio.run(main())
    # Only this test's statements: an earlier test's EXPLAIN may end, and log
    # its record, while this one runs (CI saw 9 records once).
    mine = [r for r in _records(caplog) if " AS n" in str(_extra(r, "statement"))]
    assert len(mine) == 8


def test_explain_needs_postgresql(sync_engines: list[Engine], tmp_path: Path) -> None:
    """explain_slow_queries on SQLite is refused with the dialect's name."""
    engine = create_engine(f"sqlite:///{tmp_path / 'x.sqlite'}")
    sync_engines.append(engine)
    with pytest.raises(ValueError, match=r"explain_slow_queries needs PostgreSQL.*'sqlite'"):
        instrument(engine, explain_slow_queries=True)


def test_sqlite_slow_statement(
    sync_engines: list[Engine], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite: a statement over the threshold is logged with database and call site."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    engine = create_engine(f"sqlite:///{tmp_path / 'slow.sqlite'}")
    sync_engines.append(engine)
    instrument(engine, slow_query_threshold=0.0)
    with engine.connect() as conn:
        conn.execute(text("SELECT :v"), {"v": SECRET})
    (record,) = [r for r in _records(caplog) if _extra(r, "statement") == "SELECT ?"]
    assert _extra(record, "host") is None
    assert str(_extra(record, "database")).endswith("slow.sqlite")
    assert str(_extra(record, "call_site")).endswith(" in test_sqlite_slow_statement")
    assert SECRET not in _everything(record)


def test_sqlmodel_sessions_are_not_the_call_site(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """S42: statements run through SQLModel's Session name the application's line, not sqlmodel/."""
    sqlmodel = pytest.importorskip("sqlmodel")

    class Hero(sqlmodel.SQLModel, table=True):  # type: ignore[call-arg,misc]
        __tablename__ = "callsite_heroes"
        id: int | None = sqlmodel.Field(default=None, primary_key=True)
        name: str

    caplog.set_level(logging.WARNING, logger=LOGGER)
    engine = create_engine(f"sqlite:///{tmp_path / 'heroes.sqlite'}")
    try:
        sqlmodel.SQLModel.metadata.create_all(engine, tables=[Hero.__table__])  # type: ignore[attr-defined]
        instrument(engine, slow_query_threshold=0.0)
        with sqlmodel.Session(engine) as session:
            session.add(Hero(name="a"))
            session.commit()
            session.exec(sqlmodel.select(Hero)).all()
            session.get(Hero, 1)
    finally:
        engine.dispose()
    sites = [str(_extra(r, "call_site")) for r in _records(caplog)]
    assert len(sites) >= 3
    assert [s for s in sites if "sqlmodel/" in s] == []
    assert all(" in test_sqlmodel_sessions_are_not_the_call_site" in s for s in sites), sites
