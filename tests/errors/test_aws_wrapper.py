"""The AWS Advanced Python Wrapper's failover errors, injected at the dialect, on a real PostgreSQL.

There is no Aurora here, so the wrapper's three outcomes are raised where its
SQLAlchemy dialect (``postgresql+aws_wrapper_psycopg``) raises them, from the
DBAPI calls under ``do_execute``/``do_commit``, with classes that carry the
wrapper's module and names and derive from the DBAPI's ``OperationalError``
(the wrapper's dialect makes its own ``pep249.Error`` the DBAPI's, so
SQLAlchemy wraps them the same way). The transactions themselves are real:
the rows and the idempotency keys are on the server, and the counts prove
what was applied once.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker

import sqlalchemy_resilience as sr
from sqlalchemy_resilience.errors import translate_error
from sqlalchemy_resilience.schema import metadata as package_metadata
from tests.pgharness import PgServer

pytestmark = pytest.mark.postgresql

FAST = sr.RetryPolicy(attempts=5, initial_backoff=0.01, max_backoff=0.05)


@functools.cache
def _wrapper_classes() -> dict[str, type[BaseException]]:
    """The wrapper's three failover errors, as its SQLAlchemy dialect raises them.

    Built on first use: psycopg is a PostgreSQL-env dependency, and this module is
    collected everywhere.
    """
    import psycopg

    base = type("FailoverError", (psycopg.OperationalError,), {"__module__": _MODULE})
    return {
        name: type(name, (base,), {"__module__": _MODULE})
        for name in (
            "FailoverSuccessError",
            "TransactionResolutionUnknownError",
            "FailoverFailedError",
        )
    }


_MODULE = "aws_advanced_python_wrapper"


def _wrapper_error(name: str) -> type[BaseException]:
    return _wrapper_classes()[name]


class _Faults:
    """Raise a wrapper error from the chosen DBAPI call, once, as the wrapper would."""

    def __init__(self) -> None:
        self.on_statement: tuple[str, type[BaseException]] | None = None
        self.on_commit: tuple[bool, type[BaseException]] | None = None

    def install(self, engine: Engine) -> None:
        # Installed before instrument(): the package wraps these, as it wraps
        # the wrapper dialect's own methods.
        dialect = engine.dialect
        execute, commit = dialect.do_execute, dialect.do_commit

        def do_execute(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
            fault = self.on_statement
            if fault is not None and fault[0] in statement:
                self.on_statement = None
                raise fault[1]("[Failover] injected")
            execute(cursor, statement, parameters, context)

        def do_commit(dbapi_connection: Any) -> None:
            fault = self.on_commit
            if fault is None:
                commit(dbapi_connection)
                return
            self.on_commit = None
            applied, cls = fault
            if applied:
                commit(dbapi_connection)  # the failover came after the server committed
            else:
                dbapi_connection.rollback()  # ... or before: the new writer has nothing
            raise cls("[Failover] injected at COMMIT")

        dialect.do_execute = do_execute  # type: ignore[method-assign]
        dialect.do_commit = do_commit  # type: ignore[method-assign]


@pytest.fixture
def wrapped(pg_server: PgServer, pg_database: str) -> Iterator[tuple[Engine, _Faults]]:
    engine = create_engine(pg_server.app_url(pg_database, driver="psycopg"), pool_size=2)
    faults = _Faults()
    faults.install(engine)
    sr.instrument(engine)
    with engine.begin() as conn:
        package_metadata.create_all(conn)
        conn.execute(text("CREATE TABLE IF NOT EXISTS aws_orders (id uuid PRIMARY KEY)"))
        conn.execute(text("TRUNCATE aws_orders"))
    try:
        yield engine, faults
    finally:
        engine.dispose()


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM aws_orders")).scalar_one())


def _order(calls: list[int]) -> Callable[[Session], None]:
    order_id = uuid.uuid4()

    def work(session: Session) -> None:
        calls.append(1)
        session.execute(text("INSERT INTO aws_orders (id) VALUES (:id)"), {"id": order_id})
        session.execute(text("SELECT count(*) FROM aws_orders WHERE id = :id"), {"id": order_id})

    return work


def test_failover_success_re_runs_the_unit_on_the_same_connection(
    wrapped: tuple[Engine, _Faults],
) -> None:
    """FailoverSuccessError (08S02): the connection already leads to the new writer; the
    unit is re-run, nothing is invalidated, the row is there once."""
    engine, faults = wrapped
    faults.on_statement = ("INSERT INTO aws_orders", _wrapper_error("FailoverSuccessError"))
    calls: list[int] = []
    with engine.connect() as conn:
        first = conn.connection.dbapi_connection
    sr.run_transaction_sync(sessionmaker(engine), _order(calls), retry=FAST)
    with engine.connect() as conn:
        assert conn.connection.dbapi_connection is first  # not invalidated
    assert (len(calls), _count(engine)) == (2, 1)


def test_resolution_unknown_before_commit_is_known_not_committed(
    wrapped: tuple[Engine, _Faults],
) -> None:
    """TransactionResolutionUnknownError on a statement inside the transaction: COMMIT
    was never sent, so nothing of it committed: re-run, not CommitOutcomeUnknown."""
    engine, faults = wrapped
    faults.on_statement = (
        "SELECT count(*) FROM aws_orders WHERE",
        _wrapper_error("TransactionResolutionUnknownError"),
    )
    calls: list[int] = []
    sr.run_transaction_sync(sessionmaker(engine), _order(calls), retry=FAST)
    assert (len(calls), _count(engine)) == (2, 1)  # the first attempt's INSERT rolled back


@pytest.mark.parametrize("applied", [True, False], ids=["committed", "not-committed"])
def test_resolution_unknown_at_commit_is_resolved_by_the_idempotency_key(
    wrapped: tuple[Engine, _Faults], applied: bool
) -> None:
    """TransactionResolutionUnknownError at COMMIT (08007): without a key the caller gets
    CommitOutcomeUnknown and nothing is re-run; with one the key says what happened and the
    unit is applied exactly once either way."""
    engine, faults = wrapped
    faults.on_commit = (applied, _wrapper_error("TransactionResolutionUnknownError"))
    calls: list[int] = []
    with pytest.raises(sr.CommitOutcomeUnknown) as caught:
        sr.run_transaction_sync(sessionmaker(engine), _order(calls), retry=FAST)
    assert caught.value.sqlstate == "08007"
    assert (len(calls), _count(engine)) == (1, 1 if applied else 0)

    faults.on_commit = (applied, _wrapper_error("TransactionResolutionUnknownError"))
    keyed: list[int] = []
    key = f"aws-{uuid.uuid4()}"
    before = _count(engine)
    sr.run_transaction_sync(sessionmaker(engine), _order(keyed), retry=FAST, idempotency_key=key)
    assert _count(engine) == before + 1
    assert len(keyed) == (1 if applied else 2)
    with pytest.raises(sr.AlreadyApplied):
        sr.run_transaction_sync(sessionmaker(engine), _order([]), retry=FAST, idempotency_key=key)


def test_failover_failed_is_unavailable_and_retryable(wrapped: tuple[Engine, _Faults]) -> None:
    """FailoverFailedError (no writer reachable) on a statement: retryable, re-run once the
    wrapper has a writer again."""
    engine, faults = wrapped
    faults.on_statement = ("INSERT INTO aws_orders", _wrapper_error("FailoverFailedError"))
    calls: list[int] = []
    sr.run_transaction_sync(sessionmaker(engine), _order(calls), retry=FAST)
    assert (len(calls), _count(engine)) == (2, 1)


@pytest.mark.parametrize(
    ("cls", "expected", "retryable", "sqlstate"),
    [
        ("FailoverSuccessError", sr.ConnectionLost, True, "08S02"),
        ("TransactionResolutionUnknownError", sr.ConnectionLost, True, "08007"),
        ("FailoverFailedError", sr.DatabaseUnavailable, True, "08001"),
    ],
)
def test_translated_by_hand_too(
    cls: str, expected: type[BaseException], retryable: bool, sqlstate: str
) -> None:
    """``translate_error`` on the wrapped error or the wrapper's own exception."""
    raw = _wrapper_error(cls)("[Failover] the active SQL connection has changed")
    for exc in (raw, sa_exc.OperationalError("SELECT 1", {}, raw)):
        err = translate_error(exc)
        assert isinstance(err, expected), err
        assert (err.retryable, err.sqlstate) == (retryable, sqlstate)


def test_a_class_of_that_name_elsewhere_is_not_taken_for_the_wrappers() -> None:
    """Recognised by the wrapper's module, not by name alone."""

    import psycopg

    class Other(psycopg.OperationalError):
        pass

    Other.__name__ = "FailoverSuccessError"
    err = translate_error(sa_exc.OperationalError("SELECT 1", {}, Other("x")))
    assert getattr(err, "sqlstate", None) != "08S02"


async def test_async_engine_the_same(pg_server: PgServer, pg_database: str) -> None:
    """The wrapper's dialect serves ``create_async_engine`` too: the same outcomes there."""
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

    engine = create_async_engine(pg_server.app_url(pg_database, driver="psycopg"))
    faults = _Faults()
    faults.install(engine.sync_engine)
    sr.instrument(engine)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE IF NOT EXISTS aws_orders (id uuid PRIMARY KEY)"))
            await conn.execute(text("TRUNCATE aws_orders"))
        calls: list[int] = []
        order_id = uuid.uuid4()

        async def work(session: AsyncSession) -> None:
            calls.append(1)
            await session.execute(
                text("INSERT INTO aws_orders (id) VALUES (:id)"), {"id": order_id}
            )

        faults.on_statement = (
            "INSERT INTO aws_orders",
            _wrapper_error("TransactionResolutionUnknownError"),
        )
        await sr.run_transaction(async_sessionmaker(engine), work, retry=FAST)
        faults.on_commit = (True, _wrapper_error("TransactionResolutionUnknownError"))
        with pytest.raises(sr.CommitOutcomeUnknown):
            await sr.run_transaction(
                async_sessionmaker(engine), lambda s: s.execute(text("SELECT 1")), retry=FAST
            )
        async with engine.connect() as conn:
            count = (await conn.execute(text("SELECT count(*) FROM aws_orders"))).scalar_one()
    finally:
        await engine.dispose()
    assert (len(calls), count) == (2, 1)
