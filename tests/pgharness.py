"""Real-PostgreSQL test harness: the server, roles, databases and fault helpers.

The suite's server is an :class:`~sqlalchemy_resilience.testing.embedded.EmbeddedPostgres`
(root-safe) unless ``SQLALCHEMY_RESILIENCE_TEST_URL`` names an existing server,
given as a superuser URL. Tests connect as a non-superuser ``app`` role (role
connection limits and most privileges only bite non-superusers) and use a
superuser admin connection to inject faults.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy.engine import URL, make_url

from sqlalchemy_resilience.testing.embedded import EmbeddedPostgres

APP_ROLE = "app"


class PgServer:
    """One PostgreSQL server the tests use, owned (restartable) or external."""

    def __init__(self, admin_url: URL, embedded: EmbeddedPostgres | None) -> None:
        self.embedded = embedded
        self._admin_url = admin_url.set(drivername="postgresql+psycopg")
        self.app_password = "app-" + secrets.token_hex(8)

    @classmethod
    def start_embedded(cls, **settings: str) -> PgServer:
        pg = EmbeddedPostgres(settings=settings or None)
        pg.start()
        return cls(pg.url(driver="psycopg"), pg)

    @classmethod
    def from_environment(cls) -> PgServer:
        url = os.environ.get("SQLALCHEMY_RESILIENCE_TEST_URL")
        if url:
            return cls(make_url(url), None)
        return cls.start_embedded()

    @property
    def owned(self) -> bool:
        """Whether the suite started this server (and may restart or crash it)."""
        return self.embedded is not None

    def close(self) -> None:
        if self.embedded is not None:
            self.embedded.stop(cleanup=True)

    # -- addresses -------------------------------------------------------

    @property
    def host(self) -> str:
        return self._admin_url.host or "127.0.0.1"

    @property
    def port(self) -> int:
        return self._admin_url.port or 5432

    def admin_url(self, *, driver: str = "psycopg", database: str | None = None) -> URL:
        url = self._admin_url.set(drivername=f"postgresql+{driver}")
        if database is not None:
            url = url.set(database=database)
        if driver == "asyncpg":
            url = url.update_query_dict({"ssl": "disable"})
        return url

    def app_url(
        self,
        database: str,
        *,
        driver: str = "asyncpg",
        username: str = APP_ROLE,
        password: str | None = None,
    ) -> URL:
        url = self._admin_url.set(
            drivername=f"postgresql+{driver}",
            username=username,
            password=password if password is not None else self.app_password,
            database=database,
        )
        if driver == "asyncpg":
            url = url.update_query_dict({"ssl": "disable"})
        return url

    # -- admin SQL (sync psycopg, autocommit) ----------------------------

    @contextlib.contextmanager
    def admin(self, database: str | None = None) -> Iterator[Any]:
        import psycopg

        url = self.admin_url(database=database)
        conn = psycopg.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            dbname=url.database or "postgres",
            autocommit=True,
            connect_timeout=10,
        )
        try:
            yield conn
        finally:
            conn.close()

    def execute(self, sql: str, params: Any = None, *, database: str | None = None) -> list[Any]:
        with self.admin(database) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def setup_roles(self) -> None:
        from psycopg import sql

        with self.admin() as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,)
            ).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL(verb + " ROLE {} LOGIN PASSWORD {} CREATEDB").format(
                    sql.Identifier(APP_ROLE), sql.Literal(self.app_password)
                )
            )
            # Deadlock tests should not wait the default second for detection.
            conn.execute(
                sql.SQL("ALTER ROLE {} SET deadlock_timeout = '100ms'").format(
                    sql.Identifier(APP_ROLE)
                )
            )

    def create_database(self, name: str) -> None:
        from psycopg import sql

        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0").format(
                    sql.Identifier(name), sql.Identifier(APP_ROLE)
                )
            )

    def drop_database(self, name: str) -> None:
        from psycopg import sql

        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    # -- faults (FAULTS.md H1/H2) ----------------------------------------

    def backend_pids(self, *, database: str | None = None, usename: str = APP_ROLE) -> list[int]:
        rows = self.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s"
            " AND (%s::text IS NULL OR datname = %s) AND pid <> pg_backend_pid()",
            (usename, database, database),
        )
        return [row[0] for row in rows]

    def backend_exists(self, pid: int) -> bool:
        """Whether the server still has the backend ``pid`` (gone once the server ended it)."""
        rows = self.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,))
        return bool(rows[0][0])

    def terminate_backends(self, *, database: str | None = None, usename: str = APP_ROLE) -> int:
        rows = self.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s"
            " AND (%s::text IS NULL OR datname = %s) AND pid <> pg_backend_pid()",
            (usename, database, database),
        )
        return sum(1 for row in rows if row[0])

    def install_commit_delay(self, table: str, *, database: str) -> None:
        """Recipe e7: rows of ``table`` with note 'chaos-delay-commit' make COMMIT sleep 30 s
        (a deferred constraint trigger), so a test can act while COMMIT is in flight."""
        from psycopg import sql

        with self.admin(database) as conn:
            conn.execute(
                "CREATE OR REPLACE FUNCTION chaos_commit_delay() RETURNS trigger"
                " LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_sleep(30); RETURN NULL; END $$"
            )
            conn.execute(
                sql.SQL(
                    "CREATE CONSTRAINT TRIGGER chaos_commit_delay AFTER INSERT ON {}"
                    " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
                    " WHEN (NEW.note = 'chaos-delay-commit') EXECUTE FUNCTION chaos_commit_delay()"
                ).format(sql.Identifier(table))
            )

    def kill_first_syncrep_waiter(self) -> int:
        """Wait for an app backend whose COMMIT waits for the (ghost) sync standby; terminate it."""
        self.wait_for(lambda: bool(self.syncrep_waiters()), timeout=20)
        pid = self.syncrep_waiters()[0]
        self.execute("SELECT pg_terminate_backend(%s)", (pid,))
        return pid

    def syncrep_waiters(self) -> list[int]:
        """Backends of the app role whose COMMIT waits for the (ghost) synchronous standby."""
        rows = self.execute(
            "SELECT pid FROM pg_stat_activity WHERE wait_event = 'SyncRep' AND usename = %s",
            (APP_ROLE,),
        )
        return [r[0] for r in rows]

    def ledger_rows(self, key: object) -> int:
        """Rows of the ``syncrep`` fixture's ``ledger`` table with key ``key``."""
        rows = self.execute("SELECT count(*) FROM ledger WHERE k = %s", (key,), database="faults")
        return int(rows[0][0])

    def pids_sleeping_in_commit(self) -> list[int]:
        """Backends of the app role whose COMMIT sleeps in the recipe-e7 trigger."""
        rows = self.execute(
            "SELECT pid FROM pg_stat_activity WHERE usename = %s"
            " AND wait_event = 'PgSleep' AND query ILIKE 'commit%%'",
            (APP_ROLE,),
        )
        return [row[0] for row in rows]

    def wait_for(self, predicate: Callable[[], bool], *, timeout: float = 10.0) -> None:
        """Poll ``predicate`` until true (event-driven waits instead of sleeps)."""
        from tests.waiting import wait_until

        wait_until(predicate, timeout=timeout)

    def require_owned(self) -> EmbeddedPostgres:
        import pytest

        if self.embedded is None:
            pytest.skip("needs a server the suite owns (SQLALCHEMY_RESILIENCE_TEST_URL is set)")
        return self.embedded
