"""Background helpers: a scanning daemon thread, and a loop run as a task or a thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref

_log = logging.getLogger("sqlalchemy_resilience")


class Ticker:
    """Base for background scanners (the in-flight watchdog, the leak detector).

    Every started scanner of the process is driven by **one** daemon thread
    (``sqlalchemy-resilience-ticker``), however many engines are instrumented:
    it calls each scanner's :meth:`scan` every :attr:`interval` seconds. It
    holds the scanners weakly, so a scanner that is dropped without
    :meth:`stop` simply stops being called; the thread ends when no scanner
    is left and starts again with the next one.
    """

    thread_name = "sqlalchemy-resilience-ticker"

    @property
    def interval(self) -> float:
        """Seconds between scans."""
        raise NotImplementedError

    def scan(self) -> None:
        """One pass (called by the shared thread)."""
        raise NotImplementedError

    def start(self) -> None:
        """Have the shared thread call :meth:`scan` every :attr:`interval` seconds (idempotent)."""
        _HUB.add(self)

    def stop(self) -> None:
        """Stop being scanned; a scan running now on the shared thread is waited for (at most 5 s)."""
        _HUB.remove(self)

    @property
    def scanned(self) -> bool:
        """Whether the shared thread scans this scanner."""
        return _HUB.has(self)


class _TickerHub:
    """The one thread that scans every started :class:`Ticker` of the process."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        # id -> (weak reference, next due time on the monotonic clock)
        self._due: dict[int, tuple[weakref.ref[Ticker], float]] = {}
        self._thread: threading.Thread | None = None
        self._scanning: Ticker | None = None
        self._scan_done = threading.Event()

    def has(self, ticker: Ticker) -> bool:
        with self._cond:
            entry = self._due.get(id(ticker))
            return entry is not None and entry[0]() is ticker

    def add(self, ticker: Ticker) -> None:
        with self._cond:
            if self.has(ticker):
                return
            # No weakref callback: it would run inside a garbage collection,
            # possibly on this thread while it iterates ``_due`` under the
            # (re-entrant) lock. A dead entry is dropped when it comes due.
            self._due[id(ticker)] = (weakref.ref(ticker), time.monotonic() + ticker.interval)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name=Ticker.thread_name, daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def remove(self, ticker: Ticker) -> None:
        with self._cond:
            entry = self._due.get(id(ticker))
            if entry is not None and entry[0]() is ticker:
                del self._due[id(ticker)]
            for key in [key for key, (ref, _) in self._due.items() if ref() is None]:
                del self._due[key]
            waiting = self._scanning is ticker and threading.current_thread() is not self._thread
            self._cond.notify_all()
        if waiting:
            self._scan_done.wait(timeout=5)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._due:
                        self._thread = None  # the next add() starts a new one
                        return
                    now = time.monotonic()
                    key, (ref, due) = min(self._due.items(), key=lambda item: item[1][1])
                    if due <= now:
                        ticker = ref()
                        if ticker is None:
                            del self._due[key]
                            continue
                        self._due[key] = (ref, now + ticker.interval)
                        self._scanning = ticker
                        self._scan_done.clear()
                        break
                    self._cond.wait(timeout=due - now)
            try:
                ticker.scan()
            except Exception:
                _log.exception("sqlalchemy_resilience: a background scan failed")
            finally:
                with self._cond:
                    self._scanning = None
                    self._scan_done.set()
                del ticker


_HUB = _TickerHub()


class Background:
    """A loop run either as a task on the running event loop or in a daemon thread.

    Subclasses implement ``_loop_async`` and ``_loop_sync`` (which returns
    when ``self._stop`` is set); :meth:`detach` stops either, and the
    private ``_halted`` also waits for a task to end.
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

    def detach(self) -> None:
        """Stop (idempotent): a task is cancelled; a thread's running pass is waited for (at most 30 s)."""
        self._halt()

    def _halt(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    async def _halted(self) -> None:
        # Stop and, for a task, wait until it has ended (a facade's close()).
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._halt()
