"""Process-wide switches (the public side is :mod:`sqlalchemy_resilience.testing`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _TestMode:
    enabled: bool = False
    attempts: int = 3


TEST_MODE = _TestMode()
