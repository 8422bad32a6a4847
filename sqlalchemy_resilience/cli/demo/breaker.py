"""The circuit breaker and the metrics an exporter would see, for ``sqlalchemy-resilience demo``.

The breaker: three units of work in a row lose their connection (a fault
injected through the real driver); the breaker opens, the next call is refused
at once without touching the pool, and after the recovery timeout one probe
goes through and closes it. The metrics: with ``opentelemetry-sdk`` and the
OpenTelemetry Prometheus exporter installed, a few statements through an
instrumented engine and the real exposition text a Prometheus scrape would read
(without them, what to install).
"""

from __future__ import annotations

import re
import time
from typing import Any, TextIO

from sqlalchemy import Integer, bindparam, select, text
from sqlalchemy.engine import URL, create_engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_resilience.errors import CircuitOpenError, ResilienceError
from sqlalchemy_resilience.instrumentation import instrument
from sqlalchemy_resilience.retry import (
    BreakerTransition,
    CircuitBreaker,
    RetryPolicy,
    run_transaction,
    run_transaction_sync,
)
from sqlalchemy_resilience.testing.faults import inject_fault

__all__ = ["breaker_tour", "metrics_tour"]

_SCOPE_LABELS = re.compile(r',?otel_scope_[a-z_]+="[^"]*"')


async def _select(session: AsyncSession) -> int:
    return int((await session.execute(text("SELECT 1"))).scalar_one())


def _select_sync(session: Session) -> int:
    return int(session.execute(text("SELECT 1")).scalar_one())


async def breaker_tour(url: URL, out: TextIO) -> bool:
    """Open the breaker with three lost connections, refuse a call, close it with a probe."""
    is_async = url.get_dialect().is_async
    engine: Any = create_async_engine(url) if is_async else create_engine(url)
    instrument(engine)
    transitions: list[BreakerTransition] = []
    breaker = CircuitBreaker(
        name="demo", failure_threshold=3, recovery_timeout=0.5, listeners=[transitions.append]
    )
    # One attempt each: the demo shows the breaker, not the retries.
    waits = RetryPolicy(attempts=1)
    fails_fast = RetryPolicy(attempts=1, wait_at_breaker=False)
    Session: Any = async_sessionmaker(engine) if is_async else sessionmaker(engine)

    async def call(policy: RetryPolicy) -> int:
        if is_async:
            return await run_transaction(Session, _select, retry=policy, breaker=breaker)
        return run_transaction_sync(Session, _select_sync, retry=policy, breaker=breaker)

    print("\ncircuit breaker: failure_threshold=3, recovery_timeout=0.5 s", file=out)
    try:
        await call(waits)  # a connection to lose
        failures = 0
        with inject_fault(engine, "disconnect", times=3, match="SELECT 1"):
            for _ in range(3):
                try:
                    await call(waits)
                except ResilienceError:
                    failures += 1
        print(
            f"  {failures} units of work lost their connection: breaker {breaker.state.name}",
            file=out,
        )
        started = time.perf_counter()
        refused = False
        try:
            await call(fails_fast)
        except CircuitOpenError as exc:
            refused = True
            print(
                f"  RetryPolicy(wait_at_breaker=False): CircuitOpenError in "
                f"{(time.perf_counter() - started) * 1e3:.2f} ms, no pool checkout; "
                f"retry_after {exc.retry_after:.2f} s; user (en): {exc.user_message('en')}",
                file=out,
            )
        started = time.perf_counter()
        value = await call(waits)
        path = (
            " -> ".join([transitions[0].previous.name, *(t.current.name for t in transitions)])
            if transitions
            else "CLOSED"
        )
        print(
            f"  the default waits at the open breaker: {time.perf_counter() - started:.2f} s, "
            f"then ran as its probe (SELECT 1 = {value}): {path}",
            file=out,
        )
        return failures == 3 and refused and breaker.state.name == "CLOSED"
    finally:
        if is_async:
            await engine.dispose()
        else:
            engine.dispose()


def _exporter() -> tuple[Any, Any, Any] | None:
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
        from prometheus_client import generate_latest
    except ImportError:
        return None
    return PrometheusMetricReader, MeterProvider, generate_latest


async def metrics_tour(url: URL, out: TextIO) -> bool:
    """Print the exposition text a Prometheus scrape of this process would read."""
    found = _exporter()
    print("\nmetrics a Prometheus scrape would see (OpenTelemetry Prometheus exporter):", file=out)
    if found is None or not url.get_dialect().is_async:
        print(
            "  (pip install opentelemetry-sdk opentelemetry-exporter-prometheus to see them; "
            "the package records them through the OpenTelemetry API either way)",
            file=out,
        )
        return True
    reader_class, provider_class, generate_latest = found
    reader = reader_class()
    provider = provider_class(metric_readers=[reader])
    engine = create_async_engine(url)
    instrument(engine, meter_provider=provider, pool_name="demo")
    try:
        for n in range(5):
            async with engine.connect() as conn:
                await conn.execute(select(bindparam("n", type_=Integer) + 1), {"n": n})
        exposition = generate_latest().decode()
    finally:
        await engine.dispose()
        provider.shutdown()
    wanted = (
        "db_client_operation_duration_seconds_count",
        "db_client_connection_count",
        "db_client_connection_wait_time_seconds_count",
    )
    lines = [line for line in exposition.splitlines() if line.startswith(wanted)]
    for line in lines[:6]:
        # The exporter's scope labels say only "sqlalchemy_resilience": left out to fit a line.
        print(f"  {_SCOPE_LABELS.sub('', line).replace(',}', '}')}", file=out)
    return bool(lines)
