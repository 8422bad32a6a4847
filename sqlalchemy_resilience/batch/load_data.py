"""``LOAD DATA LOCAL INFILE``: MySQL's and MariaDB's bulk load, for ``bulk_insert``.

Measured 2.2x the rows per second of multi-row ``INSERT`` (insertmanyvalues) on MariaDB 10.11
(``benchmarks/bulk.py --embedded-mariadb``), so ``bulk_insert`` uses it where
it may: the engine's driver (PyMySQL, aiomysql) was created with
``local_infile=True`` -- the package never turns that on, since it lets the
server read any file the client can -- and the server has ``local_infile``
on.

``LOCAL`` changes what the server does with a bad row: duplicate keys and
data that does not fit become *warnings* (the server cannot stop the file
half-way), so a plain load would skip or truncate rows that ``INSERT``
refuses. Each chunk is therefore loaded under a savepoint and checked: every
row loaded and no warning, or the savepoint is rolled back and the chunk goes
through ``INSERT`` instead, which raises exactly the error it would have (or,
on a server that only warns, does exactly what it would have done).

The file is written under the system's temporary directory, readable by its
owner only, and removed when the chunk's statement is done.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import math
import os
import tempfile
from collections.abc import Callable
from typing import Any

from sqlalchemy import Column, String, Table, bindparam, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import ClauseElement

from .statements import copy_records

__all__ = ["LoadData", "load_data_possible"]

# Not asyncmy: 0.2.x hands the file name the server asks for to its own
# reader as bytes where it expects str (TypeError), so LOCAL never works there.
_DRIVERS = ("pymysql", "aiomysql")
_LOCAL_FILES = 128  # CLIENT_LOCAL_FILES, the capability the client announces


def load_data_possible(dialect: Any) -> bool:
    """Whether the engine's driver can send a local file: PyMySQL or aiomysql."""
    return bool(dialect.name in ("mysql", "mariadb") and dialect.driver in _DRIVERS)


def local_infile_allowed(conn: Connection) -> str | None:
    """None when this connection may ``LOAD DATA LOCAL``; else what it would need."""
    driver = conn.connection.driver_connection
    # The drivers keep the option privately; PyMySQL and aiomysql also
    # announce it in the client flags they send.
    enabled = getattr(driver, "_local_infile", None)
    if enabled is None:
        enabled = bool(getattr(driver, "client_flag", 0) & _LOCAL_FILES)
    if not enabled:
        return "an engine created with connect_args={'local_infile': True}"
    allowed, mode = conn.execute(text("SELECT @@global.local_infile, @@session.sql_mode")).one()
    if not allowed:
        return "a server with local_infile on"
    if "NO_BACKSLASH_ESCAPES" in str(mode):
        return "a sql_mode without NO_BACKSLASH_ESCAPES"
    return None


class _LoadDataLocal(Executable, ClauseElement):
    """``LOAD DATA LOCAL INFILE :path INTO TABLE <table> ... (<columns>)``, compiled by SQLAlchemy."""

    inherit_cache = False

    def __init__(self, table: Table, names: list[str], path: str) -> None:
        self.table = table
        self.names = names
        self.path = path


@compiles(_LoadDataLocal, "mysql")
@compiles(_LoadDataLocal, "mariadb")
def _compile_load_data(element: _LoadDataLocal, compiler: Any, **kw: Any) -> str:
    preparer = compiler.preparer
    columns = ", ".join(preparer.quote(name) for name in element.names)
    # The file name is a bound value (the driver quotes it), the identifiers
    # go through the dialect's preparer.
    path = compiler.process(bindparam("load_data_file", element.path, type_=String()), **kw)
    return (
        f"LOAD DATA LOCAL INFILE {path} INTO TABLE {preparer.format_table(element.table)}"
        " CHARACTER SET utf8mb4 FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\'"
        f" LINES TERMINATED BY '\\n' ({columns})"
    )


class _NotLoadable(Exception):
    """A value the file format has no faithful spelling for: the chunk goes through INSERT."""


_TEXT_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"})
_BYTE_ESCAPES = {
    ord("\\"): b"\\\\",
    ord("\t"): b"\\t",
    ord("\n"): b"\\n",
    ord("\r"): b"\\r",
    0: b"\\0",
}


def _bytes_field(value: bytes) -> bytes:
    if not any(b in _BYTE_ESCAPES for b in value):
        return value
    return b"".join(_BYTE_ESCAPES.get(b, bytes((b,))) for b in value)


def _field(value: Any) -> bytes:
    """One value in the file's spelling: what the driver's own escaping would send."""
    if value is None:
        return b"\\N"
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, int):
        return str(int(value)).encode()
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _NotLoadable  # INSERT reports it as the driver does
        return repr(value).encode()
    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            raise _NotLoadable
        return str(value).encode()
    if isinstance(value, str):
        return value.translate(_TEXT_ESCAPES).encode("utf-8")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _bytes_field(bytes(value))
    if isinstance(value, dt.datetime):
        # PyMySQL's spelling: the time zone is not sent.
        return value.replace(tzinfo=None).isoformat(" ").encode()
    if isinstance(value, dt.time):
        return value.replace(tzinfo=None).isoformat().encode()
    if isinstance(value, dt.date):
        return value.isoformat().encode()
    raise _NotLoadable  # timedelta, containers, driver-specific types: INSERT spells them


def _text(value: str) -> bytes:
    # Most values need no escape: two C-level scans instead of a translate.
    if value.isprintable() and "\\" not in value:
        return value.encode("utf-8")
    return value.translate(_TEXT_ESCAPES).encode("utf-8")


def _float(value: float) -> bytes:
    if not math.isfinite(value):
        raise _NotLoadable  # INSERT reports it as the driver does
    return repr(value).encode()


def _datetime(value: dt.datetime) -> bytes:
    if value.tzinfo is not None:
        value = value.replace(tzinfo=None)  # PyMySQL's spelling: the zone is not sent
    return value.isoformat(" ").encode()


# The exact types the file meets most, spelled without the chain of checks.
_BY_TYPE: dict[type, Callable[[Any], bytes]] = {
    type(None): lambda value: b"\\N",
    int: lambda value: b"%d" % value,
    str: _text,
    float: _float,
    dt.datetime: _datetime,
}


def encode_records(records: list[tuple[Any, ...]]) -> bytes:
    """The rows as the file ``LOAD DATA`` reads: tab-separated, ``\\N`` for NULL, one per line."""
    if not records:
        return b""
    get = _BY_TYPE.get
    columns = [
        [(get(type(value)) or _field)(value) for value in column]
        for column in zip(*records, strict=True)
    ]
    return b"\n".join(b"\t".join(fields) for fields in zip(*columns, strict=True)) + b"\n"


def _load_checked(conn: Connection, statement: _LoadDataLocal) -> tuple[int, int]:
    """Run the load; the rows it loaded and the warnings it raised, notes left out.

    A note is what INSERT raises too (a decimal rounded to its scale); a
    warning is what LOCAL made of an error. ``sql_notes=0`` keeps notes out of
    the count (and out of the list, which ``max_error_count`` would cut short),
    for this statement only: the session's value is put back.
    """
    notes = conn.execute(text("SELECT @@session.sql_notes")).scalar_one()
    conn.execute(text("SET @@session.sql_notes = 0"))
    try:
        loaded = conn.execute(statement).rowcount
        warned = conn.execute(text("SELECT @@warning_count")).scalar_one()
    except BaseException:
        # The load's own error is the one to raise; a connection it broke
        # cannot be put back, and is discarded anyway.
        with contextlib.suppress(Exception):
            conn.execute(text("SET @@session.sql_notes = :notes"), {"notes": notes})
        raise
    conn.execute(text("SET @@session.sql_notes = :notes"), {"notes": notes})
    return int(loaded), int(warned)


class LoadData:
    """The load path of one ``bulk_insert``: chunk bodies, and how often it fell back."""

    def __init__(self, table: Table, columns: list[Column[Any]], processors: list[Any]) -> None:
        self.table = table
        self.keys = [c.key for c in columns]
        self.names = [c.name for c in columns]
        self.processors = processors
        self.fell_back = 0

    def chunk(
        self, rows: list[dict[str, Any]], insert: Callable[[Connection], Any]
    ) -> Callable[[Connection], Any]:
        """The body of one chunk: loaded and checked, else (rolled back) ``insert``."""

        def load(conn: Connection) -> Any:
            try:
                data = encode_records(copy_records(self.keys, self.processors, rows))
            except _NotLoadable:
                self.fell_back += 1
                return insert(conn)
            fd, path = tempfile.mkstemp(prefix="sqlalchemy-resilience-", suffix=".tsv")
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
                savepoint = conn.begin_nested()
                loaded, warned = _load_checked(conn, _LoadDataLocal(self.table, self.names, path))
            finally:
                os.unlink(path)
            if loaded == len(rows) and not warned:
                savepoint.commit()
                return None
            # A duplicate skipped or a value cut short (LOCAL makes errors
            # warnings): let INSERT decide, as it would have without the load.
            savepoint.rollback()
            self.fell_back += 1
            return insert(conn)

        return load
