"""Code in the docs is code CI runs: included from a program CI runs, or run here as copied.

Every page includes its Python from a program (``literalinclude`` of an
example or a test) that a test runs; none shows Python inline.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# A fence that shows Python inline (not included from a program).
_INLINE_PYTHON = re.compile(r"^```(?:python|python3|py|pycon)\s*$", re.M)


def test_pages_include_their_code_from_programs_ci_runs() -> None:
    for page in sorted(DOCS.glob("*.md")):
        found = len(_INLINE_PYTHON.findall(page.read_text(encoding="utf-8")))
        assert found == 0, (
            f"{page.name}: {found} inline Python snippet(s); include the code from a program "
            "CI runs (```{literalinclude} ../examples/...```) instead"
        )


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


def test_every_included_program_is_run_by_a_test() -> None:
    included: set[str] = set()
    for page in sorted(DOCS.glob("*.md")):
        included.update(
            re.findall(
                r"```\{literalinclude\} \.\./examples/(\S+)", page.read_text(encoding="utf-8")
            )
        )
    tests = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").rglob("test_*.py"))
    for target in sorted(included):
        # Run by file name, imported as a module, or (a project) by its folder.
        name = target.split("/")[0] if "/" in target else target
        module = "examples." + name.removesuffix(".py")
        assert f'"{name}"' in tests or f"{module} import" in tests, (
            f"examples/{target} is included by the docs but no test runs it"
        )
