"""``bulk_insert`` and ``bulk_update``: chunked, each chunk its own retried transaction, resumable.

The rows come from any iterable and are consumed one chunk at a time. Each
chunk is one transaction (a :func:`~sqlalchemy_resilience.transaction`, so
SQLite chunks begin ``IMMEDIATE``), retried under a :class:`RetryPolicy` on
transient errors. A chunk that fails for good stops the run with
:class:`BatchChunkFailed`, naming the chunk and -- found by replaying that
chunk row by row under savepoints, rolled back -- the first row that fails;
the chunks before it stay committed.

Paths: PostgreSQL through asyncpg or psycopg 3 (either twin) without
``returning`` uses ``COPY`` (asyncpg's ``copy_records_to_table``, psycopg's
``cursor.copy``, values passed through the columns' own bind processors), and
with conflict handling COPY into a temporary table merged by one ``INSERT ...
ON CONFLICT``; MySQL/MariaDB through PyMySQL or aiomysql, when the
engine allows local files, ``LOAD DATA LOCAL INFILE`` (each chunk checked
under a savepoint, see :mod:`~sqlalchemy_resilience.batch.load_data`);
everything else SQLAlchemy's ``insertmanyvalues`` (multi-row
``INSERT ... VALUES``, batched by the dialect) or ``executemany`` for updates. The path
taken is in the result and in the log record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Column, MetaData, Table, and_, bindparam, update
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.util import greenlet_spawn

from sqlalchemy_resilience.retry.policy import RetryPolicy

from .driver import (
    BulkResult,
    OnConflict,
    Progress,
    Run,
    Target,
    check_keys,
    reflect_table,
)
from .load_data import LoadData, load_data_possible, local_infile_allowed
from .statements import (
    copy_chunk,
    copy_merge_chunk,
    copy_possible,
    insert_statement,
    merge_statement,
    update_parameters,
)
from .tables import column_names, resolve_columns, resolve_table

__all__ = [
    "BulkResult",
    "bulk_insert",
    "bulk_insert_sync",
    "bulk_update",
    "bulk_update_sync",
]

_log = logging.getLogger("sqlalchemy_resilience.batch")

#: Rows per chunk when ``chunk_size`` is not given: COPY pays a round trip and
#: a transaction per chunk, which 10,000 rows amortize (1.34x raw COPY on a
#: three-column table, from 2.32x at 1,000); multi-row INSERTs gain nothing
#: past 1,000 and hold the rows' parameters in memory.
COPY_CHUNK_SIZE = 10_000
INSERT_CHUNK_SIZE = 1_000


def _bulk_insert(
    target: Target,
    table: object,
    rows: Iterable[object],
    *,
    chunk_size: int | None,
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
    run = Run(
        target,
        operation="bulk_insert",
        retry=retry,
        progress=progress,
        job=job,
        chunk_size=INSERT_CHUNK_SIZE if chunk_size is None else chunk_size,
        idempotent=on_conflict != "error",
    )
    if isinstance(table, str) and metadata is None:
        resolved = reflect_table(target, table)
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
    path = _load_path(target, resolved, on_conflict, returned_columns, use_copy)
    if chunk_size is None and path != "insertmanyvalues":
        run.chunk_size = COPY_CHUNK_SIZE
    state = run.open(resolved)
    skip = 0 if state is None else state.chunks_done
    returned: list[Row[Any]] | None = [] if returned_columns else None
    if state is not None and state.finished:
        return run.result(path, returned, skip)
    keys = None if tuple_columns is None else column_names(tuple_columns)
    statement: Any = None
    merge: Any = None
    names: list[str] = []
    cols: list[Column[Any]] = []
    processors: list[Any] = []
    loader: LoadData | None = None
    _log.info(
        "bulk_insert into %s: %s path, chunks of %d%s",
        resolved.name,
        path,
        run.chunk_size,
        f", job {job}" if job else "",
    )
    for chunk in run.chunks_to_write(rows, keys, state):
        if statement is None:
            names = list(chunk.rows[0])
            cols = resolve_columns(resolved, names)
            statement = insert_statement(
                resolved,
                dialect.name,
                cols,
                on_conflict=on_conflict,  # type: ignore[arg-type]
                conflict_columns=conflict,
                returning=returned_columns,
            )
            # The dialect's own type (psycopg wraps JSON in Json/Jsonb; asyncpg serializes it).
            processors = [c.type.dialect_impl(dialect).bind_processor(dialect) for c in cols]
            if path != "insertmanyvalues" and _defaults_left_out(resolved, names):
                path = "insertmanyvalues"
                _log.info("bulk_insert into %s: insertmanyvalues after all", resolved.name)
            if path == "load data":
                loader = LoadData(resolved, cols, processors)
        check_keys(chunk, names, resolved)
        stmt = statement

        def insert_rows(
            conn: Connection, rows_: list[dict[str, Any]] = chunk.rows, stmt_: Any = stmt
        ) -> Any:
            result = conn.execute(stmt_, rows_)
            return result.all() if returned_columns else None

        body: Callable[[Connection], Any] = insert_rows

        def probe(conn: Connection, row: dict[str, Any], stmt_: Any = stmt) -> None:
            conn.execute(stmt_, [row])

        if path == "copy":
            body = copy_chunk(resolved, cols, processors, chunk.rows)
        elif path == "copy+merge":
            if merge is None:
                merge = merge_statement(
                    resolved,
                    cols,
                    on_conflict=on_conflict,  # type: ignore[arg-type]
                    conflict_columns=conflict,
                )
            body = copy_merge_chunk(resolved, cols, processors, chunk.rows, merge)
        elif loader is not None:
            body = loader.chunk(chunk.rows, insert_rows)
        out = run.chunk(chunk, body, probe)
        if returned is not None and out:
            returned.extend(out)
    run.finish()
    if loader is not None and loader.fell_back:
        _log.info(
            "bulk_insert into %s: %d chunks went through INSERT instead of LOAD DATA "
            "(a warning, a duplicate, or a value the file cannot spell)",
            resolved.name,
            loader.fell_back,
        )
    return run.result(path, returned, skip)


def _defaults_left_out(table: Table, names: list[str]) -> bool:
    """Whether a column the rows leave out has a Python-side default, which only INSERT applies."""
    given = set(names)
    return any(c.default is not None and c.key not in given for c in table.columns)


def _load_path(
    target: Target,
    table: Table,
    on_conflict: str,
    returned_columns: list[Column[Any]] | None,
    use_copy: bool | None,
) -> str:
    """The path of a ``bulk_insert``: the server's bulk load where it can, else insertmanyvalues.

    COPY on PostgreSQL (asyncpg, psycopg 3); ``LOAD DATA LOCAL INFILE`` on
    MySQL/MariaDB when the engine and the server allow local files (asked once,
    on a connection of the target). Neither with ``returning``; nor (decided at
    the first chunk) when a column the rows leave out has a Python-side default.
    """
    dialect = target.engine.dialect
    mysql = load_data_possible(dialect)
    why_not = None
    if not (copy_possible(dialect) or mysql):
        why_not = (
            "PostgreSQL through asyncpg or psycopg, or MySQL/MariaDB through PyMySQL or aiomysql"
        )
    elif returned_columns:
        why_not = "no returning"
    elif mysql and on_conflict != "error":
        why_not = "on_conflict='error' on MySQL/MariaDB"
    elif use_copy is not False and mysql:
        why_not = target.run(local_infile_allowed)
    if use_copy is True and why_not is not None:
        raise ValueError(
            f"use_copy=True needs {why_not}; here: {dialect.name}+{dialect.driver}"
            f"{', on_conflict=' + repr(on_conflict) if on_conflict != 'error' else ''}"
            f"{' with returning' if returned_columns else ''}"
        )
    if use_copy is False or why_not is not None:
        return "insertmanyvalues"
    if mysql:
        return "load data"
    # With conflict handling: COPY into a temporary table, then one
    # INSERT ... SELECT ... ON CONFLICT per chunk (benchmarks/bulk.py).
    return "copy" if on_conflict == "error" else "copy+merge"


def _bulk_update(
    target: Target,
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
    run = Run(
        target,
        operation="bulk_update",
        retry=retry,
        progress=progress,
        job=job,
        chunk_size=chunk_size,
        idempotent=True,  # setting the same values twice is the same
    )
    if isinstance(table, str) and metadata is None:
        resolved = reflect_table(target, table)
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
    state = run.open(resolved)
    skip = 0 if state is None else state.chunks_done
    if state is not None and state.finished:
        return run.result("executemany", None, skip)
    keys = None if tuple_columns is None else column_names(tuple_columns)
    key_names = [c.key for c in key_columns]
    statement: Any = None
    names: list[str] = []
    for chunk in run.chunks_to_write(rows, keys, state):
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
            params_of = update_parameters(key_names, [c.key for c in values])
        check_keys(chunk, names, resolved)
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

        run.chunk(chunk, body, probe)
    run.finish()
    return run.result("executemany", None, skip)


async def bulk_insert(
    target: AsyncEngine | AsyncConnection | AsyncSession | async_sessionmaker[Any],
    table: Table | type | str,
    rows: Iterable[object],
    *,
    chunk_size: int | None = None,
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
        chunk_size: rows per chunk (and per transaction); default 10,000 on the
            COPY and LOAD DATA paths, 1,000 on ``INSERT ... VALUES`` (``benchmarks/bulk.py
            --sweep``: COPY reaches its plateau at 10,000 rows a chunk on a
            light and a heavy table; beyond it memory grows, speed does not).
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
        use_copy: the server's bulk load: COPY on PostgreSQL (asyncpg,
            psycopg 3), ``LOAD DATA LOCAL INFILE`` on MySQL/MariaDB (PyMySQL,
            aiomysql) when the engine was created with
            ``connect_args={"local_infile": True}`` and the server allows it
            (``on_conflict="error"`` only; each chunk is checked and goes
            through INSERT instead if the server warned). None (default) uses
            it where it can; False never; True insists (a ValueError naming
            what is missing where it cannot).

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
    result: BulkResult = await greenlet_spawn(
        _bulk_insert,
        Target(target, is_async=True),
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
    return result


def bulk_insert_sync(
    target: Engine | Connection | Session | sessionmaker[Any],
    table: Table | type | str,
    rows: Iterable[object],
    *,
    chunk_size: int | None = None,
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
    """The blocking twin of :func:`bulk_insert` (COPY through psycopg 3 where it can).

    Example::

        bulk_insert_sync(engine, "events", rows, metadata=metadata, on_conflict="ignore")
    """
    return _bulk_insert(
        Target(target, is_async=False),
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
    result: BulkResult = await greenlet_spawn(
        _bulk_update,
        Target(target, is_async=True),
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
    return result


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
    return _bulk_update(
        Target(target, is_async=False),
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
