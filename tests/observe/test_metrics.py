"""OpenTelemetry metrics per the database semantic conventions, read with the SDK's in-memory reader."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc as sa_exc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import Column, Engine, Integer, MetaData, Table, create_engine, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from sqlalchemy_resilience import PoolExhausted, instrument
from sqlalchemy_resilience.pool import pool_stats
from tests.pgharness import PgServer
from tests.waiting import until

metadata = MetaData()
things = Table("things", metadata, Column("id", Integer, primary_key=True))


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def provider(reader: InMemoryMetricReader) -> Iterator[MeterProvider]:
    provider = MeterProvider(metric_readers=[reader])
    yield provider
    provider.shutdown()


def points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    found: list[Any] = []
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


def metric_unit(reader: InMemoryMetricReader, name: str) -> str:
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    return str(metric.unit)
    raise AssertionError(f"no metric {name}")


def by_attrs(found: list[Any], **attrs: Any) -> list[Any]:
    return [p for p in found if all(p.attributes.get(k) == v for k, v in attrs.items())]


def gauge(reader: InMemoryMetricReader, name: str, **attrs: Any) -> int:
    (point,) = by_attrs(points(reader, name), **attrs)
    return int(point.value)


async def test_operation_duration_counts_every_statement(
    pg_engine: AsyncEngine, reader: InMemoryMetricReader, provider: MeterProvider
) -> None:
    """db.client.operation.duration: one data point per statement, attributes per the conventions."""
    instr = instrument(pg_engine, meter_provider=provider)
    async with pg_engine.begin() as conn:
        await conn.run_sync(metadata.drop_all)
        await conn.run_sync(metadata.create_all)
    reader.get_metrics_data()  # start counting from here (delta of the cumulative sums below)
    before = _select_count(reader)
    for i in range(7):
        async with pg_engine.connect() as conn:
            await conn.execute(select(things.c.id).where(things.c.id == i))
    assert _select_count(reader) - before == 7
    url = pg_engine.url
    (point,) = by_attrs(
        points(reader, "db.client.operation.duration"),
        **{"db.operation.name": "SELECT", "db.collection.name": "things"},
    )
    assert point.attributes == {
        "db.system.name": "postgresql",
        "db.namespace": url.database,
        "server.address": url.host,
        "server.port": url.port,
        "db.operation.name": "SELECT",
        "db.collection.name": "things",
        "db.query.summary": "SELECT things",
    }
    assert 0 < point.sum < 7 * 5
    assert metric_unit(reader, "db.client.operation.duration") == "s"
    # The same statements reached the in-process statistics.
    assert instr.stats is not None
    (entry,) = [
        s for s in instr.stats.all() if s.collection == "things" and s.operation == "SELECT"
    ]
    assert entry.calls == 7


def _select_count(reader: InMemoryMetricReader) -> int:
    return sum(
        p.count
        for p in by_attrs(
            points(reader, "db.client.operation.duration"), **{"db.collection.name": "things"}
        )
        if p.attributes.get("db.operation.name") == "SELECT"
    )


async def test_failed_statement_carries_error_type_and_sqlstate(
    pg_engine: AsyncEngine, reader: InMemoryMetricReader, provider: MeterProvider
) -> None:
    """A unique violation is recorded with error.type and db.response.status_code = 23505."""
    instrument(pg_engine, meter_provider=provider)
    async with pg_engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS uniq"))
        await conn.execute(text("CREATE TABLE uniq (id int PRIMARY KEY)"))
        await conn.execute(text("INSERT INTO uniq VALUES (1)"))
    with pytest.raises(sa_exc.IntegrityError):
        async with pg_engine.begin() as conn:
            await conn.execute(text("INSERT INTO uniq VALUES (1)"))
    (point,) = by_attrs(points(reader, "db.client.operation.duration"), **{"error.type": "23505"})
    assert point.count == 1
    assert point.attributes["db.response.status_code"] == "23505"
    assert point.attributes["db.operation.name"] == "INSERT"


async def test_pool_gauges_follow_checkouts_and_checkins(
    pg_server: PgServer, pg_database: str, reader: InMemoryMetricReader, provider: MeterProvider
) -> None:
    """count{used,idle}, max, idle.max, pending_requests and the three pool timings move with the pool."""
    engine = create_async_engine(
        pg_server.app_url(pg_database), pool_size=2, max_overflow=1, pool_timeout=5
    )
    try:
        instr = instrument(engine, meter_provider=provider, pool_name="orders-db")
        name = {"db.client.connection.pool.name": "orders-db"}
        held = [await engine.connect() for _ in range(3)]
        for conn in held:
            await conn.execute(text("SELECT 1"))
        used = {**name, "db.client.connection.state": "used"}
        idle = {**name, "db.client.connection.state": "idle"}
        assert gauge(reader, "db.client.connection.count", **used) == 3
        assert gauge(reader, "db.client.connection.count", **idle) == 0
        assert gauge(reader, "db.client.connection.max", **name) == 3
        assert gauge(reader, "db.client.connection.idle.max", **name) == 2
        assert gauge(reader, "db.client.connection.idle.min", **name) == 0

        waiter = asyncio.create_task(engine.connect().start())
        await until(lambda: gauge(reader, "db.client.connection.pending_requests", **name) == 1)
        assert pool_stats(engine)["requests_waiting"] == 1
        await held.pop().close()
        held.append(await waiter)
        assert gauge(reader, "db.client.connection.pending_requests", **name) == 0
        for conn in held:
            await conn.close()
        # The overflow connection is closed at checkin; the two pooled ones stay idle.
        assert gauge(reader, "db.client.connection.count", **used) == 0
        assert gauge(reader, "db.client.connection.count", **idle) == 2

        (created,) = points(reader, "db.client.connection.create_time")
        (waited,) = points(reader, "db.client.connection.wait_time")
        (used_time,) = points(reader, "db.client.connection.use_time")
        assert created.count == 3
        assert waited.count == 4
        assert used_time.count == 4
        assert metric_unit(reader, "db.client.connection.count") == "{connection}"
        assert metric_unit(reader, "db.client.connection.pending_requests") == "{request}"
        stats = instr.pool_stats()
        assert stats["checkouts"] == 4
        assert stats["connections_created"] == 3
        assert stats["connections_closed"] == 1
        assert stats["wait_time_max"] >= stats["wait_time_p50"] > 0
    finally:
        await engine.dispose()


async def test_pool_timeout_increments_timeouts(
    pg_server: PgServer, pg_database: str, reader: InMemoryMetricReader, provider: MeterProvider
) -> None:
    """A checkout that times out raises PoolExhausted and counts one db.client.connection.timeouts."""
    engine = create_async_engine(
        pg_server.app_url(pg_database), pool_size=1, max_overflow=0, pool_timeout=0.2
    )
    try:
        instrument(engine, meter_provider=provider, pool_name="tiny")
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
            with pytest.raises(PoolExhausted) as info:
                async with engine.connect():
                    pass
        assert "size=1" in str(info.value)
        (point,) = points(reader, "db.client.connection.timeouts")
        assert point.value == 1
        assert point.attributes == {"db.client.connection.pool.name": "tiny"}
        assert metric_unit(reader, "db.client.connection.timeouts") == "{timeout}"
        stats = pool_stats(engine, pop=True)
        assert stats["timeouts"] == 1
        assert pool_stats(engine)["timeouts"] == 0  # popped
    finally:
        await engine.dispose()


def test_sqlite_counts_and_two_engines_on_one_provider(
    sync_engines: list[Engine],
    tmp_path: Path,
    reader: InMemoryMetricReader,
    provider: MeterProvider,
) -> None:
    """Two SQLite engines share the provider's instruments; each is reported under its own pool name."""
    a = create_engine(f"sqlite:///{tmp_path / 'a.sqlite'}")
    b = create_engine(f"sqlite:///{tmp_path / 'b.sqlite'}")
    sync_engines.extend([a, b])
    ia = instrument(a, meter_provider=provider)
    instrument(b, meter_provider=provider)
    for engine, n in ((a, 5), (b, 3)):
        for _ in range(n):
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
    found = by_attrs(
        points(reader, "db.client.operation.duration"), **{"db.operation.name": "SELECT"}
    )
    assert {p.attributes["db.namespace"]: p.count for p in found} == {
        str(tmp_path / "a.sqlite"): 5,
        str(tmp_path / "b.sqlite"): 3,
    }
    assert all(p.attributes["db.system.name"] == "sqlite" for p in found)
    assert all("server.address" not in p.attributes for p in found)
    names = {
        p.attributes["db.client.connection.pool.name"]
        for p in points(reader, "db.client.connection.count")
    }
    assert names == {f"sqlite:{tmp_path / 'a.sqlite'}", f"sqlite:{tmp_path / 'b.sqlite'}"}
    ia.detach()
    names = {
        p.attributes["db.client.connection.pool.name"]
        for p in points(reader, "db.client.connection.count")
    }
    assert names == {f"sqlite:{tmp_path / 'b.sqlite'}"}


def test_no_sdk_is_a_no_op(sync_engines: list[Engine], tmp_path: Path) -> None:
    """Without a MeterProvider (the API's no-op) statements run and the statistics still count."""
    engine = create_engine(f"sqlite:///{tmp_path / 'n.sqlite'}")
    sync_engines.append(engine)
    instr = instrument(engine)
    with engine.connect() as conn:
        for _ in range(3):
            conn.execute(text("SELECT 2"))
    assert instr.stats is not None
    assert instr.stats.get("SELECT ?") is not None


# -- the conventions' newer parts: returned rows, COMMIT/ROLLBACK, summaries, batches ----


async def test_returned_rows_of_selects_and_returning(
    pg_engine: AsyncEngine, reader: InMemoryMetricReader, provider: MeterProvider
) -> None:
    """db.client.response.returned_rows: the rows a SELECT or a RETURNING gave back,
    from what the driver already holds (no row is touched), with the operation's attributes."""
    instrument(pg_engine, meter_provider=provider)
    async with pg_engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS rowsy"))
        await conn.execute(text("CREATE TABLE rowsy (id int PRIMARY KEY)"))
        await conn.execute(
            text("INSERT INTO rowsy SELECT g FROM generate_series(1, 7) g RETURNING id")
        )
        await conn.execute(text("SELECT id FROM rowsy WHERE id <= 3"))
        await conn.execute(text("UPDATE rowsy SET id = id + 100 WHERE id = 1"))
    found = points(reader, "db.client.response.returned_rows")
    (inserted,) = by_attrs(found, **{"db.operation.name": "INSERT"})
    assert (inserted.count, inserted.sum) == (1, 7)
    assert inserted.attributes["db.query.summary"] == "INSERT rowsy SELECT generate_series"
    (selected,) = by_attrs(found, **{"db.query.summary": "SELECT rowsy"})
    assert (selected.count, selected.sum) == (1, 3)
    assert not by_attrs(found, **{"db.operation.name": "UPDATE"})  # returned no rows
    assert metric_unit(reader, "db.client.response.returned_rows") == "{row}"


async def test_commit_and_rollback_are_operations_and_a_failed_commit_has_its_error(
    pg_engine: AsyncEngine, reader: InMemoryMetricReader, provider: MeterProvider
) -> None:
    """COMMIT and ROLLBACK are timed as operations; a 40001 raised by COMMIT is recorded
    under db.operation.name COMMIT with error.type and db.response.status_code 40001."""
    instrument(pg_engine, meter_provider=provider)
    async with pg_engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS skew"))
        await conn.execute(text("CREATE TABLE skew (i int PRIMARY KEY, t text)"))
        await conn.execute(text("INSERT INTO skew VALUES (1, 'apple'), (2, 'pear')"))
    a = await (await pg_engine.connect()).execution_options(isolation_level="SERIALIZABLE")
    b = await (await pg_engine.connect()).execution_options(isolation_level="SERIALIZABLE")
    try:
        await a.begin()
        await b.begin()
        await a.execute(text("UPDATE skew SET t = 'apple' WHERE t = 'pear'"))
        await b.execute(text("UPDATE skew SET t = 'pear' WHERE t = 'apple'"))
        await a.commit()
        with pytest.raises(sa_exc.DBAPIError):
            await b.commit()
    finally:
        await a.close()
        await b.close()
    found = points(reader, "db.client.operation.duration")
    commits = by_attrs(found, **{"db.operation.name": "COMMIT"})
    ok = [p for p in commits if "error.type" not in p.attributes]
    (failed,) = [p for p in commits if "error.type" in p.attributes]
    assert sum(p.count for p in ok) >= 2  # the set-up's and a's
    assert failed.count == 1
    assert failed.attributes["error.type"] == "40001"
    assert failed.attributes["db.response.status_code"] == "40001"
    assert failed.attributes["db.query.summary"] == "COMMIT"
    assert failed.attributes["db.system.name"] == "postgresql"
    assert by_attrs(found, **{"db.operation.name": "ROLLBACK"})  # b's connection rolled back


def test_sqlite_error_type_is_sqlites_code(
    sync_engines: list[Engine],
    tmp_path: Path,
    reader: InMemoryMetricReader,
    provider: MeterProvider,
) -> None:
    """On SQLite error.type and db.response.status_code are SQLite's result code name."""
    engine = create_engine(f"sqlite:///{tmp_path / 'e.sqlite'}")
    sync_engines.append(engine)
    instrument(engine, meter_provider=provider)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE u (id INTEGER PRIMARY KEY)"))
        conn.execute(text("INSERT INTO u VALUES (1)"))
    with pytest.raises(sa_exc.IntegrityError), engine.begin() as conn:
        conn.execute(text("INSERT INTO u VALUES (1)"))
    (point,) = by_attrs(
        points(reader, "db.client.operation.duration"),
        **{"error.type": "SQLITE_CONSTRAINT_PRIMARYKEY"},
    )
    assert point.attributes["db.response.status_code"] == "SQLITE_CONSTRAINT_PRIMARYKEY"
    assert point.attributes["db.operation.name"] == "INSERT"


def test_executemany_is_a_batch_operation(
    sync_engines: list[Engine],
    tmp_path: Path,
    reader: InMemoryMetricReader,
    provider: MeterProvider,
) -> None:
    """An executemany is one operation named BATCH <op>, summary BATCH <summary>."""
    engine = create_engine(f"sqlite:///{tmp_path / 'b.sqlite'}")
    sync_engines.append(engine)
    instrument(engine, meter_provider=provider)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE b (id INTEGER PRIMARY KEY, v INTEGER)"))
        conn.execute(text("INSERT INTO b VALUES (1, 0), (2, 0), (3, 0)"))
        conn.execute(
            text("UPDATE b SET v = :v WHERE id = :id"), [{"v": i, "id": i} for i in (1, 2, 3)]
        )
    found = points(reader, "db.client.operation.duration")
    (batch,) = by_attrs(found, **{"db.operation.name": "BATCH UPDATE"})
    assert batch.count == 1
    assert batch.attributes["db.query.summary"] == "BATCH UPDATE b"
    assert not by_attrs(found, **{"db.operation.name": "UPDATE"})


async def test_transaction_and_row_metrics_can_be_left_out(
    pg_engine: AsyncEngine, reader: InMemoryMetricReader, provider: MeterProvider
) -> None:
    """transaction_metrics=False and row_metrics=False record statement durations only."""
    instrument(pg_engine, meter_provider=provider, transaction_metrics=False, row_metrics=False)
    async with pg_engine.begin() as conn:
        await conn.execute(text("SELECT 1"))
    found = points(reader, "db.client.operation.duration")
    assert by_attrs(found, **{"db.operation.name": "SELECT"})
    assert not by_attrs(found, **{"db.operation.name": "COMMIT"})
    assert not points(reader, "db.client.response.returned_rows")


def test_metric_options_are_validated(sync_engines: list[Engine]) -> None:
    """A non-boolean transaction_metrics / row_metrics is a TypeError naming the option."""
    engine = create_engine("sqlite://")
    sync_engines.append(engine)
    for name in ("transaction_metrics", "row_metrics"):
        with pytest.raises(TypeError, match=name):
            instrument(engine, **{name: "yes"})  # type: ignore[arg-type]


def test_a_meter_provider_is_freed_after_detach_dispose_and_shutdown() -> None:
    """S39: 100 providers, each given to instrument(), then detach, dispose, shutdown: 0 alive."""
    refs = []
    for _ in range(100):
        provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        engine = create_engine("sqlite://")
        handle = instrument(engine, meter_provider=provider)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        handle.detach()
        engine.dispose()
        provider.shutdown()
        refs.append(weakref.ref(provider))
        del provider, engine, handle
    gc.collect()
    assert sum(ref() is not None for ref in refs) == 0


def test_commit_and_rollback_are_timed_from_the_first_record_into_an_sdk(
    tmp_path: Path, reader: InMemoryMetricReader, provider: MeterProvider
) -> None:
    """With the API's proxy meter provider and no SDK behind it yet (the global provider
    before the application installs one), COMMIT and ROLLBACK run SQLAlchemy's own methods
    (COMMIT tagged): nothing extra per checkout. Once an SDK is set, the first statement
    recorded into it turns their timing on, and detach takes it off again."""
    from opentelemetry.metrics._internal import _ProxyMeterProvider

    proxy = _ProxyMeterProvider()
    engine = create_engine(f"sqlite:///{tmp_path / 'lazy.sqlite'}")
    instr = instrument(engine, meter_provider=proxy)
    dialect = engine.dialect
    try:
        assert "do_rollback" not in dialect.__dict__  # SQLAlchemy's own
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (i INTEGER)"))
        assert "do_rollback" not in dialect.__dict__
        proxy.on_set_meter_provider(provider)  # the application installs its SDK
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))  # first record: timing goes on
        with engine.connect() as conn:
            conn.execute(text("SELECT i FROM t"))  # closed without commit: ROLLBACK
        assert "do_rollback" in dialect.__dict__
        found = points(reader, "db.client.operation.duration")
        assert sum(p.count for p in by_attrs(found, **{"db.operation.name": "COMMIT"})) == 1
        assert by_attrs(found, **{"db.operation.name": "ROLLBACK"})
    finally:
        instr.detach()
        engine.dispose()
    assert not {"do_commit", "do_rollback", "do_execute"} & set(dialect.__dict__)
