"""Code in the docs is code CI runs: included from a program CI runs, or run here as copied.

A page either includes its Python from a program (``literalinclude`` of an
example or a test), or is listed below with the number of inline snippets it
still has; the count may only go down, and a page that reached 0 leaves the list.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# Pages whose inline ```python snippets are not yet included from a program.
NOT_YET_INCLUDED = {
    "deployments.md": 4,
}


def _inline_python(page: Path) -> int:
    return len(re.findall(r"^```python\s*$", page.read_text(encoding="utf-8"), re.M))


def test_pages_include_their_code_from_programs_ci_runs() -> None:
    for page in sorted(DOCS.glob("*.md")):
        allowed = NOT_YET_INCLUDED.get(page.name, 0)
        assert _inline_python(page) <= allowed, (
            f"{page.name}: include new code from a program CI runs "
            "(```{literalinclude} ../examples/...```), do not inline it"
        )


def test_the_list_shrinks_as_pages_are_converted() -> None:
    for name, allowed in NOT_YET_INCLUDED.items():
        found = _inline_python(DOCS / name)
        assert found == allowed, f"{name} has {found} inline snippets now: lower its entry"


def test_every_include_names_lines_that_exist() -> None:
    include = re.compile(
        r"```\{literalinclude\} (\S+)\n(?::[^\n]*\n)*?:start-after: \"([^\"]+)\"\n:end-before: \"([^\"]+)\"",
    )
    checked = 0
    for page in sorted(DOCS.glob("*.md")):
        for target, start, end in include.findall(page.read_text(encoding="utf-8")):
            checked += 1
            source = (page.parent / target).resolve().read_text(encoding="utf-8")
            assert start in source and end in source, (page.name, target, start)
            assert source.index(start) < source.index(end), (page.name, start)
    assert checked >= 6  # getting-started's steps at least
