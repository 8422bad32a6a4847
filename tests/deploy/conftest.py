"""A real PgBouncer in transaction mode in front of the suite's PostgreSQL, for this package's tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.pgbouncer import PgBouncer, find_pgbouncer
from tests.pgharness import PgServer


@pytest.fixture(scope="module")
def pgbouncer(pg_server: PgServer) -> Iterator[PgBouncer]:
    """PgBouncer, ``pool_mode = transaction``, 10 server connections per database."""
    if find_pgbouncer() is None:
        reason = "pgbouncer is not installed (Debian: apt-get install pgbouncer)"
        if os.environ.get("CI"):
            pytest.fail(reason + "; .ci/run installs it, so in CI its absence is a failure")
        pytest.skip(reason)
    bouncer = PgBouncer(
        pg_server.host, pg_server.port, {"app": pg_server.app_password}, pool_size=10
    )
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()
