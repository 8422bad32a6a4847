"""Never executed: type-checked by mypy --strict to pin the public API's types."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Literal, assert_type, cast

from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import sqlalchemy_resilience as sr
from sqlalchemy_resilience.database import PoolSettings
from sqlalchemy_resilience.deploy import (
    Credential,
    PasswordProvider,
    PoolerReport,
    ReplicaSet,
    ReplicaStatus,
    check_pooler,
    check_pooler_sync,
    pooler_safe_options,
    routing_sessionmaker,
    use_password_provider,
)
from sqlalchemy_resilience.errors import translate_error
from sqlalchemy_resilience.errors.classify import ErrorFacts, extract_facts
from sqlalchemy_resilience.errors.messages import register_messages, user_message
from sqlalchemy_resilience.instrumentation import (
    Instrumentation,
    InstrumentOptions,
    instrumentation_of,
)
from sqlalchemy_resilience.observe import QueryStats, StatementStats, normalize_statement
from sqlalchemy_resilience.pool import (
    AsyncResizableQueuePool,
    AutosizeDecision,
    HealthReport,
    IdlePing,
    MaintenanceReport,
    PoolAutosizer,
    PoolMaintainer,
    ResizableQueuePool,
    ResizeResult,
    ping_idle_connections,
    pool_stats,
    resize_pool,
    resize_pool_sync,
    warm_up,
    warm_up_sync,
)
from sqlalchemy_resilience.retry import (
    BreakerState,
    ResilientAsyncSession,
    RetryBudget,
    resilient_sessionmaker,
)
from sqlalchemy_resilience.saga import (
    RecoveryReport,
    SagaContext,
    SagaRecord,
    get_saga,
    recover_sagas,
)
from sqlalchemy_resilience.testing.embedded import EmbeddedPostgres
from sqlalchemy_resilience.transactions import SQLiteConfiguration, SQLiteSettings, configure_sqlite


def sync_usage() -> None:
    engine = create_engine("sqlite://")
    instr = assert_type(sr.instrument(engine, log_parameters=False), Instrumentation)
    assert instrumentation_of(engine) is instr
    instr.detach()
    instr = sr.instrument(
        engine,
        slow_query_threshold=timedelta(milliseconds=250),
        long_running_threshold=5.0,
        query_stats=True,
        max_statements=1000,
        stats_call_sites=True,
        meter_provider=None,
        pool_name="main",
        call_site_skip=("myapp.db",),
    )
    threshold = assert_type(instr.slow_query_threshold, float | None)
    options = InstrumentOptions(slow_query_threshold=0.25, max_waiting=10)
    assert_type(sr.instrument(create_engine("sqlite://"), options, pool_name="b"), Instrumentation)
    assert_type(options.seconds("slow_query_threshold"), float | None)
    assert_type(options.max_waiting, int | None)
    instr.slow_query_threshold = 0.5
    stats = assert_type(instr.stats, QueryStats | None)
    if stats is not None:
        top = assert_type(stats.top(5, by="p95"), list[StatementStats])
        p99 = assert_type(top[0].p99, float)
        errors = assert_type(top[0].errors, dict[str, int])
        snapshot = assert_type(stats.snapshot(), dict[str, Any])
        stats.reset()
    pool = assert_type(pool_stats(engine, pop=True), Mapping[str, Any])
    in_use = assert_type(instr.pool_stats()["connections_in_use"], Any)
    normalized = assert_type(normalize_statement("SELECT 1"), str)
    translated = assert_type(translate_error(ValueError("x")), BaseException)
    if isinstance(translated, sr.DatabaseFailure):
        state = assert_type(translated.sqlstate, str | None)
        retry = assert_type(translated.retryable, bool)
        label = assert_type(translated.code_label, str | None)
        text = assert_type(translated.user_message("ja"), str)
        names: tuple[str | None, ...] = (
            translated.constraint_name,
            translated.table_name,
            translated.column_name,
            translated.schema_name,
        )
        del state, retry, label, text, names


async def async_usage() -> None:
    engine = create_async_engine("sqlite+aiosqlite://")
    instr = sr.instrument(engine)
    try:
        async with engine.begin():
            pass
    except sr.UniqueViolation as exc:
        message = assert_type(exc.user_message(), str)
        error_id = assert_type(exc.error_id, str)
        del message, error_id
    except sr.CircuitOpenError as exc:
        wait = assert_type(exc.retry_after, float)
        del wait
    except sr.PoolExhausted as exc:
        status = assert_type(exc.pool_status, dict[str, Any])
        del status
    finally:
        instr.detach()


def helpers() -> None:
    facts = assert_type(extract_facts(ValueError("x")), ErrorFacts)
    del facts
    register_messages("de", {"unique_violation": "Existiert bereits."})
    msg = assert_type(user_message("unique_violation", "de"), str)
    del msg
    with EmbeddedPostgres() as pg:
        url = pg.url(driver="asyncpg")
        del url
    err = sr.RetryExhausted([sr.ConnectionLost("x")])
    attempts = assert_type(err.attempts, int)
    del attempts


async def retry_usage() -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    engine = create_async_engine("sqlite+aiosqlite://")
    factory = async_sessionmaker(engine)

    async def work(session: AsyncSession) -> int:
        return 1

    policy = sr.RetryPolicy(
        attempts=3, initial_backoff=0.01, budget=RetryBudget(ratio=0.1, min_per_second=0.5)
    )
    breaker = sr.CircuitBreaker(failure_threshold=3, recovery_timeout=5.0)
    value: int = await sr.run_transaction(
        factory, work, retry=policy, breaker=breaker, isolation_level="SERIALIZABLE"
    )
    try:
        keyed: int = await sr.run_transaction(
            factory,
            work,
            idempotency_key="order-1",
            attempt_timeout=2.5,
            resolve_commit_outcome=True,
        )
        del keyed
    except sr.AlreadyApplied as exc:
        key = assert_type(exc.idempotency_key, str)
        del key
    state = assert_type(breaker.state, BreakerState)
    async with breaker.guard():
        pass
    retrying = policy.as_tenacity()
    del value, state, retrying


def sync_retry_usage() -> None:
    from sqlalchemy.orm import Session, sessionmaker

    factory = sessionmaker(create_engine("sqlite://"))

    def work(session: Session) -> str:
        return "x"

    text_value = assert_type(sr.run_transaction_sync(factory, work, read_only=True), str)
    with sr.CircuitBreaker().guard():
        pass
    del text_value


def testing_usage() -> None:
    from sqlalchemy_resilience.testing import FaultInjector, in_test_mode, inject_fault

    engine = create_engine("sqlite://")
    with in_test_mode(attempts=2):
        injector = assert_type(
            inject_fault(engine, "busy", nth=1, times=2, match="insert"), FaultInjector
        )
        fired = assert_type(injector.fired, int)
        injector.detach()
        del fired


async def resilient_session_usage() -> None:
    engine = create_async_engine("sqlite+aiosqlite://")
    factory = resilient_sessionmaker(engine, breaker=sr.CircuitBreaker(), expire_on_commit=False)
    async with factory() as session:
        typed = assert_type(session, ResilientAsyncSession)
        # SQLAlchemy's overloads survive the wrapper: no Any leaks out.
        user = assert_type(await session.get(User, 1), User | None)
        one = assert_type(await session.get_one(User, 1), User)
        await session.commit()
        del typed, user, one

    async def rename(session: AsyncSession) -> User | None:
        return await session.get(User, 1)

    renamed = assert_type(await sr.run_transaction(factory, rename), User | None)
    del renamed


class _Base(DeclarativeBase):
    pass


class User(_Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


async def pool_usage() -> None:
    engine = create_async_engine(
        "postgresql+asyncpg://app@db/app", poolclass=AsyncResizableQueuePool, pool_size=5
    )
    instr = sr.instrument(engine, leak_threshold=30.0, max_waiting=10)
    leaks = assert_type(instr.suspected_leaks, int)
    instr.max_waiting = None
    await warm_up(engine, 3, timeout=5)
    report = assert_type(
        await sr.health_check(engine, timeout=1.0, breaker=sr.CircuitBreaker()), HealthReport
    )
    status = assert_type(report.status, Literal["healthy", "degraded", "unhealthy"])
    payload = assert_type(report.to_dict(), dict[str, Any])
    resized = assert_type(await resize_pool(engine, size=10, max_overflow=2), ResizeResult)
    maintainer = PoolMaintainer(engine, keepalive=30, recycle=1800, jitter=0.2, min_size=2)
    await maintainer.start()
    pass_report = assert_type(await maintainer.run_once(), MaintenanceReport)
    maintainer.detach()
    sizer = PoolAutosizer(engine, monitor=instr.pool, min_size=2, max_size=20, reserve=5)
    await sizer.start()
    decisions = assert_type(sizer.decisions, list[AutosizeDecision])
    sizer.detach()


def sync_pool_usage() -> None:
    engine = create_engine("sqlite:///x.db", poolclass=ResizableQueuePool, pool_size=5)
    instr = sr.instrument(engine)
    warm_up_sync(engine, 2, monitor=instr.pool)
    own = cast(ResizableQueuePool, engine.pool)  # SQLAlchemy types engine.pool as Pool
    assert_type(own.resize(3, 0), tuple[int, int])
    assert_type(own.max_overflow, int)
    report = assert_type(
        sr.health_check_sync(engine, timeout=1.0, monitor=instr.pool), HealthReport
    )
    resized = assert_type(resize_pool_sync(engine, size=3), ResizeResult)
    sizer = PoolAutosizer(engine, monitor=instr.pool, min_size=1, max_size=5)
    sizer.start_sync()
    sizer.detach()


async def transaction_usage() -> None:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

    engine = create_async_engine("sqlite+aiosqlite://")
    factory = async_sessionmaker(engine)
    async with sr.transaction(factory, lock_timeout=timedelta(seconds=1)) as session:
        typed_session = assert_type(session, AsyncSession)
        sr.on_commit(lambda: None)

        async def notify() -> None:
            pass

        sr.on_commit(notify, robust=True)
        async with sr.transaction(typed_session, statement_timeout=2.5):
            pass
    async with sr.transaction(engine, isolation_level="SERIALIZABLE", read_only=True) as conn:
        typed_conn = assert_type(conn, AsyncConnection)
        assert typed_conn is not None
    settings = SQLiteSettings(journal_mode="wal", busy_timeout=5.0, begin="immediate")
    configured = assert_type(configure_sqlite(engine, settings), SQLiteConfiguration)
    configured.detach()
    sr.instrument(engine, sqlite=settings)
    try:
        async with sr.transaction(engine, statement_timeout=1):
            pass
    except sr.NotSupported as exc:
        option = assert_type(exc.option, str)
        assert option
    except sr.DurableTransactionError:
        pass


def sync_transaction_usage() -> None:
    from sqlalchemy import Connection
    from sqlalchemy.orm import Session, sessionmaker

    engine = create_engine("sqlite://")
    with sr.transaction_sync(sessionmaker(engine), durable=True) as session:
        typed_session = assert_type(session, Session)
        assert typed_session is not None
    with sr.transaction_sync(engine) as conn:
        typed_conn = assert_type(conn, Connection)
        assert typed_conn is not None


async def saga_usage() -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    engine = create_async_engine("sqlite+aiosqlite://")
    factory = async_sessionmaker(engine)

    async def reserve(ctx: SagaContext) -> dict[str, int]:
        key = assert_type(ctx.idempotency_key, str)
        assert key and ctx.session is not None
        return {"n": 1}

    def refund(ctx: SagaContext) -> None:
        previous = assert_type(ctx.result, Any)

    saga: sr.Saga = (
        sr.Saga("order", retry=sr.RetryPolicy(attempts=2), lease=timedelta(seconds=30))
        .step("reserve", reserve)
        .step("charge", lambda ctx: None, compensate=refund, external=True)
    )
    try:
        results: dict[str, object] = await saga.execute(
            {"a": 1}, saga_id="o-1", sessionmaker=factory
        )
    except sr.SagaCompensated as exc:
        step = assert_type(exc.failed_step, str)
        undone = assert_type(exc.compensated, tuple[str, ...])
    except sr.SagaCompensationFailed as group:
        failures = assert_type(group.compensation_failures, dict[str, str])
    except sr.SagaInProgress as busy:
        wait = assert_type(busy.retry_after, float)
    report = assert_type(await recover_sagas(factory, [saga], limit=10), RecoveryReport)
    ids = assert_type(report.recovered, list[str])
    record = assert_type(await get_saga(factory, "o-1"), SagaRecord | None)
    if record is not None:
        status = assert_type(record.status, str)
        as_json = assert_type(record.to_dict(), dict[str, Any])


async def database_usage() -> None:
    from sqlalchemy import Row, select, text
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

    from sqlalchemy_resilience.database import ENV_VARIABLES, settings_from_env

    pool = PoolSettings(
        size=20, max_overflow=5, timeout=timedelta(seconds=5), min_size=2, ping_after=30
    )
    db = sr.Database(
        "postgresql+asyncpg://app@db/app",
        pool=pool,
        retry=sr.RetryPolicy(attempts=4),
        breaker=None,
        instrumentation=InstrumentOptions(slow_query_threshold=0.5, leak_threshold=60),
        locale="ja",
        replicas=["postgresql+asyncpg://app@replica/app"],
        max_replica_lag=2.0,
        password_provider=lambda: Credential("token", expires_at=1e10),
        pooler="transaction",
        cursor_secret="k" * 32,
        name="main",
        echo=False,
    )
    async with db:
        rows = assert_type(await db.fetch_all(select(text("1"))), list[Row[Any]])
        row = assert_type(await db.fetch_one("SELECT 1"), Row[Any] | None)
        value = assert_type(await db.fetch_value("SELECT 1"), Any)
        count = assert_type(await db.execute("UPDATE t SET x = 1", idempotent=True), int)

        async def work(session: AsyncSession) -> int:
            return 1

        n = assert_type(await db.run_transaction(work, idempotency_key="k-1"), int)
        async with db.transaction(statement_timeout=2) as session:
            s = assert_type(session, AsyncSession)
        async with db.session() as session2:
            pass
        report = assert_type(await db.health(timeout=1), HealthReport)
        stats = assert_type(db.snapshot(top=5), dict[str, Any])
        figures = assert_type(db.pool_stats(), dict[str, Any])
        message = assert_type(db.user_message(ValueError("x"), "en"), str)
    env_db = assert_type(sr.Database.from_env({"DATABASE_URL": "sqlite+aiosqlite://"}), sr.Database)
    settings = assert_type(settings_from_env({"DATABASE_URL": "sqlite://"}), dict[str, Any])
    names = assert_type(ENV_VARIABLES, dict[str, str])
    with sr.SyncDatabase("sqlite://") as sync_db:
        sync_rows = assert_type(sync_db.fetch_all("SELECT 1"), list[Row[Any]])

        def sync_work(session: Session) -> str:
            return "ok"

        done = assert_type(sync_db.run_transaction(sync_work), str)
        sync_report = assert_type(sync_db.health(), HealthReport)


async def deploy_usage() -> None:
    from sqlalchemy import Engine, create_engine, select
    from sqlalchemy.ext.asyncio import AsyncEngine

    from sqlalchemy_resilience.testing import QueryBudgetExceeded, assert_max_queries, count_queries

    engine: AsyncEngine = create_async_engine(
        "postgresql+asyncpg://app@bouncer/app",
        **pooler_safe_options("postgresql+asyncpg://app@bouncer/app"),
    )
    report = assert_type(await check_pooler(engine, warn=False), PoolerReport)
    problem = assert_type(report.problem, str | None)
    ok = assert_type(report.safe, bool)
    sync_report = assert_type(
        check_pooler_sync(create_engine("postgresql+psycopg://h/d")), PoolerReport
    )
    provider: PasswordProvider = use_password_provider(
        engine, lambda: "secret", refresh_margin=30, ttl=None, auth_retries=1
    )
    provider.detach()
    ping: IdlePing = ping_idle_connections(
        engine, after=timedelta(seconds=30), timeout=2, require_writer=True
    )
    dead = assert_type(ping.dead, int)
    replica_set = ReplicaSet(engine, [engine], max_lag=1.0, check_interval=0.5)
    statuses = assert_type(replica_set.status(), list[ReplicaStatus])
    factory = routing_sessionmaker(replica_set, expire_on_commit=False)
    sync = assert_type(create_engine("sqlite://"), Engine)
    with assert_max_queries(sync, 3, max_repeats=1) as counter:
        n = assert_type(len(counter), int)
    with count_queries(sync) as counted:
        text_report = assert_type(counted.report(), str)
    try:
        pass
    except QueryBudgetExceeded as exc:
        statements = assert_type(len(exc.counter), int)
    _ = select
