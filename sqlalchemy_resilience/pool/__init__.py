"""Pool management: figures, health, leak detection, load shedding, warm-up, the resizable pool classes, resize, autosizing, liveness.

Imported on first use: ``from sqlalchemy_resilience.pool.checkout import ...``
(what ``instrument()`` needs) does not load the health check and the retry
machinery behind it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .autosize import AutosizeDecision as AutosizeDecision
    from .autosize import PoolAutosizer as PoolAutosizer
    from .control import ResizeResult as ResizeResult
    from .control import resize_pool as resize_pool
    from .control import resize_pool_sync as resize_pool_sync
    from .control import warm_up as warm_up
    from .control import warm_up_sync as warm_up_sync
    from .health import HealthReport as HealthReport
    from .health import health_check as health_check
    from .health import health_check_sync as health_check_sync
    from .liveness import IdlePing as IdlePing
    from .liveness import ping_idle_connections as ping_idle_connections
    from .maintainer import MaintenanceReport as MaintenanceReport
    from .maintainer import PoolMaintainer as PoolMaintainer
    from .monitor import PoolMonitor as PoolMonitor
    from .monitor import pool_stats as pool_stats
    from .queue import AsyncResizableQueuePool as AsyncResizableQueuePool
    from .queue import ResizableQueuePool as ResizableQueuePool
    from .writer import writer_refusals as writer_refusals

_LAZY = {
    "AutosizeDecision": ".autosize",
    "PoolAutosizer": ".autosize",
    "ResizeResult": ".control",
    "resize_pool": ".control",
    "resize_pool_sync": ".control",
    "warm_up": ".control",
    "warm_up_sync": ".control",
    "HealthReport": ".health",
    "health_check": ".health",
    "health_check_sync": ".health",
    "IdlePing": ".liveness",
    "ping_idle_connections": ".liveness",
    "MaintenanceReport": ".maintainer",
    "PoolMaintainer": ".maintainer",
    "PoolMonitor": ".monitor",
    "pool_stats": ".monitor",
    "AsyncResizableQueuePool": ".queue",
    "ResizableQueuePool": ".queue",
    "writer_refusals": ".writer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AsyncResizableQueuePool",
    "AutosizeDecision",
    "HealthReport",
    "IdlePing",
    "MaintenanceReport",
    "PoolAutosizer",
    "PoolMaintainer",
    "PoolMonitor",
    "ResizableQueuePool",
    "ResizeResult",
    "health_check",
    "health_check_sync",
    "ping_idle_connections",
    "pool_stats",
    "resize_pool",
    "resize_pool_sync",
    "warm_up",
    "warm_up_sync",
    "writer_refusals",
]
