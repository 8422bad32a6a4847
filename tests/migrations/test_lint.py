"""lint_migrations: squawk's findings per revision with the statement, markers, and the model/data checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from sqlalchemy_resilience.cli.demo.migration_project import alembic, write_project
from sqlalchemy_resilience.migrations.lint import SquawkMissing, lint_migrations

needs_squawk = pytest.mark.skipif(
    shutil.which("squawk") is None, reason="squawk is not installed (pip install squawk-cli)"
)


@needs_squawk
def test_a_safe_project_has_no_findings(tmp_path: Path) -> None:
    """The three plain revisions (a table, a nullable column, a table): nothing to report."""
    report = lint_migrations(str(write_project(tmp_path)))
    assert report.revisions == ("r1", "r2", "r3")
    assert report.ok, [str(f) for f in report.findings]


@needs_squawk
def test_unsafe_operations_are_found_per_revision(tmp_path: Path) -> None:
    """r4: a blocking index and a table rewrite (squawk), a still-mapped column dropped (models);
    the index with a marker comment is silenced, and each finding names its line and statement."""
    ini = write_project(tmp_path, variant="unsafe")
    report = lint_migrations(str(ini))
    found = {(f.revision, f.rule) for f in report.findings}
    assert ("r4", "require-concurrent-index-creation") in found
    assert ("r4", "changing-column-type") in found
    assert ("r4", "drop-mapped-column") in found
    assert all(f.revision == "r4" for f in report.findings), [str(f) for f in report.findings]
    index = next(f for f in report.findings if f.rule == "require-concurrent-index-creation")
    assert "CREATE INDEX ix_items_name ON mig_items (name)" in index.statement
    source = (tmp_path / "migrations" / "versions" / "r4.py").read_text().splitlines()
    assert index.line is not None and "ix_items_name" in source[index.line - 1]
    assert [
        f.statement for f in report.silenced if f.rule == "require-concurrent-index-creation"
    ] == ["CREATE INDEX ix_items_note ON mig_items (note);"]
    assert not report.ok


@needs_squawk
def test_not_null_without_default_on_a_table_with_rows(tmp_path: Path) -> None:
    """Given the database (at r3, with rows), r4's NOT NULL column without a default is reported."""
    ini = write_project(tmp_path, variant="unsafe")
    url = f"sqlite:///{tmp_path / 'lint.sqlite'}"
    upgrade = alembic(ini, url, "upgrade", "r3")
    upgrade.communicate(timeout=60)
    assert upgrade.returncode == 0
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO mig_items (id, name) VALUES (1, 'a')"))
    engine.dispose()
    report = lint_migrations(str(ini), url=url)
    data = [f for f in report.findings if f.source == "data"]
    assert [f.rule for f in data] == ["not-null-without-default-on-rows"]
    assert "mig_items has rows" in data[0].message


def test_a_missing_squawk_is_a_clear_error(tmp_path: Path) -> None:
    """No binary: SquawkMissing saying what to install, before anything runs."""
    with pytest.raises(SquawkMissing, match="pip install squawk-cli"):
        lint_migrations(str(write_project(tmp_path)), squawk=str(tmp_path / "no-squawk"))


@pytest.mark.parametrize("where", ["url", "config"])
def test_a_mysql_project_is_told_lint_is_postgresql_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """squawk judges PostgreSQL's DDL: a MySQL/MariaDB project hears so, before anything runs."""
    from alembic.config import Config

    from sqlalchemy_resilience.errors import NotSupported

    monkeypatch.delenv("DATABASE_URL", raising=False)
    config = Config(str(write_project(tmp_path)))
    url = "mysql+pymysql://app@127.0.0.1/shop"
    if where == "config":
        config.set_main_option("sqlalchemy.url", url)
    with pytest.raises(
        NotSupported, match=r"lint_migrations is not supported on mysql; it lints PostgreSQL DDL"
    ):
        lint_migrations(config, url=url if where == "url" else None)
