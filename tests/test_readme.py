"""The README's promises that tests can check: its two set-up commands, in both languages."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = 'python3 -m venv .venv && .venv/bin/pip install ".[demo]" && .venv/bin/sqlalchemy-resilience demo'
TESTS = (
    'python3 -m pip install "tox>=4.11" && python3 -m tox run-parallel --parallel 2 '
    "--parallel-no-spinner"
)


def test_both_readmes_give_the_same_two_commands() -> None:
    for name in ("README.md", "README.ja.md"):
        text = (ROOT / name).read_text(encoding="utf-8")
        assert DEMO in text, name
        assert TESTS in text, name


def test_ci_runs_the_readmes_test_command() -> None:
    assert TESTS in (ROOT / ".ci" / "run").read_text()


def test_the_japanese_readme_keeps_the_headline_figures() -> None:
    """Kept in step: the figures quoted in both must be the same numbers."""
    en = (ROOT / "README.md").read_text(encoding="utf-8")
    ja = (ROOT / "README.ja.md").read_text(encoding="utf-8")
    times = "\N{MULTIPLICATION SIGN}"
    for figure in (
        f"1.021{times}",
        "0.72 ms",
        "78.8 ms",
        "246,009",
        "2,469",
        f"1.66{times}",
        "30 ms",
    ):
        assert figure in en and figure in ja, figure
