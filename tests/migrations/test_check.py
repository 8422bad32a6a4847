"""check_migrations on fixture projects: a clean one passes; each planted fault is found and named."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from sqlalchemy_resilience.cli.demo.migration_project import write_project
from sqlalchemy_resilience.migrations.check import check_migrations


def test_a_clean_project_passes_every_check(database: URL, tmp_path: Path) -> None:
    """Single head, upgrade, models = DDL, downgrades run, and each revision round-trips exactly."""
    walked: list[str] = []
    report = check_migrations(str(write_project(tmp_path)), url=database, progress=walked.append)
    assert report.ok, [str(f) for f in report.findings]
    assert report.revisions == ("r1", "r2", "r3")
    assert walked == ["r1", "r2", "r3"]  # in walk order, each once its round trip passed
    report.assert_ok()


@pytest.mark.parametrize(
    ("variant", "check", "revision", "words"),
    [
        ("two_heads", "single_head", None, "Expected 1 head revision, found 2"),
        ("drift", "model_ddl", None, "out of sync"),
        ("broken_downgrade", "up_down", "r2", "the downgrade failed"),
        ("trace", "round_trip", "r3", "table mig_extra is left behind"),
    ],
)
def test_each_planted_fault_is_found(
    database: URL, tmp_path: Path, variant: str, check: str, revision: str | None, words: str
) -> None:
    """Exactly the check that should fail fails, naming the revision and the evidence."""
    walked: list[str] = []
    report = check_migrations(
        str(write_project(tmp_path, variant=variant)), url=database, progress=walked.append
    )
    assert [f.check for f in report.findings] == [check], [str(f) for f in report.findings]
    finding = report.findings[0]
    assert finding.revision == revision
    if revision is not None:  # the walk reported the revisions before the failing one only
        assert walked == list(report.revisions[: report.revisions.index(revision)])
    assert words in str(finding), str(finding)
    with pytest.raises(AssertionError, match="migration checks failed"):
        report.assert_ok()


def test_a_database_that_is_not_empty_is_refused(database: URL, tmp_path: Path) -> None:
    """The checks migrate from base and back: they refuse a database that is at a revision."""
    ini = str(write_project(tmp_path))
    assert check_migrations(ini, url=database).ok
    from alembic import command
    from alembic.config import Config

    config = Config(ini)
    config.set_main_option(
        "sqlalchemy.url", database.render_as_string(hide_password=False).replace("%", "%%")
    )
    command.upgrade(config, "r1")
    with pytest.raises(ValueError, match="needs an empty database; this one is at r1"):
        check_migrations(ini, url=database)
