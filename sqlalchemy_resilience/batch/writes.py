"""``bulk_insert`` and ``bulk_update``: chunked, each chunk its own retried transaction, resumable.

The rows come from any iterable and are consumed one chunk at a time. Each
chunk is one transaction (a :func:`~sqlalchemy_resilience.transaction`, so
SQLite chunks begin ``IMMEDIATE``), retried under a :class:`RetryPolicy` on
transient errors. A chunk that fails for good stops the run with
:class:`BatchChunkFailed`, naming the chunk and -- found by replaying that
chunk row by row under savepoints, rolled back -- the first row that fails;
the chunks before it stay committed.

Paths: PostgreSQL through asyncpg with no conflict handling and no
``returning`` uses ``COPY`` (asyncpg's ``copy_records_to_table`` on the raw
connection, values passed through the columns' own bind processors);
everything else SQLAlchemy's ``insertmanyvalues`` (multi-row ``INSERT ...
VALUES``, batched by the dialect) or ``executemany`` for updates. The path
taken is in the result and in the log record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Column, MetaData, Table, and_, bindparam, insert, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.schema import DDLElement

from sqlalchemy_resilience.errors.hierarchy import ResilienceError
from sqlalchemy_resilience.errors.translate import describe, translate_error
from sqlalchemy_resilience.retry.policy import RetryPolicy
from sqlalchemy_resilience.schema import batch_jobs
from sqlalchemy_resilience.transactions.context import transaction, transaction_sync

from . import jobs
from .tables import Chunk, chunks, column_names, resolve_columns, resolve_table

__all__ = [
    "BatchChunkFailed",
    "BulkResult",
    "bulk_insert",
    "bulk_insert_sync",
    "bulk_update",
    "bulk_update_sync",
]

_log = logging.getLogger("sqlalchemy_resilience.batch")

OnConflict = Literal["error", "ignore", "update"]
Progress = Callable[[int, float], Any]

_DEFAULT_RETRY = RetryPolicy(attempts=5)
_UPSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


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


class BatchChunkFailed(ResilienceError):
    """A chunk failed for good: the run stopped there; the chunks before it stay committed.

    Attributes:
        chunk: the chunk's index (0-based).
        first_row, last_row: the input positions (0-based) of the chunk's rows.
        bad_row: the input position of the first row that fails on its own, or
            None when no single row does (the chunk failed as a whole: a lost
            connection, a deadline, ...).
        rows_committed: rows committed before this chunk (by this call and,
            for a job, the runs before it).

    The translated database error is ``__cause__``.
    """

    def __init__(
        self,
        *,
        chunk: int,
        first_row: int,
        last_row: int,
        bad_row: int | None,
        rows_committed: int,
        error: str,
    ) -> None:
        where = f"at row {bad_row}" if bad_row is not None else "(no single row fails alone)"
        super().__init__(
            f"chunk {chunk} (rows {first_row}-{last_row}) failed {where}: {error}; "
            f"the {rows_committed} rows before it stay committed",
            retryable=False,
        )
        self.chunk = chunk
        self.first_row = first_row
        self.last_row = last_row
        self.bad_row = bad_row
        self.rows_committed = rows_committed
        self.error = error


class _Rollback(Exception):
    """Ends a probing transaction with a rollback, carrying its finding."""

    def __init__(self, found: int | None) -> None:
        super().__init__()
        self.found = found


class _Target:
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

    async def run(
        self,
        body: Callable[[Connection], Any],
        copy: Callable[[AsyncConnection], Awaitable[Any]] | None = None,
    ) -> Any:
        """One transaction: ``copy(async_conn)`` or ``body(sync_conn)``, committed."""
        if self.is_async:
            async with transaction(self.target) as handle:
                conn = await handle.connection() if isinstance(handle, AsyncSession) else handle
                if copy is not None:
                    return await copy(conn)
                return await conn.run_sync(body)
        with transaction_sync(self.target) as sync_handle:
            sync_conn = (
                sync_handle.connection() if isinstance(sync_handle, Session) else sync_handle
            )
            return body(sync_conn)


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


def _check_keys(chunk: Chunk, keys: list[str], table: Table) -> None:
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


class _Run:
    """One bulk write call: options resolved, chunks driven, the result assembled."""

    def __init__(
        self,
        target: _Target,
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

    async def open(self, table: Table) -> jobs.JobState | None:
        if self.job is None:
            return None
        name, size = self.job, self.chunk_size
        table_name = f"{table.schema}.{table.name}" if table.schema else table.name
        state: jobs.JobState = await self.target.run(
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

    async def chunk(
        self,
        chunk: Chunk,
        body: Callable[[Connection], Any],
        copy: Callable[[AsyncConnection], Awaitable[Any]] | None,
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

        async def copy_with_job(conn: AsyncConnection) -> Any:
            assert copy is not None
            if job is not None:
                if retried[0] and await conn.run_sync(_committed_before, job, chunk.index):
                    return None
                # Also makes asyncpg begin the transaction the COPY must be part of.
                await conn.run_sync(jobs.advance, job, chunk.index, len(chunk.rows))
            return await copy(conn)

        try:
            async for attempt in self.policy.as_tenacity(idempotent=self.idempotent):
                with attempt:
                    retried[0] = attempt.retry_state.attempt_number > 1
                    result = await self.target.run(with_job, copy_with_job if copy else None)
        except (jobs.JobConflict, asyncio.CancelledError):
            raise
        except Exception as exc:
            failure = translate_error(exc)
            bad = await self._locate(chunk, probe) if _row_level(failure) else None
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

    async def _locate(
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
            await self.target.run(replay)
        except _Rollback as found:
            return found.found
        except Exception:
            _log.debug("could not replay chunk %d to find the bad row", chunk.index, exc_info=True)
        return None

    async def finish(self) -> None:
        if self.job is not None:
            name = self.job
            await self.target.run(lambda conn: jobs.finish(conn, name))

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


def _with_conflict(
    stmt: Any,
    on_conflict: OnConflict,
    conflict_columns: list[Column[Any]],
    columns: list[Column[Any]],
) -> Any:
    """``stmt`` (a PostgreSQL or SQLite insert) with its ON CONFLICT clause."""
    index = [c.key for c in conflict_columns] or None
    if on_conflict == "ignore":
        return stmt.on_conflict_do_nothing(index_elements=index)
    keys = {c.key for c in conflict_columns}
    changing = {c.key: stmt.excluded[c.key] for c in columns if c.key not in keys}
    if not changing:
        return stmt.on_conflict_do_nothing(index_elements=index)
    return stmt.on_conflict_do_update(index_elements=index, set_=changing)


def _insert_statement(
    table: Table,
    dialect: str,
    columns: list[Column[Any]],
    *,
    on_conflict: OnConflict,
    conflict_columns: list[Column[Any]],
    returning: list[Column[Any]] | None,
) -> Any:
    if on_conflict == "error":
        stmt: Any = insert(table)
    else:
        dialect_insert = _UPSERTS.get(dialect)
        if dialect_insert is None:
            raise ValueError(
                f"on_conflict={on_conflict!r} needs PostgreSQL or SQLite, not {dialect!r}"
            )
        stmt = _with_conflict(dialect_insert(table), on_conflict, conflict_columns, columns)
    if returning:
        stmt = stmt.returning(*returning, sort_by_parameter_order=True)
    return stmt


async def _bulk_insert(
    target: _Target,
    table: object,
    rows: Iterable[object],
    *,
    chunk_size: int,
    on_conflict: str,
    conflict_columns: Sequence[object] | None,
    returning: Sequence[object] | None,
    progress: Progress | None,
    retry: RetryPolicy | None,
    job: str | None,
    metadata: MetaData | None,
    columns: Sequence[object] | None,
    use_copy: bool | None,
) -> BulkResult:
    if on_conflict not in ("error", "ignore", "update"):
        raise ValueError(f"on_conflict must be 'error', 'ignore' or 'update', got {on_conflict!r}")
    run = _Run(
        target,
        operation="bulk_insert",
        retry=retry,
        progress=progress,
        job=job,
        chunk_size=chunk_size,
        idempotent=on_conflict != "error",
    )
    if isinstance(table, str) and metadata is None:
        resolved = await _reflect(target, table)
    else:
        resolved = resolve_table(table, metadata=metadata)
    tuple_columns = None if columns is None else resolve_columns(resolved, columns)
    conflict = (
        resolve_columns(resolved, conflict_columns, what="conflict column")
        if conflict_columns is not None
        else list(resolved.primary_key.columns)
    )
    if on_conflict == "update" and not conflict:
        raise ValueError(
            "on_conflict='update' needs conflict_columns= (the table has no primary key)"
        )
    returned_columns = (
        None if returning is None else resolve_columns(resolved, returning, what="returning column")
    )
    dialect = target.engine.dialect
    copy_possible = (
        target.is_async
        and dialect.name == "postgresql"
        and dialect.driver == "asyncpg"
        and not returned_columns
    )
    if use_copy is True and not copy_possible:
        raise ValueError(
            "use_copy=True needs an async PostgreSQL target through asyncpg and no returning"
        )
    if copy_possible and use_copy is not False:
        # With conflict handling: COPY into a temporary table, then one
        # INSERT ... SELECT ... ON CONFLICT per chunk (benchmarks/bulk.py).
        path = "copy" if on_conflict == "error" else "copy+merge"
    else:
        path = "insertmanyvalues"
    state = await run.open(resolved)
    skip = 0 if state is None else state.chunks_done
    returned: list[Row[Any]] | None = [] if returned_columns else None
    if state is not None and state.finished:
        return run.result(path, returned, skip)
    keys = None if tuple_columns is None else column_names(tuple_columns)
    statement: Any = None
    merge: Any = None
    names: list[str] = []
    processors: list[Any] = []
    _log.info(
        "bulk_insert into %s: %s path, chunks of %d%s",
        resolved.name,
        path,
        run.chunk_size,
        f", job {job}" if job else "",
    )
    for chunk in chunks(rows, run.chunk_size, keys=keys, skip_chunks=skip):
        if statement is None:
            names = list(chunk.rows[0])
            cols = resolve_columns(resolved, names)
            statement = _insert_statement(
                resolved,
                dialect.name,
                cols,
                on_conflict=on_conflict,  # type: ignore[arg-type]
                conflict_columns=conflict,
                returning=returned_columns,
            )
            processors = [c.type.bind_processor(dialect) for c in cols]
        _check_keys(chunk, names, resolved)
        stmt = statement

        def body(
            conn: Connection, rows_: list[dict[str, Any]] = chunk.rows, stmt_: Any = stmt
        ) -> Any:
            result = conn.execute(stmt_, rows_)
            return result.all() if returned_columns else None

        def probe(conn: Connection, row: dict[str, Any], stmt_: Any = stmt) -> None:
            conn.execute(stmt_, [row])

        copy = None
        if path == "copy":
            copy = _copy(resolved, names, processors, chunk.rows)
        elif path == "copy+merge":
            if merge is None:
                merge = _merge_statement(
                    resolved,
                    names,
                    on_conflict=on_conflict,  # type: ignore[arg-type]
                    conflict_columns=conflict,
                )
            copy = _copy_merge(resolved, names, processors, chunk.rows, merge)
        out = await run.chunk(chunk, body, copy, probe)
        if returned is not None and out:
            returned.extend(out)
    await run.finish()
    return run.result(path, returned, skip)


def _copy(
    table: Table, names: list[str], processors: list[Any], rows: list[dict[str, Any]]
) -> Callable[[AsyncConnection], Awaitable[None]]:
    async def copy(conn: AsyncConnection) -> None:
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        # asyncpg quotes the identifiers itself; nothing is formatted here.
        await driver.copy_records_to_table(
            table.name,
            records=_records(names, processors, rows),
            columns=names,
            schema_name=table.schema,
        )

    return copy


class _TempLike(DDLElement):
    """``CREATE TEMPORARY TABLE <name> (LIKE <table>) ON COMMIT DROP``, compiled by SQLAlchemy."""

    inherit_cache = False

    def __init__(self, name: str, table: Table) -> None:
        self.name = name
        self.table = table


@compiles(_TempLike, "postgresql")
def _compile_temp_like(element: _TempLike, compiler: Any, **kw: Any) -> str:
    preparer = compiler.preparer
    return (
        f"CREATE TEMPORARY TABLE {preparer.quote(element.name)} "
        f"(LIKE {preparer.format_table(element.table)}) ON COMMIT DROP"
    )


_MERGE_TABLE = "sqlalchemy_resilience_bulk_merge"


def _merge_statement(
    table: Table,
    names: list[str],
    *,
    on_conflict: OnConflict,
    conflict_columns: list[Column[Any]],
) -> Any:
    """``INSERT INTO table (names) SELECT names FROM <staging> ON CONFLICT ...``."""
    staging = Table(
        _MERGE_TABLE, MetaData(), *(Column(table.c[n].name, table.c[n].type) for n in names)
    )
    stmt = postgresql.insert(table).from_select(names, select(*(staging.c[n] for n in names)))
    return _with_conflict(stmt, on_conflict, conflict_columns, [table.c[n] for n in names])


def _copy_merge(
    table: Table,
    names: list[str],
    processors: list[Any],
    rows: list[dict[str, Any]],
    merge: Any,
) -> Callable[[AsyncConnection], Awaitable[None]]:
    """COPY the chunk into a temporary copy of the table, then insert it with ON CONFLICT."""

    async def copy(conn: AsyncConnection) -> None:
        await conn.execute(_TempLike(_MERGE_TABLE, table))
        raw = await conn.get_raw_connection()
        driver: Any = raw.driver_connection
        await driver.copy_records_to_table(
            _MERGE_TABLE, records=_records(names, processors, rows), columns=names
        )
        await conn.execute(merge)

    return copy


def _records(
    names: list[str], processors: list[Any], rows: list[dict[str, Any]]
) -> list[tuple[Any, ...]]:
    """The rows as tuples in column order, each value through its column's bind processor.

    Built column by column: one list comprehension per column is several times
    cheaper in CPython than a tuple assembled per row.
    """
    columns: list[list[Any]] = [[row[name] for row in rows] for name in names]
    for i, process in enumerate(processors):
        if process is not None:
            columns[i] = [None if value is None else process(value) for value in columns[i]]
    return list(zip(*columns, strict=True))


async def _reflect(target: _Target, name: str) -> Table:
    def reflect(conn: Connection) -> Table:
        return resolve_table(name, connection=conn)

    resolved: Table = await target.run(reflect)
    return resolved


async def _bulk_update(
    target: _Target,
    table: object,
    rows: Iterable[object],
    *,
    key: Sequence[object] | None,
    chunk_size: int,
    progress: Progress | None,
    retry: RetryPolicy | None,
    job: str | None,
    metadata: MetaData | None,
    columns: Sequence[object] | None,
) -> BulkResult:
    run = _Run(
        target,
        operation="bulk_update",
        retry=retry,
        progress=progress,
        job=job,
        chunk_size=chunk_size,
        idempotent=True,  # setting the same values twice is the same
    )
    if isinstance(table, str) and metadata is None:
        resolved = await _reflect(target, table)
    else:
        resolved = resolve_table(table, metadata=metadata)
    key_columns = (
        resolve_columns(resolved, key, what="key column")
        if key is not None
        else list(resolved.primary_key.columns)
    )
    if not key_columns:
        raise ValueError(f"table {resolved.name!r} has no primary key: pass key=[...]")
    tuple_columns = None if columns is None else resolve_columns(resolved, columns)
    state = await run.open(resolved)
    skip = 0 if state is None else state.chunks_done
    if state is not None and state.finished:
        return run.result("executemany", None, skip)
    keys = None if tuple_columns is None else column_names(tuple_columns)
    key_names = [c.key for c in key_columns]
    statement: Any = None
    names: list[str] = []
    for chunk in chunks(rows, run.chunk_size, keys=keys, skip_chunks=skip):
        if statement is None:
            names = list(chunk.rows[0])
            cols = resolve_columns(resolved, names)
            missing = [k for k in key_names if k not in names]
            if missing:
                raise ValueError(
                    f"rows of bulk_update need the key columns {key_names}; missing {missing}"
                )
            values = [c for c in cols if c.key not in key_names]
            if not values:
                raise ValueError("rows of bulk_update need at least one column besides the key")
            # Bound parameter names of our own: a column's own name is reserved in SET.
            statement = (
                update(resolved)
                .where(and_(*(c == bindparam(f"k_{i}") for i, c in enumerate(key_columns))))
                .values({c.key: bindparam(f"v_{i}") for i, c in enumerate(values)})
            )
            params_of = _parameters(key_names, [c.key for c in values])
        _check_keys(chunk, names, resolved)
        stmt = statement
        params = [params_of(row) for row in chunk.rows]

        def body(
            conn: Connection, params_: list[dict[str, Any]] = params, stmt_: Any = stmt
        ) -> None:
            conn.execute(stmt_, params_)

        def probe(
            conn: Connection, row: dict[str, Any], stmt_: Any = stmt, of: Any = params_of
        ) -> None:
            conn.execute(stmt_, [of(row)])

        await run.chunk(chunk, body, None, probe)
    await run.finish()
    return run.result("executemany", None, skip)


def _parameters(
    key_names: list[str], value_names: list[str]
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def params(row: dict[str, Any]) -> dict[str, Any]:
        out = {f"k_{i}": row[name] for i, name in enumerate(key_names)}
        out.update({f"v_{i}": row[name] for i, name in enumerate(value_names)})
        return out

    return params


def _blocking(coro: Awaitable[BulkResult]) -> BulkResult:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    close = getattr(coro, "close", None)
    if callable(close):
        close()
    raise RuntimeError("bulk_*_sync blocks; in async code await bulk_insert / bulk_update")


async def bulk_insert(
    target: AsyncEngine | AsyncConnection | AsyncSession | async_sessionmaker[Any],
    table: Table | type | str,
    rows: Iterable[object],
    *,
    chunk_size: int = 1000,
    on_conflict: OnConflict = "error",
    conflict_columns: Sequence[str | Column[Any]] | None = None,
    returning: Sequence[str | Column[Any]] | None = None,
    progress: Progress | None = None,
    retry: RetryPolicy | None = None,
    job: str | None = None,
    metadata: MetaData | None = None,
    columns: Sequence[str | Column[Any]] | None = None,
    use_copy: bool | None = None,
) -> BulkResult:
    """Insert ``rows`` in chunks, each chunk its own transaction, retried on transient errors.

    Args:
        target: an ``AsyncEngine``, ``AsyncConnection`` or ``AsyncSession`` (not in
            a transaction: each chunk commits) or an ``async_sessionmaker``.
        table: a ``Table``, an ORM class, or a name found in ``metadata`` (or reflected).
        rows: mappings (column -> value), or tuples with ``columns=``; any
            iterable, a generator of millions included, read one chunk at a time.
        chunk_size: rows per chunk (and per transaction).
        on_conflict: ``"error"``; ``"ignore"`` (``ON CONFLICT DO NOTHING``);
            ``"update"`` (``ON CONFLICT ... DO UPDATE`` of the other columns).
        conflict_columns: the unique columns conflicts are judged on (default: the primary key).
        returning: columns to return for every inserted row, in input order.
        progress: ``callback(rows_done, rows_per_second)`` after each chunk.
        retry: the :class:`RetryPolicy` of each chunk (default 5 attempts).
        job: a name making the run resumable: progress is recorded per chunk in
            ``sqlalchemy_resilience_batch_job`` (:func:`create_batch_tables`), and a
            re-run with the same name skips the chunks already committed. The
            rows must come in the same order on every run.
        metadata: where a table given by name is looked up.
        columns: the columns of tuple rows, in order.
        use_copy: None (default) uses COPY where it can; False never; True
            insists (a ValueError where it cannot).

    Returns:
        A :class:`BulkResult` (rows, chunks, path, seconds, returned rows).

    Raises:
        BatchChunkFailed: a chunk failed for good; earlier chunks stay committed.
        JobConflict: another run of the same job committed this chunk.
        TypeError, ValueError, LookupError: a bad table, column, row or option,
            before any SQL of that chunk runs.

    Example::

        result = await bulk_insert(engine, Event, ({"id": i, "kind": "click"} for i in range(1_000_000)),
                                   chunk_size=10_000, job="backfill-events-2026-12")
    """
    return await _bulk_insert(
        _Target(target, is_async=True),
        table,
        rows,
        chunk_size=chunk_size,
        on_conflict=on_conflict,
        conflict_columns=conflict_columns,
        returning=returning,
        progress=progress,
        retry=retry,
        job=job,
        metadata=metadata,
        columns=columns,
        use_copy=use_copy,
    )


def bulk_insert_sync(
    target: Engine | Connection | Session | sessionmaker[Any],
    table: Table | type | str,
    rows: Iterable[object],
    *,
    chunk_size: int = 1000,
    on_conflict: OnConflict = "error",
    conflict_columns: Sequence[str | Column[Any]] | None = None,
    returning: Sequence[str | Column[Any]] | None = None,
    progress: Progress | None = None,
    retry: RetryPolicy | None = None,
    job: str | None = None,
    metadata: MetaData | None = None,
    columns: Sequence[str | Column[Any]] | None = None,
) -> BulkResult:
    """The synchronous twin of :func:`bulk_insert` (``insertmanyvalues``; COPY is asyncpg's).

    Example::

        bulk_insert_sync(engine, "events", rows, metadata=metadata, on_conflict="ignore")
    """
    return _blocking(
        _bulk_insert(
            _Target(target, is_async=False),
            table,
            rows,
            chunk_size=chunk_size,
            on_conflict=on_conflict,
            conflict_columns=conflict_columns,
            returning=returning,
            progress=progress,
            retry=retry,
            job=job,
            metadata=metadata,
            columns=columns,
            use_copy=False,
        )
    )


async def bulk_update(
    target: AsyncEngine | AsyncConnection | AsyncSession | async_sessionmaker[Any],
    table: Table | type | str,
    rows: Iterable[object],
    *,
    key: Sequence[str | Column[Any]] | None = None,
    chunk_size: int = 1000,
    progress: Progress | None = None,
    retry: RetryPolicy | None = None,
    job: str | None = None,
    metadata: MetaData | None = None,
    columns: Sequence[str | Column[Any]] | None = None,
) -> BulkResult:
    """Update rows matched by ``key`` (default: the primary key), in chunks like :func:`bulk_insert`.

    Each row holds the key columns and the columns to set. Setting the same
    values twice is harmless, so a chunk whose COMMIT outcome was unknown is
    simply retried.

    Example::

        await bulk_update(engine, users, ({"id": uid, "tier": "gold"} for uid in gold_ids))
    """
    return await _bulk_update(
        _Target(target, is_async=True),
        table,
        rows,
        key=key,
        chunk_size=chunk_size,
        progress=progress,
        retry=retry,
        job=job,
        metadata=metadata,
        columns=columns,
    )


def bulk_update_sync(
    target: Engine | Connection | Session | sessionmaker[Any],
    table: Table | type | str,
    rows: Iterable[object],
    *,
    key: Sequence[str | Column[Any]] | None = None,
    chunk_size: int = 1000,
    progress: Progress | None = None,
    retry: RetryPolicy | None = None,
    job: str | None = None,
    metadata: MetaData | None = None,
    columns: Sequence[str | Column[Any]] | None = None,
) -> BulkResult:
    """The synchronous twin of :func:`bulk_update`.

    Example::

        bulk_update_sync(engine, users, [{"id": 1, "tier": "gold"}], key=["id"])
    """
    return _blocking(
        _bulk_update(
            _Target(target, is_async=False),
            table,
            rows,
            key=key,
            chunk_size=chunk_size,
            progress=progress,
            retry=retry,
            job=job,
            metadata=metadata,
            columns=columns,
        )
    )
