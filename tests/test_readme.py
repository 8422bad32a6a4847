"""The README's promises that tests can check: its two set-up commands and its program,
in both languages, and the figures they quote."""

from __future__ import annotations

import re
import subprocess
import sys
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
        f"1.028{times}",
        "0.72 ms",
        "78.8 ms",
        "246,009",
        "2,469",
        f"1.66{times}",
        "161 ms",
        "0.52",
    ):
        assert figure in en and figure in ja, figure


def _program(name: str) -> str:
    text = (ROOT / name).read_text(encoding="utf-8")
    (block,) = re.findall(r"```python\n(.*?)```", text, re.S)
    return block


def test_the_readmes_program_runs_as_copied(tmp_path: Path) -> None:
    """The program in both READMEs is the same and runs as it is, in a fresh directory."""
    program = _program("README.md")
    assert _program("README.ja.md") == program
    # The docs include it from the example, which must be the same program.
    example = (ROOT / "examples" / "first_program.py").read_text(encoding="utf-8")
    assert example.split("# [program]\n", 1)[1] == program
    (tmp_path / "first.py").write_text(program, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "first.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "False | このデータは既に登録されています。",
        "INSERT INTO users VALUES (?): 2 calls, {'UniqueViolation': 1}",
    ]


def test_the_readme_reads_in_a_few_minutes() -> None:
    """The README leads with the set-up; the detail lives in docs/."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.split()) < 1200
    assert text.index(DEMO) < 1500  # the first command within the first screen
