"""instrument() on MariaDB: metrics, statistics, the slow-query log, pool figures and health."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import create_engine, text

from sqlalchemy_resilience import UniqueViolation, health_check_sync, instrument
from sqlalchemy_resilience.pool import pool_stats
from tests.mysqlharness import MariaDBServer


@pytest.fixture
def provider() -> Iterator[tuple[MeterProvider, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield provider, reader
    provider.shutdown()


def _points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def test_a_sync_engine_is_measured_like_any_other(
    mariadb_server: MariaDBServer,
    mariadb_database: str,
    provider: tuple[MeterProvider, InMemoryMetricReader],
    caplog: pytest.LogCaptureFixture,
) -> None:
    meter_provider, reader = provider
    caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience.slow_query")
    engine = create_engine(mariadb_server.app_url(mariadb_database, driver="pymysql"))
    instr = instrument(engine, meter_provider=meter_provider, slow_query_threshold=0.05)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS seen (id int PRIMARY KEY)"))
            conn.execute(text("DELETE FROM seen"))
            for i in range(3):
                conn.execute(text("INSERT INTO seen VALUES (:i)"), {"i": i})
            conn.execute(text("SELECT SLEEP(0.06)"))
        with pytest.raises(UniqueViolation), engine.begin() as conn:
            conn.execute(text("INSERT INTO seen VALUES (1)"))
        inserts = next(s for s in instr.stats.top(10, by="calls") if s.operation == "INSERT")
        assert (inserts.calls, inserts.errors) == (4, {"UniqueViolation": 1})
        durations = _points(reader, "db.client.operation.duration")
        systems = {p.attributes["db.system.name"] for p in durations}
        assert systems == {"mariadb"}  # a mysql:// URL, a MariaDB server
        failed = [p for p in durations if p.attributes.get("error.type")]
        assert failed[0].attributes["db.response.status_code"] == "1062"
        slow = [r for r in caplog.records if r.name == "sqlalchemy_resilience.slow_query"]
        assert len(slow) == 1 and "SLEEP" in slow[0].getMessage()
        figures = pool_stats(engine)
        assert (figures["checkouts"], figures["timeouts"]) == (2, 0)  # two begin() blocks
        report = health_check_sync(engine, timeout=2, monitor=instr.pool)
        assert report.status == "healthy"
    finally:
        instr.detach()
        engine.dispose()
