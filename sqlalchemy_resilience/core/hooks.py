"""The hook core: the wrappers and listeners of one engine, built from the parts that are on.

:class:`EngineHooks` owns everything the package adds to an engine and
removes exactly that on :meth:`EngineHooks.detach`. It knows nothing of the
features: statistics, the slow-query log, metrics, pool figures, leak
detection and load shedding hand it plain callables in :class:`HookParts`,
and it builds each wrapper once, at attach time, from the callables that are
given, so a statement pays for one wrapper call plus what is switched on, and
nothing at all for what is off.

Where each hook sits, and why there:

* statements are timed by wrapping the dialect's ``do_execute`` family rather
  than with ``before/after_cursor_execute`` listeners: any Connection-level
  listener takes every statement of the engine off SQLAlchemy's listener-free
  path, which alone costs ~5% of a point query;
* the dialect's ``do_commit`` tags what it raises, so error translation knows
  COMMIT was in flight without a per-transaction listener;
* checkouts are timed, and what never reaches ``handle_error`` is translated
  (see :mod:`~sqlalchemy_resilience.errors.translate`), by a wrapper of this
  engine's pool's ``connect`` (an attribute of that pool instance, put on the
  new pool again after ``engine.dispose()`` by an ``engine_disposed``
  listener): no class is changed, and an engine never instrumented runs
  exactly SQLAlchemy's code;
* ``handle_error`` (retval) translates every DBAPI error, connect-time ones too;
* pool ``connect`` / ``close`` / ``invalidate`` listeners feed the pool figures.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.engine import Engine, ExceptionContext
from sqlalchemy.pool import Pool, PoolProxiedConnection

from sqlalchemy_resilience.errors.translate import (
    COMMIT_TAG,
    translate_checkout_failure,
    translate_context,
)

from .engines import pool_status, safe_url

__all__ = [
    "CheckedOut",
    "EngineHooks",
    "HookParts",
    "HotSlots",
    "InFlightTracker",
    "StatementFailed",
    "StatementObserved",
    "TransactionEnded",
]

_log = logging.getLogger("sqlalchemy_resilience")


class StatementObserved(Protocol):
    """Called after a statement succeeded, with its duration in seconds; never raises."""

    def __call__(
        self, cursor: Any, statement: str, parameters: Any, context: Any, duration: float, /
    ) -> None: ...


class StatementFailed(Protocol):
    """Called after a statement raised, before the error propagates; never raises."""

    def __call__(
        self,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        duration: float,
        exc: BaseException,
        /,
    ) -> None: ...


class TransactionEnded(Protocol):
    """Called after a COMMIT or ROLLBACK, with its duration and what it raised; never raises."""

    def __call__(self, operation: str, duration: float, exc: BaseException | None, /) -> None: ...


class CheckedOut(Protocol):
    """Called with a checked-out connection and the ``perf_counter`` time the request began."""

    def __call__(self, fairy: PoolProxiedConnection, requested_at: float, /) -> None: ...


class InFlightTracker(Protocol):
    """Registers a statement while it runs (the watchdog)."""

    running: dict[int, Any]

    def enter(self, statement: str, is_async: bool) -> int:
        """Register ``statement``; returns the key the wrapper pops from :attr:`running`."""
        ...


class HotSlots:
    """Parts that can be switched on and off at runtime, read once per call.

    Attributes:
        in_flight: the watchdog, or None.
    """

    __slots__ = ("in_flight",)

    def __init__(self) -> None:
        self.in_flight: InFlightTracker | None = None


class _Sink:
    """What the dialect's wrappers call, held **weakly** by them and strongly by the hooks.

    The dialect outlives its engine: SQLAlchemy's ORM keeps compiled
    statements keyed by the dialect in caches that live as long as the mapped
    classes. A wrapper on the dialect that held the parts (and through them
    the engine) would keep every engine that ever ran a flush alive, pool and
    connections included; through this weak reference a dropped engine is
    freed, and its dialect's wrappers fall back to SQLAlchemy's own call.
    """

    __slots__ = ("__weakref__", "ended", "failed", "observed", "slots")

    def __init__(
        self,
        slots: HotSlots,
        observed: StatementObserved | None = None,
        failed: StatementFailed | None = None,
        ended: TransactionEnded | None = None,
    ) -> None:
        self.slots = slots
        self.observed = observed
        self.failed = failed
        self.ended = ended


@dataclass(frozen=True)
class HookParts:
    """What one engine's hooks call; a None part is not wired at all.

    Args:
        translate_errors: translate driver errors into the typed hierarchy.
        log_parameters: translated errors may show bound parameter values.
        secrets: returns the strings (the password) never shown in a translated
            error; called only when an error is translated, so a rotating
            password object is read then, never at attach time.
        statement_observed, statement_failed: the statement timing parts.
        before_checkout: called before each checkout; may raise to refuse it.
        checked_out: called after each checkout.
        checkout_failed: called when a checkout raised (before translation).
        connected, closed, invalidated: the pool's ``connect`` / ``close`` /
            ``invalidate`` events, as SQLAlchemy passes them.
        transaction_ended: called after each COMMIT and ROLLBACK the dialect
            sends (``"COMMIT"`` or ``"ROLLBACK"``, seconds, the exception or None).
        transaction_timed: whether a metrics SDK is behind the histogram at
            attach time (None: assume so). If not, COMMIT and ROLLBACK run
            untimed (SQLAlchemy's own methods; COMMIT tagged) until
            :meth:`EngineHooks.time_transactions` is called: the pool's
            reset-on-return ROLLBACK of every checkout costs nothing extra.
    """

    translate_errors: bool = True
    log_parameters: bool = False
    secrets: Callable[[], tuple[str, ...]] = tuple
    statement_observed: StatementObserved | None = None
    statement_failed: StatementFailed | None = None
    before_checkout: Callable[[], None] | None = None
    checked_out: CheckedOut | None = None
    checkout_failed: Callable[[BaseException], None] | None = None
    connected: Callable[[Any, Any], None] | None = None
    closed: Callable[[Any, Any], None] | None = None
    invalidated: Callable[[Any, Any, Any], None] | None = None
    transaction_ended: TransactionEnded | None = None
    transaction_timed: Callable[[], bool] | None = None


class EngineHooks:
    """Everything the package added to one engine, and the way to take it off again.

    Features find one another's state through :meth:`provide` / :meth:`find`
    (the pool monitor, the leak detector) instead of importing the handle
    that composed them.

    Attributes:
        engine: the (sync) engine.
        owner: the object that attached these hooks (the ``Instrumentation``).
        slots: the runtime-switchable parts.

    Example::

        hooks = EngineHooks(engine)
        hooks.attach(HookParts(statement_observed=lambda *a: print(a[-1])))
        ...
        hooks.detach()
    """

    def __init__(self, engine: Engine, *, owner: object = None) -> None:
        self.engine = engine
        self.owner = owner
        self.slots = HotSlots()
        self.attached = False
        self._listeners: list[tuple[Any, str, Callable[..., Any]]] = []
        self._patched: list[tuple[Any, str, Any]] = []
        self._pool_patches: list[tuple[weakref.ref[Pool], str, Any]] = []
        self._parts: dict[type, object] = {}
        self._own_failures: set[str] = set()
        # Strong references to what the dialect's wrappers reach weakly (_Sink).
        self._sinks: list[_Sink] = []
        self._install_timing: Callable[[], None] | None = None
        self._timing_lock = threading.Lock()

    # -- finding parts ---------------------------------------------------------

    def provide(self, part: object) -> None:
        """Make ``part`` findable by its class through :meth:`find`."""
        self._parts[type(part)] = part

    def find(self, cls: type[Any]) -> Any:
        """The part of class ``cls`` provided for this engine, or None."""
        return self._parts.get(cls)

    def log_own_failure(self, what: str) -> None:
        """Log an observation's own failure, once per kind: observability never breaks the app."""
        if what in self._own_failures:
            return
        self._own_failures.add(what)
        _log.exception(
            "sqlalchemy_resilience: %s failed; further failures of it are not logged", what
        )

    # -- wiring ----------------------------------------------------------------

    def _listen(self, target: Any, name: str, fn: Callable[..., Any], **kw: Any) -> None:
        event.listen(target, name, fn, **kw)
        self._listeners.append((target, name, fn))

    def _patch(self, target: Any, name: str, wrapper: Any) -> None:
        # Instance attributes shadow the class method; detach removes only
        # what is still ours, so a later patch by someone else survives.
        setattr(target, name, wrapper)
        self._patched.append((target, name, wrapper))

    def attach(self, parts: HookParts) -> None:
        """Build and install the wrappers and listeners ``parts`` asks for."""
        if self.attached:
            raise RuntimeError(f"hooks of {safe_url(self.engine)} are already attached")
        engine = self.engine
        if parts.translate_errors:
            log_parameters, secrets = parts.log_parameters, parts.secrets

            def on_handle_error(context: ExceptionContext) -> BaseException | None:
                try:
                    return translate_context(
                        context, log_parameters=log_parameters, secrets=secrets()
                    )
                except Exception:
                    _log.exception(
                        "sqlalchemy_resilience: error translation failed; raising the original"
                    )
                    return None

            self._listen(engine, "handle_error", on_handle_error, retval=True)
        if parts.translate_errors or parts.transaction_ended is not None:
            self._patch_transaction_ends(
                parts.translate_errors, parts.transaction_ended, parts.transaction_timed
            )
        self._wrap_checkouts(parts)
        if parts.statement_observed is not None and parts.statement_failed is not None:
            self._patch_execute(parts.statement_observed, parts.statement_failed)
        for name, fn in (
            ("connect", parts.connected),
            ("close", parts.closed),
            ("invalidate", parts.invalidated),
        ):
            if fn is not None:
                self._listen(engine, name, fn)
        self.attached = True

    def detach(self) -> None:
        """Remove every listener and wrapper :meth:`attach` added (idempotent)."""
        for target, name, fn in reversed(self._listeners):
            if event.contains(target, name, fn):
                event.remove(target, name, fn)
        self._listeners.clear()
        for target, name, wrapper in reversed(self._patched):
            if target.__dict__.get(name) is wrapper:
                del target.__dict__[name]
        self._patched.clear()
        for pool_ref, name, wrapper in reversed(self._pool_patches):
            pool = pool_ref()
            if pool is not None and pool.__dict__.get(name) is wrapper:
                del pool.__dict__[name]
        self._pool_patches.clear()
        self._sinks.clear()
        with self._timing_lock:
            self._install_timing = None
        self.slots.in_flight = None
        self.attached = False

    def _patch_pool(self, pool: Pool, name: str, wrapper: Any) -> None:
        # Held weakly: every pool dispose() replaced stays listed until it is
        # freed, and is cleaned on detach if it is still alive.
        self._pool_patches = [entry for entry in self._pool_patches if entry[0]() is not None]
        setattr(pool, name, wrapper)
        self._pool_patches.append((weakref.ref(pool), name, wrapper))

    def _sink(self, **parts: Any) -> weakref.ref[_Sink]:
        sink = _Sink(self.slots, **parts)
        self._sinks.append(sink)
        return weakref.ref(sink)

    def _patch_transaction_ends(
        self, tag: bool, ended: TransactionEnded | None, timed: Callable[[], bool] | None
    ) -> None:
        # Knowing that COMMIT was in flight needs no per-statement work: the
        # dialect (one instance per engine) tags an exception raised by its
        # do_commit, and handle_error reads the tag. ConnectionEvents
        # listeners for commit/begin/rollback would instead take every
        # statement of the engine off SQLAlchemy's listener-free fast path.
        # The same wrappers time COMMIT and ROLLBACK when asked to.
        dialect = self.engine.dialect
        perf = time.perf_counter
        commit = dialect.do_commit

        def tagged_commit(dbapi_connection: Any) -> None:
            try:
                commit(dbapi_connection)
            except BaseException as exc:
                with contextlib.suppress(AttributeError):
                    setattr(exc, COMMIT_TAG, True)
                raise

        if ended is None:
            self._patch(dialect, "do_commit", tagged_commit)
            return
        sink_ref = self._sink(ended=ended)

        def do_commit_timed(dbapi_connection: Any) -> None:
            start = perf()
            try:
                commit(dbapi_connection)
            except BaseException as exc:
                if tag:
                    with contextlib.suppress(AttributeError):
                        setattr(exc, COMMIT_TAG, True)
                sink = sink_ref()
                if sink is not None and sink.ended is not None:
                    sink.ended("COMMIT", perf() - start, exc)
                raise
            sink = sink_ref()
            if sink is not None and sink.ended is not None:
                sink.ended("COMMIT", perf() - start, None)

        rollback = dialect.do_rollback

        def do_rollback_timed(dbapi_connection: Any) -> None:
            start = perf()
            try:
                rollback(dbapi_connection)
            except BaseException as exc:
                sink = sink_ref()
                if sink is not None and sink.ended is not None:
                    sink.ended("ROLLBACK", perf() - start, exc)
                raise
            sink = sink_ref()
            if sink is not None and sink.ended is not None:
                sink.ended("ROLLBACK", perf() - start, None)

        def install_timing() -> None:
            self._patch(dialect, "do_commit", do_commit_timed)
            self._patch(dialect, "do_rollback", do_rollback_timed)

        if timed is None or timed():
            install_timing()
            return
        # No metrics SDK behind the histogram yet (the API's proxy meter):
        # COMMIT and ROLLBACK run SQLAlchemy's own methods (tagged), and the
        # timing wrappers go in when the first record shows an SDK is there
        # (time_transactions). The pool's reset-on-return ROLLBACK of every
        # checkout pays nothing until then.
        if tag:
            self._patch(dialect, "do_commit", tagged_commit)
        self._install_timing = install_timing

    def time_transactions(self) -> None:
        """Start timing COMMIT and ROLLBACK now, if they were left untimed at attach.

        Called by the statement observer the first time it records into an
        SDK's histogram; idempotent and safe from any thread.
        """
        with self._timing_lock:
            install, self._install_timing = self._install_timing, None
            if install is not None and self.attached:
                install()

    def _wrap_checkouts(self, parts: HookParts) -> None:
        engine = self.engine
        gate, checked_out, failed = parts.before_checkout, parts.checked_out, parts.checkout_failed
        translate: Callable[[BaseException], BaseException | None] | None = None
        if parts.translate_errors:
            engine_ref = weakref.ref(engine)
            dbapi_error = engine.dialect.loaded_dbapi.Error
            log_parameters, secrets = parts.log_parameters, parts.secrets

            def status() -> dict[str, Any]:
                found = engine_ref()
                return pool_status(found) if found is not None else {"pool_class": "?"}

            def translate(exc: BaseException) -> BaseException | None:
                return translate_checkout_failure(
                    exc,
                    dbapi_error=dbapi_error,
                    status=status,
                    log_parameters=log_parameters,
                    secrets=secrets(),
                )

        perf = time.perf_counter
        hooks = self

        def wrap(pool: Pool) -> None:
            # The pool's own methods, reached weakly: the pool holds these
            # wrappers, and a strong reference back would only make a cycle.
            connect, recreate = type(pool).connect, type(pool).recreate
            pool_ref = weakref.ref(pool)

            def checkout() -> PoolProxiedConnection:
                # Keeps the hooks alive exactly as long as the pool: nothing
                # else holds them strongly, so dropping the engine frees both.
                _ = hooks
                if gate is not None:
                    gate()
                start = perf()
                try:
                    fairy = connect(pool_ref())  # type: ignore[arg-type]
                except BaseException as exc:
                    if failed is not None:
                        failed(exc)
                    if translate is None:
                        raise
                    translated = translate(exc)
                    if translated is None:
                        raise
                    raise translated from exc
                if checked_out is not None:
                    checked_out(fairy, start)
                return fairy

            def recreated() -> Pool:
                # engine.dispose() puts pool.recreate() in the old pool's
                # place: the new pool is wrapped before anyone can use it
                # (an engine_disposed listener would come later, and as a
                # Connection-level listener it would take every statement of
                # the engine off SQLAlchemy's listener-free path). The old
                # pool keeps its wrappers: a copy.copy() of the engine that
                # was disposed may have been the one to call this, and the
                # engine itself still draws from it.
                new = recreate(pool_ref())  # type: ignore[arg-type]
                wrap(new)
                return new

            self._patch_pool(pool, "connect", checkout)
            self._patch_pool(pool, "recreate", recreated)

        wrap(engine.pool)

    def _patch_execute(self, observed: StatementObserved, failed: StatementFailed) -> None:
        dialect = self.engine.dialect
        is_async = bool(dialect.is_async)
        sink_ref = self._sink(observed=observed, failed=failed)
        self._patch(dialect, "do_execute", _timed(dialect.do_execute, sink_ref, is_async))
        self._patch(dialect, "do_executemany", _timed(dialect.do_executemany, sink_ref, is_async))
        original_no_params = dialect.do_execute_no_params

        def call_no_params(cursor: Any, statement: str, parameters: Any, context: Any) -> None:
            original_no_params(cursor, statement, context)

        wrapped = _timed(call_no_params, sink_ref, is_async)

        def do_execute_no_params(cursor: Any, statement: str, context: Any = None) -> None:
            wrapped(cursor, statement, None, context)

        self._patch(dialect, "do_execute_no_params", do_execute_no_params)


def _timed(
    original: Callable[..., None], sink_ref: weakref.ref[_Sink], is_async: bool
) -> Callable[..., None]:
    # The one function every statement pays for, written to make as few
    # Python calls as possible: on this path each call costs about as much
    # as everything else it does.
    perf = time.perf_counter

    def wrapper(cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        sink = sink_ref()
        if sink is None:  # the engine is gone; its dialect lives on in the ORM's caches
            original(cursor, statement, parameters, context)
            return
        tracker = sink.slots.in_flight
        key = tracker.enter(statement, is_async) if tracker is not None else 0
        start = perf()
        try:
            original(cursor, statement, parameters, context)
        except BaseException as exc:
            sink.failed(cursor, statement, parameters, context, perf() - start, exc)  # type: ignore[misc]
            raise
        finally:
            if tracker is not None:
                tracker.running.pop(key, None)
        sink.observed(cursor, statement, parameters, context, perf() - start)  # type: ignore[misc]

    return wrapper
