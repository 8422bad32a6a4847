"""Plans for slow SELECTs (``instrument(..., explain_slow_queries=True)``, PostgreSQL).

When a SELECT is slow, the statement the application ran is explained with
``EXPLAIN (FORMAT JSON)`` -- never ``ANALYZE``, so nothing is executed twice --
with the same bound parameters, and the plan is attached to its slow-query
record. Rules that keep it harmless in production:

* after the application's statement has returned, in the background (a task
  on the running loop for an ``AsyncEngine``, one worker thread for an
  ``Engine``): the application's query is never delayed;
* on a separate, unpooled connection made with the engine's own connect
  arguments, closed right after; the pool's connections are never borrowed;
* at most one EXPLAIN at a time, and the same normalized statement at most
  once per ``explain_interval``; when it is skipped the record is logged
  at once without a plan;
* ``statement_timeout`` of 5 s on the EXPLAIN connection and an overall
  timeout; a failure only means the record carries no plan;
* the record is logged in every case: when the EXPLAIN is cancelled (the
  event loop ended, the engine was disposed) it is logged without a plan;
* PostgreSQL writes the bound values into the plan (``Index Cond: (id =
  42)``): unless parameters may be logged, every expression in the plan has
  its literals folded to ``?`` as the statement's are.
"""

from __future__ import annotations

import asyncio
import asyncio.events as asyncio_events
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.util import greenlet_spawn

from .stats import normalize_statement

__all__ = ["PlanExplainer", "redact_plan"]

_log = logging.getLogger("sqlalchemy_resilience")

EXPLAIN_TIMEOUT = 5.0
_EXPLAIN_PREFIX = "EXPLAIN (FORMAT JSON) "
_MAX_REMEMBERED = 1000


# Plan fields that name things (nodes, relations, indexes, strategies), never
# values; every other string in a plan is an expression and is redacted.
_STRUCTURAL = frozenset(
    {
        "Node Type",
        "Relation Name",
        "Schema",
        "Alias",
        "Index Name",
        "Scan Direction",
        "Join Type",
        "Strategy",
        "Partial Mode",
        "Parent Relationship",
        "Subplan Name",
        "CTE Name",
        "Function Name",
        "Table Function Name",
        "Command",
        "Operation",
        "Sort Method",
        "Sort Space Type",
    }
)


def redact_plan(plan: Any, key: str | None = None) -> Any:
    """A plan (PostgreSQL's JSON form) with the literals of its expressions folded to ``?``.

    Example::

        >>> redact_plan([{"Plan": {"Node Type": "Index Scan", "Index Cond": "(id = 42)"}}])
        [{'Plan': {'Node Type': 'Index Scan', 'Index Cond': '(id = ?)'}}]
    """
    if isinstance(plan, dict):
        return {k: redact_plan(v, k) for k, v in plan.items()}
    if isinstance(plan, list):
        return [redact_plan(v, key) for v in plan]
    if isinstance(plan, str) and key not in _STRUCTURAL:
        return normalize_statement(plan)
    return plan


def _parse_plan(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        value = value.decode()
    if isinstance(value, str):
        return json.loads(value)
    return value


class PlanExplainer:
    """Explains slow SELECTs of one engine in the background (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        *,
        interval: float,
        timeout: float = EXPLAIN_TIMEOUT,
        redact: bool = True,
    ) -> None:
        self._engine = engine
        self.interval = interval
        self.timeout = timeout
        self.redact = redact
        # Records whose EXPLAIN has not ended: each is logged exactly once,
        # with or without its plan, whatever ends the EXPLAIN.
        self._waiting: dict[int, Callable[[Any], None]] = {}
        self._next_id = 0
        self._lock = threading.Lock()
        self._busy = False
        self._closed = False
        self._last: OrderedDict[str, float] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._executor: ThreadPoolExecutor | None = None
        self.explained = 0
        self.skipped = 0

    def submit(
        self, statement: str, parameters: Any, key: str, emit: Callable[[Any], None]
    ) -> bool:
        """Start explaining; ``emit(plan or None)`` is called when done. False: not taken."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if self._closed or self._busy or (last is not None and now - last < self.interval):
                self.skipped += 1
                return False
            self._busy = True
            self._last[key] = now
            self._last.move_to_end(key)
            if len(self._last) > _MAX_REMEMBERED:
                self._last.popitem(last=False)
            self._next_id += 1
            ticket = self._next_id
            self._waiting[ticket] = emit
        try:
            if self._engine.dialect.is_async:
                loop = asyncio_events._get_running_loop()
                if loop is None:
                    raise RuntimeError("no running event loop")
                task = loop.create_task(self._run_async(statement, parameters, ticket))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                # Runs however the task ends -- also when it is cancelled before
                # its first step, as asyncio.run() does to what is left at its end.
                task.add_done_callback(lambda _: self._finish(ticket, None))
            else:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(
                        max_workers=1, thread_name_prefix="sqlalchemy-resilience-explain"
                    )
                self._executor.submit(self._run_sync, statement, parameters, ticket)
        except Exception:
            _log.debug("could not start EXPLAIN", exc_info=True)
            with self._lock:
                self._waiting.pop(ticket, None)
            self._release()
            return False
        return True

    def _finish(self, ticket: int, plan: Any) -> None:
        """Log the record of ``ticket`` (with ``plan``, or without one), once."""
        with self._lock:
            emit = self._waiting.pop(ticket, None)
        if emit is not None:
            self._emit(emit, plan)

    def _release(self) -> None:
        with self._lock:
            self._busy = False

    async def _explain_quietly(self, statement: str, parameters: Any) -> Any:
        # The task wait_for runs this in ends with a result, never an error: an
        # EXPLAIN cut short when the loop shuts down (its connection closed
        # under it) would otherwise be logged by asyncio.run as an unhandled
        # exception, and that record's traceback would keep the engine alive.
        try:
            return await greenlet_spawn(self._explain, statement, parameters)
        except Exception:
            _log.debug("EXPLAIN of a slow query failed", exc_info=True)
            return None

    async def _run_async(self, statement: str, parameters: Any, ticket: int) -> None:
        plan = None
        try:
            plan = await asyncio.wait_for(
                self._explain_quietly(statement, parameters), self.timeout
            )
        except Exception:
            _log.debug("EXPLAIN of a slow query failed", exc_info=True)
        finally:
            self._release()
            # Also on cancellation and when a pending task is destroyed.
            self._finish(ticket, plan)

    def _run_sync(self, statement: str, parameters: Any, ticket: int) -> None:
        plan = None
        try:
            plan = self._explain(statement, parameters)
        except Exception:
            _log.debug("EXPLAIN of a slow query failed", exc_info=True)
        finally:
            self._release()
            self._finish(ticket, plan)

    def _emit(self, emit: Callable[[Any], None], plan: Any) -> None:
        if plan is not None:
            self.explained += 1
            if self.redact:
                plan = redact_plan(plan)
        try:
            emit(plan)
        except Exception:
            _log.exception("sqlalchemy_resilience: slow-query record failed")

    def _explain(self, statement: str, parameters: Any) -> Any:
        # The pool's creator makes a connection exactly as the pool would
        # (connect_args, do_connect hooks) without counting it as pooled.
        dbapi_connection = self._engine.pool._invoke_creator(None)  # type: ignore[arg-type]
        try:
            cursor = dbapi_connection.cursor()
            try:
                # LOCAL: the setting ends with the transaction rolled back below,
                # even where a transaction-mode pooler hands this server session on.
                cursor.execute("SET LOCAL statement_timeout = 5000")
                # The application's own statement text with its bound
                # parameters still bound; only a fixed keyword is prepended.
                cursor.execute(_EXPLAIN_PREFIX + statement, parameters)
                row = cursor.fetchone()
            finally:
                cursor.close()
            return _parse_plan(row[0]) if row else None
        finally:
            try:
                dbapi_connection.rollback()
            finally:
                dbapi_connection.close()

    def close(self) -> None:
        """Stop taking work; cancel a running EXPLAIN task; let the worker thread finish."""
        with self._lock:
            self._closed = True
            waiting = list(self._waiting)
        for task in list(self._tasks):
            task.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        # What is still waiting for a plan is logged now, without one.
        for ticket in waiting:
            self._finish(ticket, None)
