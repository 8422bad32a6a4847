"""MySQL's and MariaDB's error numbers: which class each one is, and whether a re-run is safe.

MySQL speaks in error numbers, not SQLSTATEs: PyMySQL, aiomysql, asyncmy and
mysqlclient all put the number first in the exception's ``args``. Numbers
below 2000 (and from 3000) are the server's, 2000-2999 the client library's
(a lost or refused connection). The two servers agree below 3000 and
diverge above it -- 4031 is a client interaction timeout on MySQL 8 but a
missing referenced trigger on MariaDB, 4025 exists only on MariaDB, 3024 is
unused there -- so those rules are kept per flavour, and a number of the
other flavour's range is never read with the wrong meaning.

Sources: MariaDB's ``mysqld_error.h`` and ``errmsg.h`` (Connector/C 10.11,
swept in full by the tests), MySQL 8.0's server error reference for the
MySQL-only numbers.
"""

from __future__ import annotations

import re

from . import hierarchy as e
from .sqlite_codes import Rule

__all__ = [
    "CLIENT_LOST",
    "MYSQL_DRIVERS",
    "is_client_error",
    "mysql_errno",
    "mysql_message_facts",
    "mysql_rule",
    "refusal_rule",
]

# Both servers: numbers below 3000.
_COMMON: dict[int, Rule] = {
    # The server rolled back the whole transaction: re-run the unit of work.
    1213: (e.DeadlockDetected, True),
    # innodb_lock_wait_timeout: only the statement was rolled back (unless
    # innodb_rollback_on_timeout); the unit is rolled back and re-run.
    1205: (e.LockNotAvailable, True),
    # "Record has changed since last read" (MariaDB's snapshot isolation).
    1020: (e.SerializationFailure, True),
    # Read-only server, transaction or mode: what a demoted writer answers.
    1290: (e.ReadOnlyServer, True),
    1792: (e.ReadOnlyServer, True),
    1836: (e.ReadOnlyServer, True),
    # The connection is gone: killed, shut down, or the client lost it.
    1927: (e.ConnectionLost, True),
    1053: (e.ConnectionLost, True),
    # Galera: the node is not ready (quorum lost, or it rejects queries).
    1047: (e.DatabaseUnavailable, True),
    1040: (e.TooManyConnections, True),
    1203: (e.TooManyConnections, True),
    1637: (e.InsufficientResources, True),
    1041: (e.InsufficientResources, None),
    1021: (e.InsufficientResources, False),
    1114: (e.InsufficientResources, False),
    1045: (e.AuthenticationFailed, False),
    1698: (e.AuthenticationFailed, False),
    1044: (e.PermissionDenied, False),
    1142: (e.PermissionDenied, False),
    1143: (e.PermissionDenied, False),
    1227: (e.PermissionDenied, False),
    1049: (e.DatabaseNotFound, False),
    1062: (e.UniqueViolation, None),
    1022: (e.UniqueViolation, None),
    1586: (e.UniqueViolation, None),
    1169: (e.UniqueViolation, None),
    1451: (e.ForeignKeyViolation, None),
    1452: (e.ForeignKeyViolation, None),
    1216: (e.ForeignKeyViolation, None),
    1217: (e.ForeignKeyViolation, None),
    1048: (e.NotNullViolation, None),
    1364: (e.NotNullViolation, None),
    1406: (e.InvalidData, None),
    1264: (e.InvalidData, None),
    1265: (e.InvalidData, None),
    1292: (e.InvalidData, None),
    1366: (e.InvalidData, None),
    1367: (e.InvalidData, None),
    1365: (e.InvalidData, None),
    1690: (e.InvalidData, None),
    # Statement timeouts and a KILL QUERY: not re-run by default.
    1969: (e.QueryTimeout, None),
    1317: (e.QueryTimeout, None),
    1028: (e.QueryTimeout, None),
    1054: (e.InvalidStatement, None),
    1064: (e.InvalidStatement, None),
    1146: (e.InvalidStatement, None),
    1149: (e.InvalidStatement, None),
    1109: (e.InvalidStatement, None),
    1050: (e.InvalidStatement, None),
    1051: (e.InvalidStatement, None),
    1060: (e.InvalidStatement, None),
    1061: (e.InvalidStatement, None),
    1091: (e.InvalidStatement, None),
}

# Above 3000 the servers differ: the same number means other things.
_MYSQL: dict[int, Rule] = {
    3024: (e.QueryTimeout, None),  # max_execution_time
    3572: (e.LockNotAvailable, False),  # NOWAIT / SKIP LOCKED could not lock
    3819: (e.CheckViolation, None),
    4031: (e.ConnectionLost, True),  # the server closed an idle client
    3101: (e.TransactionConflict, True),  # group replication rolled back at COMMIT
    3100: (e.TransactionConflict, True),
}
_MARIADB: dict[int, Rule] = {
    4025: (e.CheckViolation, None),
    4031: (e.InvalidStatement, None),  # ER_REFERENCED_TRG_DOES_NOT_EXIST
}

#: Client-library numbers that mean the connection is gone (the server may
#: have applied what was in flight): re-run before COMMIT, unknown at COMMIT.
CLIENT_LOST: frozenset[int] = frozenset({2006, 2013, 2014, 2045, 2055, 5013, 5014})

# The client could not connect: nothing was sent.
_CLIENT_CONNECT: frozenset[int] = frozenset({2002, 2003, 2005, 2026})


def is_client_error(errno: int) -> bool:
    """Whether ``errno`` comes from the client library (2000-2999, Connector/C's 5000s), not the server."""
    return 2000 <= errno < 3000 or 5000 <= errno < 6000


_LEADING_NUMBER = re.compile(r"^\((\d{4})[,)]")


def mysql_errno(exc: BaseException) -> int | None:
    """The MySQL error number an exception of PyMySQL, aiomysql, asyncmy or mysqlclient carries.

    The drivers put it first in ``args``: ``OperationalError(1213, "Deadlock found ...")``.

    Example::

        >>> mysql_errno(OperationalError(1213, "Deadlock found"))  # doctest: +SKIP
        1213
    """
    args = getattr(exc, "args", ())
    if args and isinstance(args[0], int) and not isinstance(args[0], bool):
        return args[0] if 1000 <= args[0] < 10000 else None
    if args and isinstance(args[0], str):
        match = _LEADING_NUMBER.match(args[0])
        if match:
            return int(match.group(1))
    return None


def refusal_rule(errno: int | None, *, mariadb: bool | None, server: bool) -> Rule | None:
    """The rule for the reason a MySQL server gave for refusing a connection (1045 access
    denied, 1049 unknown database, 1040 too many connections), or None: a lost or
    unreachable server, or a number the client made up."""
    if errno is None or not server:
        return None
    rule = mysql_rule(errno, mariadb=mariadb)
    return None if rule is None or issubclass(rule[0], e.ConnectionLost) else rule


# 1105 is the server's "unknown error"; Galera uses it for a write-set over
# wsrep_max_ws_size, which only its message tells apart.
_WRITE_SET = re.compile(r"Maximum writeset size exceeded", re.IGNORECASE)


def mysql_rule(errno: int, *, mariadb: bool | None, message: str = "") -> Rule | None:
    """The rule for ``errno`` on a server of that flavour (None: not known), or None.

    A number above 3000 whose meaning depends on the flavour has no rule when
    the flavour is not known; ``message`` tells apart the numbers that carry
    several meanings (1105).
    """
    if errno == 1105 and _WRITE_SET.search(message):
        return (e.WriteSetTooLarge, False)
    rule = _COMMON.get(errno)
    if rule is not None:
        return rule
    if errno in CLIENT_LOST:
        return (e.ConnectionLost, True)
    if errno in _CLIENT_CONNECT:
        return (e.DatabaseUnavailable, True)
    if mariadb is True:
        return _MARIADB.get(errno)
    if mariadb is False:
        return _MYSQL.get(errno)
    mysql, maria = _MYSQL.get(errno), _MARIADB.get(errno)
    if mysql is not None and maria is not None and mysql != maria:
        return None
    return mysql or maria


#: The MySQL drivers by top-level module: PyMySQL (and aiomysql, which raises
#: PyMySQL's classes), asyncmy and mysqlclient (MySQLdb).
MYSQL_DRIVERS = {"pymysql": "pymysql", "asyncmy": "asyncmy", "MySQLdb": "mysqldb"}

# Where MySQL and MariaDB name what a constraint error is about.
_KEY = re.compile(r"for key '(?:[^'.]*\.)?([^']+)'")
_FK = re.compile(r"\(`(?:[^`]+)`\.`([^`]+)`, CONSTRAINT `([^`]+)` FOREIGN KEY \(`([^`]+)`\)")
_COLUMN = re.compile(r"[Cc]olumn '([^']+)'")
_CHECK = re.compile(
    r"(?:CONSTRAINT `([^`]+)` failed for `[^`]+`\.`([^`]+)`)|(?:Check constraint '([^']+)')"
)


def mysql_message_facts(
    exc: BaseException, errno: int
) -> tuple[str, str | None, str | None, str | None]:
    """The first message line, and the constraint, table and column it names (or None).

    Example::

        >>> mysql_message_facts(IntegrityError(1062, "Duplicate entry 'x' for key 'email'"), 1062)  # doctest: +SKIP
        ("Duplicate entry 'x' for key 'email'", 'email', None, None)
    """
    args: tuple[object, ...] = tuple(getattr(exc, "args", ()))
    text = str(args[1]) if len(args) > 1 else str(exc)
    message = text.strip().splitlines()[0] if text.strip() else ""
    constraint = table = column = None
    if errno in (1062, 1586, 1022, 1169):
        match = _KEY.search(message)
        constraint = match.group(1) if match else None
    elif errno in (1451, 1452, 1216, 1217):
        match = _FK.search(message)
        if match:
            table, constraint, column = match.group(1), match.group(2), match.group(3)
    elif errno in (3819, 4025):
        match = _CHECK.search(message)
        if match:
            constraint = match.group(1) or match.group(3)
            table = match.group(2)
    else:
        match = _COLUMN.search(message)
        column = match.group(1) if match else None
    return message, constraint, table, column
