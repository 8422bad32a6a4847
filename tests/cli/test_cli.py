"""The sqlalchemy-resilience command line."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sqlalchemy_resilience import __version__
from sqlalchemy_resilience.cli import main
from sqlalchemy_resilience.cli.demo import run_demo
from sqlalchemy_resilience.cli.main import EXIT_DRIVER_MISSING, EXIT_UNAVAILABLE, EXIT_USAGE
from tests.pgharness import PgServer


@pytest.fixture(scope="module")
def demo_out() -> str:
    """The whole default tour (about 7 s), run once for the tests that read its parts."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["demo"]) == 0
    return buffer.getvalue()


def test_demo_on_embedded_default(demo_out: str) -> None:
    """`demo` with no options runs on SQLite and shows all three translations in en and ja."""
    out = demo_out
    for expected in ("UniqueViolation", "ForeignKeyViolation", "LockNotAvailable", "3/3"):
        assert expected in out
    assert "このデータは既に登録されています。" in out
    assert "This item already exists." in out
    assert "LockNotAvailable retried at BEGIN IMMEDIATE" in out
    # The retry log as an application sees it: the package's own WARNING record.
    assert "WARNING sqlalchemy_resilience.retry: retrying after LockNotAvailable" in out
    assert "the work ran 1x; balance 100 -> 101" in out
    # SQLite runs in process: no "server" said anything.
    assert "SQLite said code=SQLITE_CONSTRAINT_UNIQUE" in out and "server said" not in out


def test_demo_on_sync_sqlite_url(tmp_path: object) -> None:
    """The demo also runs on a plain sqlite3 URL (no aiosqlite): the sagas through run_sync."""
    out = io.StringIO()
    assert run_demo(f"sqlite:///{tmp_path}/d.sqlite", out=out) == 0  # type: ignore[str-bytes-safe]
    assert "3/3 failures" in out.getvalue()
    assert "recover_sagas completed ['demo-order-2']" in out.getvalue()


def test_demo_shows_a_compensating_saga_and_a_crash_recovery(demo_out: str) -> None:
    """A saga compensating in reverse, and one whose process dies after the payment call, recovered once."""
    out = demo_out
    for expected in (
        "compensated charge, reserve -> SagaCompensated",
        "rows left behind: 0",
        "died (exit 137) after the payment API applied the charge; saga log says running at step 1",
        "recover_sagas completed ['demo-order-2']",
        "got 2 calls with key demo-order-2:charge and applied it 1x; shipped: 1",
    ):
        assert expected in out, expected


def test_demo_shows_a_bulk_insert_with_progress_and_keyset_pages(demo_out: str) -> None:
    """50,000 rows with a progress bar, three pages forwards, one back, an edited cursor refused."""
    out = demo_out
    for expected in (
        "50000/50000 rows",
        "50,000 rows in 10 transactions by the 'insertmanyvalues' path",
        "page 1           #50000 buy 12:28:20, #49999 view 12:28:19",
        "page 3 (after=)  #49992 click",
        "back (before=)   #49996 view",
        "edited cursor    InvalidCursor (signature), no SQL run",
        "このページのリンクは無効です。",
    ):
        assert expected in out, expected
    assert "\x1b[" not in out  # no colour codes when the output is not a terminal


def test_demo_shows_two_instances_migrating_at_once(demo_out: str) -> None:
    """One instance applies r1-r3 under the lock, the other applies nothing; verify sees an edit."""
    out = demo_out
    assert "applied r1, r2, r3" in out and "applied nothing (already at head)" in out
    assert "verify_migrations: 3 revisions, checksums match" in out
    assert "after editing r2.py: edited r2" in out


def test_demo_sections(capsys: pytest.CaptureFixture[str]) -> None:
    """`--section NAME` runs one part (repeatable); an unknown name is one usage line."""
    assert main(["demo", "--section", "errors", "--section", "migrations"]) == 0
    out = capsys.readouterr().out
    assert "3/3 failures" in out and "applied r1, r2, r3" in out
    assert "bulk_insert" not in out and "Deployments" not in out
    assert main(["demo", "--section", "nope"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "sqlalchemy-resilience: --section must be one of errors, retry, observe, sagas, "
        "batch, migrations, deploy, got 'nope'"
    ]


def test_demo_shows_the_deployment_parts(capsys: pytest.CaptureFixture[str]) -> None:
    """The query budget catches the N+1 with its line; only the idle connection is pinged."""
    assert main(["demo", "--section", "deploy"]) == 0
    out = capsys.readouterr().out
    assert "6 statements ran, the budget is 2" in out
    assert "5x the same statement from " in out and "deploy.py:" in out
    assert "the same with a join: 1 statement, 10 titles: within budget" in out
    assert "3 back-to-back checkouts, 0 pings; after 0.4 s idle, 1 ping (0 dead)" in out


def test_demo_on_postgresql_url(pg_server: PgServer, pg_database: str, pg_driver: str) -> None:
    """`demo --url` against the suite's PostgreSQL shows a QueryTimeout and never prints the password."""
    url = pg_server.app_url(pg_database, driver=pg_driver)
    out = io.StringIO()
    assert run_demo(url, out=out) == 0
    text = out.getvalue()
    assert "QueryTimeout" in text and "57014" in text
    assert "server said code=57014" in text
    assert "50,000 rows in 10 transactions by the 'copy' path" in text  # asyncpg and psycopg
    assert "InvalidCursor (signature)" in text
    assert "applied r1, r2, r3" in text and "checksums match" in text
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
    assert "WARNING sqlalchemy_resilience.retry: retrying after" in proc.stdout
    assert "2 reads went to the replica (2); a unit that wrote read its own row" in proc.stdout
    assert "rotated twice; 3 connections, 0 failures" in proc.stdout


def test_cli_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """Bad invocations fail with one line and exit 64, apart from the health statuses 0/1/2."""
    assert main(["demo", "--url", "not a url"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--url is not a SQLAlchemy URL" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as info:
        main(["demo", "--url", "sqlite://", "--embedded-postgres"])
    assert info.value.code == EXIT_USAGE
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == EXIT_USAGE
    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out


def test_demo_shows_observability_and_pool(demo_out: str) -> None:
    """The default demo logs a slow query, folds statistics, reports a leak, sheds load and checks health."""
    out = demo_out
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


def test_health_command_rejects_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed URL or a non-positive timeout is a one-line usage error (64)."""
    assert main(["health", "::::"]) == EXIT_USAGE
    assert "URL is not a SQLAlchemy URL" in capsys.readouterr().err
    assert main(["health", "nosuchdb://x"]) == EXIT_USAGE
    assert "no SQLAlchemy dialect for 'nosuchdb'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (
            ["health", "sqlite://", "--timeout", "0"],
            "--timeout: must be a finite number of seconds > 0, got 0",
        ),
        (
            ["health", "sqlite://", "--timeout", "nan"],
            "--timeout: must be a finite number of seconds > 0, got nan",
        ),
        (
            ["health", "sqlite://", "--timeout", "inf"],
            "--timeout: must be a finite number of seconds > 0, got inf",
        ),
        (
            ["health", "sqlite://", "--timeout", "abc"],
            "--timeout: must be a number of seconds > 0, got 'abc'",
        ),
        (
            ["migrate", "sqlite://", "--lock-wait", "-1"],
            "--lock-wait: must be a finite number of seconds >= 0, got -1",
        ),
        (
            ["migrate", "sqlite://", "--lock-timeout", "inf"],
            "--lock-timeout: must be a finite number",
        ),
        (["health", "sqlite://", "--nosuch"], "health: unrecognized arguments: --nosuch"),
        (["health"], "health: the following arguments are required: url"),
        (["nosuch"], "invalid choice: 'nosuch'"),
    ],
)
def test_a_bad_argument_is_one_line_before_anything_runs(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every usage error is one line on stderr naming the command, exit 64, no traceback,
    and nothing has started (no "migrating ..." line)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == EXIT_USAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1, captured.err
    assert says in captured.err and "Traceback" not in captured.err
    assert captured.err.startswith(
        f"sqlalchemy-resilience{' ' + argv[0] if argv[0] != 'nosuch' else ''}"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["migrate", "sqlite://"],
        ["verify-migrations", "sqlite://"],
        ["check-migrations", "sqlite://"],
        ["lint-migrations"],
        ["init-migrations", "somewhere"],
    ],
    ids=lambda argv: argv[0],
)
def test_the_migration_commands_without_alembic_are_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alembic not installed: one line naming the extra (78), as for a missing driver."""
    monkeypatch.setitem(sys.modules, "alembic", None)  # import alembic now raises ImportError
    assert main(argv) == EXIT_DRIVER_MISSING
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"sqlalchemy-resilience: {argv[0]} needs alembic, which is not installed: "
        'pip install "sqlalchemy-resilience[alembic]"'
    ]


def test_help_texts_are_plain_and_name_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    """No reST markup in a --help; health's lists its exit codes."""
    for command in ("bench", "health", "migrate", "stats"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "``" not in out and ":func:" not in out, (command, out)
        if command == "health":
            assert "0 healthy, 1 degraded, 2 unhealthy" in " ".join(out.split())


def test_a_missing_driver_is_one_line_naming_what_to_install(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A URL whose driver is not installed names the package extra (78), no traceback."""
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # import asyncpg now raises ImportError
    assert main(["health", "postgresql+asyncpg://app:pw@127.0.0.1/app"]) == EXIT_DRIVER_MISSING
    err = capsys.readouterr().err
    assert err.strip() == (
        "sqlalchemy-resilience: the driver for postgresql+asyncpg (asyncpg) is not installed: "
        'pip install "sqlalchemy-resilience[asyncpg]"'
    )
    assert "pw" not in err
    monkeypatch.setitem(sys.modules, "pymysql", None)
    assert main(["demo", "--url", "mysql+pymysql://app:pw@127.0.0.1/app"]) == EXIT_DRIVER_MISSING
    assert 'pip install "sqlalchemy-resilience[pymysql]"' in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "MySQLdb", None)
    assert main(["health", "mysql://app:pw@127.0.0.1/app"]) == EXIT_DRIVER_MISSING
    # The extra, named for the distribution (mysqlclient), not the module (MySQLdb).
    assert 'pip install "sqlalchemy-resilience[mysqlclient]"' in capsys.readouterr().err


def test_demo_on_a_sqlite_path_that_cannot_be_opened(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unopenable SQLite file is one line naming the path (69), no traceback."""
    path = tmp_path / "missing-dir" / "demo.sqlite"
    assert main(["demo", "--url", f"sqlite:///{path}"]) == EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(path) in err, err
    assert "Traceback" not in err


def test_health_text_names_the_error_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`health` on an unopenable SQLite file: unhealthy (2), the error class said once,
    DatabaseNotFound (waiting will not fix it)."""
    assert main(["health", f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}"]) == 2
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith("error:"))
    assert line.count("DatabaseNotFound") == 1, line


def test_demo_on_an_unreachable_server_is_one_line(
    pg_server: PgServer, pg_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`demo --url` to a port nobody listens on: the translated error in one line (69)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    url = pg_server.app_url(pg_database).set(port=free)
    assert main(["demo", "--url", url.render_as_string(hide_password=False)]) == EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "DatabaseUnavailable" in err and pg_server.app_password not in err


def test_stats_of_a_demo_workload(capsys: pytest.CaptureFixture[str]) -> None:
    """`stats --demo` prints the in-process statistics; JSON for machines."""
    assert main(["stats", "--demo", "--top", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and rows[0]["calls"] == 300
    assert rows[0]["statement"].startswith("UPDATE items SET stock=")
    assert main(["stats", "--demo", "--by", "calls"]) == 0
    assert "SELECT items.id" in capsys.readouterr().out
    assert main(["stats", "sqlite:///x.db"]) == EXIT_USAGE
    assert "needs PostgreSQL" in capsys.readouterr().err


@pytest.mark.postgresql  # starts a server of its own
def test_stats_reads_pg_stat_statements() -> None:
    """A server with pg_stat_statements preloaded: the top statements by calls, as JSON."""
    from sqlalchemy_resilience.testing.embedded import EmbeddedPostgresError

    try:
        server = PgServer.start_embedded(shared_preload_libraries="'pg_stat_statements'")
    except EmbeddedPostgresError as exc:  # binaries without the contrib modules
        pytest.skip(f"no pg_stat_statements with these PostgreSQL binaries: {exc}")
    try:
        server.execute("CREATE EXTENSION pg_stat_statements")
        for _ in range(5):
            server.execute("SELECT count(*) FROM pg_class WHERE relpages > %s", (3,))
        url = server.admin_url(driver="psycopg").render_as_string(hide_password=False)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "sqlalchemy_resilience.cli",
                "stats",
                url,
                "--by",
                "calls",
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        rows = json.loads(proc.stdout)
        assert any("pg_class" in r["statement"] and r["calls"] >= 5 for r in rows)
        server.execute("DROP EXTENSION pg_stat_statements")
        proc = subprocess.run(
            [sys.executable, "-m", "sqlalchemy_resilience.cli", "stats", url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines() == [
            "sqlalchemy-resilience: pg_stat_statements is not installed in this database: "
            "CREATE EXTENSION pg_stat_statements (the server needs shared_preload_libraries = "
            "'pg_stat_statements')"
        ]
        assert server.embedded is not None and server.embedded.password not in proc.stderr
    finally:
        server.close()


def test_bench_prints_ratios_to_plain_sqlalchemy(capsys: pytest.CaptureFixture[str]) -> None:
    """`bench` on SQLite: every variant measured in the same run, plain SQLAlchemy the base."""
    assert main(["bench", "--rounds", "2", "--queries", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    names = [v["variant"] for v in result["variants"]]
    assert names[:3] == ["raw sqlite3", "plain SQLAlchemy", "instrument() defaults"]
    assert result["variants"][1]["ratio"] == 1.0
    assert all(v["median_us"] > 0 for v in result["variants"])
    assert main(["bench", "--queries", "5"]) == EXIT_USAGE
    assert "--queries >= 10" in capsys.readouterr().err


def test_bench_on_postgresql(pg_server: PgServer, pg_database: str) -> None:
    url = pg_server.app_url(pg_database, driver="asyncpg").render_as_string(hide_password=False)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["bench", "--url", url, "--rounds", "2", "--queries", "20"]) == 0
    text = out.getvalue()
    assert "raw asyncpg" in text and "instrument() defaults" in text
    assert pg_server.app_password not in text


def test_demo_shows_the_breaker_and_the_prometheus_exposition(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--section", "retry", "--section", "observe"]) == 0
    out = capsys.readouterr().out
    assert "3 units of work lost their connection: breaker OPEN" in out
    assert "CircuitOpenError in" in out and "no pool checkout" in out
    assert "CLOSED -> OPEN -> HALF_OPEN -> CLOSED" in out
    assert "the default waits at the open breaker" in out
    if importlib.util.find_spec("opentelemetry.exporter.prometheus") is not None:
        assert 'db_client_connection_count{db_client_connection_pool_name="demo"' in out
    else:
        assert "pip install opentelemetry-sdk opentelemetry-exporter-prometheus" in out


def test_demo_breaker_on_a_sync_driver(tmp_path: Path) -> None:
    """The no-extras install runs the demo on sqlite3: the breaker part runs there too."""
    out = io.StringIO()
    assert run_demo(f"sqlite:///{tmp_path / 'sync.sqlite'}", out=out, sections=["retry"]) == 0
    text = out.getvalue()
    assert "3 units of work lost their connection: breaker OPEN" in text
    assert "CLOSED -> OPEN -> HALF_OPEN -> CLOSED" in text


# What each optional part of the tour imports, and the distribution that brings it.
_DEMO_OPTIONAL = {
    "aiosqlite": "aiosqlite",
    "alembic": "alembic",
    "opentelemetry.sdk": "opentelemetry-sdk",
    "opentelemetry.exporter.prometheus": "opentelemetry-exporter-prometheus",
    # The bulk_insert progress bar (the cli extra; without it the tour prints no bar).
    "rich": "rich",
}


def test_the_demo_extra_installs_what_every_part_of_the_tour_imports() -> None:
    """The README's first command installs ``.[demo]``: it must bring every optional import."""
    from packaging.requirements import Requirement  # pytest's own dependency

    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    extras = project["optional-dependencies"]
    names: set[str] = set()
    pending = [Requirement(r) for r in extras["demo"]]
    while pending:  # self-references such as "sqlalchemy-resilience[aiosqlite,alembic]"
        requirement = pending.pop()
        if requirement.name == project["name"]:
            pending.extend(Requirement(r) for extra in requirement.extras for r in extras[extra])
        else:
            names.add(requirement.name)
    assert set(_DEMO_OPTIONAL.values()) <= names, names


def test_with_the_demo_extra_no_part_of_the_tour_is_skipped(demo_out: str) -> None:
    """Installed as the README says, the whole tour runs: no part says what to install."""
    missing = [m for m in _DEMO_OPTIONAL if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"not installed here: {', '.join(missing)} (pip install '.[demo]')")
    out = demo_out
    assert "pip install" not in out and "skipped" not in out, out
    flat = " ".join(out.split())  # findings are wrapped at word boundaries
    for part in (
        "3/3 failures arrived as the expected typed error",
        "breaker OPEN",
        "db_client_operation_duration_seconds_count",
        "recover_sagas completed",
        "page 2 (after=)",
        "verify_migrations: 3 revisions, checksums match",
        "an N+1 pattern?",
        "ping_idle_connections",
    ):
        assert part in flat, part


@pytest.mark.parametrize(
    "argv",
    [
        ["health", "{url}"],
        ["stats", "{url}"],
        ["migrate", "{url}"],
        ["check-migrations", "{url}"],
        ["verify-migrations", "{url}"],
        ["bench", "--url", "{url}"],
    ],
    ids=lambda argv: argv[0],
)
def test_an_unescaped_at_in_the_password_is_one_line_showing_none_of_it(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """S34: postgresql://app:pa55@w0rd-tail@host/db: usage error, the escape named, no part shown."""
    url = "postgresql+psycopg://app:pa55@w0rd-tail@db.example/app"
    assert main([a.replace("{url}", url) for a in argv]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "%40" in err and "malformed" in err
    for part in ("pa55", "w0rd", "tail", "db.example"):
        assert part not in err


def test_the_facade_refuses_an_unescaped_at_in_the_password() -> None:
    """S34: Database(url) with an '@' in the password: ValueError naming the escape, not the URL."""
    from sqlalchemy_resilience import Database, SyncDatabase

    url = "sqlite+aiosqlite://app:pa55@w0rd@x/app"
    for facade in (Database, SyncDatabase):
        with pytest.raises(ValueError, match="%40") as info:
            facade(url.replace("+aiosqlite", "") if facade is SyncDatabase else url)
        assert "w0rd" not in str(info.value) and "pa55" not in str(info.value)


def test_without_rich_the_commands_print_plain_text(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """rich is the cli extra's: without it `stats --demo` prints an aligned plain table, bars draw nothing."""
    from sqlalchemy_resilience.cli import output

    monkeypatch.setattr(output, "HAVE_RICH", False)
    with output.progress_bar("walk", "revisions") as bar:
        bar.advance(bar.add_task("walk", total=3))
    assert main(["stats", "--demo", "--top", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("top 3 statements of the demo workload")
    assert out[1].split()[:2] == ["calls", "total"] and out[1].rstrip().endswith("statement")
    assert len(out) == 5 and "\x1b[" not in "".join(out)
