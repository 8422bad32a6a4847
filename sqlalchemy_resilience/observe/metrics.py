"""OpenTelemetry metrics per the database client semantic conventions (API only).

Instruments, created once per MeterProvider and shared by every engine
instrumented against it (an SDK keeps the first registration of a name, so a
second engine must not create its own)::

    db.client.operation.duration          histogram, s (statements, COMMIT, ROLLBACK)
    db.client.response.returned_rows      histogram, {row}
    db.client.connection.count            observable up-down counter, {connection},
                                          db.client.connection.state = idle | used
    db.client.connection.idle.max         observable up-down counter, {connection}
    db.client.connection.idle.min         observable up-down counter, {connection}
    db.client.connection.max              observable up-down counter, {connection}
    db.client.connection.pending_requests observable up-down counter, {request}
    db.client.connection.timeouts         counter, {timeout}
    db.client.connection.create_time      histogram, s
    db.client.connection.wait_time        histogram, s
    db.client.connection.use_time         histogram, s

Every pool metric carries ``db.client.connection.pool.name``. The gauges are
observed (read from the pool when the SDK collects), so they cost nothing per
query. Without an SDK the API's instruments are no-ops.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Any, Protocol

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from sqlalchemy_resilience._version import __version__

__all__ = ["POOL_NAME", "MeterSet", "PoolGaugeSource", "meter_set_for"]

# The semantic conventions' advisory buckets for db.client.operation.duration.
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)
ROWS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
POOL_TIME_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)

POOL_NAME = "db.client.connection.pool.name"


class PoolGaugeSource(Protocol):
    """One engine's pool as the observed gauges read it (the pool monitor)."""

    name: str

    @property
    def attached(self) -> bool:
        """Whether the engine is still instrumented (a detached one stops being observed)."""
        ...

    def gauges(self) -> dict[str, Any]:
        """Size, in use, idle, overflow, max and waiting, read now."""
        ...

    def limit(self, which: str) -> int | None:
        """``idle_max``, ``idle_min``, ``max`` or ``pending``."""
        ...

    def log_own_failure(self, what: str) -> None:
        """Log a failure of this observation once."""
        ...


class MeterSet:
    """The instruments of one MeterProvider and the instrumentations observed through it."""

    def __init__(self, provider: MeterProvider | None) -> None:
        meter = (
            provider.get_meter("sqlalchemy_resilience", __version__)
            if provider is not None
            else metrics.get_meter("sqlalchemy_resilience", __version__)
        )
        self.sources: weakref.WeakSet[PoolGaugeSource] = weakref.WeakSet()
        self.operation_duration = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of database client operations.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.returned_rows = meter.create_histogram(
            "db.client.response.returned_rows",
            unit="{row}",
            description="The actual number of records returned by the database operation.",
            explicit_bucket_boundaries_advisory=ROWS_BUCKETS,
        )
        self.create_time = meter.create_histogram(
            "db.client.connection.create_time",
            unit="s",
            description="The time it took to create a new connection.",
            explicit_bucket_boundaries_advisory=POOL_TIME_BUCKETS,
        )
        self.wait_time = meter.create_histogram(
            "db.client.connection.wait_time",
            unit="s",
            description="The time it took to obtain an open connection from the pool.",
            explicit_bucket_boundaries_advisory=POOL_TIME_BUCKETS,
        )
        self.use_time = meter.create_histogram(
            "db.client.connection.use_time",
            unit="s",
            description="The time between borrowing a connection and returning it to the pool.",
            explicit_bucket_boundaries_advisory=POOL_TIME_BUCKETS,
        )
        self.timeouts = meter.create_counter(
            "db.client.connection.timeouts",
            unit="{timeout}",
            description="The number of connection timeouts that have occurred trying to obtain a connection from the pool.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            callbacks=[self._observe_count],
            unit="{connection}",
            description="The number of connections that are currently in state described by the state attribute.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.idle.max",
            callbacks=[self._gauge("idle_max")],
            unit="{connection}",
            description="The maximum number of idle open connections allowed.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.idle.min",
            callbacks=[self._gauge("idle_min")],
            unit="{connection}",
            description="The minimum number of idle open connections allowed.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.max",
            callbacks=[self._gauge("max")],
            unit="{connection}",
            description="The maximum number of open connections allowed.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests",
            callbacks=[self._gauge("pending")],
            unit="{request}",
            description="The number of current pending requests for an open connection.",
        )

    def _live(self) -> list[PoolGaugeSource]:
        return [source for source in list(self.sources) if source.attached]

    def _observe_count(self, options: CallbackOptions) -> Iterable[Observation]:
        observations: list[Observation] = []
        for source in self._live():
            try:
                gauges = source.gauges()
            except Exception:  # observability never raises into the SDK's collection
                source.log_own_failure("pool gauges")
                continue
            name = source.name
            observations.append(
                Observation(
                    gauges["connections_idle"],
                    {POOL_NAME: name, "db.client.connection.state": "idle"},
                )
            )
            observations.append(
                Observation(
                    gauges["connections_in_use"],
                    {POOL_NAME: name, "db.client.connection.state": "used"},
                )
            )
        return observations

    def _gauge(self, which: str) -> Any:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            observations: list[Observation] = []
            for source in self._live():
                try:
                    value = source.limit(which)
                except Exception:
                    source.log_own_failure(f"pool {which}")
                    continue
                if value is not None:
                    observations.append(Observation(value, {POOL_NAME: source.name}))
            return observations

        return callback


# One MeterSet per provider (an instrument is created once per meter), held
# weakly: an application's provider is freed when the application drops it,
# whatever was instrumented with it.
_sets: weakref.WeakKeyDictionary[Any, MeterSet] = weakref.WeakKeyDictionary()
_global_set: MeterSet | None = None
_sets_lock = threading.Lock()


def meter_set_for(provider: MeterProvider | None) -> MeterSet:
    """The shared :class:`MeterSet` of ``provider`` (None: the global provider).

    Example::

        meters = meter_set_for(None)   # the global provider's instruments
    """
    global _global_set
    with _sets_lock:
        if provider is None:
            if _global_set is None:
                _global_set = MeterSet(None)
            return _global_set
        found = _sets.get(provider)
        if found is None:
            found = _sets[provider] = MeterSet(provider)
        return found
