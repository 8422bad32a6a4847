"""``health_check(engine, timeout=)``: a bounded probe plus the pool's and breaker's state.

The report is ``healthy``, ``degraded`` or ``unhealthy``:

* **unhealthy** — the probe (a pooled connection running ``SELECT 1``)
  failed or did not finish within ``timeout``, the circuit breaker is open,
  or (with ``writer=True``) the server takes no writes: a standby, a fenced or
  read-only primary, a Galera node not ready, not in the primary component
  or not synced (:func:`~sqlalchemy_resilience.pool.writer.writer_refusals`);
* **degraded** — the probe worked but something needs attention: round trip
  slower than ``slow_latency``, the pool nearly saturated, requests waiting,
  pool timeouts or refused requests since the last check, suspected leaks,
  slow checkouts, or a half-open breaker;
* **healthy** — none of those.

The call never takes longer than ``timeout`` (plus scheduling noise), even
against a server that accepts TCP connections and never answers: for an
``AsyncEngine`` the probe runs as its own task and is abandoned (cancelled,
finishing in the background) at the deadline; for an ``Engine`` it runs in a
daemon thread that is not waited for past the deadline. A probe that finds a
dead idle connection tries once more on a fresh one within the same deadline.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from sqlalchemy_resilience._util.masking import mask_secret
from sqlalchemy_resilience._util.seconds import Seconds, to_seconds
from sqlalchemy_resilience.core.engines import async_engine_for, engine_for, sync_engine
from sqlalchemy_resilience.errors.hierarchy import ConnectionLost, ReadOnlyServer
from sqlalchemy_resilience.errors.translate import describe, translate_error
from sqlalchemy_resilience.retry.breaker import BreakerState, CircuitBreaker

from .monitor import PoolMonitor, pool_name_of
from .writer import writer_refusals

__all__ = [
    "HealthCheckTimeout",
    "HealthReport",
    "HealthStatus",
    "health_check",
    "health_check_sync",
]

HealthStatus = Literal["healthy", "degraded", "unhealthy"]

_PROBE = text("SELECT 1")
# Abandoned async probes are kept referenced until they finish.
_abandoned: set[asyncio.Task[Any]] = set()


@dataclass(frozen=True, slots=True)
class HealthReport:
    """The outcome of :func:`health_check`.

    Attributes:
        status: ``healthy``, ``degraded`` or ``unhealthy``.
        latency: seconds for the ``SELECT 1`` round trip, on a connection already
            in hand (getting the connection is judged separately); None when
            the probe failed.
        checked_at: epoch seconds.
        pool: the pool's figures at the time of the check: the ``monitor``'s
            counted ones (see :func:`~sqlalchemy_resilience.pool.pool_stats`),
            else its gauges alone.
        breaker: the breaker's state (``closed``/``open``/``half_open``), when one was given.
        warnings: why the status is not ``healthy``, one sentence each.
        error: the (translated) error class name when the probe failed.
        detail: the error's first line, free of parameters and password.
        writable: whether the server takes writes: asked with ``writer=True``,
            or known when the probe was refused as read-only (the pool's
            ``require_writer``); None otherwise.

    Example::

        report = await health_check(engine, timeout=1.0)
        return JSONResponse(report.to_dict(), status_code=200 if report.ok else 503)
    """

    status: HealthStatus
    latency: float | None
    checked_at: float
    pool: Mapping[str, Any] = field(default_factory=dict)
    breaker: str | None = None
    warnings: tuple[str, ...] = ()
    error: str | None = None
    detail: str | None = None
    writable: bool | None = None

    @property
    def ok(self) -> bool:
        """True unless unhealthy (a degraded database still serves requests)."""
        return self.status != "unhealthy"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (no password, no parameter values)."""
        return {
            "status": self.status,
            "latency": self.latency,
            "checked_at": self.checked_at,
            "pool": dict(self.pool),
            "breaker": self.breaker,
            "warnings": list(self.warnings),
            "error": self.error,
            "detail": self.detail,
            "writable": self.writable,
        }


@dataclass(frozen=True, slots=True)
class _Options:
    timeout: float
    slow_latency: float
    saturation: float
    slow_checkout: float
    slow_connect: float
    breaker: CircuitBreaker | None
    monitor: PoolMonitor | None
    writer: bool


async def health_check(
    engine: AsyncEngine,
    *,
    timeout: Seconds = 2.0,
    breaker: CircuitBreaker | None = None,
    monitor: PoolMonitor | None = None,
    slow_latency: Seconds | None = None,
    saturation: float = 0.9,
    slow_checkout: Seconds = 0.1,
    slow_connect: Seconds = 1.0,
    writer: bool = False,
) -> HealthReport:
    """Probe the database and report ``healthy | degraded | unhealthy`` within ``timeout``.

    :func:`health_check_sync` is the blocking twin, for an ``Engine``.

    Args:
        engine: the ``AsyncEngine`` to check.
        timeout: the most the check may take, seconds or ``timedelta`` (> 0).
        breaker: a :class:`~sqlalchemy_resilience.CircuitBreaker` whose state
            is part of the verdict (open: unhealthy; half-open: degraded).
        monitor: the engine's :class:`~sqlalchemy_resilience.pool.PoolMonitor`
            (``instrument(engine).pool``): with it the report holds the
            counted pool figures and judges waits, timeouts, refused requests,
            slow checkouts and connects and suspected leaks; without it, only
            the pool's gauges and the probe's own checkout. Passed, never
            looked up: the verdict does not change with whether
            ``instrument()`` happened to run.
        slow_latency: a probe slower than this is degraded (default: half the timeout).
        saturation: in-use / maximum connections at or above this is degraded (0 < x <= 1).
        slow_checkout: a p99 wait **for a free connection** above this many
            seconds is degraded (queueing: the pool is too small or
            connections are held too long). The time to open a new connection
            is not part of it.
        slow_connect: a p99 time to open a new connection above this many
            seconds is degraded (a slow or distant server, TLS, authentication).
        writer: also ask whether the server takes writes, and call it
            unhealthy when it does not, naming why (the endpoint of an
            application that writes, behind a proxy or a multi-host URL
            that may lead to a standby or a Galera node out of the cluster).

    Raises:
        TypeError, ValueError: an option is of the wrong type or out of range.

    Example::

        @app.get("/healthz")
        async def healthz():
            report = await health_check(engine, timeout=1.0, breaker=breaker, monitor=instr.pool)
            return JSONResponse(report.to_dict(), status_code=200 if report.ok else 503)
    """
    engine = async_engine_for("health_check", engine)
    options = _options(
        engine.sync_engine,
        timeout,
        breaker,
        monitor,
        slow_latency,
        saturation,
        slow_checkout,
        slow_connect,
        writer,
    )
    return await _check_async(engine, options)


def health_check_sync(
    engine: Engine,
    *,
    timeout: Seconds = 2.0,
    breaker: CircuitBreaker | None = None,
    monitor: PoolMonitor | None = None,
    slow_latency: Seconds | None = None,
    saturation: float = 0.9,
    slow_checkout: Seconds = 0.1,
    slow_connect: Seconds = 1.0,
    writer: bool = False,
) -> HealthReport:
    """The blocking twin of :func:`health_check`, for an ``Engine``.

    Example::

        report = health_check_sync(engine, timeout=1.0, monitor=instrument(engine).pool)
        status = 200 if report.ok else 503
    """
    engine = engine_for("health_check_sync", engine)
    options = _options(
        engine,
        timeout,
        breaker,
        monitor,
        slow_latency,
        saturation,
        slow_checkout,
        slow_connect,
        writer,
    )
    return _check_sync(engine, options)


def _options(
    engine: Engine,
    timeout: Seconds,
    breaker: CircuitBreaker | None,
    monitor: PoolMonitor | None,
    slow_latency: Seconds | None,
    saturation: float,
    slow_checkout: Seconds,
    slow_connect: Seconds,
    writer: bool,
) -> _Options:
    seconds = to_seconds("timeout", timeout, allow_zero=False)
    slow = seconds / 2 if slow_latency is None else to_seconds("slow_latency", slow_latency)
    ratio: object = saturation
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(f"saturation must be a number in (0, 1], got {saturation!r}")
    if breaker is not None and not isinstance(breaker, CircuitBreaker):
        raise TypeError(f"breaker must be a CircuitBreaker or None, got {breaker!r}")
    if monitor is not None and not isinstance(monitor, PoolMonitor):
        raise TypeError(
            f"monitor must be a PoolMonitor (instrument(engine).pool) or None, got {monitor!r}"
        )
    if monitor is not None and monitor.engine is not engine:
        raise ValueError(
            f"monitor counts the pool of {monitor.name!r}, not this engine's: pass the "
            "PoolMonitor of the engine being checked (instrument(engine).pool)"
        )
    return _Options(
        timeout=seconds,
        slow_latency=slow,
        saturation=float(ratio),
        slow_checkout=to_seconds("slow_checkout", slow_checkout),
        slow_connect=to_seconds("slow_connect", slow_connect),
        breaker=breaker,
        monitor=monitor,
        writer=_flag("writer", writer),
    )


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


# A probe returns (round trip of SELECT 1, seconds to get its connection,
# why the server takes no writes or None when not asked): a round trip and
# opening a connection are different figures, judged by different rules
# (slow_latency; slow_checkout / slow_connect).
_Probe = tuple[float, float, list[str] | None]


async def _probe_async(engine: AsyncEngine, writer: bool) -> _Probe:
    try:
        return await _probe_once_async(engine, writer)
    except Exception as exc:
        if not isinstance(translate_error(exc), ConnectionLost):
            raise
        # A dead idle connection was invalidated; one fresh try.
        return await _probe_once_async(engine, writer)


async def _probe_once_async(engine: AsyncEngine, writer: bool) -> _Probe:
    start = time.perf_counter()
    async with engine.connect() as conn:  # checks a connection out on entry
        connected = time.perf_counter()
        await conn.execute(_PROBE)
        done = time.perf_counter()
        refusals = await conn.run_sync(writer_refusals) if writer else None
    return done - connected, connected - start, refusals


def _probe_sync(engine: Engine, writer: bool) -> _Probe:
    try:
        return _probe_once_sync(engine, writer)
    except Exception as exc:
        if not isinstance(translate_error(exc), ConnectionLost):
            raise
        return _probe_once_sync(engine, writer)


def _probe_once_sync(engine: Engine, writer: bool) -> _Probe:
    start = time.perf_counter()
    with engine.connect() as conn:
        connected = time.perf_counter()
        conn.execute(_PROBE)
        done = time.perf_counter()
        refusals = writer_refusals(conn) if writer else None
    return done - connected, connected - start, refusals


async def _check_async(engine: AsyncEngine, options: _Options) -> HealthReport:
    if _breaker_open(options):
        return _report(engine, options, latency=None, error=None)
    task = asyncio.ensure_future(_probe_async(engine, options.writer))
    done, _ = await asyncio.wait({task}, timeout=options.timeout)
    if not done:
        # Never wait for the probe's own cleanup: against a hung server
        # that could take as long as the hang.
        task.cancel()
        _abandoned.add(task)
        task.add_done_callback(_forget)
        return _report(engine, options, latency=None, error=_timed_out(options))
    try:
        latency, checkout, refusals = task.result()
    except Exception as exc:
        return _report(engine, options, latency=None, error=exc)
    return _report(
        engine, options, latency=latency, error=None, checkout=checkout, refusals=refusals
    )


def _forget(task: asyncio.Task[Any]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" warning


def _check_sync(engine: Engine, options: _Options) -> HealthReport:
    if _breaker_open(options):
        return _report(engine, options, latency=None, error=None)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["latency"], outcome["checkout"], outcome["refusals"] = _probe_sync(
                engine, options.writer
            )
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="sqlalchemy-resilience-health", daemon=True)
    worker.start()
    worker.join(options.timeout)
    if worker.is_alive():
        return _report(engine, options, latency=None, error=_timed_out(options))
    if "error" in outcome:
        return _report(engine, options, latency=None, error=outcome["error"])
    return _report(
        engine,
        options,
        latency=outcome["latency"],
        error=None,
        checkout=outcome["checkout"],
        refusals=outcome["refusals"],
    )


class HealthCheckTimeout(TimeoutError):
    """The probe did not finish within the health check's timeout."""


def _timed_out(options: _Options) -> BaseException:
    return HealthCheckTimeout(f"no answer to SELECT 1 within {options.timeout:g} s")


def _breaker_open(options: _Options) -> bool:
    return options.breaker is not None and options.breaker.state is BreakerState.OPEN


def _report(
    engine: Engine | AsyncEngine,
    options: _Options,
    *,
    latency: float | None,
    error: BaseException | None,
    checkout: float | None = None,
    refusals: list[str] | None = None,
) -> HealthReport:
    sync = sync_engine(engine)
    monitor = options.monitor
    stats = (
        monitor.stats()
        if monitor is not None
        else PoolMonitor(sync, name=pool_name_of(sync)).gauges()
    )
    warnings: list[str] = []
    status: HealthStatus = "healthy"
    error_name = detail = None
    breaker_state = None
    if options.breaker is not None:
        state = options.breaker.state
        breaker_state = state.name.lower()
        if state is BreakerState.OPEN:
            status = "unhealthy"
            warnings.append("circuit breaker is open: calls fail fast without a probe")
        elif state is BreakerState.HALF_OPEN:
            warnings.append("circuit breaker is half-open: probing recovery")
    if error is not None:
        status = "unhealthy"
        translated = error if isinstance(error, HealthCheckTimeout) else translate_error(error)
        error_name = type(translated).__name__
        if isinstance(translated, ReadOnlyServer):
            # The pool's own writer check (require_writer) refused the probe's connection.
            refusals = ["read-only"]
        detail = _scrub(describe(translated), sync)
        warnings.append(f"probe failed: {error_name}")
    elif refusals:
        status = "unhealthy"
        warnings.append(f"the server takes no writes: {', '.join(refusals)}")
    if error is None and latency is not None and latency > options.slow_latency:
        warnings.append(
            f"round trip {latency * 1000:.0f} ms is over {options.slow_latency * 1000:.0f} ms"
        )
    pool_max = stats.get("pool_max")
    in_use = stats.get("connections_in_use") or 0
    if pool_max and in_use / pool_max >= options.saturation:
        warnings.append(
            f"pool saturated: {in_use} of {pool_max} connections in use "
            f"(threshold {options.saturation:.0%})"
        )
    if monitor is None and checkout is not None and checkout > options.slow_connect:
        # Without the package's pool figures the probe's own checkout is the
        # only sample, and waiting and opening cannot be told apart in it.
        warnings.append(
            f"the probe waited {checkout * 1000:.0f} ms for a connection "
            f"(over {options.slow_connect * 1000:.0f} ms)"
        )
    # Requests beyond the pool's capacity; one that already has its connection
    # but has not returned from the checkout yet is not waiting.
    queued = monitor.queued(pool_max) if monitor is not None else stats.get("requests_waiting")
    if queued:
        warnings.append(f"{queued} requests waiting for a connection (pool full)")
    if monitor is not None:
        timeouts, shed = monitor.health_deltas(stats)
        if timeouts:
            warnings.append(f"{timeouts} pool timeouts since the last health check")
        if shed:
            warnings.append(f"{shed} requests refused by max_waiting since the last health check")
        leaks = monitor.suspected_leaks
        if leaks:
            warnings.append(f"{leaks} connections held past leak_threshold")
        p99 = stats.get("queue_wait_time_p99") or 0.0
        if p99 > options.slow_checkout:
            warnings.append(
                f"slow checkouts: p99 wait for a free connection {p99 * 1000:.0f} ms "
                f"(over {options.slow_checkout * 1000:.0f} ms)"
            )
        create_p99 = stats.get("create_time_p99") or 0.0
        if create_p99 > options.slow_connect:
            warnings.append(
                f"slow connects: p99 time to open a connection {create_p99 * 1000:.0f} ms "
                f"(over {options.slow_connect * 1000:.0f} ms)"
            )
    if status == "healthy" and warnings:
        status = "degraded"
    return HealthReport(
        status=status,
        latency=latency,
        checked_at=time.time(),
        pool=stats,
        breaker=breaker_state,
        warnings=tuple(warnings),
        error=error_name,
        detail=detail,
        writable=None if refusals is None else not refusals,
    )


def _scrub(text_: str, engine: Engine) -> str:
    password = engine.url.password
    return mask_secret(text_, None if password is None else str(password))
