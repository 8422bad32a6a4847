"""SQLite's result codes: by name, by number, and by message as the last resort.

``sqlite3.Error`` carries ``sqlite_errorname`` and ``sqlite_errorcode``; the
most specific one that names a code is used, an extended code no rule names
falls back to its primary code, and SQLite's own English message is the last
resort (an exception made by hand, without a code).
"""

from __future__ import annotations

import sqlite3

from . import hierarchy as e

__all__ = ["Rule", "sqlite_code_name", "sqlite_rule"]

#: (class, retryable-or-None for the class default)
Rule = tuple[type[e.DatabaseFailure], "bool | None"]

# SQLite extended result codes by name (sqlite3.Error.sqlite_errorname, Python >= 3.11).
_SQLITE_RULES: dict[str, Rule] = {
    "SQLITE_BUSY_SNAPSHOT": (e.SerializationFailure, True),
    "SQLITE_BUSY": (e.LockNotAvailable, True),
    "SQLITE_BUSY_RECOVERY": (e.LockNotAvailable, True),
    "SQLITE_BUSY_TIMEOUT": (e.LockNotAvailable, True),
    "SQLITE_LOCKED": (e.LockNotAvailable, True),
    "SQLITE_LOCKED_SHAREDCACHE": (e.LockNotAvailable, True),
    "SQLITE_CONSTRAINT_UNIQUE": (e.UniqueViolation, None),
    "SQLITE_CONSTRAINT_PRIMARYKEY": (e.UniqueViolation, None),
    "SQLITE_CONSTRAINT_FOREIGNKEY": (e.ForeignKeyViolation, None),
    "SQLITE_CONSTRAINT_NOTNULL": (e.NotNullViolation, None),
    "SQLITE_CONSTRAINT_CHECK": (e.CheckViolation, None),
    "SQLITE_CONSTRAINT": (e.ConstraintViolation, None),
    "SQLITE_INTERRUPT": (e.QueryTimeout, None),
    # Another connection is recovering the WAL, or the shm file is locked: wait and re-run.
    "SQLITE_READONLY_RECOVERY": (e.LockNotAvailable, True),
    "SQLITE_READONLY_CANTLOCK": (e.LockNotAvailable, True),
    "SQLITE_READONLY": (e.PermissionDenied, None),
    "SQLITE_PERM": (e.PermissionDenied, None),
    "SQLITE_AUTH": (e.PermissionDenied, None),
    "SQLITE_CANTOPEN": (e.DatabaseNotFound, False),
    "SQLITE_FULL": (e.InsufficientResources, None),
    "SQLITE_IOERR": (e.StorageFailure, None),
    "SQLITE_CORRUPT": (e.StorageFailure, None),
    "SQLITE_NOTADB": (e.StorageFailure, None),
    "SQLITE_NOMEM": (e.InsufficientResources, None),
    "SQLITE_MISMATCH": (e.InvalidData, None),
    "SQLITE_TOOBIG": (e.InvalidData, None),
    "SQLITE_RANGE": (e.InvalidData, None),
    "SQLITE_ERROR": (e.InvalidStatement, None),
}

# SQLite's result codes by number: the primary codes (the low byte of any
# extended code), and the extended codes the rules above name. An extended
# code no rule names is classified by its primary code.
_SQLITE_PRIMARY: dict[int, str] = {
    1: "SQLITE_ERROR",
    2: "SQLITE_INTERNAL",
    3: "SQLITE_PERM",
    4: "SQLITE_ABORT",
    5: "SQLITE_BUSY",
    6: "SQLITE_LOCKED",
    7: "SQLITE_NOMEM",
    8: "SQLITE_READONLY",
    9: "SQLITE_INTERRUPT",
    10: "SQLITE_IOERR",
    11: "SQLITE_CORRUPT",
    12: "SQLITE_NOTFOUND",
    13: "SQLITE_FULL",
    14: "SQLITE_CANTOPEN",
    15: "SQLITE_PROTOCOL",
    16: "SQLITE_EMPTY",
    17: "SQLITE_SCHEMA",
    18: "SQLITE_TOOBIG",
    19: "SQLITE_CONSTRAINT",
    20: "SQLITE_MISMATCH",
    21: "SQLITE_MISUSE",
    22: "SQLITE_NOLFS",
    23: "SQLITE_AUTH",
    24: "SQLITE_FORMAT",
    25: "SQLITE_RANGE",
    26: "SQLITE_NOTADB",
}
_SQLITE_EXTENDED: dict[int, str] = {
    261: "SQLITE_BUSY_RECOVERY",
    517: "SQLITE_BUSY_SNAPSHOT",
    773: "SQLITE_BUSY_TIMEOUT",
    262: "SQLITE_LOCKED_SHAREDCACHE",
    264: "SQLITE_READONLY_RECOVERY",
    520: "SQLITE_READONLY_CANTLOCK",
    275: "SQLITE_CONSTRAINT_CHECK",
    787: "SQLITE_CONSTRAINT_FOREIGNKEY",
    1299: "SQLITE_CONSTRAINT_NOTNULL",
    1555: "SQLITE_CONSTRAINT_PRIMARYKEY",
    2067: "SQLITE_CONSTRAINT_UNIQUE",
}

# Before Python 3.11 sqlite3 exceptions carry no result code; SQLite's own
# English messages are stable and are the only signal left.
_SQLITE_MESSAGE_CODES: tuple[tuple[str, str], ...] = (
    ("UNIQUE constraint failed", "SQLITE_CONSTRAINT_UNIQUE"),
    ("FOREIGN KEY constraint failed", "SQLITE_CONSTRAINT_FOREIGNKEY"),
    ("NOT NULL constraint failed", "SQLITE_CONSTRAINT_NOTNULL"),
    ("CHECK constraint failed", "SQLITE_CONSTRAINT_CHECK"),
    ("database is locked", "SQLITE_BUSY"),
    ("database table is locked", "SQLITE_LOCKED"),
    ("interrupted", "SQLITE_INTERRUPT"),
    ("attempt to write a readonly database", "SQLITE_READONLY"),
    ("unable to open database file", "SQLITE_CANTOPEN"),
    ("database or disk is full", "SQLITE_FULL"),
    ("database disk image is malformed", "SQLITE_CORRUPT"),
    ("file is not a database", "SQLITE_NOTADB"),
    ("disk I/O error", "SQLITE_IOERR"),
    ("no such table", "SQLITE_ERROR"),
    ("no such column", "SQLITE_ERROR"),
    ("syntax error", "SQLITE_ERROR"),
)


def sqlite_code_name(err: sqlite3.Error) -> str | None:
    """The most specific SQLite result code name ``err`` tells, or None.

    By ``sqlite_errorname`` where that names a known code, else by the
    numeric ``sqlite_errorcode`` (Python >= 3.11 has both), else, on older
    Pythons, by SQLite's own English message.

    Example::

        >>> sqlite_code_name(sqlite3.OperationalError("database is locked"))
        'SQLITE_BUSY'
    """
    name = getattr(err, "sqlite_errorname", None)
    if isinstance(name, str) and name.startswith("SQLITE_"):
        return name
    code = getattr(err, "sqlite_errorcode", None)
    if isinstance(code, int):
        found = _SQLITE_EXTENDED.get(code) or _SQLITE_PRIMARY.get(code & 0xFF)
        if found is not None:
            return found
    message = str(err)
    return next((c for hint, c in _SQLITE_MESSAGE_CODES if hint in message), None)


def sqlite_rule(name: str) -> Rule | None:
    """The rule for a code name, else for its primary code (``SQLITE_IOERR_WRITE`` -> IOERR)."""
    rule = _SQLITE_RULES.get(name)
    if rule is None:
        primary = "_".join(name.split("_")[:2])
        rule = _SQLITE_RULES.get(primary)
    return rule
