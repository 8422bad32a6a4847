"""Slow-query log, the in-flight watchdog and the application call site.

Records go to the logger ``sqlalchemy_resilience.slow_query``. Each carries its
facts twice: in the message (for humans reading a plain log) and as namespaced
``extra`` attributes (for structured logging)::

    sqlalchemy_resilience.duration     float seconds (for an in-flight report: so far)
    sqlalchemy_resilience.statement    the normalized statement
    sqlalchemy_resilience.rowcount     rows, or None where the driver reports none
    sqlalchemy_resilience.database     database name
    sqlalchemy_resilience.host         "host:port" (never user or password)
    sqlalchemy_resilience.call_site    "path/to/file.py:LINE in function"
    sqlalchemy_resilience.in_flight    True for the watchdog's report of a running statement
    sqlalchemy_resilience.error        error class name when the slow statement failed
    sqlalchemy_resilience.plan         EXPLAIN (FORMAT JSON) plan, when explain_slow_queries is on
    sqlalchemy_resilience.parameters   SQLAlchemy's repr of the parameters, only with log_parameters=True

The call site is the first frame, innermost first, whose module is outside
SQLAlchemy, asyncio, greenlet and this package. For an ``AsyncEngine`` the
statement runs in SQLAlchemy's greenlet; the walk continues in the greenlet's
parent, where the application's coroutines are.
"""

from __future__ import annotations

import asyncio
import asyncio.events as asyncio_events
import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from ._ticker import Ticker

if TYPE_CHECKING:
    from .instrument import Instrumentation

__all__ = ["CallSites", "InFlight", "Watchdog", "emit_slow_query", "slow_query_logger"]

slow_query_logger = logging.getLogger("sqlalchemy_resilience.slow_query")
_log = logging.getLogger("sqlalchemy_resilience")

DEFAULT_SKIP: tuple[str, ...] = (
    "sqlalchemy",
    "sqlalchemy_resilience",
    "asyncio",
    "greenlet",
    "contextlib",
    "concurrent",
    "threading",
    "asyncpg",
    "psycopg",
    "aiosqlite",
    "sqlite3",
)

_getcurrent: Callable[[], Any] | None
try:  # greenlet ships with SQLAlchemy's asyncio extra; sync-only installs may lack it
    _getcurrent = importlib.import_module("greenlet").getcurrent
except ImportError:  # pragma: no cover - depends on the install
    _getcurrent = None


class CallSites:
    """Finds and formats the application frame that issued a statement.

    Args:
        skip: extra module prefixes to treat as library code (e.g. your own
            data-access layer), on top of SQLAlchemy, asyncio, greenlet and this package.
    """

    def __init__(self, skip: tuple[str, ...] = ()) -> None:
        self._skip = DEFAULT_SKIP + tuple(skip)
        self._skip_by_code: dict[Any, bool] = {}
        self._text: dict[tuple[Any, int], str] = {}
        self._cwd = os.getcwd() + os.sep

    def _library(self, frame: FrameType) -> bool:
        return self._library_code(frame.f_code, frame.f_globals)

    def _library_code(self, code: Any, module_globals: dict[str, Any]) -> bool:
        known = self._skip_by_code.get(code)
        if known is None:
            name = str(module_globals.get("__name__", ""))
            # The package's own demo plays the application.
            known = not name.startswith("sqlalchemy_resilience.demo") and any(
                name == p or name.startswith(p + ".") for p in self._skip
            )
            if len(self._skip_by_code) > 50_000:
                self._skip_by_code.clear()
            self._skip_by_code[code] = known
        return known

    def format(self, frame: FrameType) -> str:
        """``"path/to/file.py:LINE in function"``, the path relative to the working directory."""
        key = (frame.f_code, frame.f_lineno)
        text = self._text.get(key)
        if text is None:
            path = frame.f_code.co_filename
            if path.startswith(self._cwd):
                path = path[len(self._cwd) :]
            text = f"{path}:{frame.f_lineno} in {frame.f_code.co_name}"
            if len(self._text) > 50_000:
                self._text.clear()
            self._text[key] = text
        return text

    def _first_app_frame(self, frame: FrameType | None) -> FrameType | None:
        while frame is not None:
            if not self._library(frame):
                return frame
            frame = frame.f_back
        return None

    def here(self) -> str | None:
        """The call site of the code running now (crossing SQLAlchemy's greenlet)."""
        found = self._first_app_frame(sys._getframe(1))
        if found is None and _getcurrent is not None:
            parent = getattr(_getcurrent(), "parent", None)
            while found is None and parent is not None:
                found = self._first_app_frame(parent.gr_frame)
                parent = parent.parent
        return self.format(found) if found is not None else None

    def stack(
        self, limit: int = 6, depth: int = 24, *, from_parent: bool = False
    ) -> list[tuple[Any, int]]:
        """The application frames of the code running now as ``(code, offset)``, innermost first.

        Cheap enough for every checkout: the library test is cached per code
        object, only application frames are stored and nothing is formatted
        (:meth:`format_stack` does that when a report is written). For an
        ``AsyncEngine`` the walk crosses SQLAlchemy's greenlet into the
        application's coroutines. Frame objects are not kept, so nothing they
        reference (a connection, say) is kept alive.

        ``from_parent=True`` starts in the greenlet's parent: for an
        ``AsyncEngine`` the frames inside SQLAlchemy's greenlet are its own,
        and not materializing them is most of the cost of the walk.
        """
        found: list[tuple[Any, int]] = []
        skip = self._skip_by_code
        parent = getattr(_getcurrent(), "parent", None) if _getcurrent is not None else None
        frame: FrameType | None
        if from_parent and parent is not None:
            frame, parent = parent.gr_frame, parent.parent
        else:
            frame = sys._getframe(1)
        for _ in range(depth):
            if frame is None:
                if parent is None:
                    break
                frame, parent = parent.gr_frame, parent.parent
                continue
            code = frame.f_code
            library = skip.get(code)
            if library is None:
                library = self._library_code(code, frame.f_globals)
            if not library:
                # The instruction offset, not f_lineno: turning it into a
                # line number decodes the line table, which waits for a report.
                found.append((code, frame.f_lasti))
                if len(found) >= limit:
                    break
            frame = frame.f_back
        return found

    def format_stack(self, stack: list[tuple[Any, int]]) -> list[str]:
        """A :meth:`stack` as ``"path:LINE in function"`` lines (paths relative to the working directory)."""
        lines = []
        for code, offset in stack:
            line = next(
                (n for start, end, n in code.co_lines() if start <= offset < end and n),
                code.co_firstlineno,
            )
            path = code.co_filename
            if path.startswith(self._cwd):
                path = path[len(self._cwd) :]
            lines.append(f"{path}:{line} in {code.co_name}")
        return lines

    def of_thread(self, ident: int) -> str | None:
        """The call site of a thread that is blocked in a statement."""
        found = self._first_app_frame(sys._current_frames().get(ident))
        return self.format(found) if found is not None else None

    @staticmethod
    def _task_frames(task: asyncio.Task[Any]) -> list[FrameType]:
        """The frames of a suspended task's await chain, outermost first."""
        frames: list[FrameType] = []
        awaitable: Any = task.get_coro()
        for _ in range(1000):
            if awaitable is None:
                break
            frame = (
                getattr(awaitable, "cr_frame", None)
                or getattr(awaitable, "gi_frame", None)
                or getattr(awaitable, "ag_frame", None)
            )
            if frame is None:
                break
            frames.append(frame)
            awaitable = (
                getattr(awaitable, "cr_await", None)
                or getattr(awaitable, "gi_yieldfrom", None)
                or getattr(awaitable, "ag_await", None)
            )
        return frames

    def of_task(self, task: asyncio.Task[Any]) -> str | None:
        """The call site of a suspended task: the innermost app coroutine in its await chain."""
        # Outermost first: the app's frame is the last one before the chain
        # enters SQLAlchemy (beyond it lie SQLAlchemy and the driver).
        candidate: FrameType | None = None
        for frame in self._task_frames(task):
            name = str(frame.f_globals.get("__name__", ""))
            if name == "sqlalchemy" or name.startswith("sqlalchemy."):
                break
            if not self._library(frame):
                candidate = frame
        return self.format(candidate) if candidate is not None else None

    def now_stack(self, holder: object, limit: int = 8) -> list[str]:
        """Where a task or thread is now: its application frames, innermost first, formatted."""
        frames: list[FrameType] = []
        if isinstance(holder, asyncio.Task):
            frames = list(reversed(self._task_frames(holder)))
        elif isinstance(holder, threading.Thread) and holder.ident is not None:
            frame = sys._current_frames().get(holder.ident)
            while frame is not None and len(frames) < 256:
                frames.append(frame)
                frame = frame.f_back
        return [self.format(f) for f in frames if not self._library(f)][:limit]


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


def emit_slow_query(
    instr: Instrumentation,
    *,
    duration: float,
    statement: str,
    rowcount: int | None,
    call_site: str | None,
    in_flight: bool = False,
    error: str | None = None,
    plan: Any = None,
    parameters: str | None = None,
) -> None:
    """Log one slow-query record with its facts in the message and in ``extra``."""
    extra: dict[str, Any] = {
        "sqlalchemy_resilience.duration": duration,
        "sqlalchemy_resilience.statement": statement,
        "sqlalchemy_resilience.rowcount": rowcount,
        "sqlalchemy_resilience.database": instr.database,
        "sqlalchemy_resilience.host": instr.host,
        "sqlalchemy_resilience.call_site": call_site,
        "sqlalchemy_resilience.in_flight": in_flight,
        "sqlalchemy_resilience.error": error,
    }
    if plan is not None:
        extra["sqlalchemy_resilience.plan"] = plan
    if parameters is not None:
        extra["sqlalchemy_resilience.parameters"] = parameters
    where = f"{instr.database or '-'} on {instr.host or 'local'}"
    if in_flight:
        slow_query_logger.warning(
            "query still running after %.3f s (%s) at %s: %s",
            duration,
            where,
            call_site or "<unknown>",
            statement,
            extra=extra,
        )
        return
    outcome = f"failed with {error}" if error else f"{'?' if rowcount is None else rowcount} rows"
    message = "slow query: %.3f s, %s (%s) at %s: %s"
    args: list[Any] = [duration, outcome, where, call_site or "<unknown>", statement]
    if parameters is not None:
        message += " parameters: %s"
        args.append(parameters)
    if plan is not None:
        message += " plan: %s"
        args.append(plan_summary(plan))
    slow_query_logger.warning(message, *args, extra=extra)


def plan_summary(plan: Any) -> str:
    """One line for the log message from an ``EXPLAIN (FORMAT JSON)`` plan (the full plan is in ``extra``)."""
    try:
        node = plan[0]["Plan"]
        relation = f" on {node['Relation Name']}" if "Relation Name" in node else ""
        return (
            f"{node['Node Type']}{relation} (cost {node['Total Cost']}, rows {node['Plan Rows']})"
        )
    except (LookupError, TypeError):
        return "attached"


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

    thread_name = "sqlalchemy-resilience-watchdog"

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
        """Stop the thread and forget what is running."""
        super().stop()
        self.running.clear()
