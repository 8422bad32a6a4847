"""The chaos tier's MariaDB: one durable server for the package's legs, which they may crash."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from sqlalchemy_resilience import instrument
from sqlalchemy_resilience.testing.embedded_mariadb import (
    EmbeddedMariaDB,
    EmbeddedMariaDBError,
    find_mariadb_bin,
)
from tests.mysqlharness import MariaDBServer

from .mariadb_bank import DB, setup_bank


@pytest.fixture(scope="package")
def maria() -> Iterator[MariaDBServer]:
    """A MariaDB of the chaos tier's own, durable (every commit flushed), which it may crash."""
    try:
        find_mariadb_bin()
    except EmbeddedMariaDBError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}; .ci/run installs it, so in CI its absence is a failure")
        pytest.skip(str(exc))
    embedded = EmbeddedMariaDB(settings={"innodb-flush-log-at-trx-commit": "1"})
    embedded.start()
    own = MariaDBServer(embedded.url(driver="pymysql", database="mysql"), embedded)
    try:
        own.setup_app()
        own.create_database(DB)
        yield own
    finally:
        own.close()


@pytest.fixture
async def maria_bank(maria: MariaDBServer) -> AsyncIterator[AsyncEngine]:
    """A fresh bank and an instrumented aiomysql engine on it."""
    setup_bank(maria)
    engine = create_async_engine(maria.app_url(DB), pool_size=10, max_overflow=0)
    instrument(engine)
    try:
        yield engine
    finally:
        await engine.dispose()
