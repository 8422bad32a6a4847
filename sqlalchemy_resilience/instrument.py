"""``instrument(engine)``: attach this package's listeners to one engine.

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
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection

from .classify import CONNECT_FAILURES, Phase, build_error
from .errors import PoolExhausted, ResilienceError

__all__ = ["Instrumentation", "instrument", "translate_error"]

_log = logging.getLogger("sqlalchemy_resilience")

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


class Instrumentation:
    """The handle :func:`instrument` returns: owns its listeners and removes them on detach.

    Attributes:
        engine: the instrumented (sync) engine; for an ``AsyncEngine`` its ``sync_engine``.
        log_parameters: whether errors keep bound parameter values.

    Example::

        instr = instrument(engine)
        ...
        instr.detach()  # engine behaves exactly as before
    """

    def __init__(self, engine: Engine, *, log_parameters: bool, translate_errors: bool) -> None:
        self.engine = engine
        self.log_parameters = log_parameters
        self.translate_errors = translate_errors
        self._listeners: list[tuple[Any, str, Callable[..., Any]]] = []
        self._secrets = _secrets_of(engine)
        self._saved_hide_parameters = engine.hide_parameters
        self._raw_connection_patched = False
        self._do_commit_patched = False
        self._attached = False

    # -- wiring ----------------------------------------------------------

    def _listen(self, target: Any, name: str, fn: Callable[..., Any], **kw: Any) -> None:
        event.listen(target, name, fn, **kw)
        self._listeners.append((target, name, fn))

    def _attach(self) -> None:
        engine = self.engine
        if not self.log_parameters:
            # SQLAlchemy's own echo logging and exceptions print parameters
            # unless told not to; "unless asked" applies to them too.
            engine.hide_parameters = True
        if self.translate_errors:
            self._listen(engine, "handle_error", self._on_handle_error, retval=True)
            self._patch_raw_connection()
            self._patch_do_commit()
        self._attached = True

    def _patch_raw_connection(self) -> None:
        engine = self.engine
        original = engine.raw_connection
        instr_ref = weakref.ref(self)

        def raw_connection() -> PoolProxiedConnection:
            try:
                return original()
            except BaseException as exc:
                instr = instr_ref()
                if instr is None:
                    raise
                translated = instr._translate_connect_failure(exc)
                if translated is None:
                    raise
                raise translated from exc

        # Instance attribute: survives engine.dispose() (which replaces the
        # pool) and is removed on detach, restoring the class method.
        engine.raw_connection = raw_connection  # type: ignore[method-assign]
        self._raw_connection_patched = True

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

        dialect.do_commit = do_commit  # type: ignore[method-assign]
        self._do_commit_patched = True

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
        """Remove every listener this handle added and restore the engine.

        Idempotent. After it the engine can be instrumented again.
        """
        if not self._attached:
            return
        for target, name, fn in reversed(self._listeners):
            if event.contains(target, name, fn):
                event.remove(target, name, fn)
        self._listeners.clear()
        if self._raw_connection_patched:
            self.engine.__dict__.pop("raw_connection", None)
            self._raw_connection_patched = False
        if self._do_commit_patched:
            self.engine.dialect.__dict__.pop("do_commit", None)
            self._do_commit_patched = False
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
    log_parameters: bool = False,
    translate_errors: bool = True,
) -> Instrumentation:
    """Attach this package's listeners to ``engine`` and return the handle that owns them.

    Args:
        engine: an ``Engine`` or ``AsyncEngine``.
        log_parameters: show bound parameter values in error messages and
            SQLAlchemy's own logs. Off by default: parameters are hidden (the
            engine's ``hide_parameters`` is set for as long as the
            instrumentation is attached) and driver messages in the exception
            chain are redacted.
        translate_errors: translate driver errors into the typed hierarchy.

    Raises:
        TypeError: ``engine`` is not an engine, or an option has the wrong type.
        RuntimeError: the engine is already instrumented (detach first).

    Example::

        engine = create_async_engine("postgresql+asyncpg://app@db/app")
        instr = instrument(engine)
        try:
            async with engine.begin() as conn:
                await conn.execute(users.insert().values(email="a@example.com"))
        except UniqueViolation as exc:
            print(exc.constraint_name, exc.user_message("ja"))
    """
    for name, value in (("log_parameters", log_parameters), ("translate_errors", translate_errors)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    sync = _sync_engine(engine)
    with _registry_lock:
        existing = _registry.get(sync)
        if existing is not None and existing.attached:
            raise RuntimeError(
                f"engine {sync.url.render_as_string(hide_password=True)} is already instrumented; "
                "call .detach() on the existing Instrumentation first"
            )
        instr = Instrumentation(
            sync, log_parameters=log_parameters, translate_errors=translate_errors
        )
        instr._attach()
        _registry[sync] = instr
    return instr


def instrumentation_of(engine: Engine | AsyncEngine) -> Instrumentation | None:
    """The attached :class:`Instrumentation` of ``engine``, or None."""
    found = _registry.get(_sync_engine(engine))
    return found if found is not None and found.attached else None
