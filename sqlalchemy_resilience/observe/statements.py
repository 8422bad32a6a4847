"""Statement observation: what happens after each statement, built once per engine.

:class:`StatementObserver` turns the observation options of one engine into
the two callables the hook core wraps around the driver call: one for a
statement that succeeded, one for a statement that raised. The success path
is the one every statement pays for; it is a single closure that reads the
cached facts, makes one buffered append for the statistics, records the
duration histogram when an SDK is behind it, and compares against the
slow-query threshold. Parts that are off cost one ``is not None`` test.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.sql.util import _repr_params

from sqlalchemy_resilience.core.callsites import CallSites
from sqlalchemy_resilience.errors.classify import classify, extract_facts

from .explain import PlanExplainer
from .facts import INFO_ATTR, StatementFacts, StatementInfo
from .slow_query import emit_slow_query
from .stats import PENDING_LIMIT, QueryStats, normalize_statement
from .watchdog import InFlight

__all__ = ["CALL_SITE_SAMPLING", "StatementObserver"]

# With stats_call_sites=True one statement in this many pays for a stack walk.
CALL_SITE_SAMPLING = 16


def _nothing() -> None:
    pass


def returned_rows_reader(engine: Engine) -> Callable[[Any, Any], int | None] | None:
    """How to read the rows a statement returned without touching a row, chosen per driver.

    SQLAlchemy's asyncio adapters (asyncpg, aiosqlite, psycopg async) fetch
    the whole result into a buffer as the statement runs, so its length is
    known; psycopg's client-side cursor holds the whole result, whose
    ``ntuples`` is the count (``cursor.rowcount`` is never read). pysqlite steps through rows on demand and knows no count
    before they are read: there, None (nothing is recorded). Server-side
    cursors (``stream_results``) are never counted.
    """
    dialect = engine.dialect
    if getattr(dialect, "is_async", False):

        def buffered(cursor: Any, context: Any) -> int | None:
            rows = getattr(cursor, "_rows", None)
            if rows.__class__ is not deque or getattr(context, "_is_server_side", False):
                return None
            return len(rows)

        return buffered
    if getattr(dialect, "driver", None) == "psycopg":

        def counted(cursor: Any, context: Any) -> int | None:
            # The result psycopg already holds, not cursor.rowcount (which
            # SQLAlchemy reads only where it must, and so does this package).
            if getattr(context, "_is_server_side", False):
                return None
            result = cursor.pgresult
            return None if result is None else int(result.ntuples)

        return counted
    return None


def returns_rows_test(engine: Engine) -> Callable[[Any], bool] | None:
    """How to tell that a statement just run left rows to read, where ``cursor.description``
    is the wrong way (None: use ``cursor.description is not None``, inlined).

    psycopg's own cursor builds column objects on each ``description`` read
    (~2 µs); there the result status says it.
    """
    dialect = engine.dialect
    if not getattr(dialect, "is_async", False) and getattr(dialect, "driver", None) == "psycopg":
        from psycopg.pq import ExecStatus

        tuples = (ExecStatus.TUPLES_OK, ExecStatus.SINGLE_TUPLE)

        def by_status(cursor: Any) -> bool:
            result = cursor.pgresult
            return result is not None and result.status in tuples

        return by_status
    return None


def _driver_connection(context: Any) -> Any:
    try:
        return context.root_connection.connection.driver_connection
    except Exception:  # no context (a raw cursor) or a connection being discarded
        return None


def _sqlite_error_of(exc: BaseException) -> BaseException:
    # aiosqlite's adapter raises its own error class wrapping sqlite3's.
    return getattr(exc, "orig", None) or exc.__cause__ or exc


def error_type_of(exc: BaseException, facts_code: str | None) -> str:
    """``error.type`` as the conventions ask: the database's status code (a SQLSTATE,
    SQLite's result code name), else the original exception's qualified class name."""
    if facts_code:
        return facts_code
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


class StatementObserver:
    """Statistics, duration metric, slow-query log and plans for one engine's statements.

    Args:
        engine: the (sync) engine.
        stats: the statistics to feed, or None.
        histogram: the ``db.client.operation.duration`` instrument, or None.
        rows_histogram: the ``db.client.response.returned_rows`` instrument, or None.
        slow_query_threshold: seconds, or None for no slow-query log.
        call_sites: the call-site finder.
        stats_call_sites: sample call sites into the statistics.
        explainer: attaches plans to slow SELECTs, or None.
        show_parameters: slow-query records may show parameters.
        log_own_failure: logs an observation's own failure once per kind.

    Attributes:
        slow: the threshold in seconds (``math.inf`` when off); read per statement.

    Example::

        observer = StatementObserver(engine, stats=QueryStats(), histogram=None,
                                     slow_query_threshold=0.5, call_sites=CallSites(),
                                     log_own_failure=print)
        hooks.attach(HookParts(statement_observed=observer.observed,
                               statement_failed=observer.failed))
    """

    def __init__(
        self,
        engine: Engine,
        *,
        stats: QueryStats | None,
        histogram: Any,
        slow_query_threshold: float | None,
        call_sites: CallSites,
        log_own_failure: Callable[[str], None],
        stats_call_sites: bool = False,
        explainer: PlanExplainer | None = None,
        show_parameters: bool = False,
        database: str | None = None,
        host: str | None = None,
        rows_histogram: Any = None,
    ) -> None:
        self.engine = engine
        self.facts = StatementFacts(engine)
        self.stats = stats
        self.histogram = histogram
        self.rows_histogram = rows_histogram
        self._returned = returned_rows_reader(engine)
        self._returns_rows = returns_rows_test(engine)
        self.slow: float = math.inf if slow_query_threshold is None else slow_query_threshold
        self.call_sites = call_sites
        self.stats_call_sites = stats_call_sites and stats is not None
        self.explainer = explainer
        self.show_parameters = show_parameters
        self.database = database
        self.host = host
        self._log_own_failure = log_own_failure
        self._call_site_counter = 0
        # Called once, the first time a statement is recorded into an SDK's
        # histogram (the handle starts timing COMMIT and ROLLBACK then).
        self.sdk_seen: Callable[[], None] | None = None
        self.observed = self._build_observed()

    def _build_observed(
        self,
    ) -> Callable[[Any, str, Any, Any, float], None]:
        token = self.facts.token
        info_for = self.facts.info
        stats = self.stats
        pending = stats._pending if stats is not None else None
        flush: Callable[[], None] = stats.flush if stats is not None else _nothing
        slot = stats._rows_slot if stats is not None else deque(maxlen=1)
        slot_pop, slot_append = slot.pop, slot.append
        hist = self.histogram
        rows_hist = self.rows_histogram
        returned = self._returned
        returns_rows = self._returns_rows
        log_own_failure = self._log_own_failure
        observer = self

        def observed(
            cursor: Any, statement: str, parameters: Any, context: Any, duration: float
        ) -> None:
            try:
                compiled = context.compiled if context is not None else None
                info = getattr(compiled, INFO_ATTR, None) if compiled is not None else None
                if info is None or info.owner is not token:
                    info = info_for(context, statement)
                if pending is not None:
                    # Flushed before this statement is added: the flush also
                    # takes the previous statement's row count, complete by now.
                    if len(pending) >= PENDING_LIMIT:
                        flush()
                    pending.append((info, duration, -1))
                    # Never cursor.rowcount (on some drivers a round trip):
                    # for a statement that returns no rows, the count SQLAlchemy
                    # itself reads, picked up from the context when the next
                    # statement comes (QueryStats._rows_slot); SQLAlchemy has
                    # closed that cursor by then.
                    # Empty after every statement that returned rows: test it
                    # first, as a raise of IndexError each time costs more than
                    # the rest of this (a reader's flush may still empty it).
                    previous = None
                    if slot:
                        try:  # noqa: SIM105 (suppress() costs a context manager per statement)
                            previous = slot_pop()
                        except IndexError:
                            pass
                    if previous is not None:
                        rows = getattr(previous[1], "_rowcount", None)
                        if rows.__class__ is int and rows > 0:
                            pending.append((previous[0], None, rows))
                    if (
                        cursor.description is not None
                        if returns_rows is None
                        else returns_rows(cursor)
                    ):
                        # The application reads these rows from an open cursor:
                        # holding its context would keep the cursor open (on
                        # SQLite, a table lock). Count what the driver holds now.
                        rows = returned(cursor, context) if returned is not None else None
                        if rows:
                            pending.append((info, None, rows))
                    else:
                        slot_append((info, context))
                    if observer.stats_call_sites:
                        observer._sample_call_site(info.key)
                # A proxy instrument without an SDK behind it does nothing:
                # skip the call (the check is an attribute read).
                if hist is not None and getattr(hist, "_real_instrument", hist) is not None:
                    if observer.sdk_seen is not None:
                        observer._first_sdk_record()
                    attrs = info.attrs
                    if context is not None and context.executemany:
                        attrs = info.batch_attrs
                    hist.record(duration, attrs)
                    if (
                        rows_hist is not None
                        and returned is not None
                        and (
                            cursor.description is not None
                            if returns_rows is None
                            else returns_rows(cursor)
                        )
                    ):
                        rows = returned(cursor, context)
                        if rows is not None:
                            rows_hist.record(rows, attrs)
                if duration >= observer.slow:
                    observer._slow_query(cursor, statement, parameters, context, duration, info)
            except Exception:
                log_own_failure("statement observation")

        return observed

    def failed(
        self,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        duration: float,
        exc: BaseException,
    ) -> None:
        """Record a statement that raised (statistics, metric with ``error.type``, slow log)."""
        try:
            info = self.facts.info(context, statement)
            error_class, code = self._error_class(cursor, exc, context)
            if self.stats is not None:
                self.stats.record(
                    info.key, info.operation, info.collection, duration, 0, error_class
                )
            if self.histogram is not None:
                batch = context is not None and context.executemany
                attrs = dict(info.batch_attrs if batch else info.attrs)
                attrs["error.type"] = error_type_of(exc, code)
                if code:
                    attrs["db.response.status_code"] = code
                self.histogram.record(duration, attrs)
            if duration >= self.slow:
                self._slow_query(
                    cursor, statement, parameters, context, duration, info, error_class
                )
        except Exception:
            self._log_own_failure("statement observation")

    def _error_class(
        self, cursor: Any, exc: BaseException, context: Any = None
    ) -> tuple[str, str | None]:
        """The package's class name (for the statistics) and the database's status
        code: the SQLSTATE, or SQLite's result code name."""
        dialect = self.engine.dialect
        if not isinstance(exc, dialect.loaded_dbapi.Error):
            return type(exc).__name__, None
        facts = extract_facts(exc)
        try:
            lost = bool(dialect.is_disconnect(exc, None, cursor))
        except Exception:
            lost = False
        cls, _ = classify(facts, phase="statement", is_disconnect=lost)
        return cls.__name__, facts.sqlstate or facts.driver_code

    def _first_sdk_record(self) -> None:
        callback, self.sdk_seen = self.sdk_seen, None
        if callback is not None:
            callback()

    def transaction_timed(self) -> bool:
        """Whether a COMMIT or ROLLBACK would be recorded now (an SDK is behind the histogram)."""
        hist = self.histogram
        return hist is not None and getattr(hist, "_real_instrument", hist) is not None

    def transaction_ended(self, operation: str, duration: float, exc: BaseException | None) -> None:
        """Record a COMMIT or ROLLBACK as an operation (``db.client.operation.duration``).

        A 40001 raised by COMMIT is recorded with its ``error.type``, as the
        statement that failed would be.
        """
        hist = self.histogram
        if hist is None or getattr(hist, "_real_instrument", hist) is None:
            return
        try:
            attrs = self.facts.transaction_attributes(operation)
            if exc is not None:
                attrs = dict(attrs)
                facts = extract_facts(exc)
                code = facts.sqlstate or facts.driver_code
                attrs["error.type"] = error_type_of(exc, code)
                if code:
                    attrs["db.response.status_code"] = code
            hist.record(duration, attrs)
        except Exception:
            self._log_own_failure("transaction observation")

    def _sample_call_site(self, key: str) -> None:
        self._call_site_counter += 1
        if self._call_site_counter % CALL_SITE_SAMPLING:
            return
        site = self.call_sites.here()
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
        info: StatementInfo,
        error: str | None = None,
    ) -> None:
        rows = cursor.rowcount if error is None else None
        rowcount = rows if isinstance(rows, int) and rows >= 0 else None
        call_site = self.call_sites.here()
        shown = None
        if self.show_parameters and parameters is not None:
            shown = repr(
                _repr_params(
                    parameters,
                    batches=10,
                    ismulti=bool(getattr(context, "executemany", False)),
                )
            )
        database, host = self.database, self.host
        explainer = self.explainer
        if (
            explainer is not None
            and error is None
            and info.operation == "SELECT"
            and explainer.submit(
                statement,
                parameters,
                info.key,
                lambda plan: emit_slow_query(
                    database=database,
                    host=host,
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
            database=database,
            host=host,
            duration=duration,
            statement=info.key,
            rowcount=rowcount,
            call_site=call_site,
            error=error,
            parameters=shown,
        )

    def report_in_flight(self, item: InFlight, age: float) -> None:
        """The watchdog's report of a statement still running after ``age`` seconds."""
        if item.task is not None:
            call_site = self.call_sites.of_task(item.task)
        else:
            call_site = self.call_sites.of_thread(item.thread)
        emit_slow_query(
            database=self.database,
            host=self.host,
            duration=age,
            statement=normalize_statement(item.statement),
            rowcount=None,
            call_site=call_site,
            in_flight=True,
        )
