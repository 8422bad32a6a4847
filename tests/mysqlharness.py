"""The suite's MariaDB: a throwaway server it starts, or SQLALCHEMY_RESILIENCE_TEST_MYSQL_URL.

Tests connect as an ``app`` account with every privilege on the databases
they create; the admin connection (root) makes databases and injects faults
(``KILL``, ``SET GLOBAL read_only``). Where the server binaries are missing,
the tests skip with the reason; in CI (``CI=true``) that is a failure, since
``.ci/run`` installs them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.engine import URL, make_url

from sqlalchemy_resilience.testing.embedded_mariadb import (
    EmbeddedMariaDB,
    EmbeddedMariaDBError,
    find_mariadb_bin,
)

APP_USER = "app"
ENV_URL = "SQLALCHEMY_RESILIENCE_TEST_MYSQL_URL"


class MariaDBServer:
    """A server the tests can administer: ``root`` over TCP, databases and an ``app`` account."""

    def __init__(self, admin_url: URL, embedded: EmbeddedMariaDB | None = None) -> None:
        self.admin_url = admin_url
        self.embedded = embedded
        self.app_password = secrets.token_urlsafe(12)

    @classmethod
    def from_environment(cls) -> MariaDBServer:
        """The server of ``SQLALCHEMY_RESILIENCE_TEST_MYSQL_URL``, else a new throwaway one."""
        if url := os.environ.get(ENV_URL):
            return cls(make_url(url).set(drivername="mysql+pymysql"))
        try:
            find_mariadb_bin()
        except EmbeddedMariaDBError as exc:
            reason = f"{exc} (or set {ENV_URL})"
            if os.environ.get("CI"):
                pytest.fail(reason + "; .ci/run installs it, so in CI its absence is a failure")
            pytest.skip(reason)
        embedded = EmbeddedMariaDB()
        embedded.start()
        return cls(embedded.url(driver="pymysql", database="mysql"), embedded)

    @contextlib.contextmanager
    def admin(self) -> Iterator[Any]:
        """A PyMySQL connection as the admin, autocommit."""
        import pymysql

        url = self.admin_url
        conn = pymysql.connect(
            host=url.host,
            port=url.port or 3306,
            user=url.username,
            password=url.password or "",
            autocommit=True,
        )
        try:
            yield conn
        finally:
            conn.close()

    def execute(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        """Run one admin statement (the tests' own SQL, with ``%s`` parameters); its rows."""
        with self.admin() as conn, conn.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())

    def setup_app(self) -> None:
        """The ``app`` account the tests connect as: every privilege on the ``t_...`` databases."""
        self.execute(
            f"CREATE USER IF NOT EXISTS '{APP_USER}'@'%%' IDENTIFIED BY %s", (self.app_password,)
        )
        # On the tests' databases only (t_...): a global grant would include the
        # privileges that write through read_only, and KILL of other sessions.
        self.execute(f"GRANT ALL PRIVILEGES ON `t\\_%`.* TO '{APP_USER}'@'%'")

    def create_database(self, name: str) -> None:
        self.execute(f"CREATE DATABASE `{name}`")

    def drop_database(self, name: str) -> None:
        self.execute(f"DROP DATABASE IF EXISTS `{name}`")

    def app_url(self, database: str, *, driver: str = "aiomysql") -> URL:
        return self.admin_url.set(
            drivername=f"mysql+{driver}",
            username=APP_USER,
            password=self.app_password,
            database=database,
        ).update_query_dict({"charset": "utf8mb4"})

    def connection_ids(self, database: str) -> list[int]:
        """The ids of the ``app`` sessions on ``database``."""
        rows = self.execute(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s AND DB = %s",
            (APP_USER, database),
        )
        return [int(row[0]) for row in rows]

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.stop(cleanup=True)
