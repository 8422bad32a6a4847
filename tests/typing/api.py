"""Never executed: type-checked by mypy --strict to pin the public API's types."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine

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
from sqlalchemy_resilience.instrumentation import Instrumentation, instrumentation_of
from sqlalchemy_resilience.observe import QueryStats, StatementStats, normalize_statement
from sqlalchemy_resilience.pool import (
    AutosizeDecision,
    HealthReport,
    IdlePing,
    MaintenanceReport,
    PoolAutosizer,
    PoolMaintainer,
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
    instr: Instrumentation = sr.instrument(engine, log_parameters=False)
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
    instr.slow_query_threshold = 0.5
    threshold: float | None = instr.slow_query_threshold
    stats: QueryStats | None = instr.stats
    if stats is not None:
        top: list[StatementStats] = stats.top(5, by="p95")
        p99: float = top[0].p99
        errors: dict[str, int] = top[0].errors
        snapshot: dict[str, object] = stats.snapshot()
        stats.reset()
    pool: Mapping[str, object] = pool_stats(engine, pop=True)
    in_use: object = instr.pool_stats()["connections_in_use"]
    normalized: str = normalize_statement("SELECT 1")
    translated: BaseException = translate_error(ValueError("x"))
    if isinstance(translated, sr.DatabaseFailure):
        state: str | None = translated.sqlstate
        retry: bool = translated.retryable
        label: str | None = translated.code_label
        text: str = translated.user_message("ja")
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
        message: str = exc.user_message()
        error_id: str = exc.error_id
        del message, error_id
    except sr.CircuitOpenError as exc:
        wait: float = exc.retry_after
        del wait
    except sr.PoolExhausted as exc:
        status: dict[str, object] = exc.pool_status
        del status
    finally:
        instr.detach()


def helpers() -> None:
    facts: ErrorFacts = extract_facts(ValueError("x"))
    del facts
    register_messages("de", {"unique_violation": "Existiert bereits."})
    msg: str = user_message("unique_violation", "de")
    del msg
    with EmbeddedPostgres() as pg:
        url = pg.url(driver="asyncpg")
        del url
    err = sr.RetryExhausted([sr.ConnectionLost("x")])
    attempts: int = err.attempts
    del attempts


async def retry_usage() -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    engine = create_async_engine("sqlite+aiosqlite://")
    factory = async_sessionmaker(engine)

    async def work(session: AsyncSession) -> int:
        return 1

    policy = sr.RetryPolicy(attempts=3, initial_backoff=0.01, budget=RetryBudget(capacity=5))
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
        key: str = exc.idempotency_key
        del key
    state: BreakerState = breaker.state
    async with breaker.guard():
        pass
    retrying = policy.as_tenacity()
    del value, state, retrying


def sync_retry_usage() -> None:
    from sqlalchemy.orm import Session, sessionmaker

    factory = sessionmaker(create_engine("sqlite://"))

    def work(session: Session) -> str:
        return "x"

    text_value: str = sr.run_transaction_sync(factory, work, read_only=True)
    with sr.CircuitBreaker().guard():
        pass
    del text_value


def testing_usage() -> None:
    from sqlalchemy_resilience.testing import FaultInjector, in_test_mode, inject_fault

    engine = create_engine("sqlite://")
    with in_test_mode(attempts=2):
        injector: FaultInjector = inject_fault(engine, "busy", nth=1, times=2, match="insert")
        fired: int = injector.fired
        injector.detach()
        del fired


async def resilient_session_usage() -> None:
    engine = create_async_engine("sqlite+aiosqlite://")
    factory = resilient_sessionmaker(engine, breaker=sr.CircuitBreaker(), expire_on_commit=False)
    async with factory() as session:
        typed: ResilientAsyncSession = session
        await session.commit()
        del typed


async def pool_usage() -> None:
    engine = create_async_engine("postgresql+asyncpg://app@db/app", pool_size=5)
    instr = sr.instrument(engine, leak_threshold=30.0, max_waiting=10)
    leaks: int = instr.suspected_leaks
    instr.max_waiting = None
    await warm_up(engine, 3, timeout=5)
    report: HealthReport = await sr.health_check(engine, timeout=1.0, breaker=sr.CircuitBreaker())
    status: str = report.status
    payload: dict[str, object] = report.to_dict()
    resized: ResizeResult = await resize_pool(engine, size=10, max_overflow=2)
    maintainer = PoolMaintainer(engine, keepalive=30, recycle=1800, jitter=0.2, min_size=2)
    await maintainer.start()
    pass_report: MaintenanceReport = await maintainer.run_once()
    maintainer.detach()
    sizer = PoolAutosizer(engine, min_size=2, max_size=20, reserve=5)
    await sizer.start()
    decisions: list[AutosizeDecision] = sizer.decisions
    sizer.detach()


def sync_pool_usage() -> None:
    engine = create_engine("sqlite:///x.db", pool_size=5)
    sr.instrument(engine)
    warm_up_sync(engine, 2)
    report: HealthReport = sr.health_check_sync(engine, timeout=1.0)
    resized: ResizeResult = resize_pool_sync(engine, size=3)
    sizer = PoolAutosizer(engine, min_size=1, max_size=5)
    sizer.start_sync()
    sizer.detach()


async def transaction_usage() -> None:
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

    engine = create_async_engine("sqlite+aiosqlite://")
    factory = async_sessionmaker(engine)
    async with sr.transaction(factory, lock_timeout=timedelta(seconds=1)) as session:
        typed_session: AsyncSession = session
        sr.on_commit(lambda: None)

        async def notify() -> None:
            pass

        sr.on_commit(notify, robust=True)
        async with sr.transaction(typed_session, statement_timeout=2.5):
            pass
    async with sr.transaction(engine, isolation_level="SERIALIZABLE", read_only=True) as conn:
        typed_conn: AsyncConnection = conn
        assert typed_conn is not None
    settings = SQLiteSettings(journal_mode="wal", busy_timeout=5.0, begin="immediate")
    configured: SQLiteConfiguration = configure_sqlite(engine, settings)
    configured.detach()
    sr.instrument(engine, sqlite=settings)
    try:
        async with sr.transaction(engine, statement_timeout=1):
            pass
    except sr.NotSupported as exc:
        option: str = exc.option
        assert option
    except sr.DurableTransactionError:
        pass


def sync_transaction_usage() -> None:
    from sqlalchemy import Connection
    from sqlalchemy.orm import Session, sessionmaker

    engine = create_engine("sqlite://")
    with sr.transaction_sync(sessionmaker(engine), durable=True) as session:
        typed_session: Session = session
        assert typed_session is not None
    with sr.transaction_sync(engine) as conn:
        typed_conn: Connection = conn
        assert typed_conn is not None


async def saga_usage() -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    engine = create_async_engine("sqlite+aiosqlite://")
    factory = async_sessionmaker(engine)

    async def reserve(ctx: SagaContext) -> dict[str, int]:
        key: str = ctx.idempotency_key
        assert key and ctx.session is not None
        return {"n": 1}

    def refund(ctx: SagaContext) -> None:
        previous: object = ctx.result

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
        step: str = exc.failed_step
        undone: tuple[str, ...] = exc.compensated
    except sr.SagaCompensationFailed as group:
        failures: dict[str, str] = group.compensation_failures
    except sr.SagaInProgress as busy:
        wait: float = busy.retry_after
    report: RecoveryReport = await recover_sagas(factory, [saga], limit=10)
    ids: list[str] = report.recovered
    record: SagaRecord | None = await get_saga(factory, "o-1")
    if record is not None:
        status: str = record.status
        as_json: dict[str, object] = record.to_dict()


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
        slow_query_threshold=0.5,
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
        rows: list[Row[object]] = await db.fetch_all(select(text("1")))
        row: Row[object] | None = await db.fetch_one("SELECT 1")
        value: object = await db.fetch_value("SELECT 1")
        count: int = await db.execute("UPDATE t SET x = 1", idempotent=True)

        async def work(session: AsyncSession) -> int:
            return 1

        n: int = await db.run_transaction(work, idempotency_key="k-1")
        async with db.transaction(statement_timeout=2) as session:
            s: AsyncSession = session
        async with db.session() as session2:
            pass
        report: HealthReport = await db.health(timeout=1)
        stats: dict[str, object] = db.stats(top=5)
        figures: dict[str, object] = db.pool_stats()
        message: str = db.user_message(ValueError("x"), "en")
    env_db: sr.Database = sr.Database.from_env({"DATABASE_URL": "sqlite+aiosqlite://"})
    settings: dict[str, object] = settings_from_env({"DATABASE_URL": "sqlite://"})
    names: dict[str, str] = ENV_VARIABLES
    with sr.SyncDatabase("sqlite://") as sync_db:
        sync_rows: list[Row[object]] = sync_db.fetch_all("SELECT 1")

        def sync_work(session: Session) -> str:
            return "ok"

        done: str = sync_db.run_transaction(sync_work)
        sync_report: HealthReport = sync_db.health()


async def deploy_usage() -> None:
    from sqlalchemy import Engine, create_engine, select
    from sqlalchemy.ext.asyncio import AsyncEngine

    from sqlalchemy_resilience.testing import QueryBudgetExceeded, assert_max_queries, count_queries

    engine: AsyncEngine = create_async_engine(
        "postgresql+asyncpg://app@bouncer/app",
        **pooler_safe_options("postgresql+asyncpg://app@bouncer/app"),
    )
    report: PoolerReport = await check_pooler(engine, warn=False)
    problem: str | None = report.problem
    ok: bool = report.safe
    sync_report: PoolerReport = check_pooler_sync(create_engine("postgresql+psycopg://h/d"))
    provider: PasswordProvider = use_password_provider(
        engine, lambda: "secret", refresh_margin=30, ttl=None, auth_retries=1
    )
    provider.detach()
    ping: IdlePing = ping_idle_connections(
        engine, after=timedelta(seconds=30), timeout=2, require_writer=True
    )
    dead: int = ping.dead
    replica_set = ReplicaSet(engine, [engine], max_lag=1.0, check_interval=0.5)
    statuses: list[ReplicaStatus] = replica_set.status()
    factory = routing_sessionmaker(replica_set, expire_on_commit=False)
    sync: Engine = create_engine("sqlite://")
    with assert_max_queries(sync, 3, max_repeats=1) as counter:
        n: int = len(counter)
    with count_queries(sync) as counted:
        text_report: str = counted.report()
    try:
        pass
    except QueryBudgetExceeded as exc:
        statements: int = len(exc.counter)
    _ = select
