"""examples/database_tour.py (included by docs/database.md) on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.examples.run import run_example
from tests.mysqlharness import MariaDBServer
from tests.pgharness import PgServer


def test_the_database_tour_on_sqlite(tmp_path: Path) -> None:
    assert run_example("database_tour.py", tmp_path).splitlines() == ["ada@example.com healthy 2"]


@pytest.mark.postgresql
def test_the_database_tour_on_postgresql(
    pg_server: PgServer, pg_database: str, tmp_path: Path
) -> None:
    url = pg_server.app_url(pg_database).render_as_string(hide_password=False)
    assert run_example("database_tour.py", tmp_path, url).splitlines() == [
        "ada@example.com healthy 2"
    ]


def test_the_database_tour_on_mariadb(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    url = mariadb_server.app_url(mariadb_database).render_as_string(hide_password=False)
    assert run_example("database_tour.py", tmp_path, url).splitlines() == [
        "ada@example.com healthy 2"
    ]
