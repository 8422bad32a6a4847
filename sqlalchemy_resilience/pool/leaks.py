"""Leak detection: connections held longer than ``instrument(..., leak_threshold=SECONDS)``.

At checkout the instrumentation notes the time, the holder (the asyncio task,
else the thread) and the checkout site (the first application frame). A
daemon thread scans the connections still out; one held past the threshold is
reported once, *while it is still held*, on the logger
``sqlalchemy_resilience.pool``, with where the holder is now::

    connection held for 5.210 s (leak_threshold 5 s) by task 'handler-17', checked out at
      app/orders.py:42 in export_all
    the holder is now at
      app/orders.py:57 in export_all
      app/web.py:88 in handle

and, if it comes back, a second record says after how long. ``extra`` keys:
``sqlalchemy_resilience.held_for`` (seconds), ``sqlalchemy_resilience.holder``,
``sqlalchemy_resilience.checkout_stack`` (the checkout site, as a list of
``"path:LINE in function"``), ``sqlalchemy_resilience.holder_stack`` (the
holder's application frames at report time, innermost first),
``sqlalchemy_resilience.pool_name`` and ``sqlalchemy_resilience.returned``.
A connection returned before the threshold is never reported.
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
from sqlalchemy_resilience.core.callsites import CallSites

__all__ = ["LeakDetector", "pool_logger"]

pool_logger = logging.getLogger("sqlalchemy_resilience.pool")
_log = logging.getLogger("sqlalchemy_resilience")


class _Hold:
    __slots__ = ("_stack", "holder_object", "reported", "start")

    def __init__(self, start: float, holder: object, stack: list[tuple[Any, int]]) -> None:
        self.start = start
        self.holder_object = holder
        self._stack = stack
        self.reported = False

    @property
    def holder(self) -> str:
        holder = self.holder_object
        if isinstance(holder, asyncio.Task):
            return f"task {holder.get_name()!r}"
        if isinstance(holder, threading.Thread):
            return f"thread {holder.name!r}"
        return "unknown"


def _holder() -> object:
    # Names are looked up only when a report is written.
    loop = asyncio_events._get_running_loop()
    task = asyncio.current_task(loop) if loop is not None else None
    return task if task is not None else threading.current_thread()


class LeakDetector(Ticker):
    """Tracks checked-out connections of one engine and reports those held too long.

    Args:
        threshold: seconds a connection may be held before it is reported.
        pool_name: named in every record.
        call_sites: finds the application frames of the checkout site.
        is_async: the engine is an ``AsyncEngine`` (the checkout runs in SQLAlchemy's greenlet).
        clock: monotonic seconds (injectable for tests of the scanner itself).
    """

    def __init__(
        self,
        threshold: float,
        *,
        pool_name: str,
        call_sites: CallSites,
        is_async: bool = False,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__()
        self.is_async = is_async
        self.threshold = threshold
        self.pool_name = pool_name
        self._call_sites = call_sites
        self._clock = clock
        self.held: dict[int, _Hold] = {}
        self.reported = 0

    @property
    def interval(self) -> float:
        """Seconds between scans."""
        return min(1.0, max(0.01, self.threshold / 4))

    @property
    def suspected(self) -> int:
        """Connections reported as leaked and still held."""
        return sum(1 for hold in list(self.held.values()) if hold.reported)

    def checked_out(self, record: Any) -> None:
        """Note a checkout (called from the checkout path)."""
        # Only the checkout site (the first application frame) is captured
        # here: walking further costs every checkout microseconds. Where the
        # holder is *now* is looked up when a report is written.
        self.held[id(record)] = _Hold(
            self._clock(), _holder(), self._call_sites.stack(1, from_parent=self.is_async)
        )

    def returned(self, key: int) -> None:
        """Note the checkin of the record with ``id()`` ``key``; report it if it was reported as leaked."""
        hold = self.held.pop(key, None)
        if hold is None or not hold.reported:
            return
        held_for = self._clock() - hold.start
        pool_logger.warning(
            "connection reported as leaked was returned after %.3f s (held by %s)",
            held_for,
            hold.holder,
            extra=self._extra(hold, held_for, returned=True),
        )

    def scan(self) -> None:
        """Report every connection held past the threshold that is not reported yet."""
        now = self._clock()
        for hold in list(self.held.values()):
            if hold.reported:
                continue
            held_for = now - hold.start
            if held_for < self.threshold:
                continue
            hold.reported = True
            self.reported += 1
            try:
                extra = self._extra(hold, held_for, returned=False)
                checkout = self._call_sites.format_stack(hold._stack)
                current = self._call_sites.now_stack(hold.holder_object)
                extra["sqlalchemy_resilience.holder_stack"] = current
                pool_logger.warning(
                    "connection held for %.3f s (leak_threshold %.3g s) by %s, checked out at\n%s"
                    "\nthe holder is now at\n%s",
                    held_for,
                    self.threshold,
                    hold.holder,
                    "\n".join(f"  {line}" for line in checkout) or "  <no application frame>",
                    "\n".join(f"  {line}" for line in current) or "  <no application frame>",
                    extra=extra,
                )
            except Exception:
                _log.exception("sqlalchemy_resilience: leak report failed")

    def _extra(self, hold: _Hold, held_for: float, *, returned: bool) -> dict[str, object]:
        return {
            "sqlalchemy_resilience.held_for": held_for,
            "sqlalchemy_resilience.holder": hold.holder,
            "sqlalchemy_resilience.checkout_stack": self._call_sites.format_stack(hold._stack),
            "sqlalchemy_resilience.pool_name": self.pool_name,
            "sqlalchemy_resilience.returned": returned,
        }

    def stop(self) -> None:
        """Stop scanning and forget what is held."""
        super().stop()
        self.held.clear()
