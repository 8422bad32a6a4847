"""The getting-started tutorial (examples/tutorial.py) runs as a user would run it: a process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pgharness import PgServer

ROOT = Path(__file__).resolve().parents[2]


def _run(env: dict[str, str], cwd: Path) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tutorial.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _check(out: str) -> None:
    assert "2. first registration: {'status': 'registered'}" in out
    assert "This item already exists. / このデータは既に登録されています。" in out
    assert "sent again: AlreadyApplied, nothing changed; balances [70, 30]" in out
    assert "log: sqlalchemy_resilience.slow_query: slow query:" in out
    assert "examples/tutorial.py:" in out  # the slow query's call site is the tutorial's line
    assert "health: healthy" in out
    assert "5. Database: ['bo@example.com'], health healthy" in out


def test_the_tutorial_on_sqlite(tmp_path: Path) -> None:
    pytest.importorskip("aiosqlite")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}  # its SQLite default
    env["TMPDIR"] = str(tmp_path)
    _check(_run(env, tmp_path))


@pytest.mark.postgresql
def test_the_tutorial_on_postgresql(pg_server: PgServer, pg_database: str, tmp_path: Path) -> None:
    url = pg_server.app_url(pg_database, driver="asyncpg").render_as_string(hide_password=False)
    out = _run({**os.environ, "DATABASE_URL": url}, tmp_path)
    _check(out)
    assert pg_server.app_password not in out
