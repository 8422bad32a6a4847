"""The chunk driver of the batch helpers: one retried transaction per chunk, the run's result.

:class:`Target` turns an engine, connection, session or sessionmaker into
"one transaction per chunk"; :class:`Run` drives the chunks (job records,
retries, locating the first failing row, progress) and builds the
:class:`BulkResult`. What each chunk writes is :mod:`.statements`' and
:mod:`.writes`' business.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Table, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.util import await_only

from sqlalchemy_resilience.errors.operations import BatchChunkFailed, JobConflict
from sqlalchemy_resilience.errors.translate import describe, translate_error
from sqlalchemy_resilience.retry.policy import RetryPolicy
from sqlalchemy_resilience.schema import batch_jobs
from sqlalchemy_resilience.transactions.context import transaction_sync

from . import jobs
from .tables import Chunk, check_table_name, chunks, resolve_table

__all__ = [
    "BulkResult",
    "OnConflict",
    "Progress",
    "Run",
    "Target",
    "check_keys",
    "reflect_table",
]

_log = logging.getLogger("sqlalchemy_resilience.batch")

OnConflict = Literal["error", "ignore", "update"]
Progress = Callable[[int, float], Any]

_DEFAULT_RETRY = RetryPolicy(attempts=5)


@dataclass(frozen=True)
class BulkResult:
    """What a bulk write did.

    Attributes:
        rows: rows written by this call (a resumed job's earlier rows not included).
        chunks: chunks committed by this call.
        path: ``"copy"``, ``"insertmanyvalues"`` or ``"executemany"``.
        seconds: wall time of the call.
        returned: the ``returning`` rows, in input order, or None.
        job: the job name, for a resumable run.
        skipped_chunks: chunks a resumed job had committed before and skipped.

    Example::

        result = await bulk_insert(engine, events, rows, chunk_size=5000)
        print(result.path, result.rows, f"{result.rows_per_second:,.0f} rows/s")
    """

    rows: int
    chunks: int
    path: str
    seconds: float
    returned: list[Row[Any]] | None = None
    job: str | None = None
    skipped_chunks: int = 0

    @property
    def rows_per_second(self) -> float:
        """Rows written per second of this call."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0


class _Rollback(Exception):
    """Ends a probing transaction with a rollback, carrying its finding."""

    def __init__(self, found: int | None) -> None:
        super().__init__()
        self.found = found


class Target:
    """Where chunks go: one transaction per chunk on an engine, connection, session or sessionmaker."""

    def __init__(self, target: Any, *, is_async: bool) -> None:
        allowed: tuple[type, ...] = (
            (AsyncEngine, AsyncConnection, AsyncSession, async_sessionmaker)
            if is_async
            else (Engine, Connection, Session, sessionmaker)
        )
        if not isinstance(target, allowed):
            other = "bulk_*_sync" if is_async else "the async bulk_* function"
            raise TypeError(
                f"target must be one of {[t.__name__ for t in allowed]}, got "
                f"{type(target).__name__} (for the other kind use {other})"
            )
        if isinstance(target, (AsyncConnection, Connection, AsyncSession, Session)) and (
            target.in_transaction()
        ):
            raise ValueError(
                "bulk writes commit each chunk in its own transaction, and this "
                f"{type(target).__name__} is in a transaction: commit it first, or pass the engine"
            )
        self.target: Any = target
        self.is_async = is_async
        self.engine = self._engine()

    def _engine(self) -> Engine:
        target = self.target
        if isinstance(target, AsyncEngine):
            return target.sync_engine
        if isinstance(target, AsyncConnection):
            return target.sync_engine
        if isinstance(target, Engine):
            return target
        if isinstance(target, Connection):
            return target.engine
        if isinstance(target, (async_sessionmaker, sessionmaker)):
            bind = target.kw.get("bind")
            if bind is None:
                raise ValueError("the sessionmaker has no bind: create it with the engine")
            return bind.sync_engine if isinstance(bind, AsyncEngine) else _sync_bind(bind)
        return _sync_bind(target.get_bind())

    def run(self, body: Callable[[Connection], Any]) -> Any:
        """One transaction running ``body(conn)`` on SQLAlchemy's sync ``Connection``, committed.

        For an async target this runs inside SQLAlchemy's greenlet (the
        async functions call the whole write through ``greenlet_spawn``):
        the sync counterpart of the target is used, as ``AsyncSession`` and
        ``AsyncConnection`` do themselves.
        """
        with transaction_sync(self._sync_target()) as handle:
            conn = handle.connection() if isinstance(handle, Session) else handle
            return body(conn)

    def _sync_target(self) -> Any:
        target = self.target
        if isinstance(target, AsyncEngine):
            return target.sync_engine
        if isinstance(target, AsyncConnection):
            return target.sync_connection
        if isinstance(target, AsyncSession):
            return target.sync_session
        if isinstance(target, async_sessionmaker):
            # The chunk's own session, closed with the transaction.
            return _SyncSessions(target)
        return target

    def sleep(self, seconds: float) -> None:
        """The retry backoff: ``asyncio.sleep`` awaited from the greenlet for an async target."""
        if self.is_async:
            await_only(asyncio.sleep(seconds))
        else:
            time.sleep(seconds)


class _SyncSessions(sessionmaker[Session]):
    """A ``sessionmaker`` whose sessions are an ``async_sessionmaker``'s ``sync_session``."""

    def __init__(self, factory: async_sessionmaker[Any]) -> None:
        super().__init__(**factory.kw)
        self._factory = factory

    def __call__(self, **local_kw: Any) -> Session:
        session: Session = self._factory(**local_kw).sync_session
        return session


def _sync_bind(bind: Any) -> Engine:
    if isinstance(bind, AsyncEngine):
        return bind.sync_engine
    if isinstance(bind, (Connection, AsyncConnection)):
        return bind.engine if isinstance(bind, Connection) else bind.sync_engine
    return bind  # type: ignore[no-any-return]


def _check_chunk_size(chunk_size: object) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    return chunk_size


def check_keys(chunk: Chunk, keys: list[str], table: Table) -> None:
    """Every row of the chunk has exactly the first row's columns (known to the table)."""
    expected = set(keys)
    for offset, row in enumerate(chunk.rows):
        if row.keys() != expected:
            extra = sorted(set(row) - expected)
            missing = sorted(expected - set(row))
            raise ValueError(
                f"row {chunk.start + offset} has other columns than the first row "
                f"(extra {extra}, missing {missing}); table {table.name!r}"
            )


class Run:
    """One bulk write call: options resolved, chunks driven, the result assembled."""

    def __init__(
        self,
        target: Target,
        *,
        operation: str,
        retry: RetryPolicy | None,
        progress: Progress | None,
        job: str | None,
        chunk_size: int,
        idempotent: bool,
    ) -> None:
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy or None, got {retry!r}")
        if progress is not None and not callable(progress):
            raise TypeError(
                f"progress must be a callable (rows_done, rows_per_second), got {progress!r}"
            )
        self.target = target
        self.operation = operation
        self.policy = retry or _DEFAULT_RETRY
        self.progress = progress
        self.job = None if job is None else jobs.check_job_name(job)
        self.chunk_size = _check_chunk_size(chunk_size)
        self.idempotent = idempotent or job is not None
        self.started = time.monotonic()
        self.rows = 0
        self.chunks = 0
        self.rows_before = 0

    def open(self, table: Table) -> jobs.JobState | None:
        if self.job is None:
            return None
        name, size = self.job, self.chunk_size
        table_name = f"{table.schema}.{table.name}" if table.schema else table.name
        state: jobs.JobState = self.target.run(
            lambda conn: jobs.open_job(conn, name, table_name, size)
        )
        self.rows_before = state.rows_done
        if state.chunks_done:
            _log.info(
                "batch job %s: resuming after %d committed chunks (%d rows)%s",
                name,
                state.chunks_done,
                state.rows_done,
                "; already finished" if state.finished else "",
            )
        return state

    def chunks_to_write(
        self, rows: Iterable[object], keys: list[str] | None, state: jobs.JobState | None
    ) -> Iterator[Chunk]:
        """The chunks still to write: after exactly the rows a resumed job committed."""
        if state is None or self.job is None:
            return chunks(rows, self.chunk_size, keys=keys)
        return chunks(
            rows,
            self.chunk_size,
            keys=keys,
            skip_rows=state.rows_done,
            first_index=state.chunks_done,
            on_short_input=jobs.short_input(self.job, state.rows_done),
        )

    def chunk(
        self,
        chunk: Chunk,
        body: Callable[[Connection], Any],
        probe: Callable[[Connection, dict[str, Any]], Any],
    ) -> Any:
        """Commit one chunk (with its job record), retried; a permanent failure is located and raised."""
        job = self.job
        retried = [False]

        def with_job(conn: Connection) -> Any:
            if job is not None:
                if retried[0] and _committed_before(conn, job, chunk.index):
                    return None  # an attempt whose COMMIT outcome was unknown did commit
                jobs.advance(conn, job, chunk.index, len(chunk.rows))
            return body(conn)

        try:
            retrying = self.policy.as_tenacity_sync(
                idempotent=self.idempotent, sleep=self.target.sleep
            )
            for attempt in retrying:
                with attempt:
                    retried[0] = attempt.retry_state.attempt_number > 1
                    result = self.target.run(with_job)
        except (JobConflict, asyncio.CancelledError):
            raise
        except Exception as exc:
            failure = translate_error(exc)
            bad = self._locate(chunk, probe) if _row_level(failure) else None
            raise BatchChunkFailed(
                chunk=chunk.index,
                first_row=chunk.start,
                last_row=chunk.end,
                bad_row=bad,
                rows_committed=self.rows_before + self.rows,
                error=describe(failure),
            ) from failure
        self.rows += len(chunk.rows)
        self.chunks += 1
        if self.progress is not None:
            elapsed = time.monotonic() - self.started
            self.progress(self.rows_before + self.rows, self.rows / elapsed if elapsed > 0 else 0.0)
        return result

    def _locate(
        self, chunk: Chunk, probe: Callable[[Connection, dict[str, Any]], Any]
    ) -> int | None:
        """Replay the chunk row by row under savepoints, then roll back: the first failing row."""

        def replay(conn: Connection) -> None:
            for offset, row in enumerate(chunk.rows):
                try:
                    with conn.begin_nested():
                        probe(conn, row)
                except Exception:
                    raise _Rollback(chunk.start + offset) from None
            raise _Rollback(None)

        try:
            self.target.run(replay)
        except _Rollback as found:
            return found.found
        except Exception:
            _log.debug("could not replay chunk %d to find the bad row", chunk.index, exc_info=True)
        return None

    def finish(self) -> None:
        if self.job is not None:
            name = self.job
            self.target.run(lambda conn: jobs.finish(conn, name))

    def result(self, path: str, returned: list[Row[Any]] | None, skipped: int) -> BulkResult:
        seconds = time.monotonic() - self.started
        _log.info(
            "%s: %d rows in %d chunks via %s in %.2f s (%.0f rows/s)%s",
            self.operation,
            self.rows,
            self.chunks,
            path,
            seconds,
            self.rows / seconds if seconds > 0 else 0.0,
            f"; job {self.job} skipped {skipped} committed chunks" if skipped else "",
        )
        return BulkResult(
            rows=self.rows,
            chunks=self.chunks,
            path=path,
            seconds=seconds,
            returned=returned,
            job=self.job,
            skipped_chunks=skipped,
        )


def _committed_before(conn: Connection, job: str, chunk: int) -> bool:
    done = conn.execute(select(batch_jobs.c.chunks_done).where(batch_jobs.c.job == job)).scalar()
    return done is not None and int(done) > chunk


def _row_level(failure: BaseException) -> bool:
    """Whether a failure can belong to one row (a constraint or a bad value), worth locating."""
    return isinstance(failure, (sa_exc.IntegrityError, sa_exc.DataError, ValueError))


def reflect_table(target: Target, name: str) -> Table:
    check_table_name(name)  # before the transaction the reflection runs in

    def reflect(conn: Connection) -> Table:
        return resolve_table(name, connection=conn)

    resolved: Table = target.run(reflect)
    return resolved
