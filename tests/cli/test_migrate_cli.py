"""`sqlalchemy-resilience migrate` and `verify-migrations` on a throwaway project: lines, codes, no password."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from sqlalchemy_resilience.cli import main
from sqlalchemy_resilience.cli.common import (
    EXIT_DRIVER_MISSING,
    EXIT_FAILED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
)
from sqlalchemy_resilience.cli.demo.migration_project import write_project
from sqlalchemy_resilience.cli.output import progress_bar
from tests.pgharness import PgServer


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ini = write_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    return ini


def test_migrate_prints_a_line_per_revision_then_verifies(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Three numbered lines and a summary; a second run applies nothing; verify is clean, then finds an edit."""
    url = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    assert main(["migrate", url]) == 0
    out = capsys.readouterr().out
    assert "  [1] upgrade base -> r1  r1" in out and "  [3] upgrade r2 -> r3  r3" in out
    assert "done: 3 revision(s) applied" in out
    assert main(["migrate", url]) == 0
    assert "nothing was applied" in capsys.readouterr().out
    assert main(["verify-migrations", url]) == 0
    assert "ok: every applied revision matches its file" in capsys.readouterr().out
    r1 = tmp_path / "migrations" / "versions" / "r1.py"
    r1.write_text(r1.read_text() + "\n# changed\n")
    assert main(["verify-migrations", url, "--json"]) == EXIT_FAILED
    assert '"kind": "edited"' in capsys.readouterr().out
    assert "DATABASE_URL" not in os.environ  # put back as it was


def test_migrate_without_a_config_is_a_usage_error(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No alembic.ini: one line, exit 64."""
    assert main(["migrate", "sqlite:///x.sqlite", "-c", "missing.ini"]) == EXIT_USAGE
    assert capsys.readouterr().err.strip() == (
        "sqlalchemy-resilience: no Alembic config at missing.ini (give -c PATH/alembic.ini)"
    )


@pytest.mark.postgresql
def test_an_unreachable_server_is_one_line_without_the_password(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listens on the port: connect retried, then exit 69 with one line, the password hidden."""
    url = "postgresql+psycopg://app:s3cr3t-pw@127.0.0.1:1/app"
    assert main(["migrate", url]) == EXIT_UNAVAILABLE
    captured = capsys.readouterr()
    assert "s3cr3t-pw" not in captured.out + captured.err
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith(
        "sqlalchemy-resilience: migration failed: cannot connect to migrate: DatabaseUnavailable"
    )
    assert "Traceback" not in captured.err


@pytest.mark.postgresql
def test_migrate_on_postgresql_with_the_sql_option(
    project: Path, pg_server: PgServer, pg_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """--sql prints the script (lock and timeouts included) on stdout; then a real run applies it."""
    url = pg_server.app_url(pg_database, driver="psycopg").render_as_string(hide_password=False)
    assert main(["migrate", url, "--sql"]) == 0
    script = capsys.readouterr().out
    assert (
        script.lstrip().startswith("SELECT set_config('lock_timeout'")
        and "pg_advisory_lock(" in script
    )
    assert main(["migrate", url, "--lock-timeout", "2"]) == 0
    captured = capsys.readouterr()
    assert "done: 3 revision(s) applied" in captured.out
    assert pg_server.app_password not in captured.out + captured.err


def test_check_migrations_command(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Clean project: exit 0; a downgrade that leaves its table behind: exit 1 naming r3; not empty: 64."""
    url = f"sqlite:///{tmp_path / 'check.sqlite'}"
    assert main(["check-migrations", url]) == 0
    assert "ok: every check passed" in capsys.readouterr().out
    other = tmp_path / "trace"
    ini = write_project(other, variant="trace")
    assert (
        main(["check-migrations", f"sqlite:///{other / 'db.sqlite'}", "-c", str(ini)])
        == EXIT_FAILED
    )
    out = capsys.readouterr().out
    assert "problem: round_trip at r3: the downgrade leaves a trace" in out
    assert "table mig_extra is left behind" in out
    assert main(["migrate", url]) == 0
    capsys.readouterr()
    assert main(["check-migrations", url]) == EXIT_USAGE
    assert "needs an empty database; this one is at r3" in capsys.readouterr().err


def test_check_migrations_draws_a_progress_bar_on_a_terminal_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A terminal sees the walk advance revision by revision; a pipe sees only the report."""
    import io

    from rich.console import Console

    from sqlalchemy_resilience.cli import migrate as migrate_cli

    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=100)
    monkeypatch.setattr(
        migrate_cli, "progress_bar", lambda label, unit: progress_bar(label, unit, console=terminal)
    )
    ini = write_project(tmp_path / "project")
    assert main(["check-migrations", f"sqlite:///{tmp_path / 'a.sqlite'}", "-c", str(ini)]) == 0
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.getvalue())
    assert "up, down, up" in drawn and "/3 revisions" in drawn, drawn
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["check-migrations", f"sqlite:///{tmp_path / 'b.sqlite'}", "-c", str(ini)]) == 0
    captured = capsys.readouterr()
    # Not a terminal: no bar and no control codes (Alembic's own log lines may be there).
    assert "revisions" not in captured.err and "\x1b[" not in captured.err, captured.err
    assert "3 revision(s) walked up, down and up again" in captured.out


def test_lint_migrations_command(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Clean project: exit 0; the unsafe r4: exit 1 with rule, line and statement; no squawk: 78."""
    if shutil.which("squawk") is None:
        pytest.skip("squawk is not installed (pip install squawk-cli)")
    assert main(["lint-migrations"]) == 0
    assert "r3: ok" in capsys.readouterr().out
    unsafe = write_project(tmp_path / "unsafe", variant="unsafe")
    assert main(["lint-migrations", "-c", str(unsafe)]) == EXIT_FAILED
    out = capsys.readouterr().out
    assert "r4: 5 finding(s)" in out and "changing-column-type (line " in out
    assert "CREATE INDEX ix_items_name ON mig_items (name)" in out
    assert "1 finding(s) silenced" in out
    assert main(["lint-migrations", "--squawk", str(tmp_path / "none")]) == EXIT_DRIVER_MISSING
    assert "pip install squawk-cli" in capsys.readouterr().err
