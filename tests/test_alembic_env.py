"""The top-level Alembic environment runs against DATABASE_URL with sync and async drivers."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("alembic")


def _alembic(
    *args: str, database_url: str | None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("driver", ["sqlite", "sqlite+aiosqlite"])
def test_upgrade_head_records_version_table(tmp_path: Path, driver: str) -> None:
    """`alembic upgrade head` creates the package's tables through DATABASE_URL; `downgrade base` removes them."""
    if driver.endswith("aiosqlite"):
        pytest.importorskip("aiosqlite")
    db = tmp_path / "mig.sqlite"
    proc = _alembic("upgrade", "head", database_url=f"{driver}:///{db}")
    assert proc.returncode == 0, proc.stderr
    # alembic.ini's logging is applied: the run says what it did.
    assert "Running upgrade  -> 0001_idempotency_keys" in proc.stderr, proc.stderr
    with contextlib.closing(sqlite3.connect(db)) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert "sqlalchemy_resilience_alembic_version" in tables
    assert {
        "sqlalchemy_resilience_idempotency",
        "sqlalchemy_resilience_saga",
        "sqlalchemy_resilience_saga_step",
    } <= tables
    # The revisions create exactly what schema.metadata declares (no drift).
    check = _alembic("check", database_url=f"{driver}:///{db}")
    assert check.returncode == 0, check.stderr + check.stdout
    down = _alembic("downgrade", "base", database_url=f"{driver}:///{db}")
    assert down.returncode == 0, down.stderr
    with contextlib.closing(sqlite3.connect(db)) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert not {t for t in tables if t.startswith("sqlalchemy_resilience_") and "version" not in t}


def test_missing_database_url_is_a_clear_error(tmp_path: Path) -> None:
    """Without DATABASE_URL the environment says what to set."""
    proc = _alembic("upgrade", "head", database_url=None, cwd=tmp_path)
    assert proc.returncode != 0
    assert "set DATABASE_URL" in proc.stderr + proc.stdout


@pytest.mark.postgresql
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg", "psycopg_async"])
def test_the_repository_alembic_on_postgresql(pg_server: Any, driver: str) -> None:
    """upgrade head, history, check, downgrade base and upgrade again through DATABASE_URL on PostgreSQL."""
    name = f"repo_alembic_{driver}"
    pg_server.create_database(name)
    try:
        url = pg_server.app_url(name, driver=driver).render_as_string(hide_password=False)
        for command in (
            ["upgrade", "head"],
            ["history"],
            ["check"],
            ["downgrade", "base"],
            ["upgrade", "head"],
        ):
            proc = _alembic(*command, database_url=url)
            assert proc.returncode == 0, (command, proc.stderr + proc.stdout)
            assert pg_server.app_password not in proc.stderr + proc.stdout
    finally:
        pg_server.drop_database(name)


def test_the_package_revisions_round_trip(tmp_path: Path) -> None:
    """check_migrations on the package's own revisions: each one up, down and up again, no trace."""
    from sqlalchemy_resilience.migrations import check_migrations

    report = check_migrations(str(ROOT / "alembic.ini"), url=f"sqlite:///{tmp_path / 'own.sqlite'}")
    assert report.revisions[0] == "0001_idempotency_keys"
    report.assert_ok()


def test_an_application_runs_the_shipped_revisions_from_its_own_ini(tmp_path: Path) -> None:
    """The revisions ship inside the package: a two-line alembic.ini anywhere runs them."""
    ini = tmp_path / "resilience.ini"
    ini.write_text(
        "[alembic]\n"
        "script_location = sqlalchemy_resilience:alembic\n"
        "version_table = sqlalchemy_resilience_alembic_version\n"
    )
    db = tmp_path / "app.sqlite"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["DATABASE_URL"] = f"sqlite:///{db}"
    proc = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ini), "upgrade", "head"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    with contextlib.closing(sqlite3.connect(db)) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"sqlalchemy_resilience_saga", "sqlalchemy_resilience_batch_job"} <= tables
