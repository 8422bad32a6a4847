"""``run_migrations``: the body of an Alembic ``env.py`` that is safe with many instances and live traffic.

What it adds to Alembic's own ``env.py`` recipe:

* the connection is retried under a :class:`RetryPolicy` (a database that is
  still starting does not fail the deploy);
* the migration lock (:mod:`.lock`): concurrent instances migrate one at a
  time; the others wait, then find the schema at head and do nothing;
* ``lock_timeout`` (and optionally ``statement_timeout``) for every
  migration, so a DDL statement queued behind a long transaction gives up
  instead of stalling every query queued behind *it*; a migration that hit
  ``lock_timeout`` is retried a bounded number of times with backoff
  (strong_migrations' advice);
* one transaction per migration, and each revision's file checksum recorded
  in that transaction (:mod:`.checksums`).

Timeouts are session settings of the migrating connection, so they also hold
inside ``op.get_context().autocommit_block()`` (``CREATE INDEX CONCURRENTLY``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import MetaData, func, pool, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, create_engine, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from sqlalchemy_resilience._util.seconds import to_seconds
from sqlalchemy_resilience._util.urls import malformed_url_reason
from sqlalchemy_resilience.deploy import check_pooler_sync
from sqlalchemy_resilience.errors import DatabaseFailure, LockNotAvailable, translate_error
from sqlalchemy_resilience.errors.classify import build_error
from sqlalchemy_resilience.errors.operations import MigrationLockTimeout, MigrationThroughPooler
from sqlalchemy_resilience.errors.translate import describe
from sqlalchemy_resilience.retry import RetryPolicy
from sqlalchemy_resilience.schema import (
    create_migration_tables,
    migration_checksums,
    migration_steps,
)

from .checksums import recorder
from .lock import LockInfo, lock_key, migration_lock
from .progress import StepTracker, forgetter, non_transactional_ddl
from .session import milliseconds, session_timeouts, transactional_ddl

__all__ = ["DEFAULT_CONNECT_RETRY", "PROGRESS_ATTRIBUTE", "MigrationSettings", "run_migrations"]

log = logging.getLogger("sqlalchemy_resilience.migrations")

#: ``config.attributes`` key of a callable given each applied step (Alembic's
#: ``MigrationInfo``): how ``sqlalchemy-resilience migrate`` prints its progress.
PROGRESS_ATTRIBUTE = "sqlalchemy_resilience.progress"

#: How connecting is retried by default: 6 attempts within a minute.
DEFAULT_CONNECT_RETRY = RetryPolicy(attempts=6, initial_backoff=0.5, max_backoff=8.0, deadline=60.0)


@dataclass(frozen=True)
class MigrationSettings:
    """The validated options of :func:`run_migrations`.

    Example::

        MigrationSettings(lock_timeout=2, lock_retries=5)
    """

    lock: bool = True
    lock_wait: float | timedelta = 300.0
    lock_timeout: float | timedelta | None = 5.0
    statement_timeout: float | timedelta | None = None
    lock_retries: int = 3
    retry_backoff: float | timedelta = 1.0
    checksums: bool = True
    rerun_interrupted: bool = False

    def __post_init__(self) -> None:
        for name in ("lock", "checksums", "rerun_interrupted"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        object.__setattr__(self, "lock_wait", to_seconds("lock_wait", self.lock_wait))
        object.__setattr__(self, "retry_backoff", to_seconds("retry_backoff", self.retry_backoff))
        for name in ("lock_timeout", "statement_timeout"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, to_seconds(name, value, allow_zero=False))
        retries: object = self.lock_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
            raise ValueError(f"lock_retries must be an int from 0 to 100, got {retries!r}")

    @property
    def timeouts(self) -> dict[str, float]:
        """The session timeouts to set, in seconds."""
        found = {"lock_timeout": self.lock_timeout, "statement_timeout": self.statement_timeout}
        return {name: _seconds(value) for name, value in found.items() if value is not None}

    @property
    def wait_seconds(self) -> float:
        """``lock_wait`` in seconds."""
        return _seconds(self.lock_wait)

    @property
    def backoff_seconds(self) -> float:
        """``retry_backoff`` in seconds."""
        return _seconds(self.retry_backoff)


def _seconds(value: float | timedelta) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _database_url(url: str | URL | None, config: Any) -> URL:
    raw = url or os.environ.get("DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not raw:
        raise SystemExit("set DATABASE_URL (or sqlalchemy.url in alembic.ini) to migrate")
    database = make_url(raw)
    reason = malformed_url_reason(database)
    if reason is not None:
        raise SystemExit(reason)
    return database


def _without_checksum_table(include_object: Callable[..., bool] | None) -> Callable[..., bool]:
    """The app's ``include_object``, also hiding the package's migration tables from autogenerate.

    The table lives beside the app's tables but not in its models; without
    this, ``alembic check`` and ``--autogenerate`` would want to drop it.
    """

    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        if (
            type_ == "table"
            and name in (migration_checksums.name, migration_steps.name)
            and reflected
            and compare_to is None
        ):
            return False
        return include_object(obj, name, type_, reflected, compare_to) if include_object else True

    return include


def _run_with_lock_retries(
    connection: Connection,
    run: Callable[[], None],
    settings: MigrationSettings,
    tracker: StepTracker | None = None,
) -> None:
    attempt = 0
    while True:
        try:
            run()
            return
        except Exception as exc:
            if not isinstance(translate_error(exc), LockNotAvailable):
                raise
            limit = milliseconds(settings.timeouts.get("lock_timeout", 0.0))
            # Statement by statement (MySQL): a rerun is safe only if the
            # revision had completed nothing before the lock wait gave up.
            if tracker is not None and not tracker.retry_is_safe():
                raise _command_error(
                    f"a migration statement gave up waiting for a lock after {limit} "
                    "(see SHOW PROCESSLIST) after earlier statements of its revision had "
                    f"committed, so it is not retried: {tracker.interrupted_now()}"
                ) from exc
            if attempt >= settings.lock_retries:
                where = "SHOW PROCESSLIST" if tracker is not None else "pg_stat_activity"
                # Alembic prints a CommandError as one line; the typed error is the cause.
                raise _command_error(
                    f"a migration could not get a table lock within lock_timeout ({limit}) in "
                    f"{attempt + 1} tries: a long transaction holds it (see {where}); "
                    "that migration was rolled back, the ones before it stay applied"
                ) from exc
            attempt += 1
            if connection.in_transaction():
                connection.rollback()
            pause = settings.backoff_seconds * 2 ** (attempt - 1) * random.uniform(0.5, 1.0)
            log.warning(
                "a migration gave up waiting for a lock after lock_timeout (%s); retry %d of %d in %.1fs",
                milliseconds(settings.timeouts.get("lock_timeout", 0.0)),
                attempt,
                settings.lock_retries,
                pause,
            )
            time.sleep(pause)


def _online(
    connection: Connection,
    context: Any,
    settings: MigrationSettings,
    version_table: str,
    configure: dict[str, Any],
) -> None:
    try:
        _migrate(connection, context, settings, version_table, configure)
    except MigrationLockTimeout as exc:
        from alembic.util import CommandError

        raise CommandError(f"{exc.args[0]}; raise lock_wait to wait longer") from exc
    except MigrationThroughPooler as exc:
        from alembic.util import CommandError

        raise CommandError(str(exc.args[0])) from exc


def _refuse_transaction_pooler(connection: Connection) -> None:
    """Stop before a session-level lock that a transaction pooler would hand to someone else."""
    if connection.in_transaction():
        connection.commit()
    report = check_pooler_sync(connection.engine, warn=False)
    if report.transaction_pooling:
        raise MigrationThroughPooler(
            "refusing to migrate through a transaction-mode pooler (PgBouncer, RDS Proxy, "
            "Supavisor): the migration lock and the session's lock_timeout would stay on a "
            "server session the pooler hands to other clients. Point DATABASE_URL (or -x url) "
            "for migrations at the server itself or at a session-mode pool"
        )


def _migrate(
    connection: Connection,
    context: Any,
    settings: MigrationSettings,
    version_table: str,
    configure: dict[str, Any],
) -> None:
    if settings.lock and connection.dialect.name == "postgresql":
        _refuse_transaction_pooler(connection)
    lock = migration_lock(connection, version_table=version_table, wait=settings.wait_seconds)
    with lock if settings.lock else contextlib.nullcontext(LockInfo("none", 0.0)) as info:
        if info.waited >= 0.1:
            log.info("waited %.1fs for the migration lock", info.waited)
        with transactional_ddl(connection):
            _configure_and_run(connection, context, settings, version_table, configure)


def _configure_and_run(
    connection: Connection,
    context: Any,
    settings: MigrationSettings,
    version_table: str,
    configure: dict[str, Any],
) -> None:
    if connection.in_transaction():
        connection.commit()
    configure["include_object"] = _without_checksum_table(configure.pop("include_object", None))
    callbacks = list(configure.pop("on_version_apply", None) or ())
    progress = context.config.attributes.get(PROGRESS_ATTRIBUTE)
    if callable(progress):
        callbacks.append(lambda *, step, **_: progress(step))
    if settings.checksums:
        create_migration_tables(connection)
        connection.commit()
        callbacks.append(recorder(version_table))
    with session_timeouts(connection, settings.timeouts):
        options = {
            "connection": connection,
            "version_table": version_table,
            "transaction_per_migration": configure.pop("transaction_per_migration", True),
            "on_version_apply": callbacks,
            **configure,
        }
        context.configure(**options)
        migration_context = context.get_context()
        steps_of = migration_context.opts.get("fn")  # what Alembic's command runs
        tracker: StepTracker | None = None
        if steps_of is not None and non_transactional_ddl(
            connection, migration_context.impl.transactional_ddl
        ):
            # MySQL: a revision can stop half-way; mark it in flight (see .progress).
            create_migration_tables(connection)
            connection.commit()
            tracker = StepTracker(
                steps_of,
                connection=connection,
                version_table=version_table,
                script=context.script,
                rerun_interrupted=settings.rerun_interrupted,
                refuse=_command_error,
            )
            context.configure(
                **{**options, "on_version_apply": [*callbacks, forgetter(version_table)]},
                fn=tracker.steps,
            )

        def run() -> None:
            with context.begin_transaction():
                context.run_migrations()

        with tracker if tracker is not None else contextlib.nullcontext():
            _run_with_lock_retries(connection, run, settings, tracker)
        if connection.in_transaction():
            connection.commit()


def _command_error(message: str) -> BaseException:
    from alembic.util import CommandError

    return CommandError(message)  # Alembic prints it as one line


def _offline(
    url: URL,
    context: Any,
    settings: MigrationSettings,
    version_table: str,
    configure: dict[str, Any],
) -> None:
    context.configure(
        url=url,
        version_table=version_table,
        literal_binds=True,
        transaction_per_migration=configure.pop("transaction_per_migration", True),
        dialect_opts={"paramstyle": "named"},
        **configure,
    )
    postgres = url.get_backend_name() == "postgresql"
    with context.begin_transaction():
        if postgres:
            # The script a DBA runs holds the same lock and timeouts as an online run.
            for key, seconds in settings.timeouts.items():
                context.execute(select(func.set_config(key, milliseconds(seconds), False)))
            if settings.lock:
                context.execute(select(func.pg_advisory_lock(lock_key(version_table))))
        context.run_migrations()
        if postgres and settings.lock:
            context.execute(select(func.pg_advisory_unlock(lock_key(version_table))))


_X_SECONDS = ("lock_wait", "lock_timeout", "statement_timeout", "retry_backoff")


@contextlib.contextmanager
def _connect_errors(secrets: tuple[str, ...]) -> Iterator[None]:
    """A failed connect as the typed error a connect failure is (``DatabaseUnavailable``...).

    The engine here is the runner's own, not instrumented, so nothing else
    knows that the error happened while connecting: psycopg reports a refused
    connection without a SQLSTATE, which only that knowledge makes retryable.
    """
    try:
        yield
    except sa_exc.DBAPIError as exc:
        raise build_error(exc, phase="connect", is_disconnect=True, secrets=secrets) from exc


@contextlib.contextmanager
def _one_line_if_unreachable() -> Iterator[None]:
    """A database that cannot be reached, once retrying is over, as Alembic's one-line error."""
    try:
        yield
    except DatabaseFailure as exc:
        raise _command_error(f"cannot connect to migrate: {describe(exc)}") from exc


def _x_overrides(x: dict[str, str]) -> dict[str, Any]:
    """Options given on the command line as ``alembic -x lock_timeout=2 ...``."""
    found: dict[str, Any] = {}
    for name in _X_SECONDS:
        if name in x:
            text = x[name].strip().lower()
            try:
                found[name] = None if text == "none" else float(text)
            except ValueError:
                raise ValueError(f"-x {name} must be seconds or 'none', got {x[name]!r}") from None
    if "lock_retries" in x:
        try:
            found["lock_retries"] = int(x["lock_retries"])
        except ValueError:
            raise ValueError(f"-x lock_retries must be an int, got {x['lock_retries']!r}") from None
    for name in ("lock", "rerun_interrupted"):
        if name in x:
            found[name] = x[name].strip().lower() not in ("0", "false", "no", "off")
    return found


def run_migrations(
    target_metadata: MetaData | Sequence[MetaData] | None = None,
    *,
    url: str | URL | None = None,
    connection: Connection | None = None,
    version_table: str | None = None,
    lock: bool = True,
    lock_wait: float | timedelta = 300.0,
    lock_timeout: float | timedelta | None = 5.0,
    statement_timeout: float | timedelta | None = None,
    lock_retries: int = 3,
    retry_backoff: float | timedelta = 1.0,
    connect_retry: RetryPolicy | None = None,
    checksums: bool = True,
    rerun_interrupted: bool = False,
    **configure: Any,
) -> None:
    """Run the migrations Alembic asked for; call it as the whole body of ``env.py``.

    Online with a sync or async URL (``postgresql+asyncpg``, ``postgresql+psycopg``,
    ``sqlite+aiosqlite``, ``sqlite``...) or an existing ``connection``, and
    offline (``alembic upgrade --sql``), where the emitted script takes the same
    lock and timeouts.

    Args:
        target_metadata: the models' ``MetaData`` (for autogenerate and ``alembic check``).
        url: the database; default ``DATABASE_URL``, then ``sqlalchemy.url`` in alembic.ini.
        connection: a connection to migrate on instead of connecting; without it,
            ``config.attributes["connection"]`` (a Connection or an Engine) is used
            when set -- Alembic's recipe for sharing a connection, and how
            pytest-alembic hands over its test database.
        version_table: default ``version_table`` in alembic.ini, else ``alembic_version``.
        lock: take the migration lock (PostgreSQL advisory lock, SQLite file lock).
        lock_wait: how long to wait for another instance's migration (seconds or timedelta).
        lock_timeout: ``lock_timeout`` for every migration (SQLite: ``busy_timeout``;
            MySQL/MariaDB: ``lock_wait_timeout`` and ``innodb_lock_wait_timeout``, whole
            seconds); None: the server's.
        statement_timeout: ``statement_timeout`` for every migration (MariaDB:
            ``max_statement_time``; MySQL: ``max_execution_time``, SELECTs only; not on SQLite).
        lock_retries: how often a migration that hit ``lock_timeout`` is run again.
        retry_backoff: the first pause before such a retry (doubling, jittered).
        connect_retry: how connecting is retried (default: 6 attempts within 60 s).
        checksums: record each applied revision's file checksum (for ``verify_migrations``).
        rerun_interrupted: where DDL is not transactional (MySQL, MariaDB), run a
            revision an earlier run left half-way from its start, after its
            effects were undone by hand; without it such a run is refused
            (see :mod:`~sqlalchemy_resilience.migrations.progress`).
        **configure: passed on to Alembic's ``context.configure`` (``compare_type``,
            ``include_object``, ``render_as_batch``...).

    The command line overrides the lock and timeout options:
    ``alembic -x lock_timeout=2 -x lock_wait=600 -x lock_retries=5 upgrade head``
    (seconds, or ``none`` for no timeout; ``-x lock=off`` takes no lock;
    ``-x rerun_interrupted=1``).

    Raises:
        MigrationLockTimeout: another instance kept migrating for longer than ``lock_wait``.
        LockNotAvailable: a migration hit ``lock_timeout`` on every try.

    Example (``env.py``)::

        from myapp.models import Base
        from sqlalchemy_resilience.migrations import run_migrations

        run_migrations(Base.metadata, lock_timeout=3, statement_timeout=60)
    """
    from alembic import context

    given: dict[str, Any] = {
        "lock": lock,
        "lock_wait": lock_wait,
        "lock_timeout": lock_timeout,
        "statement_timeout": statement_timeout,
        "lock_retries": lock_retries,
        "retry_backoff": retry_backoff,
        "checksums": checksums,
        "rerun_interrupted": rerun_interrupted,
    }
    settings = MigrationSettings(
        **{**given, **_x_overrides(context.get_x_argument(as_dictionary=True))}
    )
    config = context.config
    table = version_table or config.get_main_option("version_table") or "alembic_version"
    options = {"target_metadata": target_metadata, **configure}
    if context.is_offline_mode():
        _offline(_database_url(url, config), context, settings, table, options)
        return
    # Alembic's recipe for sharing a connection (and pytest-alembic's way in):
    # config.attributes["connection"], a Connection or an Engine.
    shared: Any = connection if connection is not None else config.attributes.get("connection")
    if isinstance(shared, Engine):
        with shared.connect() as conn:
            _online(conn, context, settings, table, options)
        return
    if shared is not None:
        _online(shared, context, settings, table, options)
        return
    database = _database_url(url, config)
    policy = connect_retry or DEFAULT_CONNECT_RETRY
    if database.get_dialect().is_async:
        asyncio.run(_run_async(database, policy, context, settings, table, options))
        return
    engine = create_engine(database, poolclass=pool.NullPool)
    secrets = (str(database.password),) if database.password else ()
    try:
        with _one_line_if_unreachable():
            for attempt in policy.as_tenacity_sync(idempotent=True):
                with attempt, _connect_errors(secrets):
                    conn = engine.connect()
        with conn:
            _online(conn, context, settings, table, options)
    finally:
        engine.dispose()


async def _run_async(
    database: URL,
    policy: RetryPolicy,
    context: Any,
    settings: MigrationSettings,
    table: str,
    options: dict[str, Any],
) -> None:
    engine = create_async_engine(database, poolclass=pool.NullPool)
    try:
        secrets = (str(database.password),) if database.password else ()
        with _one_line_if_unreachable():
            async for attempt in policy.as_tenacity(idempotent=True):
                with attempt, _connect_errors(secrets):
                    conn = await engine.connect()
        try:
            await conn.run_sync(_online, context, settings, table, options)
        finally:
            await conn.close()
    finally:
        await engine.dispose()
