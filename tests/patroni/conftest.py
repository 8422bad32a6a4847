"""The cluster tier's Patroni: three PostgreSQL 15 nodes, etcd, HAProxy on ``/primary``.

Debian's ``patroni``, ``etcd-server``, ``etcd-client`` and ``haproxy``
(``.ci/run`` installs them) and the system's PostgreSQL binaries. Where they
are missing the tests skip with the reason; in CI (``CI=true``) that is a
failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NoReturn

import pytest
from sqlalchemy.engine import URL

from sqlalchemy_resilience.testing.embedded import EmbeddedPostgresError
from sqlalchemy_resilience.testing.embedded_patroni import EmbeddedPatroni, PatroniNode
from tests.haproxy import HAProxy, find_haproxy
from tests.pgharness import APP_ROLE, PgServer
from tests.waiting import wait_until

# One bank per workload that runs through each event side by side.
DATABASES = ("p_haproxy", "p_multihost", "p_sync", "p_naive")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/patroni/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.cluster)


@dataclass
class Patroni:
    """The running cluster, HAProxy in front, and an admin that always reaches the leader."""

    cluster: EmbeddedPatroni
    proxy: HAProxy
    admin: PgServer  # the superuser through HAProxy: whichever node leads

    def app_url(self, database: str, *, port: int, driver: str = "asyncpg") -> URL:
        """The ``app`` role's URL to one address (HAProxy, or a proxy in front of it)."""
        url = URL.create(
            f"postgresql+{driver}",
            username=APP_ROLE,
            password=self.admin.app_password,
            host="127.0.0.1",
            port=port,
            database=database,
        )
        return url.update_query_dict({"ssl": "disable"}) if driver == "asyncpg" else url

    def multi_host_url(self, database: str, *, ports: Sequence[int], driver: str) -> URL:
        """SQLAlchemy's multi-host form: a ``host=`` per node, the primary asked for."""
        query: dict[str, str | list[str]] = {
            "host": [f"127.0.0.1:{port}" for port in ports],
            "target_session_attrs": "read-write",
        }
        if driver == "asyncpg":
            query["ssl"] = "disable"
        return URL.create(
            f"postgresql+{driver}",
            username=APP_ROLE,
            password=self.admin.app_password,
            database=database,
            query=query,
        )

    def leader(self) -> PatroniNode:
        """The leader, once there is one and HAProxy routes to it."""
        wait_until(lambda: self.cluster.leader() is not None, timeout=60, what="a leader")
        wait_until(lambda: self.proxy.up() == 1, timeout=20, what="the leader UP at haproxy")
        leader = self.cluster.leader()
        assert leader is not None
        return leader


@pytest.fixture(scope="package")
def patroni() -> Iterator[Patroni]:
    """Three Patroni nodes (synchronous_mode, ttl 10) on one etcd, HAProxy checking /primary."""
    try:
        cluster = EmbeddedPatroni(size=3)
    except EmbeddedPostgresError as exc:
        _absent(str(exc))
    if find_haproxy() is None:
        _absent("haproxy is not installed (Debian: apt-get install haproxy)")
    proxy = HAProxy(
        [n.port for n in cluster.nodes], check_ports=[n.rest_port for n in cluster.nodes]
    )
    try:
        cluster.start()
        proxy.start()
        admin = PgServer(
            URL.create(
                "postgresql+psycopg",
                username=cluster.superuser,
                password=cluster.password,
                host="127.0.0.1",
                port=proxy.port,
                database="postgres",
            ),
            None,
        )
        admin.setup_roles()
        for name in DATABASES:
            admin.create_database(name)
        yield Patroni(cluster, proxy, admin)
    finally:
        proxy.stop()
        cluster.stop(cleanup=True)


def _absent(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; .ci/run installs it, so in CI its absence is a failure")
    pytest.skip(reason)
