"""``instrument(engine)``: attach this package's hooks to one engine.

The returned :class:`Instrumentation` owns exactly the listeners it added;
:meth:`Instrumentation.detach` removes those and nothing else, so another
engine's instrumentation (or the application's own listeners) stay. An
engine can be instrumented once at a time.

Error translation is wired three ways, because SQLAlchemy routes failures
through different paths:

* ``handle_error`` (on the dialect, so it also sees connect-time DBAPI errors)
  translates every DBAPI error;
* the dialect's ``do_commit`` tags what it raises, so a connection lost while
  COMMIT was in flight becomes :class:`CommitOutcomeUnknown`;
* a wrapper around ``Engine.raw_connection`` catches what never reaches
  ``handle_error``: a refused or timed-out TCP connect (a plain ``OSError``
  from asyncpg), a raw asyncpg server error on SQLAlchemy 2.0, and the pool's
  own ``TimeoutError``, which becomes :class:`PoolExhausted`.

Observation (statistics, slow-query log, watchdog, metrics) is wired where it
costs least: statements are timed by wrapping the dialect's ``do_execute``
family (no Connection-level listener, so SQLAlchemy keeps its listener-free
path), per-statement facts (normalized text, operation, table, metric
attributes) are computed once per compiled statement and cached on it, pool
waits are timed in the ``raw_connection`` wrapper, and pool gauges are read
only when a metric reader collects.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.metrics import MeterProvider
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection
from sqlalchemy.sql.expression import Select, TableClause
from sqlalchemy.sql.util import _repr_params

from ._time import Seconds, to_seconds
from .classify import CONNECT_FAILURES, Phase, build_error, classify, extract_facts
from .errors import PoolExhausted, ResilienceError
from .explain import PlanExplainer
from .leaks import LeakDetector
from .metrics import POOL_NAME, MeterSet, meter_set_for
from .pool import PoolMonitor, pool_name_of
from .slow_query import CallSites, InFlight, Watchdog, emit_slow_query
from .stats import PENDING_LIMIT, QueryStats, StatementKey, normalize_statement

__all__ = ["Instrumentation", "instrument", "translate_error"]

_log = logging.getLogger("sqlalchemy_resilience")

# OpenTelemetry's db.system.name values for SQLAlchemy's dialect names.
_SYSTEM_NAMES = {
    "postgresql": "postgresql",
    "sqlite": "sqlite",
    "mysql": "mysql",
    "mssql": "microsoft.sql_server",
    "oracle": "oracle.db",
}
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433, "oracle": 1521}
# With stats_call_sites=True one statement in this many pays for a stack walk.
CALL_SITE_SAMPLING = 16

_registry: weakref.WeakKeyDictionary[Engine, Instrumentation] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def _sync_engine(engine: Engine | AsyncEngine) -> Engine:
    if isinstance(engine, AsyncEngine):
        return engine.sync_engine
    if isinstance(engine, Engine):
        return engine
    raise TypeError(
        f"engine must be a sqlalchemy Engine or AsyncEngine, got {type(engine).__name__}"
    )


def _secrets_of(engine: Engine) -> tuple[str, ...]:
    password = engine.url.password
    return (str(password),) if password else ()


def _pool_status(engine: Engine) -> dict[str, Any]:
    pool = engine.pool
    status: dict[str, Any] = {"pool_class": type(pool).__name__}
    for name in ("size", "checkedout", "overflow", "checkedin"):
        method = getattr(pool, name, None)
        if callable(method):
            try:
                status[name] = method()
            except Exception:  # pragma: no cover - status is best effort
                _log.debug("pool.%s() failed", name, exc_info=True)
    timeout = getattr(pool, "_timeout", None)
    if timeout is not None:
        status["timeout"] = timeout
    max_overflow = getattr(pool, "_max_overflow", None)
    if max_overflow is not None:
        status["max_overflow"] = max_overflow
    return status


def _pool_exhausted(engine: Engine, original: sa_exc.TimeoutError) -> PoolExhausted:
    status = _pool_status(engine)
    numbers = ", ".join(f"{k}={v}" for k, v in status.items() if k != "pool_class")
    return PoolExhausted(
        f"no connection free within the pool timeout ({status['pool_class']}: {numbers})",
        pool_status=status,
    )


def translate_error(exc: BaseException, *, log_parameters: bool = False) -> BaseException:
    """Translate a database exception by hand, as the ``handle_error`` hook does.

    Returns a :class:`~sqlalchemy_resilience.ResilienceError` for a SQLAlchemy
    ``DBAPIError``, a driver exception, a pool ``TimeoutError`` or a socket
    error; returns any other exception (and an already translated one) unchanged.
    The original becomes ``__cause__``.

    Args:
        exc: the exception.
        log_parameters: keep bound parameter values and the driver's full text
            in the result (off: they are redacted).

    Example::

        try:
            conn.execute(insert(users).values(email=email))
        except sqlalchemy.exc.DBAPIError as raw:
            err = translate_error(raw)
            print(type(err).__name__, err.retryable, err.user_message("ja"))
    """
    if isinstance(exc, ResilienceError):
        return exc
    if isinstance(exc, sa_exc.TimeoutError):
        new: BaseException = PoolExhausted(str(exc).splitlines()[0])
    elif isinstance(exc, sa_exc.DBAPIError) or _is_driver_exception(exc):
        new = build_error(
            exc,
            is_disconnect=bool(getattr(exc, "connection_invalidated", False)),
            show_parameters=log_parameters,
        )
    elif isinstance(exc, CONNECT_FAILURES):
        new = build_error(exc, phase="connect", is_disconnect=True, show_parameters=log_parameters)
    else:
        return exc
    new.__cause__ = exc
    return new


def _is_driver_exception(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("asyncpg", "psycopg", "sqlite3", "aiosqlite", "_sqlite3"))


class _Info(StatementKey):
    """What the hot path needs of one statement, computed once per compiled statement."""

    __slots__ = ("attrs", "owner")

    def __init__(
        self,
        owner: object,
        key: str,
        operation: str,
        collection: str | None,
        attrs: dict[str, Any],
    ) -> None:
        super().__init__(key, operation, collection)
        self.owner = owner
        self.attrs = attrs


_INFO_ATTR = "_sqlalchemy_resilience_info"

_FIRST_WORD = re.compile(r"\s*(?:/\*.*?\*/\s*)*\(?\s*([A-Za-z]+)", re.DOTALL)
_MAX_TEXT_INFOS = 10_000


def _collection_of(context: Any) -> str | None:
    compiled = getattr(context, "compiled", None)
    statement = getattr(compiled, "statement", None)
    if statement is None:
        return None
    try:
        table = getattr(statement, "table", None)
        if isinstance(table, TableClause):
            return table.name
        if isinstance(statement, Select):
            froms = statement.get_final_froms()
            if len(froms) == 1 and isinstance(froms[0], TableClause):
                return froms[0].name
    except Exception:  # pragma: no cover - best effort on exotic constructs
        _log.debug("collection name lookup failed", exc_info=True)
    return None


def _operation_of(context: Any, normalized: str) -> str:
    if context is not None:
        if context.isinsert:
            return "INSERT"
        if context.isupdate:
            return "UPDATE"
        if getattr(context, "isdelete", False):
            return "DELETE"
    match = _FIRST_WORD.match(normalized)
    return match.group(1).upper() if match else ""


def _nothing() -> None:
    pass


class _Hot:
    """Mutable state the statement wrappers read on every call (one attribute load)."""

    __slots__ = ("leaks", "max_waiting", "watchdog")

    def __init__(self) -> None:
        self.watchdog: Watchdog | None = None
        self.leaks: LeakDetector | None = None
        self.max_waiting: int | None = None


class Instrumentation:
    """The handle :func:`instrument` returns: owns its listeners and removes them on detach.

    Attributes:
        engine: the instrumented (sync) engine; for an ``AsyncEngine`` its ``sync_engine``.
        stats: the :class:`~sqlalchemy_resilience.QueryStats` (None with ``query_stats=False``).
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

    def __init__(
        self,
        engine: Engine,
        *,
        log_parameters: bool,
        translate_errors: bool,
        slow_query_threshold: float | None,
        long_running_threshold: float | None,
        explain_slow_queries: bool,
        explain_interval: float,
        query_stats: bool,
        max_statements: int,
        stats_call_sites: bool,
        metrics: bool,
        meter_provider: MeterProvider | None,
        pool_name: str | None,
        call_site_skip: tuple[str, ...],
        leak_threshold: float | None = None,
        max_waiting: int | None = None,
    ) -> None:
        self.engine = engine
        self.log_parameters = log_parameters
        self.translate_errors = translate_errors
        self.stats: QueryStats | None = (
            QueryStats(max_statements=max_statements) if query_stats else None
        )
        self.pool = PoolMonitor(engine, name=pool_name or pool_name_of(engine))
        url = engine.url
        self.database: str | None = url.database
        self.host: str | None = (
            f"{url.host}:{url.port}" if url.host and url.port else (url.host or None)
        )
        self._token = object()
        self._listeners: list[tuple[Any, str, Callable[..., Any]]] = []
        self._patched: list[tuple[Any, str, Callable[..., Any]]] = []
        self._secrets = _secrets_of(engine)
        self._saved_hide_parameters = engine.hide_parameters
        self._attached = False
        self._own_failures: set[str] = set()
        self._text_infos: dict[str, _Info] = {}
        self._slow: float = math.inf if slow_query_threshold is None else slow_query_threshold
        self._call_sites = CallSites(call_site_skip)
        self._stats_call_sites = stats_call_sites and query_stats
        self._call_site_counter = 0
        self._hot = _Hot()
        self._hot.max_waiting = max_waiting
        self._leak_threshold = leak_threshold
        self.min_size = 0
        self._last_health = (0, 0)
        self._long_running = long_running_threshold
        self._explainer: PlanExplainer | None = (
            PlanExplainer(self, interval=explain_interval) if explain_slow_queries else None
        )
        self._meters: MeterSet | None = meter_set_for(meter_provider) if metrics else None
        self._pool_attrs = {POOL_NAME: self.pool.name}
        self._base_attrs = self._operation_base_attributes()

    def _operation_base_attributes(self) -> dict[str, Any]:
        url = self.engine.url
        name = self.engine.dialect.name
        attrs: dict[str, Any] = {"db.system.name": _SYSTEM_NAMES.get(name, name)}
        if url.database:
            attrs["db.namespace"] = url.database
        if url.host:
            attrs["server.address"] = url.host
            attrs["server.port"] = url.port or _DEFAULT_PORTS.get(name, 0)
        return attrs

    # -- runtime settings ----------------------------------------------------

    @property
    def slow_query_threshold(self) -> float | None:
        """Seconds over which a statement is logged as slow (None: off). Settable at runtime."""
        return None if self._slow == math.inf else self._slow

    @slow_query_threshold.setter
    def slow_query_threshold(self, value: Seconds | None) -> None:
        self._slow = math.inf if value is None else to_seconds("slow_query_threshold", value)

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
        if not self._attached:
            return
        if seconds is None:
            self._stop_watchdog()
        elif self._hot.watchdog is None:
            self._start_watchdog(seconds)
        else:
            self._hot.watchdog.threshold = seconds

    def pool_stats(self, *, pop: bool = False) -> dict[str, Any]:
        """The engine's pool figures; see :func:`~sqlalchemy_resilience.pool_stats`."""
        return self.pool.stats(pop=pop)

    def pool_limit(self, which: str) -> int | None:
        """``idle_max``, ``idle_min``, ``max`` or ``pending`` for the pool metrics."""
        if which == "pending":
            return self.pool.waiting
        gauges = self.pool.gauges()
        if which == "idle_max":
            return gauges["pool_size"]  # type: ignore[no-any-return]
        if which == "idle_min":
            return self.min_size
        return gauges["pool_max"]  # type: ignore[no-any-return]

    # -- wiring ----------------------------------------------------------

    def _listen(self, target: Any, name: str, fn: Callable[..., Any], **kw: Any) -> None:
        event.listen(target, name, fn, **kw)
        self._listeners.append((target, name, fn))

    def _patch(self, target: Any, name: str, wrapper: Callable[..., Any]) -> None:
        # Instance attributes shadow the class method; detach removes only
        # what is still ours, so a later patch by someone else survives.
        setattr(target, name, wrapper)
        self._patched.append((target, name, wrapper))

    def _attach(self) -> None:
        engine = self.engine
        if not self.log_parameters:
            # SQLAlchemy's own echo logging and exceptions print parameters
            # unless told not to; "unless asked" applies to them too.
            engine.hide_parameters = True
        if self.translate_errors:
            self._listen(engine, "handle_error", self._on_handle_error, retval=True)
            self._patch_do_commit()
        self._patch_raw_connection()
        self._patch_execute()
        self._listen(engine, "connect", self._on_connect)
        self._listen(engine, "close", self._on_close)
        self._listen(engine, "invalidate", self._on_invalidate)
        if self._meters is not None:
            self._meters.sources.add(self)
        self._attached = True
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
            self._hot.leaks = leaks

    def _start_watchdog(self, threshold: float) -> None:
        watchdog = Watchdog(threshold, self._report_in_flight)
        watchdog.start()
        self._hot.watchdog = watchdog

    def _stop_watchdog(self) -> None:
        watchdog, self._hot.watchdog = self._hot.watchdog, None
        if watchdog is not None:
            watchdog.stop()

    def _patch_raw_connection(self) -> None:
        engine = self.engine
        original = engine.raw_connection
        instr_ref = weakref.ref(self)
        monitor = self.pool
        meters = self._meters
        pool_attrs = self._pool_attrs
        translate = self.translate_errors
        perf = time.perf_counter

        requested, answered = monitor.requested, monitor.answered
        failures, returned = monitor.failures, monitor.returned
        waits, uses = monitor.waits, monitor.uses
        wait_hist = meters.wait_time if meters is not None else None
        use_hist = meters.use_time if meters is not None else None

        hot = self._hot

        def raw_connection() -> PoolProxiedConnection:
            if hot.max_waiting is not None:
                instr = instr_ref()
                if instr is not None:
                    instr._shed_load()
            next(requested)
            start = perf()
            try:
                fairy = original()
            except BaseException as exc:
                next(answered)
                next(failures)
                if isinstance(exc, sa_exc.TimeoutError):
                    monitor.timed_out()
                    if meters is not None:
                        meters.timeouts.add(1, pool_attrs)
                instr = instr_ref()
                if instr is None or not translate:
                    raise
                translated = instr._translate_connect_failure(exc)
                if translated is None:
                    raise
                raise translated from exc
            now = perf()
            next(answered)
            waits.append(now - start)
            if (
                wait_hist is not None
                and getattr(wait_hist, "_real_instrument", wait_hist) is not None
            ):
                wait_hist.record(now - start, pool_attrs)

            def checked_in(dbapi_connection: Any) -> None:
                use = perf() - now
                next(returned)
                leaks = hot.leaks
                if leaks is not None:
                    leaks.returned(key)
                uses.append(use)
                if (
                    use_hist is not None
                    and getattr(use_hist, "_real_instrument", use_hist) is not None
                ):
                    use_hist.record(use, pool_attrs)

            record = fairy._connection_record
            key = id(record)
            if record is not None:
                record.finalize_callback.append(checked_in)
                leaks = hot.leaks
                if leaks is not None:
                    leaks.checked_out(record)
            return fairy

        # Instance attribute: survives engine.dispose() (which replaces the
        # pool) and is removed on detach, restoring the class method.
        self._patch(engine, "raw_connection", raw_connection)

    def _patch_do_commit(self) -> None:
        # Knowing that COMMIT was in flight needs no per-statement work: the
        # dialect (one instance per engine) tags an exception raised by its
        # do_commit, and handle_error reads the tag. ConnectionEvents
        # listeners for commit/begin/rollback would instead take every
        # statement of the engine off SQLAlchemy's listener-free fast path.
        dialect = self.engine.dialect
        original = dialect.do_commit

        def do_commit(dbapi_connection: Any) -> None:
            try:
                original(dbapi_connection)
            except BaseException as exc:
                with contextlib.suppress(AttributeError):
                    exc._sqlalchemy_resilience_commit = True  # type: ignore[attr-defined]
                raise

        self._patch(dialect, "do_commit", do_commit)

    def _patch_execute(self) -> None:
        # Statements are timed by wrapping the dialect's do_execute family
        # rather than with before/after_cursor_execute listeners: any
        # Connection-level listener takes every statement of the engine off
        # SQLAlchemy's listener-free path, which alone costs ~5% of a point
        # query. The wrapper is one extra Python call around the driver.
        dialect = self.engine.dialect
        self._patch(dialect, "do_execute", self._make_wrapper(dialect.do_execute))
        self._patch(dialect, "do_executemany", self._make_wrapper(dialect.do_executemany))
        original_no_params = dialect.do_execute_no_params

        def call_no_params(cursor: Any, statement: str, parameters: Any, context: Any) -> None:
            original_no_params(cursor, statement, context)

        wrapped = self._make_wrapper(call_no_params)

        def do_execute_no_params(cursor: Any, statement: str, context: Any = None) -> None:
            wrapped(cursor, statement, None, context)

        self._patch(dialect, "do_execute_no_params", do_execute_no_params)

    def _make_wrapper(self, original: Callable[..., None]) -> Callable[..., None]:
        # The one function every statement pays for, written to make as few
        # Python calls as possible: on this path each call costs about as
        # much as everything else it does. The statistics get one buffered
        # append (QueryStats folds them in in batches); facts about the
        # statement are cached on its compiled form.
        perf = time.perf_counter
        failed = self._failed
        hot = self._hot
        is_async = bool(self.engine.dialect.is_async)
        token = self._token
        info_for = self._info
        stats = self.stats
        pending = stats._pending if stats is not None else None
        flush: Callable[[], None] = stats.flush if stats is not None else _nothing
        meters = self._meters
        hist = meters.operation_duration if meters is not None else None
        instr = self

        def wrapper(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
            watchdog = hot.watchdog
            key = watchdog.enter(statement, is_async) if watchdog is not None else 0
            start = perf()
            try:
                original(cursor, statement, parameters, context)
            except BaseException as exc:
                failed(cursor, statement, parameters, context, perf() - start, exc)
                raise
            finally:
                if watchdog is not None:
                    watchdog.running.pop(key, None)
            duration = perf() - start
            try:
                compiled = context.compiled if context is not None else None
                info = getattr(compiled, _INFO_ATTR, None) if compiled is not None else None
                if info is None or info.owner is not token:
                    info = info_for(context, statement)
                if pending is not None:
                    pending.append((info, duration, cursor.rowcount))
                    if len(pending) >= PENDING_LIMIT:
                        flush()
                    if instr._stats_call_sites:
                        instr._sample_call_site(info.key)
                # A proxy instrument without an SDK behind it does nothing:
                # skip the call (the check is an attribute read).
                if hist is not None and getattr(hist, "_real_instrument", hist) is not None:
                    hist.record(duration, info.attrs)
                if duration >= instr._slow:
                    instr._slow_query(cursor, statement, parameters, context, duration, info, None)
            except Exception:
                instr._log_own_failure("statement observation")

        return wrapper

    # -- per-statement observation -------------------------------------------

    def _info(self, context: Any, statement: str) -> _Info:
        compiled = getattr(context, "compiled", None) if context is not None else None
        if compiled is not None:
            info = getattr(compiled, _INFO_ATTR, None)
            if info is not None and info.owner is self._token:
                return info  # type: ignore[no-any-return]
        else:
            found = self._text_infos.get(statement)
            if found is not None:
                return found
        key = normalize_statement(statement)
        operation = _operation_of(context, key)
        collection = _collection_of(context)
        attrs = dict(self._base_attrs)
        if operation:
            attrs["db.operation.name"] = operation
        if collection:
            attrs["db.collection.name"] = collection
        info = _Info(self._token, key, operation, collection, attrs)
        if compiled is not None:
            with contextlib.suppress(AttributeError):
                setattr(compiled, _INFO_ATTR, info)
        else:
            if len(self._text_infos) >= _MAX_TEXT_INFOS:
                self._text_infos.clear()
            self._text_infos[statement] = info
        return info

    def _failed(
        self,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        duration: float,
        exc: BaseException,
    ) -> None:
        try:
            info = self._info(context, statement)
            error_class, sqlstate = self._error_class(cursor, exc)
            if self.stats is not None:
                self.stats.record(
                    info.key, info.operation, info.collection, duration, 0, error_class
                )
            if self._meters is not None:
                attrs = dict(info.attrs)
                attrs["error.type"] = sqlstate or error_class
                if sqlstate:
                    attrs["db.response.status_code"] = sqlstate
                self._meters.operation_duration.record(duration, attrs)
            if duration >= self._slow:
                self._slow_query(
                    cursor, statement, parameters, context, duration, info, error_class
                )
        except Exception:
            self._log_own_failure("statement observation")

    def _error_class(self, cursor: Any, exc: BaseException) -> tuple[str, str | None]:
        dbapi = self.engine.dialect.loaded_dbapi
        if not isinstance(exc, dbapi.Error):
            return type(exc).__name__, None
        facts = extract_facts(exc)
        try:
            lost = bool(self.engine.dialect.is_disconnect(exc, None, cursor))
        except Exception:
            lost = False
        cls, _ = classify(facts, phase="statement", is_disconnect=lost)
        return cls.__name__, facts.sqlstate

    def _sample_call_site(self, key: str) -> None:
        self._call_site_counter += 1
        if self._call_site_counter % CALL_SITE_SAMPLING:
            return
        site = self._call_sites.here()
        if site is None or self.stats is None:
            return
        self.stats.add_call_site(key, site)

    def _slow_query(
        self,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        duration: float,
        info: _Info,
        error: str | None,
    ) -> None:
        rows = cursor.rowcount if error is None else None
        rowcount = rows if isinstance(rows, int) and rows >= 0 else None
        call_site = self._call_sites.here()
        shown = None
        if self.log_parameters and not self._saved_hide_parameters and parameters is not None:
            shown = repr(
                _repr_params(
                    parameters,
                    batches=10,
                    ismulti=bool(getattr(context, "executemany", False)),
                )
            )
        explainer = self._explainer
        if (
            explainer is not None
            and error is None
            and info.operation == "SELECT"
            and explainer.submit(
                statement,
                parameters,
                info.key,
                lambda plan: emit_slow_query(
                    self,
                    duration=duration,
                    statement=info.key,
                    rowcount=rowcount,
                    call_site=call_site,
                    plan=plan,
                    parameters=shown,
                ),
            )
        ):
            return
        emit_slow_query(
            self,
            duration=duration,
            statement=info.key,
            rowcount=rowcount,
            call_site=call_site,
            error=error,
            parameters=shown,
        )

    def _report_in_flight(self, item: InFlight, age: float) -> None:
        if item.task is not None:
            call_site = self._call_sites.of_task(item.task)
        else:
            call_site = self._call_sites.of_thread(item.thread)
        emit_slow_query(
            self,
            duration=age,
            statement=normalize_statement(item.statement),
            rowcount=None,
            call_site=call_site,
            in_flight=True,
        )

    def _log_own_failure(self, what: str) -> None:
        # Observability must never break the application: log once per kind.
        if what in self._own_failures:
            return
        self._own_failures.add(what)
        _log.exception(
            "sqlalchemy_resilience: %s failed; further failures of it are not logged", what
        )

    # -- pool listeners ------------------------------------------------------

    @property
    def leak_threshold(self) -> float | None:
        """Seconds a connection may be held before it is reported (None: off)."""
        return self._leak_threshold

    @property
    def suspected_leaks(self) -> int:
        """Connections reported as leaked and still held."""
        leaks = self._hot.leaks
        return leaks.suspected if leaks is not None else 0

    @property
    def max_waiting(self) -> int | None:
        """Requests allowed to wait for a connection before more are refused (None: no limit)."""
        return self._hot.max_waiting

    @max_waiting.setter
    def max_waiting(self, value: int | None) -> None:
        self._hot.max_waiting = _check_max_waiting(value)

    def _health_deltas(self, stats: Mapping[str, Any]) -> tuple[int, int]:
        """Pool timeouts and refused requests since the previous health check."""
        timeouts, shed = int(stats.get("timeouts", 0)), int(stats.get("requests_shed", 0))
        last_timeouts, last_shed = self._last_health
        self._last_health = (timeouts, shed)
        # A pop_stats() in between restarts the counters: then all are new.
        return (
            timeouts - last_timeouts if timeouts >= last_timeouts else timeouts,
            shed - last_shed if shed >= last_shed else shed,
        )

    def _shed_load(self) -> None:
        limit = self._hot.max_waiting
        if limit is None:
            return
        checked_in = getattr(self.engine.pool, "checkedin", None)
        if checked_in is not None and checked_in() > 0:
            return  # an idle connection is there: nobody will queue
        waiting = self.pool.waiting
        if waiting < limit:
            return
        gauges = self.pool.gauges()
        pool_max = gauges["pool_max"]
        can_grow = pool_max is None or (
            gauges["connections_in_use"] + gauges["connections_idle"] < pool_max
        )
        if gauges["connections_idle"] > 0 or can_grow:
            return
        self.pool.shed_one()
        status = _pool_status(self.engine)
        numbers = ", ".join(f"{k}={v}" for k, v in status.items() if k != "pool_class")
        raise PoolExhausted(
            f"{waiting} requests already waiting for a connection (max_waiting={limit}); "
            f"refused at once instead of queueing ({status['pool_class']}: {numbers})",
            pool_status={**status, "waiting": waiting, "max_waiting": limit},
        )

    def _on_connect(self, dbapi_connection: Any, record: Any) -> None:
        try:
            started = getattr(record, "starttime", 0) or 0
            seconds = time.time() - started if started else None
            self.pool.connection_created(seconds)
            if seconds is not None and self._meters is not None:
                self._meters.create_time.record(seconds, self._pool_attrs)
        except Exception:
            self._log_own_failure("pool connect")

    def _on_close(self, dbapi_connection: Any, record: Any) -> None:
        self.pool.connection_closed()
        self._forget_hold(record)

    def _on_invalidate(self, dbapi_connection: Any, record: Any, exception: Any) -> None:
        self.pool.connection_invalidated()
        self._forget_hold(record)

    def _forget_hold(self, record: Any) -> None:
        # An invalidated or closed connection drops its finalize callbacks:
        # end its hold here so it is not reported as leaked later.
        leaks = self._hot.leaks
        if leaks is not None and record is not None:
            leaks.returned(id(record))

    # -- error translation -----------------------------------------------------

    def _translate_connect_failure(self, exc: BaseException) -> BaseException | None:
        if isinstance(exc, ResilienceError):
            return None
        if isinstance(exc, sa_exc.TimeoutError):
            return _pool_exhausted(self.engine, exc)
        dbapi = self.engine.dialect.loaded_dbapi
        if isinstance(exc, dbapi.Error):
            return None  # Connection.__init__ routes it through handle_error.
        if isinstance(exc, CONNECT_FAILURES) or _is_driver_exception(exc):
            return build_error(
                exc,
                phase="connect",
                is_disconnect=isinstance(exc, CONNECT_FAILURES),
                show_parameters=self.log_parameters,
                secrets=self._secrets,
            )
        return None

    def detach(self) -> None:
        """Remove every listener and wrapper this handle added and restore the engine.

        Idempotent. After it the engine can be instrumented again.
        """
        if not self._attached:
            return
        self._stop_watchdog()
        leaks, self._hot.leaks = self._hot.leaks, None
        if leaks is not None:
            leaks.stop()
        if self._explainer is not None:
            self._explainer.close()
        for target, name, fn in reversed(self._listeners):
            if event.contains(target, name, fn):
                event.remove(target, name, fn)
        self._listeners.clear()
        for target, name, wrapper in reversed(self._patched):
            if target.__dict__.get(name) is wrapper:
                del target.__dict__[name]
        self._patched.clear()
        self.engine.hide_parameters = self._saved_hide_parameters
        self._attached = False
        with _registry_lock:
            if _registry.get(self.engine) is self:
                del _registry[self.engine]

    @property
    def attached(self) -> bool:
        """Whether the listeners are installed."""
        return self._attached

    def __repr__(self) -> str:
        state = "attached" if self._attached else "detached"
        return f"<Instrumentation {self.engine.url.render_as_string(hide_password=True)} {state}>"

    # -- listeners -------------------------------------------------------

    def _phase(self, context: ExceptionContext) -> Phase:
        conn = context.connection
        if conn is None:
            return "connect"
        if context.statement is None and getattr(
            context.original_exception, "_sqlalchemy_resilience_commit", False
        ):
            return "commit"
        ctx = context.execution_context
        if ctx is not None and (ctx.isinsert or ctx.isupdate or getattr(ctx, "isdelete", False)):
            options = conn.get_execution_options()
            if options.get("isolation_level") == "AUTOCOMMIT":
                # The driver commits a DML statement on its own: losing the
                # connection mid-statement leaves the outcome unknown too.
                return "commit"
        return "statement"

    def _on_handle_error(self, context: ExceptionContext) -> BaseException | None:
        original = context.sqlalchemy_exception
        if original is None or context.is_pre_ping:
            # Not a DBAPI error (SQLAlchemy's own, or an exit exception such
            # as CancelledError), or a pre-ping SQLAlchemy will recover from.
            return None
        if not isinstance(original, sa_exc.DBAPIError):
            return None
        try:
            phase = self._phase(context)
            translated = build_error(
                original,
                phase=phase,
                is_disconnect=context.is_disconnect,
                show_parameters=self.log_parameters,
                secrets=self._secrets,
            )
        except Exception:
            _log.exception("sqlalchemy_resilience: error translation failed; raising the original")
            return None
        return translated


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
    meter_provider: MeterProvider | None = None,
    pool_name: str | None = None,
    call_site_skip: tuple[str, ...] = (),
    leak_threshold: Seconds | None = None,
    max_waiting: int | None = None,
    log_parameters: bool = False,
    translate_errors: bool = True,
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
        log_parameters: show bound parameter values in error messages,
            slow-query records and SQLAlchemy's own logs (never when the engine
            was created with ``hide_parameters=True``). Off by default:
            parameters are hidden and driver messages in the exception chain are redacted.
        translate_errors: translate driver errors into the typed hierarchy.

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
    _check_max_waiting(max_waiting)
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
    sync = _sync_engine(engine)
    if explain_slow_queries and sync.dialect.name != "postgresql":
        raise ValueError(
            f"explain_slow_queries needs PostgreSQL; this engine's dialect is {sync.dialect.name!r}"
        )
    with _registry_lock:
        existing = _registry.get(sync)
        if existing is not None and existing.attached:
            raise RuntimeError(
                f"engine {sync.url.render_as_string(hide_password=True)} is already instrumented; "
                "call .detach() on the existing Instrumentation first"
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
            meter_provider=meter_provider,
            pool_name=pool_name,
            call_site_skip=call_site_skip,
            leak_threshold=leak_seconds,
            max_waiting=max_waiting,
        )
        instr._attach()
        _registry[sync] = instr
    return instr


def _check_max_waiting(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_waiting must be an int or None, got {value!r}")
    if value < 0:
        raise ValueError(f"max_waiting must be >= 0, got {value!r}")
    return value


def instrumentation_of(engine: Engine | AsyncEngine) -> Instrumentation | None:
    """The attached :class:`Instrumentation` of ``engine``, or None."""
    found = _registry.get(_sync_engine(engine))
    return found if found is not None and found.attached else None
