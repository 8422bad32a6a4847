"""examples/database_tour.py (included by docs/database.md) on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pgharness import PgServer

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, url: str | None) -> list[str]:
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    if url is not None:
        env["DATABASE_URL"] = url
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "database_tour.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_database_tour_on_sqlite(tmp_path: Path) -> None:
    assert _run(tmp_path, None) == ["ada@example.com healthy 2"]


@pytest.mark.postgresql
def test_the_database_tour_on_postgresql(
    pg_server: PgServer, pg_database: str, tmp_path: Path
) -> None:
    url = pg_server.app_url(pg_database).render_as_string(hide_password=False)
    assert _run(tmp_path, url) == ["ada@example.com healthy 2"]
