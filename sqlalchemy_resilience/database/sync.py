"""``SyncDatabase``: the ``Database`` facade for sync drivers and sync applications (Flask, scripts)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import Row
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_resilience._util.seconds import Seconds
from sqlalchemy_resilience.batch import BulkResult, bulk_insert_sync
from sqlalchemy_resilience.deploy import check_pooler_sync, routing_sessionmaker
from sqlalchemy_resilience.deploy.credentials import Provider
from sqlalchemy_resilience.instrumentation import InstrumentOptions
from sqlalchemy_resilience.pagination import Page, paginate_sync
from sqlalchemy_resilience.pagination.cursor import Secret
from sqlalchemy_resilience.pool import HealthReport, health_check_sync, pool_stats, warm_up_sync
from sqlalchemy_resilience.retry import CircuitBreaker, RetryPolicy, run_transaction_sync
from sqlalchemy_resilience.saga import RecoveryReport, Saga, recover_sagas_sync
from sqlalchemy_resilience.transactions import SyncTransactionContext, transaction_sync

from .facade import Statement, as_statement, as_write, reads_only
from .parts import DEFAULT, DatabaseCore, Default, FacadeBase, PoolerMode, start_failure
from .settings import PoolSettings, settings_from_env
from .stats import database_stats, replica_health

__all__ = ["SyncDatabase"]

T = TypeVar("T")


class SyncDatabase(FacadeBase):
    """The sync twin of :class:`~sqlalchemy_resilience.Database`: the same parts on an ``Engine``.

    Takes the same arguments, with a sync driver URL (``postgresql+psycopg://``,
    ``sqlite:///``) or an existing ``Engine``; ``with db:`` starts and closes it.

    Example::

        db = SyncDatabase("postgresql+psycopg://app@db/app")
        with db:
            rows = db.fetch_all(select(User).where(User.active))
            db.run_transaction(lambda s: s.add(User(email="a@example.com")))
    """

    def __init__(
        self,
        url_or_engine: str | URL | Engine,
        *,
        pool: PoolSettings | None = None,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | Default | None = DEFAULT,
        instrumentation: InstrumentOptions | None = None,
        locale: str = "en",
        replicas: Sequence[str | URL | Engine] = (),
        max_replica_lag: Seconds | None = None,
        password_provider: Provider | None = None,
        pooler: PoolerMode | None = None,
        cursor_secret: Secret | None = None,
        name: str | None = None,
        **engine_options: Any,
    ) -> None:
        core = DatabaseCore(
            url_or_engine,
            is_async=False,
            pool=pool,
            retry=retry,
            breaker=breaker,
            instrumentation=instrumentation,
            locale=locale,
            replicas=replicas,
            max_replica_lag=max_replica_lag,
            password_provider=password_provider,
            pooler=pooler,
            name=name,
            engine_options=engine_options,
        )
        self._setup(core, cursor_secret)
        engine = core.engine
        assert isinstance(engine, Engine)
        self.engine: Engine = engine
        self.sessionmaker: sessionmaker[Any] = (
            routing_sessionmaker(self._core.replica_set, expire_on_commit=False)  # type: ignore[assignment]
            if self._core.replica_set is not None
            else sessionmaker(engine, expire_on_commit=False)
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> SyncDatabase:
        """A ``SyncDatabase`` from ``DATABASE_URL`` and the ``SQLALCHEMY_RESILIENCE_*`` settings.

        Example::

            db = SyncDatabase.from_env()
        """
        settings = settings_from_env(environ)
        settings.update(overrides)
        return cls(**settings)

    def start(self, *, timeout: Seconds = 10.0) -> None:
        """Verify connections, check for a pooler, start the background parts (``with db:``)."""
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if self._started:
            return
        core = self._core
        permit = core.breaker.acquire() if core.breaker is not None else None
        try:
            if core.maintainer is not None or core.autosizer is not None:
                warm_up_sync(
                    self.engine,
                    max(1, core.settings.min_size),
                    timeout=timeout,
                    monitor=core.monitor,
                )
            else:
                with self.engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1")
        except Exception as exc:
            if core.breaker is not None and permit is not None:
                core.breaker.record_failure(permit, exc)
            raise start_failure(core, exc) from None
        if core.breaker is not None and permit is not None:
            core.breaker.record_success(permit)
        if self.engine.dialect.name == "postgresql":
            core.pooler_report = check_pooler_sync(self.engine)
        if core.maintainer is not None:
            core.maintainer.start_sync()
        if core.autosizer is not None:
            core.autosizer.start_sync()
        if core.replica_set is not None:
            core.replica_set.start_sync()
            core.replica_set.probe_sync()
        self._started = True

    def close(self) -> None:
        """Stop the background parts, remove the hooks, dispose the engines it created."""
        if self._closed:
            return
        self._closed = True
        core = self._core
        for part in (core.maintainer, core.autosizer, core.replica_set):
            if part is not None:
                part.detach()
        core.detach_all()
        for engine in core.owned_engines:
            assert isinstance(engine, Engine)
            engine.dispose()

    def __enter__(self) -> SyncDatabase:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def session(self) -> Session:
        """A new session (``with db.session() as s:``)."""
        session: Session = self.sessionmaker()
        return session

    def transaction(self, **options: Any) -> SyncTransactionContext[Session]:
        """:func:`~sqlalchemy_resilience.transaction_sync` on a new session."""
        return transaction_sync(self.sessionmaker, **options)

    def run_transaction(self, fn: Callable[[Session], T], **options: Any) -> T:
        """:func:`~sqlalchemy_resilience.run_transaction_sync` with the retry policy and breaker."""
        options.setdefault("retry", self.retry)
        options.setdefault("breaker", self.breaker)
        return run_transaction_sync(self.sessionmaker, fn, **options)

    def _one_statement(
        self, statement: Statement, params: Any, idempotent: bool, read: Callable[[Any], T]
    ) -> T:
        stmt = as_statement(statement)

        def work(session: Session) -> T:
            result = session.execute(stmt, params) if params is not None else session.execute(stmt)
            return read(result)

        return self.run_transaction(work, idempotent=idempotent or reads_only(stmt))

    def execute(self, statement: Statement, params: Any = None, *, idempotent: bool = False) -> int:
        """Run one statement in its own retried transaction; returns the row count."""
        return self._one_statement(
            as_write(statement), params, idempotent, lambda r: int(r.rowcount)
        )

    def fetch_all(self, statement: Statement, params: Any = None) -> list[Row[Any]]:
        """All rows of a query."""
        return self._one_statement(statement, params, False, lambda r: list(r.all()))

    def fetch_one(self, statement: Statement, params: Any = None) -> Row[Any] | None:
        """The first row of a query, or None."""
        first: Row[Any] | None = self._one_statement(statement, params, False, lambda r: r.first())
        return first

    def fetch_value(self, statement: Statement, params: Any = None) -> Any:
        """The first column of the first row, or None."""
        return self._one_statement(statement, params, False, lambda r: r.scalar())

    def saga(
        self,
        saga: Saga,
        data: Any = None,
        *,
        saga_id: str | None = None,
        durable: bool | None = None,
    ) -> dict[str, Any]:
        """Run ``saga`` (plain-function steps) with this database's sessions."""
        return saga.execute_sync(
            data, saga_id=saga_id, sessionmaker=self.sessionmaker, durable=durable
        )

    def recover_sagas(self, sagas: Sequence[Saga], **options: Any) -> RecoveryReport:
        """:func:`~sqlalchemy_resilience.saga.recover_sagas_sync` on this database.

        Example::

            with SyncDatabase("sqlite:///app.db") as db:
                report = db.recover_sagas([place_order])
        """
        return recover_sagas_sync(self.sessionmaker, sagas, **options)

    def bulk_insert(self, table: Any, rows: Any, **options: Any) -> BulkResult:
        """:func:`~sqlalchemy_resilience.bulk_insert_sync` with the retry policy."""
        options.setdefault("retry", self.retry)
        return bulk_insert_sync(self.engine, table, rows, **options)

    def paginate(self, statement: Any, **options: Any) -> Page[Any]:
        """:func:`~sqlalchemy_resilience.paginate_sync` on a session of this database."""
        options = self._pagination_options(options)
        with self.session() as session:
            return paginate_sync(session, statement, **options)

    def health(self, *, timeout: Seconds = 2.0, writer: bool | None = None) -> HealthReport:
        """:func:`~sqlalchemy_resilience.health_check` with the breaker and the replicas.

        ``writer``: also require that the server takes writes (default: as
        the pool's ``require_writer``, on by default on PostgreSQL).

        Example::

            report = db.health(writer=True)
            status = 200 if report.ok else 503
        """
        instr = self._core.instrumentation()
        report = health_check_sync(
            self.engine,
            timeout=timeout,
            breaker=self.breaker,
            monitor=instr.pool if instr is not None else None,
            writer=self._core.require_writer if writer is None else writer,
        )
        return replica_health(report, self._core.replica_set)

    def pool_stats(self) -> dict[str, Any]:
        """:func:`~sqlalchemy_resilience.pool.pool_stats` of the primary engine."""
        return dict(pool_stats(self.engine))

    def snapshot(self, *, top: int = 10) -> dict[str, Any]:
        """JSON-ready figures: top statements, pool, breaker, replicas, pooler check."""
        return database_stats(self._core, top=top)
