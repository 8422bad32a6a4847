"""examples/observe_tour.py (included by docs/observability.md) runs as a user would run it."""

from __future__ import annotations

from pathlib import Path

from tests.examples.run import run_example


def test_the_observability_tour_runs(tmp_path: Path) -> None:
    lines = run_example("observe_tour.py", tmp_path).splitlines()
    # The top statements by p95 (timings are the machine's; the statements and counts are not).
    assert any(
        line.endswith("5 calls  SELECT id FROM tour_users WHERE email = ?") for line in lines
    )
    assert any(line.endswith("5 calls  INSERT INTO tour_users VALUES (?, ?)") for line in lines)
    float(lines[-2])  # the pool's p99 wait, seconds
    assert lines[-1] == "database: healthy"
