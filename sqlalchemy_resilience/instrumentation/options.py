"""``InstrumentOptions``: what ``instrument()`` attaches, validated once, in one place.

``instrument(engine, slow_query_threshold=0.25)`` builds one from its keywords;
``Database(url, instrumentation=InstrumentOptions(...))`` passes one through,
and one object can be shared by every engine of an application. A bad value
fails when the object is built, naming the option and what it accepts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypedDict

from opentelemetry.metrics import MeterProvider

from sqlalchemy_resilience._util.seconds import Seconds, to_seconds
from sqlalchemy_resilience.pool.checkout import check_max_waiting
from sqlalchemy_resilience.transactions.sqlite import SQLiteSettings

__all__ = ["InstrumentChanges", "InstrumentOptions", "options_with"]

_FLAGS = (
    "explain_slow_queries",
    "query_stats",
    "stats_call_sites",
    "metrics",
    "transaction_metrics",
    "row_metrics",
    "log_parameters",
    "translate_errors",
)


@dataclass(frozen=True, kw_only=True)
class InstrumentOptions:
    """What :func:`~sqlalchemy_resilience.instrument` attaches to an engine.

    Args:
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
            connection; one more fails at once with ``PoolExhausted``
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
        TypeError, ValueError: an option of the wrong type or out of range, named
            with what it accepts.

    Example::

        options = InstrumentOptions(slow_query_threshold=0.25, leak_threshold=30)
        instrument(engine, options)
        instrument(other_engine, options, pool_name="reports")   # changes on top
        db = Database(url, instrumentation=options)
    """

    slow_query_threshold: Seconds | None = 1.0
    long_running_threshold: Seconds | None = None
    explain_slow_queries: bool = False
    explain_interval: Seconds = 60.0
    query_stats: bool = True
    max_statements: int = 5000
    stats_call_sites: bool = False
    metrics: bool = True
    transaction_metrics: bool = True
    row_metrics: bool = True
    meter_provider: MeterProvider | None = None
    pool_name: str | None = None
    call_site_skip: tuple[str, ...] = ()
    leak_threshold: Seconds | None = None
    max_waiting: int | None = None
    log_parameters: bool = False
    translate_errors: bool = True
    sqlite: SQLiteSettings | None = None
    _checked: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for flag in _FLAGS:
            value = getattr(self, flag)
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be True or False, got {value!r}")
        checked = self._checked
        checked["slow_query_threshold"] = (
            None
            if self.slow_query_threshold is None
            else to_seconds("slow_query_threshold", self.slow_query_threshold)
        )
        checked["long_running_threshold"] = (
            None
            if self.long_running_threshold is None
            else to_seconds("long_running_threshold", self.long_running_threshold, allow_zero=False)
        )
        checked["explain_interval"] = to_seconds("explain_interval", self.explain_interval)
        checked["leak_threshold"] = (
            None
            if self.leak_threshold is None
            else to_seconds("leak_threshold", self.leak_threshold, allow_zero=False)
        )
        check_max_waiting(self.max_waiting)
        statements: object = self.max_statements
        if isinstance(statements, bool) or not isinstance(statements, int):
            raise TypeError(f"max_statements must be an int, got {statements!r}")
        if statements < 1:
            raise ValueError(f"max_statements must be >= 1, got {statements!r}")
        name: object = self.pool_name
        if name is not None and (not isinstance(name, str) or not name):
            raise TypeError(f"pool_name must be a non-empty str or None, got {name!r}")
        skip: object = self.call_site_skip
        if not isinstance(skip, tuple) or not all(isinstance(p, str) and p for p in skip):
            raise TypeError(f"call_site_skip must be a tuple of module name prefixes, got {skip!r}")
        provider: object = self.meter_provider
        if provider is not None and not callable(getattr(provider, "get_meter", None)):
            raise TypeError(
                f"meter_provider must be an opentelemetry MeterProvider, got {provider!r}"
            )
        sqlite: object = self.sqlite
        if sqlite is not None and not isinstance(sqlite, SQLiteSettings):
            raise TypeError(f"sqlite must be a SQLiteSettings or None, got {sqlite!r}")

    def seconds(self, name: str) -> float | None:
        """A time option as float seconds (None where off).

        Example::

            InstrumentOptions(slow_query_threshold=timedelta(milliseconds=250)).seconds(
                "slow_query_threshold"
            )  # 0.25
        """
        value: float | None = self._checked[name]
        return value


class InstrumentChanges(TypedDict, total=False):
    """The keywords ``instrument()`` takes: any field of :class:`InstrumentOptions`.

    Example::

        changes: InstrumentChanges = {"slow_query_threshold": 0.25}
        instrument(engine, **changes)
    """

    slow_query_threshold: Seconds | None
    long_running_threshold: Seconds | None
    explain_slow_queries: bool
    explain_interval: Seconds
    query_stats: bool
    max_statements: int
    stats_call_sites: bool
    metrics: bool
    transaction_metrics: bool
    row_metrics: bool
    meter_provider: MeterProvider | None
    pool_name: str | None
    call_site_skip: tuple[str, ...]
    leak_threshold: Seconds | None
    max_waiting: int | None
    log_parameters: bool
    translate_errors: bool
    sqlite: SQLiteSettings | None


_DEFAULT = InstrumentOptions()


def options_with(
    options: InstrumentOptions | None, changes: Mapping[str, object], what: str
) -> InstrumentOptions:
    """``options`` (default: the defaults) with ``changes`` on top, validated; errors name ``what``.

    Example::

        options_with(None, {"slow_query_threshold": 0.25}, "instrument()")
    """
    if options is not None and not isinstance(options, InstrumentOptions):
        raise TypeError(f"{what}: options must be an InstrumentOptions, got {options!r}")
    base = _DEFAULT if options is None else options
    if not changes:
        return base
    unknown = sorted(set(changes) - set(InstrumentChanges.__annotations__))
    if unknown:
        raise TypeError(
            f"{what} got unknown option(s) {', '.join(unknown)}; the options are: "
            f"{', '.join(InstrumentChanges.__annotations__)}"
        )
    return replace(base, **changes)  # type: ignore[arg-type]
