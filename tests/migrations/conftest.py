"""An empty database per test, for the migration tests."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL, make_url

from tests.mysqlharness import MariaDBServer
from tests.pgharness import PgServer


@pytest.fixture
def mariadb_url(mariadb_server: MariaDBServer) -> Iterator[URL]:
    """A fresh, empty MariaDB database (PyMySQL), dropped afterwards."""
    name = f"t_mig_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    mariadb_server.create_database(name)
    try:
        yield mariadb_server.app_url(name, driver="pymysql")
    finally:
        mariadb_server.drop_database(name)


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ]
)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[URL]:
    """An empty database: a SQLite file, or a fresh PostgreSQL (psycopg) or MariaDB (PyMySQL) one."""
    if request.param == "sqlite":
        yield make_url(f"sqlite:///{tmp_path / 'migrate.sqlite'}")
        return
    if request.param == "mariadb":
        yield request.getfixturevalue("mariadb_url")
        return
    server: PgServer = request.getfixturevalue("pg_server")
    name = f"mig_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    server.create_database(name)
    try:
        yield server.app_url(name, driver="psycopg")
    finally:
        server.drop_database(name)
