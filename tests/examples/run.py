"""Run an example as a user would: its own process, in a directory of the test's."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def python(
    *args: str, cwd: Path, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python args...`` (this interpreter) in ``cwd`` with exactly ``env``; not checked."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**env, "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def copy_project(name: str, tmp_path: Path) -> Path:
    """A copy of the project ``examples/<name>`` in ``tmp_path``, to run and edit freely."""
    return Path(shutil.copytree(ROOT / "examples" / name, tmp_path / "project"))


def run_example(
    name: str,
    cwd: Path,
    database_url: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> str:
    """``python examples/<name>`` in ``cwd``; its stdout. ``DATABASE_URL`` is set to
    ``database_url``, or removed (the example's SQLite default); ``extra_env`` is added."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    env.update(extra_env or {})
    done = python(str(ROOT / "examples" / name), cwd=cwd, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout
