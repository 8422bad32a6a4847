"""inject_fault on MariaDB: each fault through the real driver, translated and re-run as a real one."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import instrument, run_transaction_sync
from sqlalchemy_resilience.testing import inject_fault
from tests.mysqlharness import MariaDBServer


@pytest.mark.parametrize(
    ("fault", "expected", "reruns"),
    [
        ("deadlock", sr.DeadlockDetected, True),
        ("lock_not_available", sr.LockNotAvailable, True),
        ("read_only", sr.ReadOnlyServer, True),
        ("disconnect", sr.ConnectionLost, True),
        ("query_canceled", sr.QueryTimeout, False),
    ],
)
def test_each_fault_is_what_the_server_would_send(
    mariadb_server: MariaDBServer,
    mariadb_database: str,
    fault: str,
    expected: type[sr.DatabaseFailure],
    reruns: bool,
) -> None:
    engine = create_engine(mariadb_server.app_url(mariadb_database, driver="pymysql"))
    instrument(engine)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS counter (id int PRIMARY KEY, n int)"))
            conn.execute(text("REPLACE INTO counter VALUES (1, 0)"))

        def bump(session: Session) -> None:
            session.execute(text("UPDATE counter SET n = n + 1 WHERE id = 1"))

        policy = sr.RetryPolicy(attempts=3, initial_backoff=0)
        with inject_fault(engine, fault, match="UPDATE counter") as injected:  # type: ignore[arg-type]
            if reruns:
                run_transaction_sync(sessionmaker(engine), bump, retry=policy)
            else:
                with pytest.raises(expected):
                    run_transaction_sync(sessionmaker(engine), bump, retry=policy)
        assert injected.fired == 1
        with engine.connect() as conn:
            n = conn.execute(text("SELECT n FROM counter WHERE id = 1")).scalar_one()
        assert n == (1 if reruns else 0)  # re-run once, applied once
        if reruns:
            with inject_fault(engine, fault, match="UPDATE counter"), pytest.raises(expected):  # type: ignore[arg-type]
                run_transaction_sync(sessionmaker(engine), bump, retry=sr.RetryPolicy(attempts=1))
    finally:
        engine.dispose()
