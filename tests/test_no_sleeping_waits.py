"""Tests wait for events and move injected clocks; they never sleep "long enough".

A non-zero sleep in the tests is allowed only where the time itself is what
the test is about (a slow connect, a held connection, a toxic's latency, a
chaos scenario's spacing, a random kill time) and says so in a comment on the
line or the line above. Waiting for something to happen goes through ``tests/waiting.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
_SLEEP = re.compile(r"\bsleep\((?!0\)|0\.0\)|POLL\))")


def test_every_sleep_in_the_tests_says_why_it_is_not_a_wait() -> None:
    unexplained = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.name == "test_no_sleeping_waits.py":
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            code = line.split("#", 1)[0]
            if "pg_sleep" in code or "def " in code or "sleep=" in code:
                continue
            above = lines[number - 2].strip() if number > 1 else ""
            if _SLEEP.search(code) and "#" not in line and not above.startswith("#"):
                unexplained.append(f"{path.relative_to(TESTS)}:{number}: {line.strip()}")
    assert not unexplained, (
        "sleeps that wait for something: use tests/waiting.py (until/wait_until), an event "
        "or a FakeClock, or say in a comment why the time itself is the test:\n"
        + "\n".join(unexplained)
    )
