"""What ``Database`` and ``SyncDatabase`` share: validate the options, build and own the parts.

:class:`DatabaseCore` creates the engine (or wraps the one given, leaving its
settings alone), instruments it, attaches the liveness check, the password
provider and the replica set, and remembers exactly what it attached so that
closing removes those and nothing else. The two facades add the async or sync
methods on top.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Engine, create_engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import QueuePool

from sqlalchemy_resilience._util.seconds import Seconds, to_seconds
from sqlalchemy_resilience._util.urls import malformed_url_reason
from sqlalchemy_resilience.core.engines import safe_url, sync_engine
from sqlalchemy_resilience.deploy import (
    PasswordProvider,
    PoolerReport,
    ReplicaSet,
    pooler_safe_options,
    use_password_provider,
)
from sqlalchemy_resilience.deploy.credentials import Provider
from sqlalchemy_resilience.deploy.replicas import primary_failure
from sqlalchemy_resilience.errors import ResilienceError
from sqlalchemy_resilience.errors.messages import available_locales, user_message
from sqlalchemy_resilience.instrumentation import (
    Instrumentation,
    InstrumentOptions,
    instrument,
    instrumentation_of,
)
from sqlalchemy_resilience.pool import (
    AsyncResizableQueuePool,
    IdlePing,
    PoolAutosizer,
    PoolMaintainer,
    ResizableQueuePool,
    ping_idle_connections,
)
from sqlalchemy_resilience.pool.monitor import PoolMonitor, pool_name_of
from sqlalchemy_resilience.pool.queue import resizable_pool_of
from sqlalchemy_resilience.retry import CircuitBreaker, RetryPolicy, is_infrastructure_failure

from .settings import PoolSettings

__all__ = ["DEFAULT", "DatabaseCore", "Default", "FacadeBase"]

PoolerMode = Literal["session", "transaction", "statement"]


class Default(enum.Enum):
    """The "not given" marker for options whose None means "off" (``breaker=None``)."""

    DEFAULT = "default"


DEFAULT = Default.DEFAULT
# A writer check without an idle ping: "idle" never arrives.
_NEVER = 10.0**9


def _engine_for(url: URL, *, is_async: bool, options: dict[str, Any]) -> Engine | AsyncEngine:
    try:
        if is_async:
            return create_async_engine(url, **options)
        return create_engine(url, **options)
    except sa_exc.InvalidRequestError as exc:
        if is_async and "async" in str(exc):
            raise ValueError(
                f"Database needs an asyncio driver ({url.drivername!r} is not one): use "
                "postgresql+asyncpg://, postgresql+psycopg://, sqlite+aiosqlite://, or "
                "SyncDatabase for a sync driver"
            ) from None
        raise


class DatabaseCore:
    """The engines, instrumentation, retry policy, breaker and background parts of one database."""

    def __init__(
        self,
        url_or_engine: str | URL | Engine | AsyncEngine,
        *,
        is_async: bool,
        pool: PoolSettings | None,
        retry: RetryPolicy | None,
        breaker: CircuitBreaker | Default | None,
        instrumentation: InstrumentOptions | None,
        locale: str,
        replicas: Sequence[str | URL | Engine | AsyncEngine],
        max_replica_lag: Seconds | None,
        password_provider: Provider | None,
        pooler: PoolerMode | None,
        name: str | None,
        engine_options: Mapping[str, Any],
    ) -> None:
        kind = "AsyncEngine" if is_async else "Engine"
        facade = "Database" if is_async else "SyncDatabase"
        if pool is not None and not isinstance(pool, PoolSettings):
            raise TypeError(f"pool must be a PoolSettings or None, got {pool!r}")
        if instrumentation is not None and not isinstance(instrumentation, InstrumentOptions):
            raise TypeError(
                f"instrumentation must be an InstrumentOptions or None, got {instrumentation!r}"
            )
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy or None, got {retry!r}")
        if (
            breaker is not DEFAULT
            and breaker is not None
            and not isinstance(breaker, CircuitBreaker)
        ):
            raise TypeError(
                f"breaker must be a CircuitBreaker or None (no breaker), got {breaker!r}"
            )
        given_locale: object = locale
        if not isinstance(given_locale, str) or not given_locale.strip():
            raise TypeError(
                f"locale must be a locale name such as 'en' or 'ja' (available: "
                f"{', '.join(available_locales())}), got {locale!r}"
            )
        if pooler is not None and pooler not in ("session", "transaction", "statement"):
            raise ValueError(
                f"pooler must be None, 'session', 'transaction' or 'statement', got {pooler!r}"
            )
        if password_provider is not None and not callable(password_provider):
            raise TypeError(f"password_provider must be a callable, got {password_provider!r}")
        given_replicas: object = replicas
        if isinstance(given_replicas, (str, URL)) or not isinstance(given_replicas, Sequence):
            raise TypeError(f"replicas must be a list of URLs or engines, got {replicas!r}")
        given_name: object = name
        if given_name is not None and (not isinstance(given_name, str) or not given_name):
            raise TypeError(f"name must be a non-empty str or None, got {name!r}")
        self.is_async = is_async
        self.settings = pool if pool is not None else PoolSettings()
        self.retry = retry if retry is not None else RetryPolicy()
        self.locale = locale
        self.pooler = pooler
        self.pooler_report: PoolerReport | None = None
        self._engine_options = dict(engine_options)
        self._owned_engines: list[Engine | AsyncEngine] = []
        self._instrumentations: list[Instrumentation] = []
        self._primary_instrumentation: Instrumentation | None = None
        self._pings: list[IdlePing] = []
        self._providers: list[PasswordProvider] = []
        self._password_provider = password_provider
        self._given_name = name
        self.instrument_options = instrumentation or InstrumentOptions()
        self.maintainer: PoolMaintainer | None = None
        self.autosizer: PoolAutosizer | None = None
        self.replica_set: ReplicaSet | None = None
        self.require_writer = False
        try:
            self.engine = self._adopt(url_or_engine, kind=kind, facade=facade, primary=True)
            self.name = name or safe_url(sync_engine(self.engine))
            # With replicas, a replica's failure is the replica breaker's business:
            # it must not stop the writes the primary can still take.
            self.breaker: CircuitBreaker | None = (
                CircuitBreaker(
                    # Short, and never the URL: a multi-host URL's query string
                    # would otherwise ride along in every CircuitOpenError.
                    name=name or pool_name_of(sync_engine(self.engine)),
                    is_failure=primary_failure if replicas else is_infrastructure_failure,
                )
                if isinstance(breaker, Default)
                else breaker
            )
            # Checked with or without replicas: a bad value is a bad value.
            lag = (
                None if max_replica_lag is None else to_seconds("max_replica_lag", max_replica_lag)
            )
            replica_engines = [
                self._adopt(r, kind=kind, facade=facade, primary=False) for r in replicas
            ]
            if replica_engines:
                self.replica_set = ReplicaSet(self.engine, replica_engines, max_lag=lag)
            self._background_parts()
        except BaseException:
            self.detach_all()
            raise

    # -- building --------------------------------------------------------

    def _options_for(self, url: URL) -> dict[str, Any]:
        settings = self.settings
        options: dict[str, Any] = {}
        memory = url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")
        poolclass = self._engine_options.get("poolclass")
        sized = poolclass is None or (
            isinstance(poolclass, type) and issubclass(poolclass, QueuePool)
        )
        if sized and not memory:
            if poolclass is None:
                # The package's own QueuePool: the maintainer and the
                # autosizer change it through its methods. Chosen by the
                # driver, so a sync driver given to Database still gets
                # SQLAlchemy's own "not an asyncio driver" refusal.
                try:
                    driver_is_async = bool(url.get_dialect().is_async)
                except Exception:
                    driver_is_async = self.is_async  # create_*engine reports the bad URL
                options["poolclass"] = (
                    AsyncResizableQueuePool if driver_is_async else ResizableQueuePool
                )
            options.update(
                pool_size=settings.size,
                max_overflow=settings.max_overflow,
                pool_timeout=settings.seconds("timeout"),
            )
            if settings.seconds("recycle") is not None:
                options["pool_recycle"] = settings.seconds("recycle")
        connect_args = dict(self._engine_options.get("connect_args") or {})
        if self.pooler is not None and url.get_backend_name() == "postgresql":
            safe = pooler_safe_options(url, pool_mode=self.pooler, connect_args=connect_args)
            connect_args = safe["connect_args"]
        # The application's own engine options win over the facade's.
        merged = {
            **options,
            **{k: v for k, v in self._engine_options.items() if k != "connect_args"},
        }
        if connect_args:
            merged["connect_args"] = connect_args
        return merged

    def _adopt(
        self, target: str | URL | Engine | AsyncEngine, *, kind: str, facade: str, primary: bool
    ) -> Any:
        what = "url_or_engine" if primary else "a replica"
        if isinstance(target, (str, URL)):
            url = make_url(target)
            reason = malformed_url_reason(url)
            if reason is not None:
                raise ValueError(f"{what}: {reason}")
            engine = _engine_for(url, is_async=self.is_async, options=self._options_for(url))
            self._owned_engines.append(engine)
        elif isinstance(target, (Engine, AsyncEngine)):
            if isinstance(target, AsyncEngine) != self.is_async:
                raise TypeError(
                    f"{facade} wraps an {kind}; {what} is a {type(target).__name__}"
                    + (" (use SyncDatabase)" if not self.is_async else " (use Database)")
                )
            engine = target
        else:
            raise TypeError(f"{what} must be a URL or an {kind}, got {type(target).__name__}")
        sync = sync_engine(engine)
        settings = self.settings
        # The application's own instrumentation of an engine it hands in is
        # reused (once, here); the parts that need its figures get them from
        # this core, never by looking them up later.
        instr = instrumentation_of(engine)
        if instr is None:
            instr = instrument(
                engine,
                self.instrument_options,
                # The database's own name, when given, names its pool in
                # metrics; a replica's pool is named after its own URL.
                pool_name=(self.instrument_options.pool_name or self._given_name)
                if primary
                else None,
            )
            self._instrumentations.append(instr)
        if primary:
            self._primary_instrumentation = instr
        require_writer = settings.require_writer
        if require_writer is None:
            require_writer = sync.dialect.name == "postgresql"
        require_writer = require_writer and primary
        if primary:
            # health() asks the same question as the checkout does.
            self.require_writer = require_writer
        after = settings.seconds("ping_after")
        if after is not None or require_writer:
            self._pings.append(
                ping_idle_connections(
                    engine,
                    after=after if after is not None else _NEVER,
                    timeout=settings.seconds("ping_timeout"),
                    require_writer=require_writer,
                )
            )
        if self._password_provider is not None:
            self._providers.append(use_password_provider(engine, self._password_provider))
        return engine

    def _background_parts(self) -> None:
        settings = self.settings
        pool = sync_engine(self.engine).pool
        queue_pool = isinstance(pool, QueuePool)
        if queue_pool and (
            settings.seconds("keepalive") is not None or settings.min_size or settings.autosize
        ):
            resizable_pool_of(pool, "PoolSettings(keepalive=, min_size=, autosize=)")
        if queue_pool and (settings.seconds("keepalive") is not None or settings.min_size):
            self.maintainer = PoolMaintainer(
                self.engine,
                keepalive=settings.seconds("keepalive"),
                recycle=None,  # the engine's pool_recycle already bounds the age
                min_size=settings.min_size,
            )
        if queue_pool and settings.autosize:
            self.autosizer = PoolAutosizer(
                self.engine,
                monitor=self.monitor,
                min_size=max(1, settings.min_size),
                max_size=settings.size,
            )

    # -- closing ---------------------------------------------------------

    def detach_all(self) -> None:
        """Remove every listener this core attached (engines are disposed by the facade)."""
        if self.replica_set is not None:
            self.replica_set.detach()
        for ping in self._pings:
            ping.detach()
        for provider in self._providers:
            provider.detach()
        for instr in self._instrumentations:
            instr.detach()
        self._pings.clear()
        self._providers.clear()
        self._instrumentations.clear()

    @property
    def owned_engines(self) -> list[Engine | AsyncEngine]:
        """The engines this core created (and disposes on close)."""
        return list(self._owned_engines)

    def instrumentation(self) -> Instrumentation | None:
        """The primary engine's instrumentation (the facade's or the application's own), while attached."""
        instr = self._primary_instrumentation
        return instr if instr is not None and instr.attached else None

    @property
    def monitor(self) -> PoolMonitor:
        """The primary engine's pool figures, passed to health checks, warm-up and the autosizer."""
        instr = self._primary_instrumentation
        assert instr is not None  # set by __init__ before any part is built
        return instr.pool

    def user_message(self, exc: BaseException, locale: str | None = None) -> str:
        """An end-user message for ``exc`` in ``locale`` (the facade's by default)."""
        from sqlalchemy_resilience.errors import translate_error

        translated = translate_error(exc)
        chosen = locale or self.locale
        if isinstance(translated, ResilienceError):
            return translated.user_message(chosen)
        return user_message("database_error", chosen)


def start_failure(core: DatabaseCore, exc: BaseException) -> BaseException:
    """The error ``__aenter__``/``__enter__`` raises when the database cannot be reached."""
    from sqlalchemy_resilience.errors import DatabaseUnavailable, translate_error
    from sqlalchemy_resilience.errors.translate import describe

    translated = translate_error(exc)
    breaker = core.breaker
    view = (
        f"; breaker {breaker.name!r} is {breaker.state.name.lower()}" if breaker is not None else ""
    )
    err = DatabaseUnavailable(
        f"could not reach {core.name} at start-up: {describe(translated)}{view}",
        retryable=True,
    )
    err.__cause__ = translated
    return err


Callback = Callable[[], Any]


class FacadeBase:
    """What ``Database`` and ``SyncDatabase`` share above the core: names, parts, figures."""

    _core: DatabaseCore
    _cursor_secret: Any

    def _setup(self, core: DatabaseCore, cursor_secret: Any) -> None:
        from sqlalchemy_resilience.pagination.cursor import resolve_secret

        if cursor_secret is not None:
            resolve_secret(cursor_secret)  # a short or empty key fails here, not at the first page
        self._core = core
        self._cursor_secret = cursor_secret
        self._started = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._core.name}>"

    @property
    def name(self) -> str:
        """The name in logs, health output and the breaker (no password)."""
        return self._core.name

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy of every unit of work."""
        return self._core.retry

    @property
    def breaker(self) -> CircuitBreaker | None:
        """The circuit breaker, or None."""
        return self._core.breaker

    @property
    def replicas(self) -> ReplicaSet | None:
        """The :class:`~sqlalchemy_resilience.deploy.ReplicaSet`, or None without replicas."""
        return self._core.replica_set

    @property
    def pooler_report(self) -> PoolerReport | None:
        """What the start-up pooler check found (PostgreSQL), or None before start."""
        return self._core.pooler_report

    def _pagination_options(self, options: dict[str, Any]) -> dict[str, Any]:
        if self._cursor_secret is not None:
            options.setdefault("secret", self._cursor_secret)
        return options

    def user_message(self, exc: BaseException, locale: str | None = None) -> str:
        """A message safe to show an end user for ``exc``, in ``locale`` (default: the database's).

        Example::

            except ResilienceError as exc:
                return JSONResponse({"error": db.user_message(exc, "ja")}, status_code=409)
        """
        return self._core.user_message(exc, locale)
