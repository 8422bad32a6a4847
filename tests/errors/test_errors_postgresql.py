"""Error translation against a real PostgreSQL, through asyncpg and psycopg.

Each test provokes one SQLSTATE with a recipe from FAULTS.md section 4 and
checks the translated class, ``retryable``, the server's facts and that the
messages are safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import sqlalchemy.exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import instrument
from tests.pgharness import PgServer

CANARY = "CANARY-param-7f3e9c"


@pytest.fixture
async def engine(pg_engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """The module database, instrumented, with the tables the recipes need."""
    instr = instrument(pg_engine)
    async with pg_engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS child, parent, t, ws CASCADE"))
        await conn.execute(
            text(
                "CREATE TABLE parent (id int PRIMARY KEY, email text UNIQUE,"
                " qty int NOT NULL DEFAULT 0 CONSTRAINT qty_non_negative CHECK (qty >= 0))"
            )
        )
        await conn.execute(
            text("CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent(id))")
        )
        await conn.execute(text("CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL DEFAULT 0)"))
        await conn.execute(text("INSERT INTO t VALUES (1, 0), (2, 0)"))
        await conn.execute(text("CREATE TABLE ws (i int PRIMARY KEY, t text)"))
        await conn.execute(text("INSERT INTO ws VALUES (5, 'apple'), (7, 'pear'), (11, 'banana')"))
        await conn.execute(text("INSERT INTO parent (id, email) VALUES (1, 'taken@example.com')"))
    try:
        yield pg_engine
    finally:
        instr.detach()


def assert_safe(err: BaseException, *secrets: str) -> None:
    """No secret in what the package itself writes about the error.

    ``str()`` is SQLAlchemy's own text and shows parameters as the engine's
    ``hide_parameters`` decides (this engine keeps SQLAlchemy's default); the
    package's own forms -- ``safe_text()``, ``summary``, ``repr()``, the facts
    line and the user messages -- never do. test_canary covers the whole chain
    on an engine created with ``hide_parameters=True``.
    """
    assert isinstance(err, sr.DatabaseFailure)
    texts = [
        err.safe_text(),
        err.summary,
        repr(err),
        err.facts_line(),
        err.user_message("en"),
        err.user_message("ja"),
    ]
    for secret in secrets:
        for t in texts:
            assert secret not in t, f"{secret!r} leaked in {t!r}"


def assert_no_waiting_advice(err: sr.ResilienceError) -> None:
    """A failure that waiting will not fix never tells the user to try again, in any locale."""
    for locale, waiting in (("en", "try again"), ("ja", "再度お試し")):
        assert waiting not in err.user_message(locale)


async def test_unique_violation(engine: AsyncEngine) -> None:
    """23505 becomes UniqueViolation, still an IntegrityError, with the constraint and no value."""
    with pytest.raises(sa_exc.IntegrityError) as info:
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO parent (id, email) VALUES (2, :e), (3, :e)"), {"e": CANARY}
            )
    err = info.value
    assert isinstance(err, sr.UniqueViolation)
    assert (err.sqlstate, err.retryable) == ("23505", False)
    assert err.constraint_name == "parent_email_key"
    assert err.table_name == "parent"
    assert err.user_message("en") == "This item already exists."
    assert err.user_message("ja-JP") == "このデータは既に登録されています。"
    assert "parent_email_key" in str(err) and "23505" in str(err)
    assert "INSERT INTO parent" in str(err)
    assert "parent" not in err.user_message("en")
    assert err.__cause__ is err.orig
    assert_safe(err, CANARY)


async def test_foreign_key_violation(engine: AsyncEngine) -> None:
    """23503 becomes ForeignKeyViolation naming the constraint."""
    with pytest.raises(sr.ForeignKeyViolation) as info:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO child VALUES (1, :p)"), {"p": 424242})
    err = info.value
    assert (err.sqlstate, err.retryable, err.constraint_name) == (
        "23503",
        False,
        "child_parent_id_fkey",
    )
    assert_safe(err, "424242")


async def test_not_null_violation(engine: AsyncEngine) -> None:
    """23502 becomes NotNullViolation with the column name."""
    with pytest.raises(sr.NotNullViolation) as info:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO t (id, v) VALUES (:i, NULL)"), {"i": 99})
    assert (info.value.sqlstate, info.value.column_name, info.value.table_name) == (
        "23502",
        "v",
        "t",
    )


async def test_check_violation(engine: AsyncEngine) -> None:
    """23514 becomes CheckViolation; the failing row stays out of every message."""
    with pytest.raises(sr.CheckViolation) as info:
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO parent (id, email, qty) VALUES (9, :e, -5)"), {"e": CANARY}
            )
    assert info.value.constraint_name == "qty_non_negative"
    assert_safe(info.value, CANARY)


async def test_invalid_data(engine: AsyncEngine) -> None:
    """22P02 becomes InvalidData, a DataError; the offending value is redacted everywhere."""
    with pytest.raises(sr.InvalidData) as info:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT CAST(:x AS integer)"), {"x": CANARY})
    err = info.value
    assert isinstance(err, sa_exc.DataError)
    # psycopg: the server's 22P02; asyncpg checks the argument client-side (22000).
    assert err.sqlstate is not None and err.sqlstate.startswith("22")
    assert err.retryable is False
    assert_safe(err, CANARY)


async def test_syntax_error_and_undefined_table(engine: AsyncEngine) -> None:
    """Class 42 becomes InvalidStatement, never retryable."""
    async with engine.connect() as conn:
        with pytest.raises(sr.InvalidStatement) as info:
            await conn.execute(text("SELEC 1"))
        assert info.value.sqlstate == "42601"
    async with engine.connect() as conn:
        with pytest.raises(sr.InvalidStatement) as info:
            await conn.execute(text("SELECT * FROM no_such_table"))
        assert (info.value.sqlstate, info.value.retryable) == ("42P01", False)


async def test_permission_denied(
    engine: AsyncEngine, pg_server: PgServer, pg_database: str
) -> None:
    """42501 becomes PermissionDenied."""
    pg_server.execute("DROP TABLE IF EXISTS admin_only", database=pg_database)
    pg_server.execute("CREATE TABLE admin_only (id int)", database=pg_database)
    with pytest.raises(sr.PermissionDenied) as info:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT * FROM admin_only"))
    assert (info.value.sqlstate, info.value.retryable) == ("42501", False)
    assert info.value.user_message() == "This operation is not permitted."


async def test_deadlock_detected(engine: AsyncEngine) -> None:
    """40P01 (recipe e1): exactly one side is the victim, as a retryable DeadlockDetected."""
    a = await engine.connect()
    b = await engine.connect()
    try:
        await a.execute(text("BEGIN"))
        await b.execute(text("BEGIN"))
        await a.execute(text("UPDATE t SET v = v + 1 WHERE id = 1"))
        await b.execute(text("UPDATE t SET v = v + 1 WHERE id = 2"))

        async def cross(conn: AsyncConnection, row: int) -> None:
            await conn.execute(text("UPDATE t SET v = v + 1 WHERE id = :r"), {"r": row})

        results = await asyncio.gather(cross(a, 2), cross(b, 1), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert len(failures) == 1, results
        victim = failures[0]
        assert isinstance(victim, sr.DeadlockDetected)
        assert isinstance(victim, sa_exc.DBAPIError)
        assert (victim.sqlstate, victim.retryable) == ("40P01", True)
        assert victim.user_message("en").startswith("Your change conflicted")
    finally:
        await a.close()
        await b.close()


async def test_serialization_failure_at_statement(engine: AsyncEngine) -> None:
    """40001 raised by an UPDATE under REPEATABLE READ (recipe e2) is retryable."""
    async with engine.connect() as a:
        a = await a.execution_options(isolation_level="REPEATABLE READ")
        await a.begin()
        await a.execute(text("SELECT v FROM t WHERE id = 1"))
        async with engine.begin() as b:
            await b.execute(text("UPDATE t SET v = v + 10 WHERE id = 1"))
        with pytest.raises(sr.SerializationFailure) as info:
            await a.execute(text("UPDATE t SET v = v - 10 WHERE id = 1"))
        await a.rollback()
    assert (info.value.sqlstate, info.value.retryable) == ("40001", True)


async def test_serialization_failure_at_commit_is_definite(engine: AsyncEngine) -> None:
    """40001 raised by COMMIT (write skew, recipe e3) is a definite, retryable failure, not unknown."""
    a = await engine.connect()
    b = await engine.connect()
    try:
        a = await a.execution_options(isolation_level="SERIALIZABLE")
        b = await b.execution_options(isolation_level="SERIALIZABLE")
        await a.begin()
        await b.begin()
        await a.execute(text("UPDATE ws SET t = 'apple' WHERE t = 'pear'"))
        await b.execute(text("UPDATE ws SET t = 'pear' WHERE t = 'apple'"))
        await a.commit()
        with pytest.raises(sr.SerializationFailure) as info:
            await b.commit()
        assert not isinstance(info.value, sr.CommitOutcomeUnknown)
        assert (info.value.sqlstate, info.value.retryable) == ("40001", True)
    finally:
        await a.close()
        await b.close()


async def test_lock_not_available(engine: AsyncEngine) -> None:
    """55P03 from lock_timeout and from NOWAIT becomes LockNotAvailable, not retried by default."""
    async with engine.connect() as holder:
        await holder.begin()
        await holder.execute(text("SELECT * FROM t WHERE id = 1 FOR UPDATE"))
        async with engine.connect() as b:
            await b.begin()
            await b.execute(text("SET LOCAL lock_timeout = '50ms'"))
            with pytest.raises(sr.LockNotAvailable) as info:
                await b.execute(text("UPDATE t SET v = v + 1 WHERE id = 1"))
            await b.rollback()
        assert (info.value.sqlstate, info.value.retryable) == ("55P03", False)
        async with engine.connect() as c:
            await c.begin()
            with pytest.raises(sr.LockNotAvailable):
                await c.execute(text("SELECT * FROM t WHERE id = 1 FOR UPDATE NOWAIT"))
            await c.rollback()
        await holder.rollback()


async def test_statement_timeout_keeps_connection(engine: AsyncEngine) -> None:
    """57014 becomes QueryTimeout; the connection is not invalidated and is reused."""
    async with engine.connect() as conn:
        pid_before = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        await conn.commit()
        await conn.begin()
        await conn.execute(text("SET LOCAL statement_timeout = '50ms'"))
        with pytest.raises(sr.QueryTimeout) as info:
            await conn.execute(text("SELECT pg_sleep(2)"))
        await conn.rollback()
        assert not info.value.connection_invalidated
        pid_after = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
    assert pid_after == pid_before
    assert (info.value.sqlstate, info.value.retryable) == ("57014", False)


async def test_idle_in_transaction_timeout(engine: AsyncEngine, pg_server: PgServer) -> None:
    """25P03 (recipe e8): the server killed the session, so ConnectionLost, retryable."""
    async with engine.connect() as conn:
        await conn.execute(text("SET idle_in_transaction_session_timeout = '100ms'"))
        await conn.commit()
        await conn.begin()
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        await asyncio.to_thread(pg_server.wait_for, lambda: not pg_server.backend_exists(pid))
        with pytest.raises(sr.ConnectionLost) as info:
            await conn.execute(text("SELECT 2"))
    err = info.value
    assert err.retryable is True
    assert err.connection_invalidated is True
    assert err.sqlstate in {"25P03", "08003", None}


async def test_terminated_backend_is_connection_lost(
    engine: AsyncEngine, pg_server: PgServer, pg_database: str
) -> None:
    """pg_terminate_backend mid-transaction (57P01 / EOF) becomes retryable ConnectionLost."""
    async with engine.connect() as conn:
        await conn.begin()
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        pg_server.execute("SELECT pg_terminate_backend(%s)", (pid,))
        pg_server.wait_for(lambda: pid not in pg_server.backend_pids(database=pg_database))
        with pytest.raises(sr.ConnectionLost) as info:
            await conn.execute(text("SELECT 1"))
    assert info.value.retryable is True
    assert info.value.connection_invalidated is True


async def test_too_many_connections(pg_server: PgServer, pg_database: str, pg_driver: str) -> None:
    """53300 from a role CONNECTION LIMIT becomes TooManyConnections, retryable."""
    pg_server.execute("DROP ROLE IF EXISTS limited")
    pg_server.execute("CREATE ROLE limited LOGIN PASSWORD 'limited-pw' CONNECTION LIMIT 1")
    pg_server.execute(f"GRANT CONNECT ON DATABASE {pg_database} TO limited")
    engine = create_async_engine(
        pg_server.app_url(pg_database, driver=pg_driver, username="limited", password="limited-pw")
    )
    instrument(engine)
    try:
        async with engine.connect() as first:
            await first.execute(text("SELECT 1"))
            with pytest.raises(sr.TooManyConnections) as info:
                async with engine.connect() as second:
                    await second.execute(text("SELECT 1"))
        assert info.value.retryable is True
        assert info.value.sqlstate == "53300"
        assert isinstance(info.value, sr.DatabaseUnavailable)
    finally:
        await engine.dispose()
        pg_server.execute(f"REVOKE CONNECT ON DATABASE {pg_database} FROM limited")
        pg_server.execute("DROP ROLE IF EXISTS limited")


async def test_wrong_password(pg_server: PgServer, pg_database: str, pg_driver: str) -> None:
    """A rejected password becomes AuthenticationFailed, not retryable, and the password never shows."""
    secret = "CANARY-pw-wrong-0c1d"
    engine = create_async_engine(pg_server.app_url(pg_database, driver=pg_driver, password=secret))
    instrument(engine)
    try:
        with pytest.raises(sr.AuthenticationFailed) as info:
            async with engine.connect():
                pass
    finally:
        await engine.dispose()
    assert info.value.retryable is False
    assert_safe(info.value, secret)
    assert_no_waiting_advice(info.value)


async def test_missing_database_is_database_not_found(pg_server: PgServer, pg_driver: str) -> None:
    """3D000 (no such database) becomes DatabaseNotFound: not retryable, and its user
    message does not tell the user to try again."""
    engine = create_async_engine(pg_server.app_url("no_such_database_3d000", driver=pg_driver))
    instrument(engine)
    try:
        with pytest.raises(sr.DatabaseNotFound) as info:
            async with engine.connect():
                pass
    finally:
        await engine.dispose()
    assert info.value.retryable is False
    assert isinstance(info.value, sr.DatabaseUnavailable)
    assert_no_waiting_advice(info.value)


async def test_connection_refused(pg_driver: str) -> None:
    """Nothing listening becomes DatabaseUnavailable, retryable, for both drivers."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    query = "?ssl=disable" if pg_driver == "asyncpg" else ""
    engine = create_async_engine(
        f"postgresql+{pg_driver}://app:CANARY-pw-refused@127.0.0.1:{port}/x{query}"
    )
    instrument(engine)
    try:
        with pytest.raises(sr.DatabaseUnavailable) as info:
            async with engine.connect():
                pass
    finally:
        await engine.dispose()
    assert info.value.retryable is True
    assert isinstance(info.value, sa_exc.OperationalError)
    assert_safe(info.value, "CANARY-pw-refused")


async def test_pool_timeout_is_pool_exhausted(pg_server: PgServer, pg_database: str) -> None:
    """A pool checkout timeout becomes PoolExhausted (a sqlalchemy TimeoutError) with the pool's numbers."""
    engine = create_async_engine(
        pg_server.app_url(pg_database), pool_size=1, max_overflow=0, pool_timeout=0.2
    )
    instrument(engine)
    try:
        async with engine.connect() as held:
            await held.execute(text("SELECT 1"))
            with pytest.raises(sa_exc.TimeoutError) as info:
                async with engine.connect():
                    pass
    finally:
        await engine.dispose()
    err = info.value
    assert isinstance(err, sr.PoolExhausted)
    assert err.retryable is True
    assert err.pool_status["checkedout"] == 1
    assert err.pool_status["size"] == 1
    assert "checkedout=1" in str(err)
