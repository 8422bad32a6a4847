"""Driving the ``alembic`` processes of the migration tests."""

from __future__ import annotations

import signal
from typing import Any

import pytest


def finish(proc: Any, timeout: float = 90) -> tuple[int, str]:
    """Wait for ``proc``; its exit code and its standard output and error together."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err


def kill_when_it_says(proc: Any, line: str) -> None:
    """SIGKILL ``proc`` as soon as it prints ``line`` (a revision's ``-x announce`` line)."""
    assert proc.stdout is not None
    for printed in proc.stdout:
        if printed.strip() == line:
            break
    else:
        pytest.fail(f"{line!r} never came: {finish(proc)}")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
