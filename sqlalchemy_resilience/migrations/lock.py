"""The migration lock: while one instance migrates, the others wait, then find the schema at head.

On PostgreSQL a session-level advisory lock on the migrating connection
(``pg_try_advisory_lock``, polled, so the wait has a deadline and no
transaction stays open meanwhile). Session-level because Alembic commits
after each migration; the server releases it if the process dies. The key is
derived from the version table's name, so two environments in one database
(the application's and this package's) do not wait for each other.

On MySQL and MariaDB a named lock (``GET_LOCK``, polled with a zero wait):
also session-level, released by the server with the session. Named locks are
server-wide, so the name is derived from the database and the version table.

On a SQLite file, an exclusive ``flock`` on a file beside the database
(SQLite has no server to hold a lock; the database file's own lock cannot be
held across Alembic's transactions). Elsewhere no lock is taken, and the log
says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from sqlalchemy_resilience.errors.operations import MigrationLockTimeout

__all__ = [
    "LockInfo",
    "lock_key",
    "lock_name",
    "migration_lock",
]

log = logging.getLogger("sqlalchemy_resilience.migrations")

_POLL_FIRST = 0.05
_POLL_MAX = 1.0


@dataclass(frozen=True)
class LockInfo:
    """What taking the lock involved.

    Attributes:
        kind: ``"advisory"`` (PostgreSQL), ``"named"`` (MySQL, MariaDB),
            ``"file"`` (SQLite) or ``"none"``.
        waited: seconds spent waiting for another instance.

    Example::

        with migration_lock(connection, version_table="alembic_version", wait=60) as info:
            print(info.kind, info.waited)
    """

    kind: str
    waited: float


def lock_key(version_table: str) -> int:
    """The advisory lock key for a version table: a signed 64-bit number derived from its name.

    Example::

        >>> lock_key("alembic_version") == lock_key("alembic_version")
        True
    """
    digest = hashlib.sha256(b"sqlalchemy-resilience/migrate\x00" + version_table.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _holder(connection: Connection, key: int) -> int | None:
    # pg_locks splits a bigint advisory key into classid (high) and objid (low) halves.
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    from sqlalchemy import column, table

    locks = table(
        "pg_locks",
        column("pid"),
        column("locktype"),
        column("classid"),
        column("objid"),
        column("granted"),
    )
    row = connection.execute(
        select(locks.c.pid).where(
            locks.c.locktype == "advisory",
            locks.c.granted.is_(True),
            locks.c.classid == unsigned >> 32,
            locks.c.objid == unsigned & 0xFFFFFFFF,
        )
    ).first()
    return int(row[0]) if row is not None else None


@contextlib.contextmanager
def _session_lock(
    connection: Connection,
    kind: str,
    *,
    take: Any,
    holder: Callable[[], int | None],
    release: Any,
    holder_label: str,
    wait: float,
) -> Iterator[LockInfo]:
    """A lock the server holds for the session: tried without waiting, polled until ``wait``."""
    started = time.monotonic()
    pause = _POLL_FIRST
    announced = False
    while True:
        got = bool(connection.execute(select(take)).scalar())
        connection.commit()  # never sit "idle in transaction" while waiting
        if got:
            break
        waited = time.monotonic() - started
        held_by = holder()
        connection.commit()
        if waited >= wait:
            raise MigrationLockTimeout(waited, held_by)
        if not announced:
            log.info("waiting for the migration lock (held by %s %s)", holder_label, held_by)
            announced = True
        time.sleep(min(pause, max(wait - waited, 0.0)))
        pause = min(pause * 2, _POLL_MAX)
    try:
        yield LockInfo(kind, time.monotonic() - started)
    finally:
        with contextlib.suppress(Exception):
            # A broken connection: the server released the lock with the session.
            if connection.in_transaction():
                connection.rollback()
            connection.execute(select(release))
            connection.commit()


def _advisory(connection: Connection, key: int, wait: float) -> Any:
    return _session_lock(
        connection,
        "advisory",
        take=func.pg_try_advisory_lock(key),
        holder=lambda: _holder(connection, key),
        release=func.pg_advisory_unlock(key),
        holder_label="backend pid",
        wait=wait,
    )


def lock_name(database: str, version_table: str) -> str:
    """The MySQL named lock for a database's version table (64 characters at most).

    Example::

        >>> lock_name("app", "alembic_version").startswith("sqlalchemy-resilience/migrate/")
        True
    """
    digest = hashlib.sha256(f"{database}\x00{version_table}".encode()).hexdigest()
    return f"sqlalchemy-resilience/migrate/{digest[:32]}"


def _named(connection: Connection, name: str, wait: float) -> Any:
    def holder() -> int | None:
        found = connection.execute(select(func.is_used_lock(name))).scalar()
        return int(found) if found is not None else None

    return _session_lock(
        connection,
        "named",
        take=func.get_lock(name, 0),
        holder=holder,
        release=func.release_lock(name),
        holder_label="connection",
        wait=wait,
    )


@contextlib.contextmanager
def _file_lock(path: str, wait: float) -> Iterator[LockInfo]:
    import fcntl

    started = time.monotonic()
    pause = _POLL_FIRST
    handle: IO[bytes] = open(path, "ab")  # noqa: SIM115 - held for the duration of the block
    try:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                waited = time.monotonic() - started
                if waited >= wait:
                    raise MigrationLockTimeout(waited) from None
                time.sleep(min(pause, max(wait - waited, 0.0)))
                pause = min(pause * 2, _POLL_MAX)
        try:
            yield LockInfo("file", time.monotonic() - started)
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    finally:
        handle.close()


@contextlib.contextmanager
def migration_lock(
    connection: Connection, *, version_table: str, wait: float
) -> Iterator[LockInfo]:
    """Hold the migration lock for ``version_table`` on ``connection`` for the block.

    Raises:
        MigrationLockTimeout: another instance held it for ``wait`` seconds.

    Example::

        with migration_lock(connection, version_table="alembic_version", wait=60):
            context.run_migrations()
    """
    name = connection.dialect.name
    if name == "postgresql":
        with _advisory(connection, lock_key(version_table), wait) as info:
            yield info
        return
    database = connection.engine.url.database
    if name in ("mysql", "mariadb"):
        current = connection.execute(select(func.database())).scalar() or database or ""
        connection.commit()
        with _named(connection, lock_name(str(current), version_table), wait) as info:
            yield info
        return
    if name == "sqlite" and database and database != ":memory:" and os.name == "posix":
        with _file_lock(f"{database}.migrate-lock", wait) as info:
            yield info
        return
    log.warning("no migration lock on %s: run one migrating instance at a time", name)
    yield LockInfo("none", 0.0)
