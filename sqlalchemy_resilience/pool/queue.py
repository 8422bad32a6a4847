"""The package's pool classes: a ``QueuePool`` whose size can change while it serves.

SQLAlchemy fixes a ``QueuePool``'s size when it creates it, and keeps its idle
connections, its overflow counter and the way it opens a connection to itself.
Resizing a running pool, pinging idle connections in the background and
opening connections ahead of demand all need those, so the package does them
only through the methods of its own pool classes — SQLAlchemy's extension
point for pools is a subclass passed as ``poolclass=`` — and never reaches into
a pool it did not make. :class:`~sqlalchemy_resilience.Database` uses them; on
a plain engine, pass one to ``create_engine`` / ``create_async_engine``:

* :func:`~sqlalchemy_resilience.pool.resize_pool`,
  :class:`~sqlalchemy_resilience.pool.PoolAutosizer` and
  :class:`~sqlalchemy_resilience.pool.PoolMaintainer` need one of these classes
  and say so (``TypeError``) on a plain ``QueuePool``;
* everything else (statistics, health checks, warm-up, leak detection, the
  idle ping) works on any pool.

Both classes behave exactly as their SQLAlchemy parents until one of their
own methods is called; ``engine.dispose()`` recreates the same class with the
size it has at that moment.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, QueuePool
from sqlalchemy.util import queue as sqla_queue

from .monitor import _value

__all__ = ["AsyncResizableQueuePool", "ResizableQueuePool", "resizable_pool_of"]


class _Resizable:
    """What both classes add to their ``QueuePool`` parent (state is the parent's)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Demand the pool sees itself, so what depends on it does not
        # depend on whether instrument() ran: next() on a count is atomic.
        self._requested = itertools.count()
        self._answered = itertools.count()

    def _do_get(self) -> ConnectionPoolEntry:
        next(self._requested)
        try:
            return super()._do_get()  # type: ignore[misc,no-any-return]
        finally:
            next(self._answered)

    @property
    def waiting(self) -> int:
        """Requests for a connection this pool has not answered yet.

        Example::

            if engine.pool.waiting:
                print("requests are queueing")
        """
        return max(0, _value(self._requested) - _value(self._answered))

    if TYPE_CHECKING:
        _pool: Any
        _overflow: int
        _max_overflow: int
        _overflow_lock: Any

        def size(self) -> int: ...
        def checkedin(self) -> int: ...
        def checkedout(self) -> int: ...
        def _inc_overflow(self) -> Any: ...
        def _dec_overflow(self) -> Any: ...
        def _create_connection(self) -> ConnectionPoolEntry: ...

    @property
    def max_overflow(self) -> int:
        """Connections allowed beyond the size (-1: unlimited)."""
        return self._max_overflow

    def resize(self, size: int, max_overflow: int, *, open_for: int = 0) -> tuple[int, int]:
        """Make the pool hold ``size`` connections (plus ``max_overflow``), now; returns (closed, opened).

        Connections in use are never closed: idle ones beyond the new size
        are, and the rest are closed as they come back. Up to ``open_for``
        connections are opened at once when the pool grows, for requests
        that are already waiting. Call it in the pool's thread (or greenlet,
        for an ``AsyncEngine``).

        Example::

            engine.pool.resize(20, 5)
        """
        with self._overflow_lock:
            delta = size - self.size()
            self._set_queue_size(size)
            # Open connections = queue maxsize + overflow: unchanged by a resize.
            self._overflow -= delta
            self._max_overflow = max_overflow
        closed = 0
        while self._pool.qsize() > size:
            try:
                record = self._pool.get(False)
            except Exception:
                break
            try:
                record.close()
                closed += 1
            finally:
                self._dec_overflow()
        opened = 0
        while opened < open_for and self.open_idle():
            opened += 1
        return closed, opened

    def _set_queue_size(self, size: int) -> None:
        queue = self._pool
        queue.maxsize = size
        # The asyncio adapter's queue holds an asyncio.Queue made with the old maxsize.
        inner = queue.__dict__.get("_queue")
        if isinstance(inner, asyncio.Queue):
            inner._maxsize = size  # type: ignore[attr-defined]

    def open_idle(self) -> bool:
        """Open one connection and leave it idle in the pool; False when no idle place is free.

        Raises what connecting raised (the pool's count is restored first).

        Example::

            while engine.pool.checkedin() + engine.pool.checkedout() < 5:
                if not engine.pool.open_idle():
                    break
        """
        if self._pool.full() or not self._inc_overflow():
            return False
        try:
            record = self._create_connection()
        except BaseException:
            self._dec_overflow()
            raise
        try:
            self._pool.put(record, False)
        except sqla_queue.Full:  # returned connections filled it meanwhile
            record.close()
            self._dec_overflow()
            return False
        return True

    @contextmanager
    def idle_connections(self) -> Iterator[Iterator[ConnectionPoolEntry]]:
        """Each idle connection in turn, out of the pool while the caller has it.

        A connection is handed back before the next one is taken, so at most
        one is out of reach of requests at a time; stop iterating to hand
        back the current one early.

        Example::

            with engine.pool.idle_connections() as idle:
                for record in idle:
                    engine.dialect.do_ping(record.dbapi_connection)
        """
        out: list[ConnectionPoolEntry] = []

        def each() -> Iterator[ConnectionPoolEntry]:
            for _ in range(self._pool.qsize()):
                try:
                    record = self._pool.get(False)
                except Exception:
                    return  # taken by a request meanwhile
                out.append(record)
                yield record
                self._pool.put(out.pop(), False)

        try:
            yield each()
        finally:
            while out:
                self._pool.put(out.pop(), False)


class ResizableQueuePool(_Resizable, QueuePool):
    """``QueuePool`` that can be resized and maintained while it serves (an ``Engine``).

    Example::

        from sqlalchemy import create_engine
        from sqlalchemy_resilience.pool import ResizableQueuePool, resize_pool_sync

        engine = create_engine(url, poolclass=ResizableQueuePool, pool_size=5)
        resize_pool_sync(engine, size=20)
    """


class AsyncResizableQueuePool(_Resizable, AsyncAdaptedQueuePool):
    """``AsyncAdaptedQueuePool`` that can be resized and maintained while it serves (an ``AsyncEngine``).

    Example::

        from sqlalchemy.ext.asyncio import create_async_engine
        from sqlalchemy_resilience.pool import AsyncResizableQueuePool, resize_pool

        engine = create_async_engine(url, poolclass=AsyncResizableQueuePool, pool_size=5)
        await resize_pool(engine, size=20)
    """


def resizable_pool_of(pool: object, what: str) -> ResizableQueuePool | AsyncResizableQueuePool:
    """``pool`` if it is one of the package's pool classes, or a TypeError saying what ``what`` needs."""
    if isinstance(pool, (ResizableQueuePool, AsyncResizableQueuePool)):
        return pool
    raise TypeError(
        f"{what} changes a running pool, which SQLAlchemy's {type(pool).__name__} does not "
        "allow: create the engine with poolclass=ResizableQueuePool (create_async_engine: "
        "poolclass=AsyncResizableQueuePool), from sqlalchemy_resilience.pool; Database "
        "does this for you"
    )
