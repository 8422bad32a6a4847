"""run_migrations in real processes: three at once, a lock held by the application, a SIGKILL mid-way."""

from __future__ import annotations

import os
import signal
import statistics
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.engine import URL, Engine, make_url

from sqlalchemy_resilience.cli.demo.migration_project import alembic, write_project
from sqlalchemy_resilience.migrations import MigrationSettings, verify_migrations
from sqlalchemy_resilience.schema import migration_checksums
from tests.pgharness import PgServer
from tests.waiting import wait_until

from .processes import finish, kill_when_it_says


def _engine(url: URL) -> Engine:
    return create_engine(
        url.set(drivername="postgresql+psycopg") if url.get_backend_name() == "postgresql" else url
    )


def test_three_processes_upgrade_at_once(database: URL, tmp_path: Path) -> None:
    """Exactly one applies each revision; the others wait for the lock, find head, exit 0."""
    ini = write_project(tmp_path)
    procs = [alembic(ini, database, "upgrade", "head", sleep_r1="1.5") for _ in range(3)]
    results = [finish(p) for p in procs]
    assert [code for code, _ in results] == [0, 0, 0], results
    engine = _engine(database)
    try:
        with engine.connect() as conn:
            log = conn.execute(text("SELECT revision, pid FROM mig_log ORDER BY revision")).all()
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
            checksums = conn.execute(select(migration_checksums.c.revision)).scalars().all()
            columns = [c["name"] for c in inspect(conn).get_columns("mig_items")]
    finally:
        engine.dispose()
    assert [row.revision for row in log] == ["r1", "r2", "r3"]
    assert len({row.pid for row in log}) == 1  # one process applied all three
    assert version == "r3" and sorted(checksums) == ["r1", "r2", "r3"] and "note" in columns
    waited = [out for _, out in results if "waited" in out and "for the migration lock" in out]
    applied = [out for _, out in results if "Running upgrade  -> r1" in out]
    assert len(applied) == 1 and len(waited) == 2, results


@pytest.mark.postgresql
def test_a_blocked_migration_gives_up_and_traffic_keeps_flowing(
    pg_server: PgServer, tmp_path: Path
) -> None:
    """A transaction holds mig_items for 8 s: r2 (ALTER TABLE) gives up after lock_timeout x 3 tries,
    with a clear error, while the application's reads of that table keep being served."""
    name = f"mig_blocked_{os.getpid()}"
    pg_server.create_database(name)
    url = pg_server.app_url(name, driver="psycopg")
    ini = write_project(tmp_path)
    try:
        assert finish(alembic(ini, url, "upgrade", "r1"))[0] == 0
        engine = create_engine(url, pool_size=3)
        latencies: list[float] = []
        errors: list[BaseException] = []
        stop = threading.Event()

        def reads() -> None:
            while not stop.is_set():
                began = time.perf_counter()
                try:
                    with engine.connect() as conn:
                        conn.execute(text("SELECT count(*) FROM mig_items")).scalar()
                except Exception as exc:
                    errors.append(exc)
                latencies.append(time.perf_counter() - began)
                time.sleep(0.01)  # pacing of the application's reads (not a wait)

        holder = engine.connect()
        holder.execute(text("SELECT * FROM mig_items"))  # ACCESS SHARE, held until rollback
        reader = threading.Thread(target=reads)
        reader.start()
        try:
            began = time.monotonic()
            code, out = finish(
                alembic(
                    ini,
                    url,
                    "upgrade",
                    "head",
                    lock_timeout="0.3",
                    lock_retries="2",
                    retry_backoff="0.2",
                )
            )
            took = time.monotonic() - began
        finally:
            holder.rollback()
            holder.close()
            stop.set()
            reader.join()
        assert code != 0, out
        assert (
            "FAILED: a migration could not get a table lock within lock_timeout (300ms) in 3 tries"
            in out
        )
        assert "Traceback" not in out
        assert out.count("gave up waiting for a lock after lock_timeout (300ms)") == 2, out
        assert took < 8, took  # gave up long before the holder let go
        assert errors == []
        p99 = statistics.quantiles(latencies, n=100)[98]
        print(
            f"\napplication reads while the migration waited: {len(latencies)}, p99 {p99 * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
        )
        assert p99 < 1.5  # each stall is bounded by lock_timeout (0.3 s), not by the holder (8 s)
        with engine.connect() as conn:
            assert (
                conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "r1"
            )
        engine.dispose()
    finally:
        pg_server.drop_database(name)


@pytest.mark.postgresql
def test_sigkill_mid_migration_leaves_a_consistent_schema(
    pg_server: PgServer, tmp_path: Path
) -> None:
    """SIGKILL during r2: its column, version and checksum are rolled back together; the re-run succeeds."""
    from psycopg import sql

    name = f"mig_killed_{os.getpid()}"
    pg_server.create_database(name)
    # A killed client leaves its backend in pg_sleep, holding the migration
    # lock, until the server notices the socket is gone: with this set (the
    # setting PostgreSQL 14+ recommends for exactly that) it notices within
    # 100 ms, as a production server configured for it would, instead of
    # when the sleep ends 30 s later.
    pg_server.execute(
        sql.SQL("ALTER DATABASE {} SET client_connection_check_interval = '100ms'").format(
            sql.Identifier(name)
        )
    )
    url = pg_server.app_url(name, driver="psycopg")
    ini = write_project(tmp_path)
    engine = create_engine(url)
    try:
        proc = alembic(ini, url, "upgrade", "head", sleep_r2="30")
        with engine.connect() as conn:

            def r2_running() -> bool:
                sleeping = conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()"
                    )
                ).scalar()
                conn.rollback()
                return bool(sleeping)

            wait_until(r2_running, timeout=30, what="r2's statement on the server")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        with engine.connect() as conn:
            assert (
                conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "r1"
            )
            assert "note" not in [c["name"] for c in inspect(conn).get_columns("mig_items")]
            assert conn.execute(select(migration_checksums.c.revision)).scalars().all() == ["r1"]
        code, out = finish(alembic(ini, url, "upgrade", "head", lock_wait="30"))
        assert code == 0, out
        with engine.connect() as conn:
            assert (
                conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "r3"
            )
        report = verify_migrations(str(ini), url=url)
        assert report.ok and report.applied == ("r1", "r2", "r3"), report
    finally:
        engine.dispose()
        pg_server.drop_database(name)


def test_verify_finds_edited_and_unknown_revisions(database: URL, tmp_path: Path) -> None:
    """An applied revision edited afterwards, and a version table naming a revision the scripts lack."""
    ini = write_project(tmp_path)
    assert finish(alembic(ini, database, "upgrade", "head"))[0] == 0
    assert verify_migrations(str(ini), url=database).ok
    r2 = tmp_path / "migrations" / "versions" / "r2.py"
    r2.write_text(r2.read_text() + "\n# edited after it ran\n")
    report = verify_migrations(str(ini), url=database)
    assert [(f.kind, f.revision) for f in report.problems] == [("edited", "r2")]
    engine = _engine(database)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'r9'"))
    report = verify_migrations(str(ini), url=database)
    assert ("unknown", "r9") in [(f.kind, f.revision) for f in report.problems]
    assert not report.ok
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'r3'"))
    (tmp_path / "migrations" / "versions" / "r3.py").unlink()
    report = verify_migrations(str(ini), url=database)
    assert [(f.kind, f.revision, f.detail) for f in report.problems] == [
        ("missing", "r3", "r3.py is gone from the scripts")
    ]
    engine.dispose()


def test_offline_sql_takes_the_same_lock_and_timeouts(tmp_path: Path) -> None:
    """`alembic upgrade head --sql` on PostgreSQL emits the advisory lock and set_config lines."""
    ini = write_project(tmp_path)
    code, out = finish(alembic(ini, "postgresql+psycopg://u@h/db", "upgrade", "head", "--sql"))
    assert code == 0, out
    assert "pg_advisory_lock(" in out and "pg_advisory_unlock(" in out
    assert "set_config('lock_timeout', '5000ms', false)" in out
    assert out.count("BEGIN;") == 3  # one transaction per migration


def test_settings_are_validated() -> None:
    """Bad options name themselves and what is allowed."""
    with pytest.raises(ValueError, match="lock_retries must be an int from 0 to 100"):
        MigrationSettings(lock_retries=-1)
    with pytest.raises(ValueError, match="lock_timeout"):
        MigrationSettings(lock_timeout=0)
    with pytest.raises(TypeError, match="lock_wait must be seconds"):
        MigrationSettings(lock_wait="soon")  # type: ignore[arg-type]
    assert MigrationSettings(lock_timeout=2, statement_timeout=None).timeouts == {
        "lock_timeout": 2.0
    }


def test_waiting_longer_than_lock_wait_is_one_clear_line(database: URL, tmp_path: Path) -> None:
    """A second instance with lock_wait=0.5 while the first migrates for 4 s: exit 1, one FAILED line."""
    ini = write_project(tmp_path)
    first = alembic(ini, database, "upgrade", "head", sleep_r1="4", announce="1")
    assert first.stdout.readline() == "r1 sleeping\n"  # it holds the lock now
    code, out = finish(alembic(ini, database, "upgrade", "head", lock_wait="0.5"))
    assert finish(first)[0] == 0
    assert code != 0 and "Traceback" not in out, out
    assert "FAILED: waited 0." in out and "for the migration lock" in out
    assert "raise lock_wait to wait longer" in out


@pytest.mark.postgresql
def test_create_index_concurrently_in_an_autocommit_block(
    pg_server: PgServer, tmp_path: Path
) -> None:
    """r4 builds an index CONCURRENTLY outside the transaction: applied under the lock and timeouts,
    recorded, and the downgrade (also concurrent) works."""
    name = f"mig_concurrent_{os.getpid()}"
    pg_server.create_database(name)
    url = pg_server.app_url(name, driver="psycopg")
    ini = write_project(tmp_path, variant="concurrently")
    engine = create_engine(url)
    try:
        code, out = finish(alembic(ini, url, "upgrade", "head"))
        assert code == 0, out
        with engine.connect() as conn:
            indexes = [i["name"] for i in inspect(conn).get_indexes("mig_items")]
            assert "ix_items_name" in indexes
            assert sorted(conn.execute(select(migration_checksums.c.revision)).scalars()) == [
                "r1",
                "r2",
                "r3",
                "r4",
            ]
            assert (
                conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "r4"
            )
        code, out = finish(alembic(ini, url, "downgrade", "r3"))
        assert code == 0, out
        with engine.connect() as conn:
            assert "ix_items_name" not in [
                i["name"] for i in inspect(conn).get_indexes("mig_items")
            ]
    finally:
        engine.dispose()
        pg_server.drop_database(name)


def _state(url: URL) -> tuple[str, list[str], list[str], list[str]]:
    """(version, mig_items columns, checksummed revisions, tables) of a migrated database."""
    engine = _engine(url.set(drivername="sqlite") if url.get_backend_name() == "sqlite" else url)
    try:
        with engine.connect() as conn:
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
            columns = [c["name"] for c in inspect(conn).get_columns("mig_items")]
            checksums = sorted(conn.execute(select(migration_checksums.c.revision)).scalars())
            tables = sorted(inspect(conn).get_table_names())
    finally:
        engine.dispose()
    return version, columns, checksums, tables


@pytest.mark.parametrize(
    "backend",
    ["sqlite", "sqlite+aiosqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)],
)
def test_a_revision_failing_half_way_leaves_nothing_of_itself(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """S29: r2 adds its column, then raises: column, version and checksum rolled back together; the re-run succeeds."""
    if backend == "postgresql":
        server: PgServer = request.getfixturevalue("pg_server")
        name = f"mig_half_{os.getpid()}_{time.monotonic_ns() % 10**9}"
        server.create_database(name)
        request.addfinalizer(lambda: server.drop_database(name))
        url = server.app_url(name, driver="psycopg")
    else:
        url = make_url(f"{backend}:///{tmp_path / 'half.sqlite'}")
    ini = write_project(tmp_path / "project")
    code, out = finish(alembic(ini, url, "upgrade", "head", fail_r2="1"))
    assert code != 0 and "r2 failed half-way" in out, out
    assert _state(url)[:3] == ("r1", ["id", "name"], ["r1"])
    code, out = finish(alembic(ini, url, "upgrade", "head"))
    assert code == 0, out
    version, columns, checksums, _ = _state(url)
    assert (version, "note" in columns, checksums) == ("r3", True, ["r1", "r2", "r3"])


@pytest.mark.parametrize("sqlite_driver", ["sqlite", "sqlite+aiosqlite"])
def test_sqlite_sigkill_mid_migration_leaves_a_consistent_schema(
    tmp_path: Path, sqlite_driver: str
) -> None:
    """S30: SIGKILL while r2 holds its DDL uncommitted (pysqlite, aiosqlite): after it, r1 and nothing of r2."""
    url = make_url(f"{sqlite_driver}:///{tmp_path / 'killed.sqlite'}")
    ini = write_project(tmp_path / "project")
    proc = alembic(ini, url, "upgrade", "head", sleep_r2="60", announce="1")
    # The revision's own line, printed after its DDL, before it sleeps.
    kill_when_it_says(proc, "r2 sleeping")
    # The next connection rolls the hot journal back: r2's column is gone.
    assert _state(url)[:3] == ("r1", ["id", "name"], ["r1"])
    code, out = finish(alembic(ini, url, "upgrade", "head"))
    assert code == 0, out
    assert _state(url)[0] == "r3"
    report = verify_migrations(str(ini), url=url.set(drivername="sqlite"))
    assert report.ok and report.applied == ("r1", "r2", "r3"), report


def test_a_wrong_password_fails_at_once_in_one_line(database: URL, tmp_path: Path) -> None:
    """Connecting is retried for a server still starting, never for refused credentials
    (28P01 / MySQL 1045): the deploy fails at once, with one line naming the class."""
    if database.get_backend_name() == "sqlite":
        pytest.skip("SQLite has no credentials")
    ini = write_project(tmp_path)
    started = time.monotonic()
    code, out = finish(alembic(ini, database.set(password="Wr0ngSecret"), "upgrade", "head"))
    assert code != 0 and "cannot connect to migrate: AuthenticationFailed" in out, out
    assert "Wr0ngSecret" not in out and "Traceback" not in out, out
    # The default connect retry would spend up to 60 s on a retryable error.
    assert time.monotonic() - started < 30, out
