"""examples/saga_tour.py (included by docs/sagas.md) on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.examples.run import run_example
from tests.mysqlharness import MariaDBServer
from tests.pgharness import PgServer

EXPECTED = [
    "order-1: {'charge_id': 'ch_1'} stock 8",
    "order-2: charge failed; undone: ('reserve',) stock 8",
    "compensation_failed",
    "  reserve compensated 1 ",
    # The payment API's socket error is recorded as what it is, not as a database outage.
    "  charge compensation_failed 1 ConnectionError: the payment service is unreachable",
    "  ship failed 0 RuntimeError: no courier for this address",
    "order-3: saga order-3: undo failed for ['charge'] | after redrive: compensated stock 8",
    "charges left: [1200]",
    "recovered: []",
]


def test_the_saga_tour_on_sqlite(tmp_path: Path) -> None:
    assert run_example("saga_tour.py", tmp_path).splitlines() == EXPECTED


@pytest.mark.postgresql
def test_the_saga_tour_on_postgresql(pg_server: PgServer, pg_database: str, tmp_path: Path) -> None:
    url = pg_server.app_url(pg_database).render_as_string(hide_password=False)
    assert run_example("saga_tour.py", tmp_path, url).splitlines() == EXPECTED


def test_the_saga_tour_on_mariadb(
    mariadb_server: MariaDBServer, mariadb_database: str, tmp_path: Path
) -> None:
    url = mariadb_server.app_url(mariadb_database).render_as_string(hide_password=False)
    assert run_example("saga_tour.py", tmp_path, url).splitlines() == EXPECTED
