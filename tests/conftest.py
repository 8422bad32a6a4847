"""Fixtures: a throwaway PostgreSQL for the session, a database per module, engines per test.

Tests that use a PostgreSQL fixture are marked ``postgresql`` automatically,
and those that use a MariaDB fixture ``mariadb``, so
``-m "not postgresql and not mariadb"`` runs the SQLite-only part without any server.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from .mysqlharness import MariaDBServer
from .pgharness import PgServer

# The package's pytest plugin is opt-in, as for any project that uses it.
pytest_plugins = ["sqlalchemy_resilience.testing.pytest_plugin"]

_PG_FIXTURES = {"pg_server", "pg_database", "pg_engine", "pg_driver", "fault_server", "pgbouncer"}
_MARIADB_FIXTURES = {"mariadb_server", "mariadb_database", "mariadb_engine"}


# Whole programs (the command line, the examples), most in a subprocess of their own.
_END_TO_END = ("tests/cli/", "tests/examples/")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _PG_FIXTURES:
            item.add_marker(pytest.mark.postgresql)
        if "fault_server" in names:
            item.add_marker(pytest.mark.fault)
        if names & _MARIADB_FIXTURES:
            item.add_marker(pytest.mark.mariadb)
        if item.nodeid.replace("\\", "/").startswith(_END_TO_END):
            item.add_marker(pytest.mark.end_to_end)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The suite's PostgreSQL server (started here unless SQLALCHEMY_RESILIENCE_TEST_URL is set)."""
    server = PgServer.from_environment()
    try:
        server.setup_roles()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def pg_database(pg_server: PgServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database owned by the ``app`` role, for one test module."""
    stem = re.sub(r"[^a-z0-9_]", "_", request.module.__name__.rsplit(".", 1)[-1].lower())
    name = f"t_{stem}_{secrets.token_hex(3)}"[:63]
    pg_server.create_database(name)
    try:
        yield name
    finally:
        pg_server.drop_database(name)


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    """The suite's MariaDB server (started here unless SQLALCHEMY_RESILIENCE_TEST_MYSQL_URL is set)."""
    server = MariaDBServer.from_environment()
    try:
        server.setup_app()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def mariadb_database(
    mariadb_server: MariaDBServer, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A fresh database for one test module."""
    stem = re.sub(r"[^a-z0-9_]", "_", request.module.__name__.rsplit(".", 1)[-1].lower())
    name = f"t_{stem}_{secrets.token_hex(3)}"[:63]
    mariadb_server.create_database(name)
    try:
        yield name
    finally:
        mariadb_server.drop_database(name)


@pytest.fixture(params=["aiomysql", "asyncmy"])
async def mariadb_engine(
    request: pytest.FixtureRequest, mariadb_server: MariaDBServer, mariadb_database: str
) -> AsyncIterator[AsyncEngine]:
    """An instrumented AsyncEngine on the module's MariaDB database, once per async driver."""
    from sqlalchemy_resilience import instrument

    engine = create_async_engine(mariadb_server.app_url(mariadb_database, driver=request.param))
    instr = instrument(engine)
    try:
        yield engine
    finally:
        instr.detach()
        await engine.dispose()


@pytest.fixture(params=["asyncpg", "psycopg"])
def pg_driver(request: pytest.FixtureRequest) -> str:
    """Each PostgreSQL test runs once per async driver."""
    driver: str = request.param
    return driver


@pytest.fixture
async def pg_engine(
    pg_server: PgServer, pg_database: str, pg_driver: str
) -> AsyncIterator[AsyncEngine]:
    """An AsyncEngine as the ``app`` role on the module's database (not instrumented)."""
    engine = create_async_engine(pg_server.app_url(pg_database, driver=pg_driver))
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.postgresql),
        pytest.param("mariadb", marks=pytest.mark.mariadb),
    ],
)
async def any_engine(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[AsyncEngine]:
    """An instrumented AsyncEngine on a SQLite file, the module's PostgreSQL (asyncpg) and
    the module's MariaDB database (aiomysql)."""
    from sqlalchemy_resilience import instrument

    if request.param == "sqlite":
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'any.sqlite'}")
    elif request.param == "mariadb":
        maria: MariaDBServer = request.getfixturevalue("mariadb_server")
        name: str = request.getfixturevalue("mariadb_database")
        engine = create_async_engine(maria.app_url(name, driver="aiomysql"))
    else:
        server: PgServer = request.getfixturevalue("pg_server")
        database: str = request.getfixturevalue("pg_database")
        engine = create_async_engine(server.app_url(database, driver="asyncpg"))
    instrument(engine)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def fault_server() -> Iterator[PgServer]:
    """A server of the module's own, which its tests may stop, crash or pause."""
    # Durability on, as FAULTS.md H1 asks: "0 acknowledged commits lost" must
    # not depend on a setting that allows losing them.
    server = PgServer.start_embedded(fsync="on", full_page_writes="on")
    try:
        server.setup_roles()
        server.create_database("faults")
        yield server
    finally:
        server.close()


@pytest.fixture
def syncrep(fault_server: PgServer) -> Iterator[PgServer]:
    """A ghost synchronous standby on the module's fault server: COMMIT waits forever (recipe e6).

    Creates ``ledger (k uuid PRIMARY KEY)`` in the ``faults`` database.
    """
    fault_server.execute("DROP TABLE IF EXISTS ledger", database="faults")
    fault_server.execute("CREATE TABLE ledger (k uuid PRIMARY KEY)", database="faults")
    fault_server.execute("GRANT ALL ON ledger TO app", database="faults")
    fault_server.execute("ALTER SYSTEM SET synchronous_standby_names = 'ghost_standby'")
    fault_server.execute("ALTER SYSTEM SET synchronous_commit = 'local'")
    fault_server.execute("SELECT pg_reload_conf()")
    try:
        yield fault_server
    finally:
        fault_server.execute("ALTER SYSTEM RESET synchronous_standby_names")
        fault_server.execute("ALTER SYSTEM RESET synchronous_commit")
        fault_server.execute("SELECT pg_reload_conf()")


@pytest.fixture(scope="session")
def global_metrics_reader() -> Any:
    """An in-memory reader on the process-wide MeterProvider (OpenTelemetry lets a process set it once)."""
    sdk_metrics = pytest.importorskip("opentelemetry.sdk.metrics")
    export = pytest.importorskip("opentelemetry.sdk.metrics.export")
    from opentelemetry import metrics

    in_memory = export.InMemoryMetricReader()
    metrics.set_meter_provider(sdk_metrics.MeterProvider(metric_readers=[in_memory]))
    return in_memory


@pytest.fixture
def sync_engines() -> Iterator[list[Engine]]:
    """Sync engines a test creates: all disposed afterwards (no unclosed sqlite3 connections)."""
    engines: list[Engine] = []
    yield engines
    for engine in engines:
        engine.dispose()
