"""examples/transactions_tour.py (included by docs/transactions.md) on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.examples.run import run_example
from tests.mysqlharness import MariaDBServer
from tests.pgharness import PgServer

# The savepoint kept order 2 without its duplicate coupon; the robust callback's
# failure did not stop the confirmation.
COMMON = "orders 3 coupon uses 1 | order 3 confirmed"


def test_the_transactions_tour_on_sqlite(tmp_path: Path) -> None:
    lines = run_example("transactions_tour.py", tmp_path).splitlines()
    assert lines == [COMMON, "sqlite: wal foreign_keys 1"]


@pytest.mark.postgresql
def test_the_transactions_tour_on_postgresql(
    pg_server: PgServer, pg_database: str, tmp_path: Path
) -> None:
    url = pg_server.app_url(pg_database).render_as_string(hide_password=False)
    lines = run_example("transactions_tour.py", tmp_path, url).splitlines()
    assert lines == ["orders 3 coupon uses 1 | account 1 notified; order 3 confirmed"]


def test_the_transactions_tour_on_mariadb(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    url = mariadb_server.app_url(mariadb_database).render_as_string(hide_password=False)
    assert run_example("transactions_tour.py", tmp_path, url).splitlines() == [COMMON]
