"""Background helpers: a scanning daemon thread, and a loop run as a task or a thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref


class Ticker:
    """Base for background scanners (the in-flight watchdog, the leak detector).

    The thread holds only a weak reference, so a scanner that is dropped
    without :meth:`stop` lets its thread end at the next tick.
    """

    thread_name = "sqlalchemy-resilience-ticker"

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def interval(self) -> float:
        """Seconds between scans."""
        raise NotImplementedError

    def scan(self) -> None:
        """One pass (called by the thread)."""
        raise NotImplementedError

    def start(self) -> None:
        """Start the thread (idempotent)."""
        if self._thread is not None:
            return
        self._stop.clear()
        ref = weakref.ref(self)
        stop = self._stop

        def loop() -> None:
            while True:
                me = ref()
                if me is None:
                    return
                interval = me.interval
                del me
                if stop.wait(interval):
                    return
                me = ref()
                if me is None:
                    return
                me.scan()
                del me

        self._thread = threading.Thread(target=loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and wait for it (at most 5 s)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


class Background:
    """A loop run either as a task on the running event loop or in a daemon thread.

    Subclasses implement ``_loop_async`` and ``_loop_sync`` (which returns
    when ``self._stop`` is set); ``close``/``aclose`` stop either.
    """

    thread_name = "sqlalchemy-resilience-background"

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def running(self) -> bool:
        """Whether the loop was started and not stopped."""
        return self._task is not None or self._thread is not None

    async def _loop_async(self) -> None:
        raise NotImplementedError

    def _loop_sync(self) -> None:
        raise NotImplementedError

    def _start(self, *, in_loop: bool) -> None:
        if self.running:
            return
        self._stop.clear()
        if in_loop:
            self._task = asyncio.get_running_loop().create_task(self._loop_async())
        else:
            self._thread = threading.Thread(
                target=self._loop_sync, name=self.thread_name, daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        """Stop (for a thread: wait for the running pass, at most 30 s)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    async def aclose(self) -> None:
        """Stop and, for a task, wait until it has ended."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.close()
