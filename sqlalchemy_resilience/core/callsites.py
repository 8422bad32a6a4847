"""The application's call site: the first frame outside SQLAlchemy, drivers and this package.

For an ``AsyncEngine`` a statement runs in SQLAlchemy's greenlet; the walk
continues in the greenlet's parent, where the application's coroutines are.
A suspended task's call site is read from its await chain, a blocked thread's
from its current frame.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["DEFAULT_SKIP", "CallSites"]

DEFAULT_SKIP: tuple[str, ...] = (
    "sqlalchemy",
    "sqlalchemy_resilience",
    "asyncio",
    "greenlet",
    "contextlib",
    "concurrent",
    "threading",
    # Drivers.
    "asyncpg",
    "psycopg",
    "psycopg2",
    "pg8000",
    "aiosqlite",
    "sqlite3",
    "pymysql",
    "aiomysql",
    "asyncmy",
    "MySQLdb",
    # Layers over SQLAlchemy that applications call instead of it: the call
    # site is the application's line that called them, not their own session
    # or repository code (SQLModel named sqlmodel/orm/session.py for 27 of 30
    # records before they were skipped).
    "sqlmodel",
    "advanced_alchemy",
    "flask_sqlalchemy",
    "sqlakeyset",
    "alembic",
    "tenacity",
    "anyio",
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
            known = not name.startswith("sqlalchemy_resilience.cli.demo") and any(
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
