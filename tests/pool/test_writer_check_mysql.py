"""require_writer on MariaDB: a read-only server (``@@read_only``) is never handed out.

What sqlalchemy#7839 asks for on Aurora MySQL: after a failover the old writer
is read-only, ``pool_pre_ping`` passes on it, and every write fails until the
application restarts. The writer check asks the server at checkout (a new
connection, or one idle past ``after``) and discards the pool's connections
to it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session, sessionmaker

import sqlalchemy_resilience as sr
from sqlalchemy_resilience.pool import ping_idle_connections
from tests.clock import FakeClock
from tests.mysqlharness import MariaDBServer

pytestmark = pytest.mark.mariadb


@pytest.fixture
def engine(mariadb_server: MariaDBServer, mariadb_database: str) -> Iterator[Engine]:
    engine = create_engine(
        mariadb_server.app_url(mariadb_database, driver="pymysql"), pool_size=3, max_overflow=0
    )
    sr.instrument(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS w"))
        conn.execute(text("CREATE TABLE w (id int PRIMARY KEY)"))
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def read_only(mariadb_server: MariaDBServer) -> Iterator[None]:
    """The server turned read-only for the test (what a demoted writer is), then back."""
    yield
    mariadb_server.execute("SET GLOBAL read_only = OFF")


def _write(engine: Engine, n: int) -> None:
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO w VALUES (:n)"), {"n": n})


def test_a_pooled_connection_to_a_read_only_server_is_refused_and_the_pool_discarded(
    engine: Engine, mariadb_server: MariaDBServer, read_only: None
) -> None:
    clock = FakeClock.wall()
    checker = ping_idle_connections(engine, after=1, timeout=2, require_writer=True, clock=clock)
    try:
        connections = [engine.connect() for _ in range(3)]  # three pooled connections
        before = {conn.execute(text("SELECT CONNECTION_ID()")).scalar_one() for conn in connections}
        for conn in connections:
            conn.close()
        clock.advance(1.5)  # idle past `after`: the next checkout asks the server
        mariadb_server.execute("SET GLOBAL read_only = ON")
        with pytest.raises(sr.ReadOnlyServer) as info:
            _write(engine, 1)
        # The pooled one was refused, and so was the new connection that replaced it.
        assert checker.read_only == 2
        assert (info.value.driver_code, info.value.retryable) == ("1290", True)
        mariadb_server.execute("SET GLOBAL read_only = OFF")
        _write(engine, 2)
        with engine.connect() as conn:  # a new connection: the old ones were discarded
            assert conn.execute(text("SELECT CONNECTION_ID()")).scalar_one() not in before
    finally:
        checker.detach()


def test_a_new_connection_to_a_read_only_server_is_retried_until_a_writer_answers(
    engine: Engine, mariadb_server: MariaDBServer, read_only: None
) -> None:
    checker = ping_idle_connections(engine, after=30, timeout=2, require_writer=True)
    engine.dispose()
    mariadb_server.execute("SET GLOBAL read_only = ON")
    refused: list[str] = []

    class FailoverCompletes(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            refused.append(record.getMessage())
            if len(refused) == 3:  # a writer answers again
                mariadb_server.execute("SET GLOBAL read_only = OFF")

    def unit(session: Session) -> None:
        session.execute(text("INSERT INTO w VALUES (3)"))

    retries = logging.getLogger("sqlalchemy_resilience.retry")
    handler = FailoverCompletes(logging.WARNING)
    retries.addHandler(handler)
    try:
        sr.run_transaction_sync(
            sessionmaker(engine),
            unit,
            retry=sr.RetryPolicy(attempts=10, initial_backoff=0.001, max_backoff=0.005),
        )
    finally:
        retries.removeHandler(handler)
        checker.detach()
    assert len(refused) == 3 and checker.read_only == 3
    assert all(message.startswith("retrying after ReadOnlyServer") for message in refused)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM w WHERE id = 3")).scalar_one() == 1


def test_health_check_names_a_read_only_server(
    engine: Engine, mariadb_server: MariaDBServer, read_only: None
) -> None:
    """health_check(writer=True) on a server turned read-only: SELECT 1 passes, the
    writer question does not, and the report says why."""
    assert sr.health_check_sync(engine, timeout=2, writer=True).writable is True
    mariadb_server.execute("SET GLOBAL read_only = ON")
    report = sr.health_check_sync(engine, timeout=2, writer=True)
    assert (report.status, report.writable) == ("unhealthy", False)
    assert "the server takes no writes: read_only" in report.warnings
