"""examples/testing (included by docs/testing.md): a project's own suite using the kit, run by pytest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.examples.run import ROOT


def _pytest(tmp_path: Path, env: dict[str, str]) -> str:
    project = tmp_path / "project"
    shutil.copytree(ROOT / "examples" / "testing", project)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(project)],
        cwd=tmp_path,
        env={**env, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_example_suite_passes_on_sqlite(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "EXAMPLE_POSTGRES"}
    out = _pytest(tmp_path, env)
    assert "4 passed, 1 skipped" in out
    assert "set EXAMPLE_POSTGRES=1" in out


@pytest.mark.postgresql
def test_the_example_suite_starts_its_own_postgresql(tmp_path: Path) -> None:
    assert "5 passed" in _pytest(tmp_path, {**os.environ, "EXAMPLE_POSTGRES": "1"})
