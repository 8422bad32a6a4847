"""Waiting for a condition, never for a length of time.

A test that sleeps "long enough" for something to happen fails on a busy
machine and wastes time on an idle one. These poll the condition every 5 ms
(FAULTS.md H2) and give up after a timeout far beyond what any run needs: the
timeout only turns a hang into a failure with a message.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable

POLL = 0.005


def wait_until(predicate: Callable[[], object], *, timeout: float = 20.0, what: str = "") -> None:
    """Return as soon as ``predicate()`` is true; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what or 'condition'} not met within {timeout}s")
        time.sleep(POLL)


async def until(predicate: Callable[[], object], *, timeout: float = 20.0, what: str = "") -> None:
    """:func:`wait_until` for a coroutine: the loop keeps running the code under test.

    ``predicate`` may be a coroutine function (a health check, a query).
    """
    deadline = time.monotonic() + timeout
    while not await _value(predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what or 'condition'} not met within {timeout}s")
        await asyncio.sleep(POLL)


async def _value(result: object) -> object:
    return await result if inspect.isawaitable(result) else result
