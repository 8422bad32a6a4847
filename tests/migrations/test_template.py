"""init_migrations / `init-migrations`: a new environment whose env.py is run_migrations, ready to use."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, select, text

from sqlalchemy_resilience.cli import main
from sqlalchemy_resilience.cli.common import EXIT_USAGE
from sqlalchemy_resilience.migrations import init_migrations
from sqlalchemy_resilience.migrations.check import check_migrations
from sqlalchemy_resilience.schema import migration_checksums


def test_a_new_environment_migrates_under_run_migrations(tmp_path: Path) -> None:
    """init, one revision, `alembic upgrade head`: applied, checksum recorded, check_migrations clean."""
    ini = init_migrations(tmp_path / "migrations", ini=tmp_path / "alembic.ini")
    env = (tmp_path / "migrations" / "env.py").read_text()
    assert (
        "run_migrations(target_metadata" in env
        and (tmp_path / "migrations" / "script.py.mako").exists()
    )
    config = Config(str(ini))
    script = command.revision(config, message="first", rev_id="a1")
    assert script is not None and not isinstance(script, list)
    path = Path(script.path)
    path.write_text(
        path.read_text()
        .replace(
            "def upgrade() -> None:\n",
            'def upgrade() -> None:\n    op.create_table("things", sa.Column("id", sa.Integer, primary_key=True))\n',
        )
        .replace(
            "def downgrade() -> None:\n", 'def downgrade() -> None:\n    op.drop_table("things")\n'
        )
    )
    url = f"sqlite:///{tmp_path / 'app.sqlite'}"
    done = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ini), "upgrade", "head"],
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert (
                conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "a1"
            )
            assert conn.execute(select(migration_checksums.c.revision)).scalars().all() == ["a1"]
    finally:
        engine.dispose()
    checked = check_migrations(str(ini), url=f"sqlite:///{tmp_path / 'check.sqlite'}")
    assert [f.message for f in checked.findings] == [
        "env.py gives no target_metadata, so the models cannot be compared (set it, or pass "
        "model_check=False; on the command line --no-model-check)"
    ]
    unmodelled = check_migrations(
        str(ini), url=f"sqlite:///{tmp_path / 'check2.sqlite'}", model_check=False
    )
    assert unmodelled.ok
    # The same from the command line, as the finding says.
    from sqlalchemy_resilience.cli import main

    url3 = f"sqlite:///{tmp_path / 'check3.sqlite'}"
    assert main(["check-migrations", url3, "-c", str(ini), "--no-model-check"]) == 0


def test_the_command_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second init into the same folder is a one-line usage error."""
    target = tmp_path / "migrations"
    ini = tmp_path / "alembic.ini"
    assert main(["init-migrations", str(target), "--ini", str(ini)]) == 0
    assert "env.py runs run_migrations" in capsys.readouterr().out
    assert (
        main(["init-migrations", str(target), "--ini", str(tmp_path / "other.ini")]) == EXIT_USAGE
    )
    assert "exists and is not empty" in capsys.readouterr().err
