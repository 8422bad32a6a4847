"""The ``sqlalchemy-resilience demo`` tour.

Runs against the embedded default (a SQLite file, no server), an embedded
PostgreSQL, or any URL, and shows what the package does to real failures: a
duplicate insert, a foreign-key miss and a timeout, each translated into a
typed error with its retry verdict and end-user messages in English and
Japanese.

Example::

    from sqlalchemy_resilience.cli.demo import run_demo
    exit_code = run_demo("sqlite:///demo.db")
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import (
    Column,
    Connection,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from sqlalchemy_resilience.errors import DatabaseFailure, ResilienceError
from sqlalchemy_resilience.errors.translate import describe
from sqlalchemy_resilience.instrumentation import instrument
from sqlalchemy_resilience.testing.embedded import EmbeddedPostgres

__all__ = ["SECTIONS", "DemoStep", "run_demo"]

_metadata = MetaData()
_users = Table(
    "sr_demo_users",
    _metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(200), nullable=False, unique=True),
)
_orders = Table(
    "sr_demo_orders",
    _metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("sr_demo_users.id"), nullable=False),
)


@dataclass(frozen=True, slots=True)
class DemoStep:
    """One failure the demo provoked and what it was translated into."""

    title: str
    expected: str
    error: BaseException | None

    @property
    def ok(self) -> bool:
        """Whether the failure arrived as the expected typed error."""
        return self.error is not None and type(self.error).__name__ == self.expected


def _duplicate_insert(conn: Connection) -> None:
    with conn.begin():
        conn.execute(_users.insert().values(id=2, email="ada@example.com"))


def _foreign_key_miss(conn: Connection) -> None:
    with conn.begin():
        conn.execute(_orders.insert().values(id=1, user_id=999))


def _postgres_timeout(conn: Connection) -> None:
    with conn.begin():
        conn.execute(text("SET LOCAL statement_timeout = '100ms'"))
        conn.execute(select(func.pg_sleep(2)))


def _capture(fn: Callable[[Connection], None], conn: Connection) -> BaseException | None:
    try:
        fn(conn)
    except sa_exc.SQLAlchemyError as exc:
        return exc
    return None


@contextlib.contextmanager
def _sqlite_writer_holding_lock(url: URL) -> Iterator[None]:
    """Another process-level writer holding SQLite's write lock (recipe e10)."""
    holder = sqlite3.connect(str(url.database), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("INSERT INTO sr_demo_users (id, email) VALUES (100, 'held@example.com')")
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def _sqlite_lock_timeout(url: URL) -> Callable[[Connection], None]:
    def step(conn: Connection) -> None:
        with _sqlite_writer_holding_lock(url), conn.begin():
            conn.execute(_users.insert().values(id=3, email="grace@example.com"))

    return step


def _tour(conn: Connection, url: URL) -> list[DemoStep]:
    _metadata.drop_all(conn)
    _metadata.create_all(conn)
    conn.execute(_users.insert().values(id=1, email="ada@example.com"))
    conn.commit()
    steps = [
        DemoStep(
            "a duplicate insert (same e-mail twice)",
            "UniqueViolation",
            _capture(_duplicate_insert, conn),
        ),
        DemoStep(
            "a foreign-key miss (order for a user who does not exist)",
            "ForeignKeyViolation",
            _capture(_foreign_key_miss, conn),
        ),
    ]
    if conn.dialect.name == "postgresql":
        steps.append(
            DemoStep(
                "a timeout (statement_timeout 100 ms, query sleeps 2 s)",
                "QueryTimeout",
                _capture(_postgres_timeout, conn),
            )
        )
    elif conn.dialect.name == "sqlite":
        steps.append(
            DemoStep(
                "a timeout (another writer holds the lock past the 100 ms busy timeout)",
                "LockNotAvailable",
                _capture(_sqlite_lock_timeout(url), conn),
            )
        )
    with contextlib.suppress(sa_exc.SQLAlchemyError):
        conn.rollback()
        _metadata.drop_all(conn)
        conn.commit()
    return steps


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _report(steps: list[DemoStep], out: TextIO) -> None:
    for number, step in enumerate(steps, 1):
        print(f"\n[{number}] {step.title}", file=out)
        err = step.error
        if err is None:
            print("    (no error was raised)", file=out)
            continue
        print(f"    raised      {type(err).__name__}", file=out)
        if not isinstance(err, ResilienceError):
            print("    (not translated)", file=out)
            continue
        err_obj: object = err  # a ResilienceError that may also be a SQLAlchemy class
        still = [
            base.__name__
            for base in (
                sa_exc.IntegrityError,
                sa_exc.OperationalError,
                sa_exc.DataError,
                sa_exc.ProgrammingError,
            )
            if isinstance(err_obj, base)
        ]
        if still:
            print(
                f"    still a     sqlalchemy.exc.{still[0]} (existing except clauses keep working)",
                file=out,
            )
        if isinstance(err, DatabaseFailure):
            facts = ", ".join(
                f"{name}={value}"
                for name, value in (
                    ("code", err.code_label),
                    ("constraint", err.constraint_name),
                    ("table", err.table_name),
                    ("column", err.column_name),
                )
                if value
            )
            said = "SQLite said" if (err.driver_code or "").startswith("SQLITE") else "server said"
            print(f"    {said} {facts}", file=out)
        print(f"    retryable   {_yes_no(err.retryable)}", file=out)
        print(f"    error id    {err.error_id}", file=out)
        print(f"    user (en)   {err.user_message('en')}", file=out)
        print(f"    user (ja)   {err.user_message('ja')}", file=out)
        print(f"    developer   {describe(err)}", file=out)


def _sqlite_foreign_keys(dbapi_connection: Any, _record: Any) -> None:
    # SQLite enforces foreign keys only when asked, per connection.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


#: The demo's parts, in order; ``demo --section NAME`` runs one of them.
SECTIONS: tuple[str, ...] = (
    "errors",
    "retry",
    "observe",
    "sagas",
    "batch",
    "migrations",
    "deploy",
)


def _errors_section(parsed: URL, out: TextIO) -> bool:
    is_sqlite = parsed.get_backend_name() == "sqlite"
    connect_args = {"timeout": 0.1} if is_sqlite else {}
    print(
        f"sqlalchemy-resilience demo: error translation on {parsed.get_backend_name()}"
        f" ({parsed.render_as_string(hide_password=True)})",
        file=out,
    )
    if parsed.get_dialect().is_async:
        import asyncio

        async def run_async() -> list[DemoStep]:
            engine = create_async_engine(parsed, connect_args=connect_args)
            if is_sqlite:
                event.listen(engine.sync_engine, "connect", _sqlite_foreign_keys)
            instrument(engine)
            try:
                async with engine.connect() as conn:
                    return await conn.run_sync(_tour, parsed)
            finally:
                await engine.dispose()

        steps = asyncio.run(run_async())
    else:
        engine: Engine = create_engine(parsed, connect_args=connect_args)
        if is_sqlite:
            event.listen(engine, "connect", _sqlite_foreign_keys)
        instrument(engine)
        try:
            with engine.connect() as conn:
                steps = _tour(conn, parsed)
        finally:
            engine.dispose()
    _report(steps, out)
    good = sum(step.ok for step in steps)
    print(f"\n{good}/{len(steps)} failures arrived as the expected typed error.", file=out)
    return good == len(steps)


def _section(name: str, parsed: URL, out: TextIO, server: EmbeddedPostgres | None) -> bool:
    import asyncio

    if name == "errors":
        return _errors_section(parsed, out)
    if name == "retry":
        from .breaker import breaker_tour

        ok = True
        if parsed.get_backend_name() == "sqlite" and parsed.database:
            from .retry import sqlite_busy_tour

            ok = sqlite_busy_tour(parsed, out)
        elif server is not None and parsed.get_dialect().is_async:
            from .retry import restart_tour

            ok = asyncio.run(restart_tour(server, parsed, out))
        else:
            print("\n(retry: the restart tour needs --embedded-postgres)", file=out)
        return asyncio.run(breaker_tour(parsed, out)) and ok
    if name == "observe":
        from .breaker import metrics_tour
        from .observe import observability_tour

        ok = asyncio.run(observability_tour(parsed, out))
        return asyncio.run(metrics_tour(parsed, out)) and ok
    if name == "sagas":
        from .saga import saga_tour

        return asyncio.run(saga_tour(parsed, out))
    if name == "batch":
        from .batch import batch_tour

        return asyncio.run(batch_tour(parsed, out))
    if name == "migrations":
        from .migrations import migrations_tour

        return migrations_tour(parsed, out)
    if name == "deploy":
        from .deploy import deployment_tour

        return deployment_tour(parsed, out, server)
    raise ValueError(f"section must be one of {', '.join(SECTIONS)}, got {name!r}")


def run_demo(
    url: str | URL,
    *,
    out: TextIO | None = None,
    server: EmbeddedPostgres | None = None,
    sections: Sequence[str] | None = None,
) -> int:
    """Run the tour against ``url`` and print it; returns 0 when every step behaved.

    Args:
        url: any SQLAlchemy URL, sync (``sqlite:///x.db``) or async (``postgresql+asyncpg://...``).
        out: where to print (stdout by default).
        server: the embedded PostgreSQL behind ``url``, when the demo owns it:
            the retry part then restarts it under load, the deployments part
            starts a replica beside it.
        sections: the parts to run (names from :data:`SECTIONS`), all by default.

    Raises:
        ValueError: an unknown section name.

    Example::

        run_demo("sqlite:///demo.db", sections=["errors", "batch"])
    """
    out = out or sys.stdout
    chosen = list(SECTIONS) if sections is None else list(sections)
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown:
        raise ValueError(f"section must be one of {', '.join(SECTIONS)}, got {unknown[0]!r}")
    parsed = make_url(url)
    ok = True
    for name in chosen:
        ok = _section(name, parsed, out, server) and ok
    return 0 if ok else 1


def default_sqlite_url(directory: str | Path | None = None) -> URL:
    """A SQLite file URL in ``directory`` (a new temporary directory by default).

    Uses aiosqlite (async) when it is installed, else the standard library's sqlite3.
    """
    base = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="sr-demo-"))
    try:
        import aiosqlite  # noqa: F401

        driver = "sqlite+aiosqlite"
    except ImportError:
        driver = "sqlite"
    return URL.create(driver, database=str(base / "demo.sqlite"))
