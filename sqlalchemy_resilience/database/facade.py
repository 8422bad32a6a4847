"""``Database``: one object that owns an async engine and everything the package adds to it.

The all-in-one "database manager" applications hand-write (pool + retry +
breaker + query monitor + metrics + health), built from the package's parts:
an instrumented engine (error translation, slow-query log, statistics,
OpenTelemetry metrics), a :class:`~sqlalchemy_resilience.RetryPolicy` and a
:class:`~sqlalchemy_resilience.CircuitBreaker` every unit of work goes
through, the idle-connection ping and failover writer check, and optionally
read replicas, a password provider and pooler-safe driver settings.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import Row, Select, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql import Executable
from sqlalchemy.sql.elements import TextClause

from sqlalchemy_resilience._util.seconds import Seconds
from sqlalchemy_resilience.batch import BulkResult, bulk_insert
from sqlalchemy_resilience.deploy import check_pooler, routing_sessionmaker
from sqlalchemy_resilience.deploy.credentials import Provider
from sqlalchemy_resilience.deploy.routing import is_write_statement
from sqlalchemy_resilience.instrumentation import InstrumentOptions
from sqlalchemy_resilience.pagination import Page, paginate
from sqlalchemy_resilience.pagination.cursor import Secret
from sqlalchemy_resilience.pool import HealthReport, health_check, pool_stats, warm_up
from sqlalchemy_resilience.retry import CircuitBreaker, RetryPolicy, run_transaction
from sqlalchemy_resilience.saga import RecoveryReport, Saga, recover_sagas
from sqlalchemy_resilience.transactions import TransactionContext, transaction

from .parts import DEFAULT, DatabaseCore, Default, FacadeBase, PoolerMode, start_failure
from .settings import PoolSettings, settings_from_env
from .stats import database_stats, replica_health

__all__ = ["Database"]

T = TypeVar("T")
Statement = str | Executable


def as_statement(statement: Statement) -> Executable:
    """A ``str`` as ``text()``; a SQLAlchemy statement as it is."""
    if isinstance(statement, str):
        return text(statement)
    if not isinstance(statement, Executable):
        raise TypeError(
            f"statement must be a SQLAlchemy statement or a SQL string, got {statement!r}"
        )
    return statement


def as_write(statement: Statement) -> Executable:
    """:func:`as_statement` for ``execute()``, which returns a row count: a ``select()`` is refused."""
    stmt = as_statement(statement)
    if isinstance(stmt, Select):
        raise TypeError(
            "execute() runs a write and returns its row count; "
            "read a select() with fetch_all(), fetch_one() or fetch_value()"
        )
    return stmt


def reads_only(statement: Executable) -> bool:
    """Whether re-running ``statement`` is harmless: a SELECT that writes nothing."""
    if isinstance(statement, TextClause):
        return not is_write_statement(statement)
    return bool(getattr(statement, "is_select", False)) and not is_write_statement(statement)


class Database(FacadeBase):
    """An async database: engine, instrumentation, retry policy, breaker and health in one object.

    Args:
        url_or_engine: a URL with an asyncio driver (``postgresql+asyncpg://``,
            ``postgresql+psycopg://``, ``sqlite+aiosqlite://``), or an existing
            ``AsyncEngine`` (its own settings are left alone; it is not
            disposed on close).
        pool: :class:`PoolSettings` (size, overflow, timeouts, liveness, leaks).
        retry: the :class:`~sqlalchemy_resilience.RetryPolicy` of every unit
            of work (default ``RetryPolicy()``).
        breaker: a :class:`~sqlalchemy_resilience.CircuitBreaker`; None for
            none; default: one named after the database.
        instrumentation: what ``instrument()`` attaches to every engine of the
            database, an :class:`~sqlalchemy_resilience.instrumentation.InstrumentOptions`
            (slow-query threshold, metrics and ``meter_provider``, leak
            threshold, ``max_waiting``, ...; default: its defaults).
        locale: the default locale of :meth:`user_message` (``"en"``, ``"ja"``, ...).
        replicas: read replica URLs (or ``AsyncEngine``\\ s): reads are routed
            to them (:func:`~sqlalchemy_resilience.deploy.routing_sessionmaker`).
        max_replica_lag: seconds a replica may be behind and still take reads.
        password_provider: a callable (sync or async) giving the password of
            each new connection (:func:`~sqlalchemy_resilience.deploy.use_password_provider`).
        pooler: ``"transaction"``/``"statement"`` when a transaction-mode pooler
            (PgBouncer, RDS Proxy, Supavisor) is in front: pooler-safe driver options.
        cursor_secret: the key :meth:`paginate` signs cursors with (default:
            ``SQLALCHEMY_RESILIENCE_CURSOR_SECRET``).
        name: for logs, health and the breaker (default: the URL without password).
        **engine_options: passed to ``create_async_engine`` (they win over the facade's).

    Raises:
        TypeError, ValueError: a setting of the wrong type or out of range, named.

    Example::

        db = Database("postgresql+asyncpg://app@db/app", pool=PoolSettings(size=20))
        async with db:
            user = await db.fetch_one(select(User).where(User.id == 1))
            await db.run_transaction(lambda s: transfer(s, a, b, 10))
            print((await db.health()).status)
    """

    def __init__(
        self,
        url_or_engine: str | URL | AsyncEngine,
        *,
        pool: PoolSettings | None = None,
        retry: RetryPolicy | None = None,
        breaker: CircuitBreaker | Default | None = DEFAULT,
        instrumentation: InstrumentOptions | None = None,
        locale: str = "en",
        replicas: Sequence[str | URL | AsyncEngine] = (),
        max_replica_lag: Seconds | None = None,
        password_provider: Provider | None = None,
        pooler: PoolerMode | None = None,
        cursor_secret: Secret | None = None,
        name: str | None = None,
        **engine_options: Any,
    ) -> None:
        core = DatabaseCore(
            url_or_engine,
            is_async=True,
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
        assert isinstance(engine, AsyncEngine)
        self.engine: AsyncEngine = engine
        self.sessionmaker: async_sessionmaker[Any] = (
            routing_sessionmaker(self._core.replica_set, expire_on_commit=False)  # type: ignore[assignment]
            if self._core.replica_set is not None
            else async_sessionmaker(engine, expire_on_commit=False)
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Database:
        """A ``Database`` from ``DATABASE_URL`` and the ``SQLALCHEMY_RESILIENCE_*`` settings.

        Keyword arguments override what the environment says. See
        :func:`~sqlalchemy_resilience.database.settings.settings_from_env` for
        the variables.

        Example::

            db = Database.from_env()          # DATABASE_URL=postgresql+asyncpg://...
        """
        settings = settings_from_env(environ)
        settings.update(overrides)
        return cls(**settings)

    # -- the parts -------------------------------------------------------

    # -- lifecycle -------------------------------------------------------

    async def start(self, *, timeout: Seconds = 10.0) -> None:
        """Open and verify connections, check for a pooler, start the background parts.

        ``async with db:`` calls it. Fails fast, with
        :class:`~sqlalchemy_resilience.DatabaseUnavailable` naming the database
        and the breaker's state, when the database cannot be reached within ``timeout``.
        """
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if self._started:
            return
        core = self._core
        permit = core.breaker.acquire() if core.breaker is not None else None
        try:
            if core.maintainer is not None or core.autosizer is not None:
                await warm_up(
                    self.engine,
                    max(1, core.settings.min_size),
                    timeout=timeout,
                    monitor=core.monitor,
                )
            else:
                async with self.engine.connect() as conn:
                    await conn.exec_driver_sql("SELECT 1")
        except Exception as exc:
            if core.breaker is not None and permit is not None:
                core.breaker.record_failure(permit, exc)
            raise start_failure(core, exc) from None
        if core.breaker is not None and permit is not None:
            core.breaker.record_success(permit)
        if self.engine.sync_engine.dialect.name == "postgresql":
            core.pooler_report = await check_pooler(self.engine)
        if core.maintainer is not None:
            await core.maintainer.start()
        if core.autosizer is not None:
            await core.autosizer.start()
        if core.replica_set is not None:
            await core.replica_set.start()
            await core.replica_set.probe()
        self._started = True

    async def close(self) -> None:
        """Stop the background parts, remove the hooks, dispose the engines it created.

        Idempotent. A wrapped engine stays open (its owner disposes it).
        """
        if self._closed:
            return
        self._closed = True
        core = self._core
        for part in (core.maintainer, core.autosizer, core.replica_set):
            if part is not None:
                await part._halted()  # a task: wait until it has ended
        core.detach_all()
        for engine in core.owned_engines:
            assert isinstance(engine, AsyncEngine)
            await engine.dispose()

    async def __aenter__(self) -> Database:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- units of work ---------------------------------------------------

    def session(self) -> AsyncSession:
        """A new session (``async with db.session() as s:``); routed to replicas when configured."""
        session: AsyncSession = self.sessionmaker()
        return session

    def transaction(self, **options: Any) -> TransactionContext[AsyncSession]:
        """:func:`~sqlalchemy_resilience.transaction` on a new session (isolation, timeouts...).

        Example::

            async with db.transaction(statement_timeout=2) as session:
                session.add(order)
        """
        return transaction(self.sessionmaker, **options)

    async def run_transaction(
        self, fn: Callable[[AsyncSession], Awaitable[T]], **options: Any
    ) -> T:
        """:func:`~sqlalchemy_resilience.run_transaction` with the database's retry policy and breaker.

        Example::

            await db.run_transaction(transfer, idempotency_key=request_id)
        """
        options.setdefault("retry", self.retry)
        options.setdefault("breaker", self.breaker)
        return await run_transaction(self.sessionmaker, fn, **options)

    async def _one_statement(
        self, statement: Statement, params: Any, idempotent: bool, read: Callable[[Any], T]
    ) -> T:
        stmt = as_statement(statement)

        async def work(session: AsyncSession) -> T:
            result = (
                await session.execute(stmt, params)
                if params is not None
                else (await session.execute(stmt))
            )
            return read(result)

        # A read can always be re-run; a write only when the caller says so
        # (run_transaction already re-runs what the retry-safety table allows).
        return await self.run_transaction(work, idempotent=idempotent or reads_only(stmt))

    async def execute(
        self, statement: Statement, params: Any = None, *, idempotent: bool = False
    ) -> int:
        """Run one statement in its own retried transaction; returns the row count.

        A list of parameter dicts runs it once per dict (``executemany``); the
        count of a batch is what the driver reports (-1 where it reports
        none, as asyncpg does for ``executemany``).

        Example::

            await db.execute(update(Item).where(Item.id == 1).values(stock=Item.stock - 1))
        """
        return await self._one_statement(as_write(statement), params, idempotent, _rowcount)

    async def fetch_all(self, statement: Statement, params: Any = None) -> list[Row[Any]]:
        """All rows of a query (retried: a read can be re-run).

        Example::

            rows = await db.fetch_all(select(User.id, User.email).where(User.active))
        """
        return await self._one_statement(statement, params, False, _all_rows)

    async def fetch_one(self, statement: Statement, params: Any = None) -> Row[Any] | None:
        """The first row of a query, or None.

        Example::

            row = await db.fetch_one("SELECT email FROM users WHERE id = :id", {"id": 1})
        """
        return await self._one_statement(statement, params, False, _first_row)

    async def fetch_value(self, statement: Statement, params: Any = None) -> Any:
        """The first column of the first row, or None.

        Example::

            count = await db.fetch_value(select(func.count()).select_from(User))
        """
        return await self._one_statement(statement, params, False, _first_value)

    # -- capabilities ----------------------------------------------------

    async def saga(
        self,
        saga: Saga,
        data: Any = None,
        *,
        saga_id: str | None = None,
        durable: bool | None = None,
    ) -> dict[str, Any]:
        """Run ``saga`` with this database's sessions (durable log in this database).

        Example::

            results = await db.saga(place_order, {"order": 42}, saga_id="order-42")
        """
        return await saga.execute(
            data, saga_id=saga_id, sessionmaker=self.sessionmaker, durable=durable
        )

    async def recover_sagas(self, sagas: Sequence[Saga], **options: Any) -> RecoveryReport:
        """:func:`~sqlalchemy_resilience.saga.recover_sagas` on this database."""
        return await recover_sagas(self.sessionmaker, sagas, **options)

    async def bulk_insert(self, table: Any, rows: Any, **options: Any) -> BulkResult:
        """:func:`~sqlalchemy_resilience.bulk_insert` into this database with its retry policy.

        Example::

            result = await db.bulk_insert(Event, rows, chunk_size=5000, on_conflict="ignore")
        """
        options.setdefault("retry", self.retry)
        return await bulk_insert(self.engine, table, rows, **options)

    async def paginate(self, statement: Any, **options: Any) -> Page[Any]:
        """:func:`~sqlalchemy_resilience.paginate` on a session of this database.

        Example::

            page = await db.paginate(select(Item).order_by(Item.id), page_size=50, after=cursor)
        """
        options = self._pagination_options(options)
        async with self.session() as session:
            return await paginate(session, statement, **options)

    # -- looking at it ---------------------------------------------------

    async def health(self, *, timeout: Seconds = 2.0, writer: bool | None = None) -> HealthReport:
        """:func:`~sqlalchemy_resilience.health_check` with the breaker; replicas out of rotation degrade it.

        ``writer``: also require that the server takes writes (default: as
        the pool's ``require_writer``, on by default on PostgreSQL).

        Example::

            report = await db.health()
            status = 200 if report.ok else 503
        """
        instr = self._core.instrumentation()
        report = await health_check(
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
        """JSON-ready figures: top statements, pool, breaker, replicas, pooler check.

        Example::

            print(json.dumps(db.snapshot(top=5), indent=2))
        """
        return database_stats(self._core, top=top)


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


def _all_rows(result: Any) -> list[Row[Any]]:
    return list(result.all())


def _first_row(result: Any) -> Row[Any] | None:
    row: Row[Any] | None = result.first()
    return row


def _first_value(result: Any) -> Any:
    return result.scalar()
