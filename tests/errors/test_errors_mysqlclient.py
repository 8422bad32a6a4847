"""mysqlclient (``mysql+mysqldb``) on the suite's MariaDB: the same classes and retry rules as
PyMySQL, read from MySQLdb's own exceptions, and a unit of work re-run after its session is killed.

mysqlclient builds from source against ``libmariadb-dev``; where it did not build, these
tests skip with that reason (in CI, where ``.ci/run`` installs the headers, they fail).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import RetryPolicy, instrument
from tests.mysqlharness import MariaDBServer


@pytest.fixture(autouse=True)
def _mysqlclient() -> None:
    # Checked per test, not at import: the SQLite envs collect this module and deselect it.
    try:
        import MySQLdb  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the machine
        if os.environ.get("CI"):
            pytest.fail(
                f"mysqlclient is not installed ({exc}): .ci/run installs libmariadb-dev so that it builds"
            )
        pytest.skip(f"mysqlclient is not installed ({exc})")


@pytest.fixture
def engine(mariadb_server: MariaDBServer, mariadb_database: str) -> Iterator[Engine]:
    """An instrumented mysqlclient engine with a table ``mc (id PRIMARY KEY, v)`` holding (1, 1)."""
    engine = create_engine(mariadb_server.app_url(mariadb_database, driver="mysqldb"))
    instrument(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS mc"))
        conn.execute(text("CREATE TABLE mc (id int PRIMARY KEY, v int) ENGINE=InnoDB"))
        conn.execute(text("INSERT INTO mc VALUES (1, 1)"))
    try:
        yield engine
    finally:
        engine.dispose()


def test_statement_errors_have_their_classes(engine: Engine) -> None:
    """1062 a unique violation, 1064 a bad statement: never retried."""
    with pytest.raises(sr.UniqueViolation) as dup, engine.begin() as conn:
        conn.execute(text("INSERT INTO mc VALUES (1, 2)"))
    assert (dup.value.driver_code, dup.value.retryable, dup.value.constraint_name) == (
        "1062",
        False,
        "PRIMARY",
    )
    with pytest.raises(sr.InvalidStatement) as bad, engine.begin() as conn:
        conn.execute(text("SELEC 1"))
    assert (bad.value.driver_code, bad.value.retryable) == ("1064", False)


def test_a_lock_wait_timeout_is_lock_not_available(engine: Engine) -> None:
    """1205 (only the statement rolled back): LockNotAvailable, retryable."""
    with engine.connect() as holder, engine.connect() as waiter:
        holder.execute(text("SELECT id FROM mc WHERE id = 1 FOR UPDATE"))
        waiter.execute(text("SET SESSION innodb_lock_wait_timeout = 1"))
        with pytest.raises(sr.LockNotAvailable) as waited:
            waiter.execute(text("UPDATE mc SET v = 3 WHERE id = 1"))
        waiter.rollback()
        holder.rollback()
    assert (waited.value.driver_code, waited.value.retryable) == ("1205", True)


def test_a_killed_session_is_lost_and_the_unit_is_rerun(
    engine: Engine, mariadb_server: MariaDBServer
) -> None:
    """KILL CONNECTION of the session in the middle of a unit: ConnectionLost (2013), the
    connection discarded, and run_transaction_sync runs the unit again, once more only."""
    attempts = 0

    def unit(session: Session) -> int:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            session_id = session.execute(text("SELECT CONNECTION_ID()")).scalar_one()
            mariadb_server.execute("KILL CONNECTION %s", (session_id,))
        session.execute(text("UPDATE mc SET v = v + 1 WHERE id = 1"))
        return int(session.execute(text("SELECT v FROM mc WHERE id = 1")).scalar_one())

    policy = RetryPolicy(attempts=3, initial_backoff=0.001, max_backoff=0.01)
    assert sr.run_transaction_sync(sessionmaker(engine), unit, retry=policy) == 2
    assert attempts == 2
    with engine.connect() as conn:
        assert conn.execute(text("SELECT v FROM mc WHERE id = 1")).scalar_one() == 2


def test_a_refused_login_is_not_retried(
    mariadb_server: MariaDBServer, mariadb_database: str
) -> None:
    """1045 at connect: AuthenticationFailed, not retryable, the password not shown."""
    url = mariadb_server.app_url(mariadb_database, driver="mysqldb").set(password="Wr0ngSecret")
    wrong = create_engine(url)
    instrument(wrong)
    with pytest.raises(sr.AuthenticationFailed) as refused:
        wrong.connect()
    assert (refused.value.driver_code, refused.value.retryable) == ("1045", False)
    assert "Wr0ngSecret" not in str(refused.value)
    wrong.dispose()
