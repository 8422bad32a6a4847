"""What a chunk writes: the INSERT with its ON CONFLICT clause, and the COPY paths on asyncpg.

``copy``: asyncpg's ``copy_records_to_table`` on the raw connection, values
through the columns' own bind processors. ``copy+merge``: COPY into a
temporary table (``CREATE TEMPORARY TABLE ... (LIKE table) ON COMMIT DROP``,
compiled by SQLAlchemy's identifier preparer), then one ``INSERT ... SELECT
... ON CONFLICT``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Column, MetaData, Table, insert, select
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import DDLElement
from sqlalchemy.util import await_only

from .driver import OnConflict

__all__ = [
    "copy_chunk",
    "copy_merge_chunk",
    "copy_possible",
    "copy_records",
    "copy_rows",
    "insert_statement",
    "merge_statement",
    "update_parameters",
    "with_conflict",
]

_UPSERTS = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
    "mysql": mysql.insert,
    "mariadb": mysql.insert,
}


def with_conflict(
    stmt: Any,
    on_conflict: OnConflict,
    conflict_columns: list[Column[Any]],
    columns: list[Column[Any]],
) -> Any:
    """``stmt`` (a PostgreSQL or SQLite insert) with its ON CONFLICT clause.

    Columns are passed as objects, never as strings: SQLAlchemy renders a
    string as a column *name*, and a ``Column`` whose ``key`` differs from its
    name would then be addressed by the wrong one.
    """
    if isinstance(stmt, mysql.Insert):
        return _on_duplicate_key(stmt, on_conflict, conflict_columns, columns)
    index: list[Column[Any]] | None = list(conflict_columns) or None
    if on_conflict == "ignore":
        return stmt.on_conflict_do_nothing(index_elements=index)
    keys = {c.key for c in conflict_columns}
    changing = {c: stmt.excluded[c.key] for c in columns if c.key not in keys}
    if not changing:
        return stmt.on_conflict_do_nothing(index_elements=index)
    return stmt.on_conflict_do_update(index_elements=index, set_=changing)


def _on_duplicate_key(
    stmt: mysql.Insert,
    on_conflict: OnConflict,
    conflict_columns: list[Column[Any]],
    columns: list[Column[Any]],
) -> Any:
    # MySQL has no conflict target: ON DUPLICATE KEY UPDATE fires on any unique
    # key. "ignore" is a no-op update of a conflict column -- not INSERT IGNORE,
    # which would also turn data errors (a value too long) into warnings.
    keys = {c.key for c in conflict_columns}
    changing = {c.name: stmt.inserted[c.key] for c in columns if c.key not in keys}
    if on_conflict == "ignore" or not changing:
        first = conflict_columns[0] if conflict_columns else columns[0]
        return stmt.on_duplicate_key_update({first.name: first})
    return stmt.on_duplicate_key_update(changing)


def insert_statement(
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
                f"on_conflict={on_conflict!r} needs PostgreSQL, SQLite, MySQL or MariaDB, "
                f"not {dialect!r}"
            )
        stmt = with_conflict(dialect_insert(table), on_conflict, conflict_columns, columns)
    if returning:
        stmt = stmt.returning(*returning, sort_by_parameter_order=True)
    return stmt


def copy_chunk(
    table: Table, columns: list[Column[Any]], processors: list[Any], rows: list[dict[str, Any]]
) -> Callable[[Connection], None]:
    """COPY the chunk's rows (mappings by column key) into ``table``'s columns (by name)."""
    keys = [c.key for c in columns]
    names = [c.name for c in columns]

    def copy(conn: Connection) -> None:
        copy_rows(conn, table, names, copy_records(keys, processors, rows))

    return copy


def copy_rows(
    conn: Connection, table: Table, names: list[str], records: list[tuple[Any, ...]]
) -> None:
    """``COPY table (names) FROM STDIN`` through the driver's own COPY support.

    Runs on SQLAlchemy's sync ``Connection``: for an async engine this is the
    greenlet of ``run_sync``, and the driver's coroutines are awaited with
    SQLAlchemy's ``await_only`` -- one implementation for both twins.
    """
    driver: Any = conn.connection.driver_connection
    if conn.dialect.driver == "asyncpg":
        # asyncpg quotes the identifiers itself; nothing is formatted here.
        await_only(
            driver.copy_records_to_table(
                table.name, records=records, columns=names, schema_name=table.schema
            )
        )
        return
    # psycopg 3: the statement is compiled by SQLAlchemy (identifiers quoted
    # by the dialect's preparer), the values streamed by the driver.
    statement = str(_CopyFromStdin(table, names).compile(dialect=conn.dialect))
    if conn.dialect.is_async:
        await_only(_copy_psycopg_async(driver, statement, records))
        return
    with driver.cursor() as cursor, cursor.copy(statement) as copy:
        for record in records:
            copy.write_row(record)


async def _copy_psycopg_async(driver: Any, statement: str, records: list[tuple[Any, ...]]) -> None:
    async with driver.cursor() as cursor, cursor.copy(statement) as copy:
        for record in records:
            await copy.write_row(record)


class _CopyFromStdin(DDLElement):
    """``COPY <table> (<columns>) FROM STDIN``, compiled by SQLAlchemy."""

    inherit_cache = False

    def __init__(self, table: Table, names: list[str]) -> None:
        self.table = table
        self.names = names


@compiles(_CopyFromStdin, "postgresql")
def _compile_copy(element: _CopyFromStdin, compiler: Any, **kw: Any) -> str:
    preparer = compiler.preparer
    columns = ", ".join(preparer.quote(name) for name in element.names)
    return f"COPY {preparer.format_table(element.table)} ({columns}) FROM STDIN"


def copy_possible(dialect: Any) -> bool:
    """Whether the engine's driver can COPY here: asyncpg, or psycopg 3 (sync or async)."""
    return bool(dialect.name == "postgresql" and dialect.driver in ("asyncpg", "psycopg"))


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


def merge_statement(
    table: Table,
    columns: list[Column[Any]],
    *,
    on_conflict: OnConflict,
    conflict_columns: list[Column[Any]],
) -> Any:
    """``INSERT INTO table (columns) SELECT columns FROM <staging> ON CONFLICT ...``."""
    # The staging table is LIKE the target: the same column names; keys kept
    # so that each staging column pairs with its target column.
    staging = Table(_MERGE_TABLE, MetaData(), *(Column(c.name, c.type, key=c.key) for c in columns))
    stmt = postgresql.insert(table).from_select(
        list(columns), select(*(staging.c[c.key] for c in columns))
    )
    return with_conflict(stmt, on_conflict, conflict_columns, list(columns))


def copy_merge_chunk(
    table: Table,
    columns: list[Column[Any]],
    processors: list[Any],
    rows: list[dict[str, Any]],
    merge: Any,
) -> Callable[[Connection], None]:
    """COPY the chunk into a temporary copy of the table, then insert it with ON CONFLICT."""
    keys = [c.key for c in columns]
    names = [c.name for c in columns]
    staging = Table(_MERGE_TABLE, MetaData(), *(Column(c.name, c.type) for c in columns))

    def copy(conn: Connection) -> None:
        conn.execute(_TempLike(_MERGE_TABLE, table))
        copy_rows(conn, staging, names, copy_records(keys, processors, rows))
        conn.execute(merge)

    return copy


def copy_records(
    keys: list[str], processors: list[Any], rows: list[dict[str, Any]]
) -> list[tuple[Any, ...]]:
    """The rows (mappings by column key) as tuples in column order, each value processed.

    Built column by column: one list comprehension per column is several times
    cheaper in CPython than a tuple assembled per row.
    """
    columns: list[list[Any]] = [[row[key] for row in rows] for key in keys]
    for i, process in enumerate(processors):
        if process is not None:
            columns[i] = [None if value is None else process(value) for value in columns[i]]
    return list(zip(*columns, strict=True))


def update_parameters(
    key_names: list[str], value_names: list[str]
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def params(row: dict[str, Any]) -> dict[str, Any]:
        out = {f"k_{i}": row[name] for i, name in enumerate(key_names)}
        out.update({f"v_{i}": row[name] for i, name in enumerate(value_names)})
        return out

    return params
