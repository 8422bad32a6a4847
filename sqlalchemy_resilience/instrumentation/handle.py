"""The :class:`Instrumentation` handle: the parts of one engine, composed, and their settings.

The handle builds each enabled part (statistics, statement observer,
watchdog, plan explainer, pool monitor, checkout observer, leak detector),
hands their callables to the hook core in one :class:`~sqlalchemy_resilience.core.HookParts`,
and owns what it started: :meth:`Instrumentation.detach` stops the
background parts and removes exactly the hooks it added.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

from sqlalchemy.engine import Engine

from sqlalchemy_resilience._util.seconds import Seconds, to_seconds
from sqlalchemy_resilience.core.callsites import CallSites
from sqlalchemy_resilience.core.engines import database_and_host, safe_url, secrets_of
from sqlalchemy_resilience.core.hooks import EngineHooks, HookParts
from sqlalchemy_resilience.core.registry import register, unregister
from sqlalchemy_resilience.observe.explain import PlanExplainer
from sqlalchemy_resilience.observe.metrics import MeterSet, meter_set_for
from sqlalchemy_resilience.observe.statements import StatementObserver
from sqlalchemy_resilience.observe.stats import QueryStats
from sqlalchemy_resilience.observe.watchdog import Watchdog
from sqlalchemy_resilience.pool.checkout import CheckoutObserver, check_max_waiting
from sqlalchemy_resilience.pool.leaks import LeakDetector
from sqlalchemy_resilience.pool.monitor import PoolMonitor, pool_name_of
from sqlalchemy_resilience.transactions.sqlite import SQLiteConfiguration, configure_sqlite

from .options import InstrumentOptions

__all__ = ["Instrumentation"]


class Instrumentation:
    """The handle :func:`~sqlalchemy_resilience.instrument` returns: owns its hooks and removes them on detach.

    Attributes:
        engine: the instrumented (sync) engine; for an ``AsyncEngine`` its ``sync_engine``.
        stats: the :class:`~sqlalchemy_resilience.observe.QueryStats` (None with ``query_stats=False``).
        pool: the :class:`~sqlalchemy_resilience.pool.PoolMonitor` behind :meth:`pool_stats`.
        log_parameters: whether errors and slow-query records may show bound parameters.
        database, host: what slow-query records name (never user or password).

    Example::

        instr = instrument(engine, slow_query_threshold=0.2)
        ...
        print(instr.stats.top(5, by="p95"))
        instr.slow_query_threshold = 0.05   # takes effect at once
        instr.detach()                      # engine behaves exactly as before
    """

    def __init__(self, engine: Engine, options: InstrumentOptions) -> None:
        self.options = options
        log_parameters = options.log_parameters
        slow_query_threshold = options.seconds("slow_query_threshold")
        long_running_threshold = options.seconds("long_running_threshold")
        explain_interval = options.seconds("explain_interval")
        assert explain_interval is not None
        leak_threshold = options.seconds("leak_threshold")
        meter_provider, metrics = options.meter_provider, options.metrics
        transaction_metrics, row_metrics = options.transaction_metrics, options.row_metrics
        sqlite = options.sqlite
        self.engine = engine
        self._sqlite = sqlite
        self._sqlite_configured: SQLiteConfiguration | None = None
        self.log_parameters = log_parameters
        self.translate_errors = options.translate_errors
        self.database, self.host = database_and_host(engine)
        self._hooks = EngineHooks(engine, owner=self)
        self._transaction_metrics = transaction_metrics
        self._long_running = long_running_threshold
        self._watchdog: Watchdog | None = None
        self._leak_threshold = leak_threshold
        self._meters: MeterSet | None = meter_set_for(meter_provider) if metrics else None
        self._call_sites = CallSites(options.call_site_skip)
        log_own_failure = self._hooks.log_own_failure
        self.stats: QueryStats | None = (
            QueryStats(max_statements=options.max_statements) if options.query_stats else None
        )
        self.pool = PoolMonitor(
            engine, name=options.pool_name or pool_name_of(engine), log_own_failure=log_own_failure
        )
        self._statements = StatementObserver(
            engine,
            stats=self.stats,
            histogram=self._meters.operation_duration if self._meters is not None else None,
            slow_query_threshold=slow_query_threshold,
            call_sites=self._call_sites,
            log_own_failure=log_own_failure,
            stats_call_sites=options.stats_call_sites,
            explainer=(
                PlanExplainer(
                    engine,
                    interval=explain_interval,
                    redact=not (log_parameters and not engine.hide_parameters),
                )
                if options.explain_slow_queries
                else None
            ),
            show_parameters=log_parameters and not engine.hide_parameters,
            database=self.database,
            host=self.host,
            rows_histogram=(
                self._meters.returned_rows if self._meters is not None and row_metrics else None
            ),
        )
        self._checkouts = CheckoutObserver(
            engine,
            self.pool,
            meters=self._meters,
            log_own_failure=log_own_failure,
            max_waiting=options.max_waiting,
        )

    # -- runtime settings ----------------------------------------------------

    @property
    def slow_query_threshold(self) -> float | None:
        """Seconds over which a statement is logged as slow (None: off). Settable at runtime."""
        slow = self._statements.slow
        return None if slow == math.inf else slow

    @slow_query_threshold.setter
    def slow_query_threshold(self, value: Seconds | None) -> None:
        self._statements.slow = (
            math.inf if value is None else to_seconds("slow_query_threshold", value)
        )

    @property
    def long_running_threshold(self) -> float | None:
        """Seconds after which a statement still running is reported (None: off). Settable."""
        return self._long_running

    @long_running_threshold.setter
    def long_running_threshold(self, value: Seconds | None) -> None:
        seconds = (
            None if value is None else to_seconds("long_running_threshold", value, allow_zero=False)
        )
        self._long_running = seconds
        if not self.attached:
            return
        if seconds is None:
            self._stop_watchdog()
        elif self._watchdog is None:
            self._start_watchdog(seconds)
        else:
            self._watchdog.threshold = seconds

    @property
    def leak_threshold(self) -> float | None:
        """Seconds a connection may be held before it is reported (None: off)."""
        return self._leak_threshold

    @property
    def suspected_leaks(self) -> int:
        """Connections reported as leaked and still held."""
        leaks = self._checkouts.leaks
        return leaks.suspected if leaks is not None else 0

    @property
    def max_waiting(self) -> int | None:
        """Requests allowed to wait for a connection before more are refused (None: no limit)."""
        return self._checkouts.max_waiting

    @max_waiting.setter
    def max_waiting(self, value: int | None) -> None:
        self._checkouts.max_waiting = check_max_waiting(value)

    @property
    def min_size(self) -> int:
        """The idle minimum reported as ``db.client.connection.idle.min`` (set by warm-up and the maintainer)."""
        return self.pool.min_size

    def pool_stats(self, *, pop: bool = False) -> dict[str, Any]:
        """The engine's pool figures; see :func:`~sqlalchemy_resilience.pool.pool_stats`."""
        return self.pool.stats(pop=pop)

    @property
    def attached(self) -> bool:
        """Whether the hooks are installed."""
        return self._hooks.attached

    # -- attach / detach -------------------------------------------------------

    def _attach(self) -> None:
        engine = self.engine
        register(self._hooks)
        checkouts = self._checkouts
        try:
            self._attach_hooks(engine, checkouts)
        except BaseException:
            self._hooks.detach()
            unregister(self._hooks)
            raise

    def _attach_hooks(self, engine: Engine, checkouts: CheckoutObserver) -> None:
        # handle_error listeners live on the dialect, which the ORM's caches
        # keep for the life of the process: reach the engine weakly from there.
        engine_ref = weakref.ref(engine)

        def secrets() -> tuple[str, ...]:
            found = engine_ref()
            return () if found is None else secrets_of(found)

        self._hooks.attach(
            HookParts(
                translate_errors=self.translate_errors,
                log_parameters=self.log_parameters,
                secrets=secrets,
                statement_observed=self._statements.observed,
                statement_failed=self._statements.failed,
                before_checkout=checkouts.shed,
                checked_out=checkouts.checked_out,
                checkout_failed=checkouts.checkout_failed,
                connected=checkouts.connected,
                closed=checkouts.closed,
                invalidated=checkouts.invalidated,
                transaction_ended=(
                    self._statements.transaction_ended
                    if self._meters is not None and self._transaction_metrics
                    else None
                ),
                transaction_timed=self._statements.transaction_timed,
            )
        )
        if self._meters is not None and self._transaction_metrics:
            self._statements.sdk_seen = self._hooks.time_transactions
        self._hooks.provide(self.pool)
        if self._sqlite is not None:
            self._sqlite_configured = configure_sqlite(engine, self._sqlite)
        self.pool.attached = True
        if self._meters is not None:
            self._meters.sources.add(self.pool)
        if self._long_running is not None:
            self._start_watchdog(self._long_running)
        if self._leak_threshold is not None:
            leaks = LeakDetector(
                self._leak_threshold,
                pool_name=self.pool.name,
                call_sites=self._call_sites,
                is_async=bool(engine.dialect.is_async),
            )
            leaks.start()
            checkouts.leaks = self.pool.leaks = leaks

    def _start_watchdog(self, threshold: float) -> None:
        watchdog = Watchdog(threshold, self._statements.report_in_flight)
        watchdog.start()
        self._watchdog = watchdog
        self._hooks.slots.in_flight = watchdog

    def _stop_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        self._hooks.slots.in_flight = None
        if watchdog is not None:
            watchdog.stop()

    def detach(self) -> None:
        """Remove every listener and wrapper this handle added and restore the engine.

        Idempotent. After it the engine can be instrumented again.
        """
        if not self.attached:
            return
        self._stop_watchdog()
        self._statements.sdk_seen = None
        leaks, self._checkouts.leaks = self._checkouts.leaks, None
        self.pool.leaks = None
        if leaks is not None:
            leaks.stop()
        explainer = self._statements.explainer
        if explainer is not None:
            explainer.close()
        self._hooks.detach()
        sqlite_configured, self._sqlite_configured = self._sqlite_configured, None
        if sqlite_configured is not None:
            sqlite_configured.detach()
        self.pool.attached = False
        unregister(self._hooks)

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return f"<Instrumentation {safe_url(self.engine)} {state}>"
