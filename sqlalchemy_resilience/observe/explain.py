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
  timeout; a failure only means the record carries no plan.
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

__all__ = ["PlanExplainer"]

_log = logging.getLogger("sqlalchemy_resilience")

EXPLAIN_TIMEOUT = 5.0
_EXPLAIN_PREFIX = "EXPLAIN (FORMAT JSON) "
_MAX_REMEMBERED = 1000


def _parse_plan(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        value = value.decode()
    if isinstance(value, str):
        return json.loads(value)
    return value


class PlanExplainer:
    """Explains slow SELECTs of one engine in the background (see the module docstring)."""

    def __init__(
        self, engine: Engine, *, interval: float, timeout: float = EXPLAIN_TIMEOUT
    ) -> None:
        self._engine = engine
        self.interval = interval
        self.timeout = timeout
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
        try:
            if self._engine.dialect.is_async:
                loop = asyncio_events._get_running_loop()
                if loop is None:
                    raise RuntimeError("no running event loop")
                task = loop.create_task(self._run_async(statement, parameters, emit))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(
                        max_workers=1, thread_name_prefix="sqlalchemy-resilience-explain"
                    )
                self._executor.submit(self._run_sync, statement, parameters, emit)
        except Exception:
            _log.debug("could not start EXPLAIN", exc_info=True)
            self._release()
            return False
        return True

    def _release(self) -> None:
        with self._lock:
            self._busy = False

    async def _run_async(
        self, statement: str, parameters: Any, emit: Callable[[Any], None]
    ) -> None:
        plan = None
        try:
            plan = await asyncio.wait_for(
                greenlet_spawn(self._explain, statement, parameters), self.timeout
            )
        except Exception:
            _log.debug("EXPLAIN of a slow query failed", exc_info=True)
        finally:
            self._release()
        self._emit(emit, plan)

    def _run_sync(self, statement: str, parameters: Any, emit: Callable[[Any], None]) -> None:
        plan = None
        try:
            plan = self._explain(statement, parameters)
        except Exception:
            _log.debug("EXPLAIN of a slow query failed", exc_info=True)
        finally:
            self._release()
        self._emit(emit, plan)

    def _emit(self, emit: Callable[[Any], None], plan: Any) -> None:
        if plan is not None:
            self.explained += 1
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
        for task in list(self._tasks):
            task.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
