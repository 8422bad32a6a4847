"""Galera on a real three-node cluster: what a node says when it cannot take work, and
what the package does with it.

* 1047 (a node rejecting queries, or out of the primary component): ``SELECT 1``
  and the pool's pre-ping pass on such a node, so the connection would stay in
  the pool; it is discarded and the unit of work re-run on another node.
* 1213 at COMMIT: a certification conflict with a transaction committed on
  another node; the transaction is known not committed, and re-run.
* 1105 "Maximum writeset size exceeded": ``WriteSetTooLarge``, never retried.
* The writer check refuses a node that is not synced (a desynced node, a donor).
"""

from __future__ import annotations

import logging
import threading

import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import RetryPolicy, instrument, run_transaction_sync
from sqlalchemy_resilience.deploy import read_your_writes
from sqlalchemy_resilience.pool import ping_idle_connections
from tests.waiting import wait_until

from .conftest import Galera

QUICK = RetryPolicy(attempts=6, initial_backoff=0.001, max_backoff=0.01)


@pytest.fixture
def table(galera: Galera) -> None:
    """A fresh ``items`` table with one row (id 0, v 0), on every node."""
    galera.execute(0, "DROP TABLE IF EXISTS t_galera.items")
    galera.execute(0, "CREATE TABLE t_galera.items (id int PRIMARY KEY, v int NOT NULL, note text)")
    galera.execute(0, "INSERT INTO t_galera.items VALUES (0, 0, NULL)")


def _engine(url: object, **options: object) -> Engine:
    engine = create_engine(url, **options)  # type: ignore[call-overload]
    instrument(engine)
    return engine


def _retried(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("retrying after ")]


def test_the_cluster_replicates(galera: Galera, table: None) -> None:
    """Three nodes in the primary component, synced; a write on one is read on another."""
    for node in range(3):
        status = galera.status(node)
        assert status["wsrep_cluster_size"] == "3"
        assert status["wsrep_cluster_status"] == "Primary"
        assert status["wsrep_local_state_comment"] == "Synced"
    galera.execute(0, "UPDATE t_galera.items SET v = 7 WHERE id = 0")
    with galera.admin(2) as conn, conn.cursor() as cursor:
        cursor.execute("SET SESSION wsrep_sync_wait = 1")  # read after the cluster's writes
        cursor.execute("SELECT v FROM t_galera.items WHERE id = 0")
        assert cursor.fetchone() == (7,)


READS = 500


def _stale_reads(writer: Engine, reader: Engine) -> int:
    """Commit a new value on the writer's node, read it at once on the reader's: how
    many of READS reads saw an older value."""
    stale = 0
    with writer.connect() as w, reader.connect() as r:
        for value in range(1, READS + 1):
            w.execute(text("UPDATE t_galera.items SET v = :v WHERE id = 0"), {"v": value})
            w.commit()
            seen = r.execute(text("SELECT v FROM t_galera.items WHERE id = 0")).scalar_one()
            r.rollback()  # a fresh snapshot for the next read
            stale += seen != value
    return stale


def test_read_your_writes_on_another_node(galera: Galera, table: None) -> None:
    """Commit on node0, read at once on node1: with wsrep_sync_wait 0 (the default) some
    reads see an older value (counted, printed: the machine decides how many); with
    read_your_writes(engine) none does."""
    writer = _engine(galera.url(0))
    default, waiting = _engine(galera.url(1)), _engine(galera.url(1))
    # [read-your-writes]
    waits = read_your_writes(waiting)  # wsrep_sync_wait = 1 on each new connection
    # [/read-your-writes]
    try:
        without = _stale_reads(writer, default)
        with_it = _stale_reads(writer, waiting)
    finally:
        waits.detach()
        for engine in (writer, default, waiting):
            engine.dispose()
    print(
        f"\n[read your writes] stale reads on another node right after a commit: "
        f"{without} of {READS} with wsrep_sync_wait 0, {with_it} of {READS} with read_your_writes"
    )
    assert with_it == 0
    assert waits.connections == 1


def test_a_node_rejecting_queries_is_left_and_the_unit_rerun_on_another(
    galera: Galera, table: None, caplog: pytest.LogCaptureFixture
) -> None:
    """node1 rejects queries (1047) behind HAProxy, whose handshake check still passes:
    every unit that lands there is re-run on a fresh connection, which the round robin
    sends to another node; each such connection is discarded, none reused."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience.retry")
    engine = _engine(galera.url(), pool_size=3, pool_pre_ping=True)
    discarded: list[object] = []
    event.listen(engine, "invalidate", lambda conn, record, exc: discarded.append(exc))
    Sessions = sessionmaker(engine)
    galera.execute(1, "SET GLOBAL wsrep_reject_queries = ALL")
    try:
        assert galera.proxy.states()["node1"] == "UP"  # the proxy's check cannot tell
        for i in range(1, 10):
            engine.dispose()  # a new connection per unit: the round robin moves on

            def insert(session: Session, i: int = i) -> None:
                session.execute(text("INSERT INTO items (id, v) VALUES (:i, :i)"), {"i": i})

            run_transaction_sync(Sessions, insert, retry=QUICK)
    finally:
        galera.execute(1, "SET GLOBAL wsrep_reject_queries = NONE")
        engine.dispose()
    rejected = [m for m in _retried(caplog) if "[1047]" in m]
    assert rejected and all(m.startswith("retrying after DatabaseUnavailable") for m in rejected)
    assert len(discarded) >= len(rejected)
    count = galera.execute(0, "SELECT count(*) FROM t_galera.items WHERE id > 0")[0][0]
    assert count == 9


def test_a_certification_conflict_at_commit_is_rerun(
    galera: Galera, table: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Two nodes increment the same row at once; node0 commits first, so node1's COMMIT
    fails certification (1213): known not committed, re-run, and both increments land."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience.retry")
    first, second = _engine(galera.url(0)), _engine(galera.url(1))
    updated, committed = threading.Event(), threading.Event()
    attempts = 0

    def loser(session: Session) -> None:
        nonlocal attempts
        attempts += 1
        session.execute(text("UPDATE items SET v = v + 1 WHERE id = 0"))
        if attempts == 1:
            updated.set()
            assert committed.wait(30), "the other node never committed"

    def winner(session: Session) -> None:
        session.execute(text("UPDATE items SET v = v + 1 WHERE id = 0"))

    try:
        thread = threading.Thread(
            target=run_transaction_sync, args=(sessionmaker(second), loser), kwargs={"retry": QUICK}
        )
        thread.start()
        assert updated.wait(30)
        run_transaction_sync(sessionmaker(first), winner, retry=QUICK)
        committed.set()
        thread.join(60)
    finally:
        first.dispose()
        second.dispose()
    assert attempts == 2
    assert any(m.startswith("retrying after DeadlockDetected [1213]") for m in _retried(caplog))
    with galera.admin(1) as conn, conn.cursor() as cursor:
        cursor.execute("SET SESSION wsrep_sync_wait = 1")
        cursor.execute("SELECT v FROM t_galera.items WHERE id = 0")
        assert cursor.fetchone() == (2,)


def test_a_write_set_over_the_limit_is_refused_once(
    galera: Galera, table: None, caplog: pytest.LogCaptureFixture
) -> None:
    """wsrep_max_ws_size at its minimum: an 8 KB value is refused (1105) as WriteSetTooLarge,
    and not retried."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience.retry")
    engine = _engine(galera.url(0))
    galera.execute(0, "SET GLOBAL wsrep_max_ws_size = 1024")
    try:

        def big(session: Session) -> None:
            session.execute(text("UPDATE items SET note = :n WHERE id = 0"), {"n": "x" * 8000})

        with pytest.raises(sr.WriteSetTooLarge) as info:
            run_transaction_sync(sessionmaker(engine), big, retry=QUICK)
    finally:
        galera.execute(0, "SET GLOBAL wsrep_max_ws_size = 2147483647")
        engine.dispose()
    assert (info.value.driver_code, info.value.retryable) == ("1105", False)
    assert _retried(caplog) == []


def test_the_writer_check_refuses_a_node_that_is_not_synced(galera: Galera, table: None) -> None:
    """require_writer on a desynced node (what a donor is during a state transfer): a new
    connection is refused with a retryable ReadOnlyServer; synced again, it is taken."""
    engine = _engine(galera.url(2))
    checker = ping_idle_connections(engine, after=30, timeout=2, require_writer=True)
    try:
        with engine.connect() as conn:  # the dialect learns it talks to MariaDB
            conn.execute(text("SELECT 1"))
        engine.dispose()
        galera.execute(2, "SET GLOBAL wsrep_desync = ON")
        try:
            wait_until(
                lambda: galera.status(2)["wsrep_local_state_comment"] != "Synced",
                timeout=10,
                what="node2 out of Synced",
            )
            with pytest.raises(sr.ReadOnlyServer) as info, engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            assert info.value.retryable and info.value.driver_code == "1290"
            # A health endpoint says why (an engine without the checkout's check).
            plain = _engine(galera.url(2))
            try:
                report = sr.health_check_sync(plain, timeout=5, writer=True)
            finally:
                plain.dispose()
            assert (report.status, report.writable) == ("unhealthy", False)
            assert any("wsrep_local_state_comment Donor/Desynced" in w for w in report.warnings)
        finally:
            galera.execute(2, "SET GLOBAL wsrep_desync = OFF")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar_one() == 1
    finally:
        checker.detach()
        engine.dispose()
