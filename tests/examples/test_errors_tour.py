"""examples/errors_tour.py (included by docs/errors.md) runs as a user would run it."""

from __future__ import annotations

from pathlib import Path

from tests.examples.run import run_example


def test_the_errors_tour_runs(tmp_path: Path) -> None:
    assert run_example("errors_tour.py", tmp_path).splitlines() == [
        "UniqueViolation False users email",
        "UniqueViolation False",
        "Dieser Eintrag existiert bereits.",
    ]
