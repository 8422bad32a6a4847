"""examples/deploy_tour.py (included by docs/deployments.md) against PgBouncer, a primary and a standby."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.examples.run import run_example
from tests.pgbouncer import PgBouncer
from tests.pgharness import PgServer

pytestmark = pytest.mark.postgresql


def test_the_deploy_tour(
    pg_server: PgServer, pg_database: str, pgbouncer: PgBouncer, tmp_path: Path
) -> None:
    primary = PgServer.start_embedded()
    try:
        primary.setup_roles()
        primary.create_database("tour")
        standby = primary.require_owned().start_standby()
        replica = PgServer(standby.url(driver="psycopg"), standby)
        secret = tmp_path / "db-password"
        secret.write_text(primary.app_password + "\n")
        urls = {
            "PGBOUNCER_URL": pgbouncer.url(pg_server.app_url(pg_database)),
            "PRIMARY_URL": primary.app_url("tour").set(password=None),
            "REPLICA_URLS": replica.app_url("tour", password=primary.app_password),
        }
        env = {name: url.render_as_string(hide_password=False) for name, url in urls.items()}
        env["DB_PASSWORD_FILE"] = str(secret)
        out = run_example("deploy_tour.py", tmp_path, extra_env=env)
    finally:
        primary.close()
    assert out.splitlines() == [
        "pooler: transaction pooling True safe True",
        "password: connected as app with the password from the file",
        "pings: writer check on, idle after 5.0 s",
        "replicas: reads on a standby [True, True, True, True]",
    ]
