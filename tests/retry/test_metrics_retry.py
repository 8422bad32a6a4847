"""OpenTelemetry instruments of retry and breaker, read back with the SDK's in-memory reader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_resilience import CircuitBreaker, RetryPolicy, instrument, run_transaction_sync
from sqlalchemy_resilience.testing import inject_fault

sdk_metrics = pytest.importorskip("opentelemetry.sdk.metrics")
export = pytest.importorskip("opentelemetry.sdk.metrics.export")


@pytest.fixture
def reader(global_metrics_reader: Any) -> Any:
    """The process-wide MeterProvider's in-memory reader."""
    return global_metrics_reader


def _points(reader: Any, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    found = []
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


def test_retries_are_counted_with_error_type(reader: Any, tmp_path: Path) -> None:
    """Each retry adds 1 to sqlalchemy_resilience.retries, labelled with the error class and code."""
    engine = create_engine(f"sqlite:///{tmp_path / 'm.sqlite'}")
    instrument(engine)

    def work(session: Session) -> int:
        return int(session.execute(text("SELECT 1")).scalar_one())

    try:
        with inject_fault(engine, "busy", times=2):
            run_transaction_sync(
                sessionmaker(engine),
                work,
                retry=RetryPolicy(attempts=5, initial_backoff=0.001, max_backoff=0.001),
            )
    finally:
        engine.dispose()
    points = [
        p
        for p in _points(reader, "sqlalchemy_resilience.retries")
        if p.attributes.get("error.type") == "LockNotAvailable"
    ]
    assert points
    assert sum(p.value for p in points) >= 2
    assert points[0].attributes.get("db.response.status_code") == "SQLITE_BUSY"


def test_breaker_state_and_transitions_are_reported(reader: Any) -> None:
    """The state gauge reads 2 while open; each transition adds to the transitions counter."""
    breaker = CircuitBreaker(name="metrics-test", failure_threshold=1, recovery_timeout=60)
    breaker.force_open()
    gauge = [
        p
        for p in _points(reader, "sqlalchemy_resilience.circuit_breaker.state")
        if p.attributes.get("sqlalchemy_resilience.circuit_breaker.name") == "metrics-test"
    ]
    assert [p.value for p in gauge] == [2]
    transitions = [
        p
        for p in _points(reader, "sqlalchemy_resilience.circuit_breaker.transitions")
        if p.attributes.get("sqlalchemy_resilience.circuit_breaker.name") == "metrics-test"
    ]
    assert sum(p.value for p in transitions) == 1
    assert transitions[0].attributes["sqlalchemy_resilience.circuit_breaker.state"] == "open"


CONVENTIONS = {
    "db.client.operation.duration",
    "db.client.response.returned_rows",
    "db.client.connection.count",
    "db.client.connection.idle.max",
    "db.client.connection.idle.min",
    "db.client.connection.max",
    "db.client.connection.pending_requests",
    "db.client.connection.timeouts",
    "db.client.connection.create_time",
    "db.client.connection.wait_time",
    "db.client.connection.use_time",
}


def test_the_packages_own_instruments_are_outside_db_client(reader: Any, tmp_path: Path) -> None:
    """Every db.* metric is one the database conventions define; retries and the breaker
    report under sqlalchemy_resilience.*."""
    engine = create_engine(f"sqlite:///{tmp_path / 'ns.sqlite'}")
    instrument(engine)
    breaker = CircuitBreaker(failure_threshold=5, recovery_timeout=60, name="own-namespace")
    try:
        with inject_fault(engine, "disconnect", times=1):
            run_transaction_sync(
                sessionmaker(engine),
                lambda s: s.execute(text("SELECT 1")).scalar_one(),
                retry=RetryPolicy(attempts=3, initial_backoff=0.001, max_backoff=0.001),
                breaker=breaker,
            )
    finally:
        engine.dispose()
    data = reader.get_metrics_data()
    names = {m.name for r in data.resource_metrics for sc in r.scope_metrics for m in sc.metrics}
    assert {n for n in names if n.startswith("db.")} <= CONVENTIONS
    assert "db.client.operation.duration" in names
    assert {"sqlalchemy_resilience.retries", "sqlalchemy_resilience.circuit_breaker.state"} <= names
