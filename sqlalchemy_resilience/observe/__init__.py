"""Observability: statement facts and timing, statistics, the slow-query log, the watchdog, plans, metrics."""

from __future__ import annotations

from .stats import QueryStats as QueryStats
from .stats import StatementStats as StatementStats
from .stats import normalize_statement as normalize_statement

__all__ = ["QueryStats", "StatementStats", "normalize_statement"]
