"""The cluster tier's Galera: three MariaDB nodes and HAProxy in front, started once.

Debian's ``galera-4``, ``mariadb-server`` (for ``wsrep_sst_rsync``), ``rsync``
and ``haproxy`` (``.ci/run`` installs them). Where they are missing the tests
skip with the reason; in CI (``CI=true``) that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy.engine import URL

from sqlalchemy_resilience.testing.embedded_galera import EmbeddedGalera, find_galera_provider
from sqlalchemy_resilience.testing.embedded_mariadb import EmbeddedMariaDBError, find_mariadb_bin
from tests.haproxy import CHECK_USER, HAProxy, find_haproxy

DB = "t_galera"
APP = "app"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/galera/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.cluster)


@dataclass
class Galera:
    """The running cluster, its proxy, and the ``app`` account the tests connect as."""

    cluster: EmbeddedGalera
    proxy: HAProxy
    password: str

    def url(self, node: int | None = None, *, driver: str = "pymysql") -> URL:
        """The ``app`` account's URL: through HAProxy, or straight to node ``node``."""
        port = self.proxy.port if node is None else self.cluster.nodes[node].port
        return URL.create(
            f"mysql+{driver}",
            username=APP,
            password=self.password,
            host="127.0.0.1",
            port=port,
            database=DB,
            query={"charset": "utf8mb4"},
        )

    @contextlib.contextmanager
    def admin(self, node: int) -> Iterator[Any]:
        """A PyMySQL connection to node ``node`` as root, autocommit."""
        import pymysql

        conn = pymysql.connect(
            host="127.0.0.1",
            port=self.cluster.nodes[node].port,
            user="root",
            password=self.cluster.password,
            autocommit=True,
            # A node in the middle of a view change can hold a reply: never hang the test.
            connect_timeout=5,
            read_timeout=10,
            write_timeout=10,
        )
        try:
            yield conn
        finally:
            conn.close()

    def execute(self, node: int, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        """One admin statement on node ``node``; its rows."""
        with self.admin(node) as conn, conn.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())

    def any_node(self) -> ClusterAdmin:
        """An admin that runs each statement on the first running node (the bank's checks)."""
        return ClusterAdmin(self)

    def status(self, node: int) -> dict[str, str]:
        """Node ``node``'s ``wsrep_%`` status."""
        rows = self.execute(node, "SHOW GLOBAL STATUS LIKE 'wsrep\\_%'")
        return {str(name): str(value) for name, value in rows}


class ClusterAdmin:
    """``execute`` as ``MariaDBServer`` has it, on whichever node is up, reading the
    cluster's latest writes (``wsrep_sync_wait=1``): the bank's set-up and checks."""

    def __init__(self, galera: Galera) -> None:
        self.galera = galera

    def execute(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        failure: Exception | None = None
        for index, node in enumerate(self.galera.cluster.nodes):
            if not node.running:
                continue
            try:
                with self.galera.admin(index) as conn, conn.cursor() as cursor:
                    cursor.execute("SET SESSION wsrep_sync_wait = 1")
                    cursor.execute(sql, args)
                    return list(cursor.fetchall())
            except Exception as exc:  # a node leaving: the next one answers
                failure = exc
        raise RuntimeError(f"no Galera node answered: {failure}")


def _absent(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; .ci/run installs it, so in CI its absence is a failure")
    pytest.skip(reason)


@pytest.fixture(scope="package")
def galera() -> Iterator[Galera]:
    """Three Galera nodes (bootstrap, two joined by rsync) and HAProxy round robin in front."""
    try:
        find_mariadb_bin()
        find_galera_provider()
    except EmbeddedMariaDBError as exc:
        _absent(str(exc))
    if find_haproxy() is None:
        _absent("haproxy is not installed (Debian: apt-get install haproxy)")
    cluster = EmbeddedGalera(size=3)
    cluster.start()
    proxy = HAProxy(cluster.ports)
    try:
        password = secrets.token_urlsafe(12)
        env = Galera(cluster, proxy, password)
        # Accounts and databases replicate (TOI): made once, on the first node.
        for sql, args in (
            (f"CREATE USER '{APP}'@'%%' IDENTIFIED BY %s", (password,)),
            (f"GRANT ALL PRIVILEGES ON `t\\_%`.* TO '{APP}'@'%'", None),
            (f"CREATE USER '{CHECK_USER}'@'127.0.0.1'", None),
            (f"CREATE DATABASE `{DB}`", None),
            ("CREATE DATABASE `t_bank`", None),
            ("CREATE DATABASE `t_bank_naive`", None),
        ):
            env.execute(0, sql, args)
        proxy.start()
        yield env
    finally:
        proxy.stop()
        cluster.stop(cleanup=True)
