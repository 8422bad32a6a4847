"""examples/migrations (included by docs/migrations.md): upgrade, verify, check and lint it."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.examples.run import copy_project, python


def _run(project: Path, *args: str, database: Path) -> subprocess.CompletedProcess[str]:
    return python(*args, cwd=project, env={**os.environ, "DATABASE_URL": f"sqlite:///{database}"})


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_project("migrations", tmp_path)


def test_upgrade_then_verify_catches_an_edited_revision(project: Path, tmp_path: Path) -> None:
    database = tmp_path / "shop.db"
    upgraded = _run(project, "-m", "alembic", "upgrade", "head", database=database)
    assert upgraded.returncode == 0, upgraded.stderr
    clean = _run(project, "verify.py", database=database)
    assert (clean.returncode, clean.stdout) == (0, ""), clean.stderr
    revision = project / "migrations" / "versions" / "0001_lookup.py"
    revision.write_text(revision.read_text() + "# edited after it ran\n")
    edited = _run(project, "verify.py", database=database)
    assert edited.returncode == 1
    assert edited.stdout.startswith(
        "edited 0001_lookup 0001_lookup.py changed after it was applied"
    )


def test_the_projects_own_migration_test_passes(project: Path, tmp_path: Path) -> None:
    done = _run(
        project,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "test_migrations.py",
        database=tmp_path / "unused.db",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout


@pytest.mark.skipif(
    shutil.which("squawk") is None, reason="squawk is not installed (pip install squawk-cli)"
)
def test_the_lint_ignore_marker_silences_only_its_line(project: Path, tmp_path: Path) -> None:
    lint = ("-m", "sqlalchemy_resilience.cli", "lint-migrations")
    marked = _run(project, *lint, database=tmp_path / "unused.db")
    assert marked.returncode == 0, marked.stdout + marked.stderr
    assert "1 finding(s) silenced by lint: ignore[...] markers" in marked.stdout
    revision = project / "migrations" / "versions" / "0002_lookup_index.py"
    revision.write_text(
        revision.read_text().replace("# lint: ignore[require-concurrent-index-creation]", "#")
    )
    unmarked = _run(project, *lint, database=tmp_path / "unused.db")
    assert unmarked.returncode == 1
    assert "require-concurrent-index-creation" in unmarked.stdout
