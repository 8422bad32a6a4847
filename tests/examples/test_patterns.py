"""examples/patterns.py (included by docs/patterns.md) on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.examples.run import run_example
from tests.pgharness import PgServer

EVERYWHERE = [
    "pool: ['checked_out', 'size'] -> 31 figures, waiting 0",
    "autosizer: running, pool size 2",
    "retry: balance 3 breaker closed",
    "saga: completed, nothing left to recover",
    "batch: 2000 rows; the finished job re-run wrote 0",
    "pages: second page starts at 51",
    "database: health healthy",
]


def _check(lines: list[str]) -> None:
    for line in EVERYWHERE:
        assert line in lines
    monitor = next(line for line in lines if line.startswith("monitor:"))
    assert monitor.startswith("monitor: 3 calls of SELECT patterns_accounts.email")
    errors = next(line for line in lines if line.startswith("errors:"))
    assert errors.endswith("| package -> This item already exists.")


def test_the_patterns_on_sqlite(tmp_path: Path) -> None:
    lines = run_example("patterns.py", tmp_path).splitlines()
    _check(lines)
    # Matching "duplicate key" misses SQLite's wording: the raw message leaks out.
    assert "errors: by hand -> (sqlite3.IntegrityError) UNIQUE constrai" in lines[-2]
    assert not any(line.startswith("transaction:") for line in lines)


@pytest.mark.postgresql
def test_the_patterns_on_postgresql(pg_server: PgServer, pg_database: str, tmp_path: Path) -> None:
    url = pg_server.app_url(pg_database).render_as_string(hide_password=False)
    lines = run_example("patterns.py", tmp_path, url).splitlines()
    _check(lines)
    assert "errors: by hand -> Already exists | package -> This item already exists." in lines
    # The hand-written SET stays on the pooled connection; SET LOCAL goes with the transaction.
    assert "transaction: by hand leaves 5s | SET LOCAL: 5s then 0" in lines
