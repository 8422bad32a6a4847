"""A daemon thread that calls ``scan()`` on an object every ``interval`` seconds."""

from __future__ import annotations

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
