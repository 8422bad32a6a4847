"""The in-flight watchdog: reports a statement while it is still running, once.

The statement wrapper registers each statement in :attr:`Watchdog.running`
for its duration (one dict store and one pop); a daemon thread scans it.
"""

from __future__ import annotations

import asyncio
import asyncio.events as asyncio_events
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy_resilience._util.background import Ticker

__all__ = ["InFlight", "Watchdog"]

_log = logging.getLogger("sqlalchemy_resilience")


class InFlight:
    """One statement the watchdog is timing (kept only while the statement runs)."""

    __slots__ = ("reported", "start", "statement", "task", "thread")

    def __init__(
        self, start: float, statement: str, thread: int, task: asyncio.Task[Any] | None
    ) -> None:
        self.start = start
        self.statement = statement
        self.thread = thread
        self.task = task
        self.reported = False


class Watchdog(Ticker):
    """A daemon thread that reports statements still running past a threshold, once each.

    The instrumentation registers each statement in :attr:`running` for its
    duration (one dict store and one pop); the thread wakes every quarter
    threshold (at most once a second, at least every 10 ms) and reports
    entries older than the threshold that it has not reported yet.
    """

    def __init__(
        self,
        threshold: float,
        report: Callable[[InFlight, float], None],
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__()
        self.threshold = threshold
        self.running: dict[int, InFlight] = {}
        self._report = report
        self._clock = clock

    def enter(self, statement: str, is_async: bool) -> int:
        """Register a starting statement; returns the key to pop from :attr:`running`."""
        task = None
        if is_async:
            loop = asyncio_events._get_running_loop()
            task = asyncio.current_task(loop) if loop is not None else None
        item = InFlight(self._clock(), statement, threading.get_ident(), task)
        key = id(item)
        self.running[key] = item
        return key

    @property
    def interval(self) -> float:
        """Seconds between scans."""
        return min(1.0, max(0.01, self.threshold / 4))

    def scan(self) -> None:
        """Report every unreported statement older than the threshold (called by the thread)."""
        now = self._clock()
        for item in list(self.running.values()):
            if item.reported:
                continue
            age = now - item.start
            if age >= self.threshold:
                item.reported = True
                try:
                    self._report(item, age)
                except Exception:
                    _log.exception("sqlalchemy_resilience: in-flight report failed")

    def stop(self) -> None:
        """Stop being scanned and forget what is running."""
        super().stop()
        self.running.clear()
