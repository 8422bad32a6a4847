"""Pool management: figures, health, leak detection, load shedding, warm-up, resize, autosizing, liveness."""

from __future__ import annotations

from .autosize import AutosizeDecision as AutosizeDecision
from .autosize import PoolAutosizer as PoolAutosizer
from .control import ResizeResult as ResizeResult
from .control import resize_pool as resize_pool
from .control import warm_up as warm_up
from .health import HealthReport as HealthReport
from .health import health_check as health_check
from .liveness import IdlePing as IdlePing
from .liveness import ping_idle_connections as ping_idle_connections
from .maintainer import MaintenanceReport as MaintenanceReport
from .maintainer import PoolMaintainer as PoolMaintainer
from .monitor import PoolMonitor as PoolMonitor
from .monitor import pool_stats as pool_stats

__all__ = [
    "AutosizeDecision",
    "HealthReport",
    "IdlePing",
    "MaintenanceReport",
    "PoolAutosizer",
    "PoolMaintainer",
    "PoolMonitor",
    "ResizeResult",
    "health_check",
    "ping_idle_connections",
    "pool_stats",
    "resize_pool",
    "warm_up",
]
