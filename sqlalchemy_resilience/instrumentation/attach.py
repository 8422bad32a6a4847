"""``instrument(engine)``: validate the options, compose the parts, attach them.

Everything is chosen here, at attach time, so the per-statement path holds
only what is on. The handle it returns, :class:`~.handle.Instrumentation`,
owns exactly the hooks it added; :meth:`~.handle.Instrumentation.detach`
removes those and nothing else, so another engine's instrumentation (or the
application's own listeners) stay. An engine can be instrumented once at a time.
"""

from __future__ import annotations

from opentelemetry.metrics import MeterProvider
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from sqlalchemy_resilience._util.seconds import Seconds, to_seconds
from sqlalchemy_resilience.core.engines import sync_engine
from sqlalchemy_resilience.core.registry import hooks_of
from sqlalchemy_resilience.pool.checkout import check_max_waiting
from sqlalchemy_resilience.transactions.sqlite import SQLiteSettings

from .handle import Instrumentation

__all__ = ["instrument", "instrumentation_of"]


def instrument(
    engine: Engine | AsyncEngine,
    *,
    slow_query_threshold: Seconds | None = 1.0,
    long_running_threshold: Seconds | None = None,
    explain_slow_queries: bool = False,
    explain_interval: Seconds = 60.0,
    query_stats: bool = True,
    max_statements: int = 5000,
    stats_call_sites: bool = False,
    metrics: bool = True,
    transaction_metrics: bool = True,
    row_metrics: bool = True,
    meter_provider: MeterProvider | None = None,
    pool_name: str | None = None,
    call_site_skip: tuple[str, ...] = (),
    leak_threshold: Seconds | None = None,
    max_waiting: int | None = None,
    log_parameters: bool = False,
    translate_errors: bool = True,
    sqlite: SQLiteSettings | None = None,
) -> Instrumentation:
    """Attach this package's hooks to ``engine`` and return the handle that owns them.

    One call gives: typed error translation, a slow-query log with the
    application call site, per-statement statistics (``.stats``), pool
    figures (``.pool_stats()``) and OpenTelemetry metrics per the database
    semantic conventions.

    Args:
        engine: an ``Engine`` or ``AsyncEngine``.
        slow_query_threshold: seconds (or ``timedelta``) over which a
            statement is logged on ``sqlalchemy_resilience.slow_query``; None turns it off.
        long_running_threshold: report a statement still running after this
            long, once, while it runs (a watchdog thread); None (default) is off.
        explain_slow_queries: PostgreSQL only: attach the ``EXPLAIN (FORMAT
            JSON)`` plan of a slow SELECT to its record (never ANALYZE; on a
            separate connection; at most one at a time).
        explain_interval: explain the same normalized statement at most once per this many seconds.
        query_stats: keep per-statement statistics.
        max_statements: the most distinct statements the statistics keep (LRU).
        stats_call_sites: also count, per statement, the call sites it ran
            from (one statement in 16 is sampled).
        metrics: record OpenTelemetry metrics.
        transaction_metrics: with ``metrics``, also time COMMIT and ROLLBACK
            as operations (``db.client.operation.duration``). With an SDK each
            is one more ``Histogram.record`` per transaction.
        row_metrics: with ``metrics``, also record
            ``db.client.response.returned_rows`` for statements that return
            rows: one more ``Histogram.record`` each, with an SDK.
        meter_provider: the MeterProvider to use (default: the global one; a
            no-op until the application installs an SDK).
        pool_name: ``db.client.connection.pool.name`` (default ``host:port/database``).
        call_site_skip: module prefixes (your own data layer) the call site
            lookup skips like SQLAlchemy's.
        leak_threshold: report a connection held longer than this, while it
            is held, with its holder and checkout stack (logger
            ``sqlalchemy_resilience.pool``); None (default) is off.
        max_waiting: at most this many requests may wait for a pooled
            connection; one more fails at once with :class:`PoolExhausted`
            instead of queueing (None: no limit; settable at runtime).
        log_parameters: let the package's own records (slow-query log,
            ``summary`` and ``safe_text()`` of a translated error) show bound
            parameter values and the values the server's message holds (never
            when the engine was created with ``hide_parameters=True``). Off by
            default. The engine's own settings are never changed: SQLAlchemy's
            logs and error text show parameters as the engine's
            ``hide_parameters`` decides.
        translate_errors: translate driver errors into the typed hierarchy.
        sqlite: a SQLite engine only: install these
            :class:`~sqlalchemy_resilience.transactions.SQLiteSettings` -- WAL, ``busy_timeout``
            and ``BEGIN IMMEDIATE`` for every transaction not declared
            read-only (see :func:`~sqlalchemy_resilience.transactions.configure_sqlite`);
            removed again by ``detach()``. Off by default: it changes how the
            application's transactions lock, which only the application may decide.

    Raises:
        TypeError: ``engine`` is not an engine, or an option has the wrong type.
        ValueError: an option is out of range (e.g. a negative threshold, or
            ``explain_slow_queries`` on a database other than PostgreSQL).
        RuntimeError: the engine is already instrumented (detach first).

    Example::

        engine = create_async_engine("postgresql+asyncpg://app@db/app")
        instr = instrument(engine, slow_query_threshold=0.25)
        try:
            async with engine.begin() as conn:
                await conn.execute(users.insert().values(email="a@example.com"))
        except UniqueViolation as exc:
            print(exc.constraint_name, exc.user_message("ja"))
        print(instr.stats.top(3, by="p95"))
    """
    for name, value in (
        ("log_parameters", log_parameters),
        ("translate_errors", translate_errors),
        ("explain_slow_queries", explain_slow_queries),
        ("query_stats", query_stats),
        ("stats_call_sites", stats_call_sites),
        ("metrics", metrics),
        ("transaction_metrics", transaction_metrics),
        ("row_metrics", row_metrics),
    ):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    slow = (
        None
        if slow_query_threshold is None
        else to_seconds("slow_query_threshold", slow_query_threshold)
    )
    long_running = (
        None
        if long_running_threshold is None
        else to_seconds("long_running_threshold", long_running_threshold, allow_zero=False)
    )
    interval = to_seconds("explain_interval", explain_interval)
    leak_seconds = (
        None
        if leak_threshold is None
        else to_seconds("leak_threshold", leak_threshold, allow_zero=False)
    )
    check_max_waiting(max_waiting)
    if isinstance(max_statements, bool) or not isinstance(max_statements, int):
        raise TypeError(f"max_statements must be an int, got {max_statements!r}")
    if max_statements < 1:
        raise ValueError(f"max_statements must be >= 1, got {max_statements!r}")
    name_value: object = pool_name
    if name_value is not None and (not isinstance(name_value, str) or not name_value):
        raise TypeError(f"pool_name must be a non-empty str or None, got {pool_name!r}")
    skip_value: object = call_site_skip
    if not isinstance(skip_value, tuple) or not all(isinstance(p, str) and p for p in skip_value):
        raise TypeError(
            f"call_site_skip must be a tuple of module name prefixes, got {call_site_skip!r}"
        )
    if meter_provider is not None and not callable(getattr(meter_provider, "get_meter", None)):
        raise TypeError(
            f"meter_provider must be an opentelemetry MeterProvider, got {meter_provider!r}"
        )
    if sqlite is not None and not isinstance(sqlite, SQLiteSettings):
        raise TypeError(f"sqlite must be a SQLiteSettings or None, got {sqlite!r}")
    sync = sync_engine(engine)
    if sqlite is not None and sync.dialect.name != "sqlite":
        raise ValueError(
            f"sqlite= needs a SQLite engine; this engine's dialect is {sync.dialect.name!r}"
        )
    if explain_slow_queries and sync.dialect.name != "postgresql":
        raise ValueError(
            f"explain_slow_queries needs PostgreSQL; this engine's dialect is {sync.dialect.name!r}"
        )
    instr = Instrumentation(
        sync,
        log_parameters=log_parameters,
        translate_errors=translate_errors,
        slow_query_threshold=slow,
        long_running_threshold=long_running,
        explain_slow_queries=explain_slow_queries,
        explain_interval=interval,
        query_stats=query_stats,
        max_statements=max_statements,
        stats_call_sites=stats_call_sites,
        metrics=metrics,
        transaction_metrics=transaction_metrics,
        row_metrics=row_metrics,
        meter_provider=meter_provider,
        pool_name=pool_name,
        call_site_skip=call_site_skip,
        leak_threshold=leak_seconds,
        max_waiting=max_waiting,
        sqlite=sqlite,
    )
    instr._attach()
    return instr


def instrumentation_of(engine: Engine | AsyncEngine) -> Instrumentation | None:
    """The attached :class:`Instrumentation` of ``engine``, or None.

    Example::

        instrument(engine)
        instrumentation_of(engine).stats.top(3)
    """
    hooks = hooks_of(engine)
    owner = hooks.owner if hooks is not None else None
    return owner if isinstance(owner, Instrumentation) else None
