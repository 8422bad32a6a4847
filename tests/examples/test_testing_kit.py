"""examples/testing (included by docs/testing.md): a project's own suite using the kit, run by pytest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.examples.run import copy_project, python


def _pytest(tmp_path: Path, env: dict[str, str]) -> str:
    project = copy_project("testing", tmp_path)
    args = ("-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(project))
    done = python(*args, cwd=tmp_path, env=env, timeout=300)
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
