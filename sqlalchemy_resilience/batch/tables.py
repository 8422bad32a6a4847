"""Tables, columns and rows for the batch helpers: resolved through SQLAlchemy, never formatted.

A table is a :class:`~sqlalchemy.Table`, an ORM class, or a name looked up in
a given :class:`~sqlalchemy.MetaData` (or reflected from the database, on the
first chunk's connection). A column is a name looked up in ``table.c`` or a
:class:`~sqlalchemy.Column` of that table. Anything else is refused with a
clear error before any SQL runs; no identifier is ever put into SQL text by
this package -- SQLAlchemy's compiler (or asyncpg's COPY) quotes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

from sqlalchemy import Column, MetaData, Table, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import NoInspectionAvailable, NoSuchTableError

__all__ = [
    "Chunk",
    "TableRef",
    "check_table_name",
    "chunks",
    "column_names",
    "resolve_columns",
    "resolve_table",
]

TableRef = Table | type | str


def check_table_name(name: str) -> None:
    """Refuse a table name that can name no table: empty, or holding NUL or control characters.

    Called before any SQL (the catalog query of a reflection included, where
    PostgreSQL would fail on the NUL).

    Example::

        >>> check_table_name("na\\x00me")
        Traceback (most recent call last):
        ValueError: table name must not contain NUL or control characters, got 'na\\x00me'
    """
    if not name:
        raise ValueError("table name must not be empty")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise ValueError(f"table name must not contain NUL or control characters, got {name!r}")


def resolve_table(
    table: object, *, metadata: MetaData | None = None, connection: Connection | None = None
) -> Table:
    """The :class:`Table` ``table`` names, or a TypeError/LookupError saying what is accepted.

    Args:
        table: a ``Table``, an ORM mapped class, or a table name (``"schema.name"``
            allowed) present in ``metadata`` or, without it, reflected on ``connection``.
    """
    if isinstance(table, Table):
        return table
    if isinstance(table, type):
        try:
            mapper: Any = inspect(table)
        except NoInspectionAvailable:
            mapper = None
        local = getattr(mapper, "local_table", None)
        if isinstance(local, Table):
            return local
        raise TypeError(
            f"table must be a Table, an ORM mapped class or a name, got class {table.__name__}"
        )
    if isinstance(table, str):
        check_table_name(table)
        if metadata is not None:
            found = metadata.tables.get(table)
            if found is None:
                raise LookupError(
                    f"table {table!r} is not in the given MetaData (it has {sorted(metadata.tables)[:10]})"
                )
            return found
        if connection is None:
            raise LookupError(
                f"table {table!r} given by name: pass metadata= to look it up, or a target "
                "to reflect it from"
            )
        schema, _, name = table.rpartition(".")
        try:
            return Table(name, MetaData(), schema=schema or None, autoload_with=connection)
        except NoSuchTableError as exc:
            raise LookupError(f"table {table!r} does not exist in the database") from exc
    raise TypeError(f"table must be a Table, an ORM mapped class or a name, got {table!r}")


def resolve_columns(
    table: Table, names: Iterable[object], *, what: str = "column"
) -> list[Column[Any]]:
    """The columns of ``table`` named by ``names`` (strings or ``Column`` objects of ``table``)."""
    columns: list[Column[Any]] = []
    for name in names:
        if isinstance(name, Column):
            if name.table is not table or name.key not in table.c:
                raise ValueError(f"{what} {name!r} is not a column of table {table.name!r}")
            columns.append(table.c[name.key])
            continue
        if not isinstance(name, str):
            raise TypeError(f"{what} must be a column name or a Column, got {name!r}")
        if name not in table.c:
            raise ValueError(
                f"{what} {name!r} is not a column of table {table.name!r} "
                f"(columns: {list(table.c.keys())})"
            )
        columns.append(table.c[name])
    if len({c.key for c in columns}) != len(columns):
        raise ValueError(f"a {what} is named twice: {[c.key for c in columns]}")
    return columns


def column_names(columns: Sequence[Column[Any]]) -> list[str]:
    """The keys of ``columns``, as the rows' mappings use them."""
    return [c.key for c in columns]


class Chunk:
    """One chunk of rows as mappings, with its index and the input position of its first row."""

    __slots__ = ("index", "rows", "start")

    def __init__(self, index: int, start: int, rows: list[dict[str, Any]]) -> None:
        self.index = index
        self.start = start
        self.rows = rows

    @property
    def end(self) -> int:
        """The input position of the chunk's last row."""
        return self.start + len(self.rows) - 1


def _as_mapping(row: object, position: int, keys: list[str] | None) -> dict[str, Any]:
    if isinstance(row, Mapping):
        return dict(row)
    if isinstance(row, (tuple, list)):
        if keys is None:
            raise TypeError(
                f"row {position} is a tuple: pass columns=[...] to say what its values are"
            )
        if len(row) != len(keys):
            raise ValueError(f"row {position} has {len(row)} values for {len(keys)} columns {keys}")
        return dict(zip(keys, row, strict=True))
    raise TypeError(f"row {position} must be a mapping or a tuple, got {type(row).__name__}")


def chunks(
    rows: Iterable[object],
    size: int,
    *,
    keys: list[str] | None,
    skip_rows: int = 0,
    first_index: int = 0,
    on_short_input: Callable[[int], BaseException] | None = None,
) -> Iterator[Chunk]:
    """Chunks of ``size`` rows (as mappings) from any iterable, without holding more than one.

    A resumed job skips exactly the ``skip_rows`` rows it committed (not a
    number of chunks: its last committed chunk may have been a short one, and
    the input may have grown since) and numbers its chunks from
    ``first_index``. An input that ends before ``skip_rows`` rows is not the
    job's input: ``on_short_input(rows_seen)`` is raised.
    """
    iterator = iter(rows)
    seen = 0
    while seen < skip_rows:
        skipped = sum(1 for _ in islice(iterator, min(size, skip_rows - seen)))
        if not skipped:
            if on_short_input is not None:
                raise on_short_input(seen)
            return
        seen += skipped
    index = first_index
    position = skip_rows
    while True:
        batch = list(islice(iterator, size))
        if not batch:
            return
        if keys is None and all(type(r) is dict for r in batch):
            mappings: list[dict[str, Any]] = batch  # type: ignore[assignment]  # read, never changed
        else:
            mappings = [_as_mapping(r, position + i, keys) for i, r in enumerate(batch)]
        yield Chunk(index, position, mappings)
        index += 1
        position += len(batch)
