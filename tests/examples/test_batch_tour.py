"""examples/batch_tour.py (included by docs/batch.md) on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.examples.run import run_example
from tests.mysqlharness import MariaDBServer
from tests.pgharness import PgServer

AFTER_THE_WRITE = [
    "gold users: 10",
    "after the crash and the re-run: 12000 rows, each once",
    "keyset: page 2 starts at order 152 has_previous True",
    "offset: page 3 of 10 total 200 rows 20",
]


def _check(lines: list[str], path: str) -> None:
    assert lines[:10] == [f"{n * 10_000:,} rows" for n in range(1, 11)]
    assert lines[10] == f"{path} 100000 10"
    assert lines[11:] == AFTER_THE_WRITE


def test_the_batch_tour_on_sqlite(tmp_path: Path) -> None:
    _check(run_example("batch_tour.py", tmp_path).splitlines(), "insertmanyvalues")


@pytest.mark.postgresql
def test_the_batch_tour_on_postgresql(
    pg_server: PgServer, pg_database: str, tmp_path: Path
) -> None:
    url = pg_server.app_url(pg_database).render_as_string(hide_password=False)
    _check(run_example("batch_tour.py", tmp_path, url).splitlines(), "copy")


def test_the_batch_tour_on_mariadb(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    url = mariadb_server.app_url(mariadb_database).render_as_string(hide_password=False)
    _check(run_example("batch_tour.py", tmp_path, url).splitlines(), "insertmanyvalues")
