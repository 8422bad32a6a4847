"""MySQL/MariaDB DDL is not transactional: a revision stopped half-way is reported, never re-run unasked.

Real ``alembic`` processes on the suite's MariaDB, with the demo's three-revision
project (``r2`` adds ``mig_items.note``, then logs itself into ``mig_log``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.engine import URL

from sqlalchemy_resilience.cli import main
from sqlalchemy_resilience.cli.demo.migration_project import alembic, write_project
from sqlalchemy_resilience.migrations import verify_migrations
from sqlalchemy_resilience.schema import migration_checksums, migration_steps

from .processes import finish, kill_when_it_says


@pytest.fixture
def url(mariadb_url: URL) -> URL:
    """A fresh, empty MariaDB database (PyMySQL)."""
    return mariadb_url


def _state(url: URL) -> tuple[str, list[str], list[str], list[str]]:
    """(version, mig_items columns, checksummed revisions, revisions marked in flight)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
            columns = [c["name"] for c in inspect(conn).get_columns("mig_items")]
            checksums = sorted(conn.execute(select(migration_checksums.c.revision)).scalars())
            marked = sorted(conn.execute(select(migration_steps.c.revision)).scalars())
    finally:
        engine.dispose()
    return version, columns, checksums, marked


def _problems(ini: Path, url: URL) -> list[tuple[str, str]]:
    return [(f.kind, f.revision) for f in verify_migrations(str(ini), url=url).problems]


def test_a_revision_failing_half_way_is_reported_and_rerun_only_when_asked(
    url: URL, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """r2 adds its column, then raises: the column stays (MySQL committed it), r2 is marked in
    flight, verify says so, a plain re-run refuses in one line; undone by hand, the rerun works."""
    ini = write_project(tmp_path)
    code, out = finish(alembic(ini, url, "upgrade", "head", fail_r2="1"))
    assert code != 0 and "r2 failed half-way" in out, out
    assert _state(url) == ("r1", ["id", "name", "note"], ["r1"], ["r2"])
    report = verify_migrations(str(ini), url=url)
    assert [(f.kind, f.revision) for f in report.problems] == [("interrupted", "r2")]
    detail = report.problems[0].detail
    assert "alembic stamp r2" in detail and "rerun_interrupted=1" in detail, detail

    code, out = finish(alembic(ini, url, "upgrade", "head"))
    assert code != 0, out
    assert "upgrade of revision r2 (alembic_version) started" in out, out
    assert "Traceback" not in out, out
    assert _state(url) == ("r1", ["id", "name", "note"], ["r1"], ["r2"])

    engine = create_engine(url)
    try:
        with engine.begin() as conn:  # the operator undoes what r2 had done
            conn.execute(text("ALTER TABLE mig_items DROP COLUMN note"))
    finally:
        engine.dispose()
    # The package's command line, in-process: refused the same way, then rerun when asked.
    shown = url.render_as_string(hide_password=False)
    assert main(["migrate", shown, "-c", str(ini)]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("sqlalchemy-resilience: migration failed: the upgrade of revision r2")
    assert _state(url)[0] == "r1"
    assert main(["migrate", shown, "-c", str(ini), "--rerun-interrupted"]) == 0
    assert _state(url) == ("r3", ["id", "name", "note"], ["r1", "r2", "r3"], [])
    assert _problems(ini, url) == []


def test_sigkill_inside_a_revision_is_reported_then_stamped_as_finished(
    url: URL, tmp_path: Path
) -> None:
    """SIGKILL after r2's DDL: verify reports r2; stamped as finished by hand, the rest runs."""
    ini = write_project(tmp_path)
    proc = alembic(ini, url, "upgrade", "head", sleep_r2="60", announce="1")
    kill_when_it_says(proc, "r2 sleeping")  # printed after r2's DDL, before it sleeps
    assert _state(url) == ("r1", ["id", "name", "note"], ["r1"], ["r2"])
    assert _problems(ini, url) == [("interrupted", "r2")]

    code, out = finish(alembic(ini, url, "stamp", "r2"))
    assert code == 0, out
    assert _state(url)[3] == []  # the stamp ended the mark
    code, out = finish(alembic(ini, url, "upgrade", "head"))
    assert code == 0, out
    assert _state(url)[:2] == ("r3", ["id", "name", "note"])
    assert _problems(ini, url) == []


def test_a_lock_wait_on_a_revisions_first_statement_is_retried(url: URL, tmp_path: Path) -> None:
    """The ALTER of r2 waits for a table a transaction holds: nothing of r2 ran, so each
    lock_wait_timeout is retried, and after the last try nothing is marked in flight."""
    ini = write_project(tmp_path)
    assert finish(alembic(ini, url, "upgrade", "r1"))[0] == 0
    engine = create_engine(url)
    try:
        with engine.connect() as holder:
            holder.execute(text("SELECT count(*) FROM mig_items"))  # holds its metadata lock
            code, out = finish(
                alembic(
                    ini,
                    url,
                    "upgrade",
                    "head",
                    lock_timeout="1",
                    lock_retries="1",
                    retry_backoff="0.1",
                )
            )
            holder.rollback()
        assert code != 0, out
        assert "retry 1 of 1" in out and "could not get a table lock" in out, out
        assert "SHOW PROCESSLIST" in out, out
        assert _state(url) == ("r1", ["id", "name"], ["r1"], [])
        assert _problems(ini, url) == []
        code, out = finish(alembic(ini, url, "upgrade", "head", lock_timeout="1"))
        assert code == 0, out
    finally:
        engine.dispose()


def test_a_lock_wait_after_a_completed_statement_is_not_retried(url: URL, tmp_path: Path) -> None:
    """r2's ALTER commits, then its INSERT into mig_log waits for a locked table: re-running r2
    would add the column twice, so the run stops at once and says what to do."""
    ini = write_project(tmp_path)
    assert finish(alembic(ini, url, "upgrade", "r1"))[0] == 0
    engine = create_engine(url)
    try:
        with engine.connect() as holder:
            holder.exec_driver_sql("LOCK TABLES mig_log WRITE")
            try:
                code, out = finish(
                    alembic(ini, url, "upgrade", "head", lock_timeout="1", lock_retries="3")
                )
            finally:
                holder.exec_driver_sql("UNLOCK TABLES")
        assert code != 0, out
        assert "after earlier statements of its revision had committed" in out, out
        assert "retry 1 of" not in out, out
        assert _state(url) == ("r1", ["id", "name", "note"], ["r1"], ["r2"])
        assert _problems(ini, url) == [("interrupted", "r2")]
    finally:
        engine.dispose()
