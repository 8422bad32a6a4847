"""Error translation on the embedded default, SQLite (sqlite3 and aiosqlite); no server needed."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy.exc as sa_exc
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.ext.asyncio import create_async_engine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import instrument
from sqlalchemy_resilience.retry import is_infrastructure_failure

CANARY = "CANARY-param-sqlite-11aa"

SCHEMA = [
    "CREATE TABLE parent (id INTEGER PRIMARY KEY, email TEXT UNIQUE,"
    " qty INTEGER NOT NULL DEFAULT 0 CONSTRAINT qty_non_negative CHECK (qty >= 0))",
    "CREATE TABLE child (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id))",
    "INSERT INTO parent (id, email) VALUES (1, 'taken@example.com')",
]


def _foreign_keys_on(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _fk(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        dbapi_conn.execute("PRAGMA foreign_keys = ON")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """A file SQLite engine with the test schema, instrumented."""
    eng = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}", connect_args={"timeout": 0.05})
    _foreign_keys_on(eng)
    with eng.begin() as conn:
        for stmt in SCHEMA:
            conn.execute(text(stmt))
    instr = instrument(eng)
    yield eng
    instr.detach()
    eng.dispose()


def test_unique_violation(engine: Engine) -> None:
    """SQLITE_CONSTRAINT_UNIQUE becomes UniqueViolation with table and column, still an IntegrityError."""
    with pytest.raises(sa_exc.IntegrityError) as info, engine.begin() as conn:
        conn.execute(text("INSERT INTO parent (id, email) VALUES (2, 'taken@example.com')"))
    err = info.value
    assert isinstance(err, sr.UniqueViolation)
    assert (err.table_name, err.column_name, err.retryable) == ("parent", "email", False)
    assert err.user_message("ja") == "このデータは既に登録されています。"


def test_primary_key_violation(engine: Engine) -> None:
    """A duplicate primary key is a UniqueViolation too."""
    with pytest.raises(sr.UniqueViolation), engine.begin() as conn:
        conn.execute(text("INSERT INTO parent (id, email) VALUES (1, :e)"), {"e": CANARY})


def test_foreign_key_not_null_check(engine: Engine) -> None:
    """Foreign key, NOT NULL and CHECK failures map to their own classes."""
    with pytest.raises(sr.ForeignKeyViolation), engine.begin() as conn:
        conn.execute(text("INSERT INTO child VALUES (1, 999)"))
    with pytest.raises(sr.NotNullViolation) as nn, engine.begin() as conn:
        conn.execute(text("INSERT INTO parent (id, email, qty) VALUES (5, 'x', NULL)"))
    assert (nn.value.table_name, nn.value.column_name) == ("parent", "qty")
    with pytest.raises(sr.CheckViolation) as ck, engine.begin() as conn:
        conn.execute(text("INSERT INTO parent (id, email, qty) VALUES (6, :e, -1)"), {"e": CANARY})
    assert ck.value.constraint_name == "qty_non_negative"
    # SQLAlchemy's own text shows the parameter (the engine did not hide it);
    # the package's own forms never do.
    assert CANARY in str(ck.value)
    assert CANARY not in ck.value.safe_text() and CANARY not in repr(ck.value)


def test_busy_is_retryable_lock_not_available(engine: Engine) -> None:
    """SQLITE_BUSY after the busy timeout (recipe e10) becomes LockNotAvailable, retryable."""
    holder = engine.raw_connection()
    try:
        holder.driver_connection.execute("BEGIN IMMEDIATE")  # type: ignore[union-attr]
        holder.driver_connection.execute("INSERT INTO parent (id, email) VALUES (50, 'h')")  # type: ignore[union-attr]
        with pytest.raises(sr.LockNotAvailable) as info, engine.begin() as conn:
            conn.execute(text("INSERT INTO parent (id, email) VALUES (51, 'w')"))
    finally:
        holder.driver_connection.rollback()  # type: ignore[union-attr]
        holder.close()
    err = info.value
    assert err.retryable is True
    assert isinstance(err, sa_exc.OperationalError)
    assert err.driver_code in {"SQLITE_BUSY", None} or err.driver_code.startswith("SQLITE_BUSY")


def _wal_database(path: Path) -> Path:
    """A WAL-mode database with one row: a deferred reader then writer hits BUSY_SNAPSHOT."""
    setup = sqlite3.connect(path)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER)")
    setup.execute("INSERT INTO t VALUES (1, 0)")
    setup.commit()
    setup.close()
    return path


def test_busy_snapshot_is_serialization_failure(tmp_path: Path) -> None:
    """SQLITE_BUSY_SNAPSHOT (deferred read then write in WAL, recipe e10) becomes SerializationFailure."""
    path = _wal_database(tmp_path / "wal.sqlite")
    eng = create_engine(
        f"sqlite:///{path}", connect_args={"timeout": 0.05, "isolation_level": None}
    )
    instrument(eng)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        with eng.connect() as a:
            a.exec_driver_sql("BEGIN")
            a.execute(text("SELECT v FROM t WHERE id = 1")).scalar_one()
            other.execute("UPDATE t SET v = v + 1 WHERE id = 1")
            with pytest.raises(sr.ResilienceError) as info:
                a.execute(text("UPDATE t SET v = v + 10 WHERE id = 1"))
            a.exec_driver_sql("ROLLBACK")
    finally:
        other.close()
        eng.dispose()
    err = info.value
    assert err.retryable is True
    assert isinstance(err, sr.SerializationFailure)
    assert err.driver_code == "SQLITE_BUSY_SNAPSHOT"


async def test_aiosqlite_busy_snapshot_is_serialization_failure(tmp_path: Path) -> None:
    """The same SQLITE_BUSY_SNAPSHOT through aiosqlite, whose worker thread owns the connection."""
    pytest.importorskip("aiosqlite")
    path = _wal_database(tmp_path / "wal-async.sqlite")
    eng = create_async_engine(
        f"sqlite+aiosqlite:///{path}", connect_args={"timeout": 0.05, "isolation_level": None}
    )
    instrument(eng)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        async with eng.connect() as a:
            await a.exec_driver_sql("BEGIN")
            (await a.execute(text("SELECT v FROM t WHERE id = 1"))).scalar_one()
            other.execute("UPDATE t SET v = v + 1 WHERE id = 1")
            with pytest.raises(sr.SerializationFailure) as info:
                await a.execute(text("UPDATE t SET v = v + 10 WHERE id = 1"))
            await a.exec_driver_sql("ROLLBACK")
    finally:
        other.close()
        await eng.dispose()
    assert info.value.driver_code == "SQLITE_BUSY_SNAPSHOT"
    assert info.value.retryable is True


def test_no_such_table_keeps_operational_error(engine: Engine) -> None:
    """sqlite3 reports a missing table as OperationalError: the translation is both InvalidStatement and OperationalError."""
    with pytest.raises(sa_exc.OperationalError) as info, engine.connect() as conn:
        conn.execute(text("SELECT * FROM missing_table"))
    err = info.value
    assert isinstance(err, sr.InvalidStatement)
    assert isinstance(err, sa_exc.ProgrammingError)
    assert type(err).__name__ == "InvalidStatement"
    assert err.retryable is False


def test_interrupt_is_query_timeout(engine: Engine) -> None:
    """A statement interrupted by sqlite3's interrupt() (how SQLite times out queries) becomes QueryTimeout."""
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        timer = threading.Timer(0.05, raw.interrupt)
        timer.start()
        try:
            with pytest.raises(sr.QueryTimeout) as info:
                conn.execute(
                    text(
                        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)"
                        " SELECT count(*) FROM c"
                    )
                )
        finally:
            timer.cancel()
    assert info.value.retryable is False


async def test_aiosqlite_unique_violation(tmp_path: Path) -> None:
    """The same translation through aiosqlite and an AsyncEngine."""
    pytest.importorskip("aiosqlite")
    eng = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'a.sqlite'}")
    instr = instrument(eng)
    try:
        async with eng.begin() as conn:
            for stmt in SCHEMA:
                await conn.execute(text(stmt))
        with pytest.raises(sr.UniqueViolation) as info:
            async with eng.begin() as conn:
                await conn.execute(
                    text("INSERT INTO parent (id, email) VALUES (7, 'taken@example.com')")
                )
        assert info.value.column_name == "email"
    finally:
        instr.detach()
        await eng.dispose()


def test_full_database_is_insufficient_resources(
    tmp_path: Path, sync_engines: list[Engine]
) -> None:
    """SQLITE_FULL (the file reached max_page_count) becomes InsufficientResources, not retried."""
    eng = create_engine(f"sqlite:///{tmp_path / 'full.sqlite'}")
    sync_engines.append(eng)

    @event.listens_for(eng, "connect")
    def _cap(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        dbapi_conn.execute("PRAGMA max_page_count = 8")

    instrument(eng)
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE blob (b BLOB)"))
    with pytest.raises(sr.InsufficientResources) as info, eng.begin() as conn:
        conn.execute(text("INSERT INTO blob VALUES (zeroblob(100000))"))
    assert info.value.driver_code == "SQLITE_FULL"
    assert info.value.retryable is False
    assert is_infrastructure_failure(info.value)


def test_not_a_database_is_storage_failure(tmp_path: Path, sync_engines: list[Engine]) -> None:
    """A file that is not a SQLite database (SQLITE_NOTADB) becomes StorageFailure, not retried."""
    path = tmp_path / "garbage.sqlite"
    path.write_bytes(b"this is not a database file at all " * 200)
    eng = create_engine(f"sqlite:///{path}")
    sync_engines.append(eng)
    instrument(eng)
    with pytest.raises(sr.StorageFailure) as info, eng.connect() as conn:
        conn.execute(text("SELECT * FROM sqlite_master"))
    assert info.value.driver_code == "SQLITE_NOTADB"
    assert info.value.retryable is False
    assert "try again in a moment" not in info.value.user_message("en")


def test_unopenable_file_is_database_not_found(tmp_path: Path, sync_engines: list[Engine]) -> None:
    """SQLITE_CANTOPEN (a directory that does not exist) becomes DatabaseNotFound: waiting
    will not fix it, and the user message does not say to try again."""
    eng = create_engine(f"sqlite:///{tmp_path / 'missing' / 'db.sqlite'}")
    sync_engines.append(eng)
    instrument(eng)
    with pytest.raises(sr.DatabaseNotFound) as info, eng.connect():
        pass
    err = info.value
    assert err.driver_code is not None and err.driver_code.startswith("SQLITE_CANTOPEN")
    assert err.retryable is False
    assert isinstance(err, sr.DatabaseUnavailable)
    for locale, words in (("en", "try again"), ("ja", "再度お試し")):
        assert words not in err.user_message(locale)


def test_readonly_file_is_permission_denied(tmp_path: Path, sync_engines: list[Engine]) -> None:
    """A write to a database opened read-only (SQLITE_READONLY) is PermissionDenied, not retried."""
    path = tmp_path / "ro.sqlite"
    setup = sqlite3.connect(path)
    setup.execute("CREATE TABLE t (i INTEGER)")
    setup.commit()
    setup.close()
    eng = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    sync_engines.append(eng)
    instrument(eng)
    with pytest.raises(sr.PermissionDenied) as info, eng.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (1)"))
    assert info.value.driver_code is not None
    assert info.value.driver_code.startswith("SQLITE_READONLY")
    assert info.value.retryable is False
