"""The sqlalchemy-resilience command line."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys

import pytest

from sqlalchemy_resilience import __version__
from sqlalchemy_resilience.cli import main
from sqlalchemy_resilience.cli.demo import run_demo
from tests.pgharness import PgServer


def test_demo_on_embedded_default(capsys: pytest.CaptureFixture[str]) -> None:
    """`demo` with no options runs on SQLite and shows all three translations in en and ja."""
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    for expected in ("UniqueViolation", "ForeignKeyViolation", "LockNotAvailable", "3/3"):
        assert expected in out
    assert "このデータは既に登録されています。" in out
    assert "This item already exists." in out
    assert "LockNotAvailable retried); balance 100 -> 101" in out


def test_demo_on_sync_sqlite_url(tmp_path: object) -> None:
    """The demo also runs on a plain sqlite3 URL (no aiosqlite)."""
    out = io.StringIO()
    assert run_demo(f"sqlite:///{tmp_path}/d.sqlite", out=out) == 0  # type: ignore[str-bytes-safe]
    assert "3/3 failures" in out.getvalue()


def test_demo_on_postgresql_url(pg_server: PgServer, pg_database: str, pg_driver: str) -> None:
    """`demo --url` against the suite's PostgreSQL shows a QueryTimeout and never prints the password."""
    url = pg_server.app_url(pg_database, driver=pg_driver)
    out = io.StringIO()
    assert run_demo(url, out=out) == 0
    text = out.getvalue()
    assert "QueryTimeout" in text and "57014" in text
    assert pg_server.app_password not in text


def test_demo_embedded_postgres(pg_server: PgServer) -> None:
    """`demo --embedded-postgres` starts and stops its own server (run as a real subprocess)."""
    pg_server.require_owned()
    proc = subprocess.run(
        [sys.executable, "-m", "sqlalchemy_resilience.cli", "demo", "--embedded-postgres"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "3/3 failures" in proc.stdout
    assert "the server restarts midway" in proc.stdout
    assert "lost 0, duplicated 0, total balance 10000" in proc.stdout


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """Bad invocations fail with a message, not a traceback."""
    with pytest.raises(SystemExit) as info:
        main(["demo", "--url", "not a url"])
    assert "not a SQLAlchemy URL" in str(info.value.code)
    with pytest.raises(SystemExit):
        main(["demo", "--url", "sqlite://", "--embedded-postgres"])
    with pytest.raises(SystemExit):
        main([])
    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out


def test_demo_shows_observability_and_pool(capsys: pytest.CaptureFixture[str]) -> None:
    """The default demo logs a slow query, folds statistics, reports a leak, sheds load and checks health."""
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    for expected in (
        "warm_up(engine, 3): 3 verified idle connections",
        "slow query logged:",
        "SELECT ? + ?",
        "leak detector: held",
        "refused in",
        "resize_pool(size=5): 3 -> 5",
        "health: healthy",
    ):
        assert expected in out, expected


def test_health_command_exit_codes(
    pg_server: PgServer, pg_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`health URL`: 0 and a text line when healthy; 2 and JSON without the password when unreachable."""
    url = pg_server.app_url(pg_database)
    assert main(["health", url.render_as_string(hide_password=False)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("healthy: ")
    assert pg_server.app_password not in out
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    down = url.set(port=free).render_as_string(hide_password=False)
    assert main(["health", down, "--timeout", "1", "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "unhealthy"
    assert report["error"] == "DatabaseUnavailable"
    assert pg_server.app_password not in json.dumps(report)


def test_health_command_rejects_bad_input() -> None:
    """A malformed URL or a non-positive timeout is a clear usage error."""
    with pytest.raises(SystemExit, match="not a SQLAlchemy URL"):
        main(["health", "::::"])
    with pytest.raises(SystemExit, match="--timeout must be > 0"):
        main(["health", "sqlite://", "--timeout", "0"])
