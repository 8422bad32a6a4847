"""examples/observe_tour.py (included by docs/observability.md) runs as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_observability_tour_runs(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "observe_tour.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # The top statements by p95 (timings are the machine's; the statements and counts are not).
    assert any(
        line.endswith("5 calls  SELECT id FROM tour_users WHERE email = ?") for line in lines
    )
    assert any(line.endswith("5 calls  INSERT INTO tour_users VALUES (?, ?)") for line in lines)
    float(lines[-2])  # the pool's p99 wait, seconds
    assert lines[-1] == "database: healthy"
