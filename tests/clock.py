"""A clock the test moves: time passes when the test says so, never by sleeping."""

from __future__ import annotations

import time


class FakeClock:
    """Seconds on a clock that only ``advance`` moves.

    ``FakeClock()`` starts at 1000.0; ``FakeClock.wall()`` starts at the real
    ``time.time()``, for code that compares the clock with SQLAlchemy's own
    wall-clock stamps (a connection record's ``starttime``).
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    @classmethod
    def wall(cls) -> FakeClock:
        return cls(time.time())

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
