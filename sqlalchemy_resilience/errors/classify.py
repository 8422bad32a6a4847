"""Turn a driver or SQLAlchemy exception into facts, and facts into a typed error.

Classification reads the SQLSTATE the server sent (asyncpg maps deadlocks,
serialization failures and shutdowns to a generic ``DBAPIError``, so the
SQLAlchemy class alone says little), the driver's own codes where there is no
SQLSTATE (SQLite's extended result codes), whether the connection was lost,
and the phase the failure happened in: while connecting, during a statement,
or while COMMIT was in flight. The most specific rule wins: a full SQLSTATE,
then its two-character class.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Literal

from sqlalchemy import exc as sa_exc

from sqlalchemy_resilience._util.masking import mask_secret

from . import hierarchy as e
from .mysql_codes import (
    CLIENT_LOST,
    MYSQL_DRIVERS,
    is_client_error,
    mysql_errno,
    mysql_message_facts,
    mysql_rule,
    refusal_rule,
)
from .sqlite_codes import Rule as _Rule
from .sqlite_codes import sqlite_code_name, sqlite_rule

__all__ = [
    "RETRY_ONCE",
    "ErrorFacts",
    "Phase",
    "build_error",
    "classify",
    "extract_facts",
    "redact_text",
    "sqlite_code_name",
]

Phase = Literal["connect", "statement", "commit"]


_SQLSTATE_RULES: dict[str, _Rule] = {
    "40001": (e.SerializationFailure, None),
    "40P01": (e.DeadlockDetected, None),
    "40002": (e.ConstraintViolation, False),
    "40003": (e.CommitOutcomeUnknown, False),
    "55P03": (e.LockNotAvailable, False),
    "57014": (e.QueryTimeout, None),
    "25P04": (e.QueryTimeout, None),
    "57P01": (e.ConnectionLost, None),
    "57P02": (e.ConnectionLost, None),
    "57P03": (e.DatabaseUnavailable, True),
    "57P04": (e.DatabaseNotFound, False),
    "57P05": (e.ConnectionLost, None),
    "25P03": (e.ConnectionLost, None),
    "53300": (e.TooManyConnections, True),
    "08001": (e.DatabaseUnavailable, True),
    "08004": (e.DatabaseUnavailable, True),
    "08000": (e.ConnectionLost, None),
    "08003": (e.ConnectionLost, None),
    "08006": (e.ConnectionLost, None),
    "08007": (e.CommitOutcomeUnknown, False),
    # A protocol violation closes the session before anything is applied;
    # a second one in a row is likely deterministic (a pooler or driver
    # mismatch), so the retry loop re-runs it once only (RETRY_ONCE).
    "08P01": (e.ConnectionLost, True),
    "25006": (e.ReadOnlyServer, True),
    "72000": (e.SnapshotTooOld, True),
    "XX001": (e.StorageFailure, False),
    "XX002": (e.StorageFailure, False),
    "23505": (e.UniqueViolation, None),
    "23503": (e.ForeignKeyViolation, None),
    "23502": (e.NotNullViolation, None),
    "23514": (e.CheckViolation, None),
    "23P01": (e.ExclusionViolation, None),
    "42501": (e.PermissionDenied, None),
    "3D000": (e.DatabaseNotFound, False),
    "28000": (e.AuthenticationFailed, None),
    "28P01": (e.AuthenticationFailed, None),
}

_SQLSTATE_CLASS_RULES: dict[str, _Rule] = {
    "40": (e.TransactionConflict, None),
    "23": (e.ConstraintViolation, None),
    "22": (e.InvalidData, None),
    "42": (e.InvalidStatement, None),
    "28": (e.AuthenticationFailed, None),
    "53": (e.InsufficientResources, None),
    "08": (e.ConnectionLost, None),
    "57": (e.DatabaseUnavailable, False),
    "58": (e.StorageFailure, False),
}

#: SQLSTATEs re-run at most once by the retry loop: a repeat is likely
#: deterministic. 0A000 is asyncpg's stale prepared plan after DDL
#: (SQLAlchemy has invalidated its caches, so one more run succeeds).
RETRY_ONCE: frozenset[str] = frozenset({"08P01", "0A000"})

# Failures whose outcome is unknown when they arrive while COMMIT was in flight,
# even though the server sent them: the session is broken at the protocol level.
_UNKNOWN_AT_COMMIT: frozenset[str] = frozenset({"08P01"})

# libpq reports a failed connection attempt as text only (no SQLSTATE), so
# psycopg's connect errors are recognised by the server's FATAL message. With
# a non-English lc_messages none match, and the failure stays a retryable
# DatabaseUnavailable.
_LIBPQ_CONNECT_STATES: tuple[tuple[str, str], ...] = (
    ("password authentication failed", "28P01"),
    ("no pg_hba.conf entry", "28000"),
    ("too many connections", "53300"),
    ("remaining connection slots are reserved", "53300"),
    ("the database system is starting up", "57P03"),
    ("the database system is shutting down", "57P03"),
    ("the database system is in recovery mode", "57P03"),
    ("the database system is not yet accepting connections", "57P03"),
    ('FATAL:  role "', "28000"),
    ('FATAL:  database "', "3D000"),
)

# The names asyncpg and psycopg give their own prepared statements; a user's
# PREPARE keeps its plain InvalidStatement.
_DRIVER_STATEMENT = re.compile(r'prepared statement "(?:__asyncpg_|_pg3_)')

# asyncpg refuses to start an operation while another (a cancelled one, say)
# is still in flight on the connection: raised before anything is sent.
_ANOTHER_OPERATION = re.compile(r"another operation(?: \(\d+\))? is in progress")

_SQLITE_TARGET = re.compile(r"constraint failed: (?:([\w$]+)\.)?([\w$]+)")


@dataclass(frozen=True, slots=True)
class ErrorFacts:
    """What an exception says about itself, driver differences removed.

    Attributes:
        sqlstate: SQLSTATE from the server or the driver's class.
        driver_code: SQLite's extended result code name, when that is the driver.
        server_reported: the server sent this error (an ErrorResponse with a
            severity); False for client-side failures such as EOF or a reset socket.
        primary_message: the server's or driver's first message line, unredacted.
        driver: ``asyncpg``, ``psycopg``, ``sqlite``, ``aws_advanced_python_wrapper``
            (a failover the AWS Advanced Python Wrapper reports) or ``other``.
        invalidated: SQLAlchemy reported the connection as invalidated.
        server_read_only: what the server last reported of itself
            (``in_hot_standby`` or ``default_transaction_read_only`` on),
            None where it reported nothing (before PostgreSQL 14, or when
            the connection was not at hand).
        mysql_errno: the MySQL/MariaDB error number (server or client library).
        mariadb: the server is MariaDB (True), MySQL (False), or not known
            (None: the numbers above 3000 that differ are then left unread).
    """

    sqlstate: str | None = None
    driver_code: str | None = None
    constraint_name: str | None = None
    table_name: str | None = None
    column_name: str | None = None
    schema_name: str | None = None
    server_reported: bool = False
    primary_message: str = ""
    driver: str = "other"
    driver_class: str = ""
    invalidated: bool = False
    server_read_only: bool | None = None
    mysql_errno: int | None = None
    mariadb: bool | None = None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        if isinstance(current, sa_exc.DBAPIError) and current.orig is not None:
            nxt: BaseException | None = current.orig
        else:
            nxt = current.__cause__ or current.__context__
        current = nxt


# The AWS Advanced Python Wrapper reports a failover it handled with its own
# classes, known here by name (the wrapper is not a dependency), carrying the
# SQLSTATEs its JDBC sibling uses: 08S02 the connection moved to the new
# writer and the statement did not run; 08007 the failover happened inside a
# transaction; 08001 no writer could be reached.
_AWS_WRAPPER = "aws_advanced_python_wrapper"
_AWS_FAILOVER_STATES = {
    "FailoverSuccessError": "08S02",
    "TransactionResolutionUnknownError": "08007",
    "FailoverFailedError": "08001",
}


def _aws_failover_state(item: BaseException) -> str | None:
    for klass in type(item).__mro__:
        state = _AWS_FAILOVER_STATES.get(klass.__name__)
        if state is not None and klass.__module__.startswith(_AWS_WRAPPER):
            return state
    return None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _sqlite_facts(err: sqlite3.Error) -> ErrorFacts:
    message = str(err)
    name = sqlite_code_name(err)
    table = column = constraint = None
    match = _SQLITE_TARGET.search(message)
    if match:
        if match.group(1):
            table, column = match.group(1), match.group(2)
        else:
            constraint = match.group(2)
    return ErrorFacts(
        driver_code=name,
        table_name=table,
        column_name=column,
        constraint_name=constraint,
        server_reported=True,
        primary_message=_first_line(message),
        driver="sqlite",
        driver_class=type(err).__name__,
    )


def _mysql_facts(item: BaseException, errno: int, driver: str) -> ErrorFacts:
    message, constraint, table, column = mysql_message_facts(item, errno)
    return ErrorFacts(
        driver_code=str(errno),
        primary_message=message,
        constraint_name=constraint,
        table_name=table,
        column_name=column,
        server_reported=not is_client_error(errno),
        driver=driver,
        driver_class=type(item).__name__,
        mysql_errno=errno,
    )


def extract_facts(exc: BaseException) -> ErrorFacts:
    """Read SQLSTATE, constraint/table/column and origin from any driver's exception.

    ``exc`` may be a SQLAlchemy ``DBAPIError`` or the driver's exception itself.

    Example::

        >>> extract_facts(err).sqlstate  # doctest: +SKIP
        '23505'
    """
    invalidated = bool(getattr(exc, "connection_invalidated", False))
    generic_state: str | None = None
    generic_message = ""
    for item in _chain(exc):
        module = type(item).__module__
        if module.startswith(_AWS_WRAPPER):
            state = _aws_failover_state(item)
            if state is not None:
                return ErrorFacts(
                    sqlstate=state,
                    primary_message=_first_line(str(item)),
                    driver=_AWS_WRAPPER,
                    driver_class=type(item).__name__,
                    invalidated=invalidated,
                )
        if isinstance(item, sqlite3.Error):
            facts = _sqlite_facts(item)
            return replace(facts, invalidated=invalidated)
        mysql_driver = MYSQL_DRIVERS.get(module.split(".", 1)[0])
        if mysql_driver is not None:
            errno = mysql_errno(item)
            if errno is not None:
                return replace(_mysql_facts(item, errno, mysql_driver), invalidated=invalidated)
        if module.startswith("asyncpg"):
            severity = getattr(item, "severity", None)
            if not severity:
                # asyncpg reports a FATAL ErrorResponse that closed the
                # connection as ConnectionDoesNotExistError caused by the
                # server's error; the server's word is the one that counts.
                cause = item.__cause__ or item.__context__
                if (
                    cause is not None
                    and type(cause).__module__.startswith("asyncpg")
                    and getattr(cause, "severity", None)
                ):
                    item = cause
                    severity = getattr(item, "severity", None)
            args = getattr(item, "args", ())
            return ErrorFacts(
                sqlstate=getattr(item, "sqlstate", None),
                constraint_name=getattr(item, "constraint_name", None),
                table_name=getattr(item, "table_name", None),
                column_name=getattr(item, "column_name", None),
                schema_name=getattr(item, "schema_name", None),
                server_reported=bool(severity),
                primary_message=_first_line(str(args[0]) if args else ""),
                driver="asyncpg",
                driver_class=type(item).__name__,
                invalidated=invalidated,
            )
        diag = getattr(item, "diag", None)
        if module.startswith("psycopg") and diag is not None:
            sqlstate = getattr(item, "sqlstate", None)
            server_reported = bool(diag.severity)
            if sqlstate is None and "FATAL:" in str(item):
                text = str(item)
                sqlstate = next((c for hint, c in _LIBPQ_CONNECT_STATES if hint in text), None)
                server_reported = sqlstate is not None
            return ErrorFacts(
                sqlstate=sqlstate,
                constraint_name=diag.constraint_name,
                table_name=diag.table_name,
                column_name=diag.column_name,
                schema_name=diag.schema_name,
                server_reported=server_reported,
                primary_message=diag.message_primary or _first_line(str(item)),
                driver="psycopg",
                driver_class=type(item).__name__,
                invalidated=invalidated,
            )
        if generic_state is None:
            state = getattr(item, "sqlstate", None) or getattr(item, "pgcode", None)
            if isinstance(state, str):
                generic_state = state
                generic_message = _first_line(str(item))
    return ErrorFacts(
        sqlstate=generic_state,
        primary_message=generic_message,
        driver_class=type(exc).__name__,
        invalidated=invalidated,
    )


# asyncio.TimeoutError is a distinct class before Python 3.11.
CONNECT_FAILURES: tuple[type[BaseException], ...] = (OSError, TimeoutError, asyncio.TimeoutError)


def classify(
    facts: ErrorFacts,
    *,
    phase: Phase = "statement",
    is_disconnect: bool = False,
    client_exception: BaseException | None = None,
) -> tuple[type[e.DatabaseFailure], bool]:
    """Pick the error class and whether a retry of the whole unit of work is safe.

    Args:
        facts: from :func:`extract_facts`.
        phase: ``connect`` (nothing was sent), ``statement``, or ``commit``
            (COMMIT was in flight: a lost connection leaves the outcome unknown).
        is_disconnect: SQLAlchemy's verdict that the connection is unusable.
        client_exception: a non-DBAPI exception (``OSError``, ``TimeoutError``)
            when that is what failed.
    """
    lost = is_disconnect or facts.invalidated or isinstance(client_exception, CONNECT_FAILURES)
    client_side_state = (
        (facts.sqlstate or "").startswith("08") or facts.mysql_errno in CLIENT_LOST
    ) and not facts.server_reported
    if phase == "connect" and (lost or client_side_state):
        if facts.sqlstate in _SQLSTATE_RULES and facts.server_reported:
            cls, retry = _SQLSTATE_RULES[facts.sqlstate]
            if issubclass(cls, e.ConnectionLost):
                return e.DatabaseUnavailable, True
            return cls, cls.default_retryable if retry is None else retry
        why = refusal_rule(facts.mysql_errno, mariadb=facts.mariadb, server=facts.server_reported)
        if why is not None:  # MySQL's server said why it refused (1045, 1049, 1040)
            return why[0], why[0].default_retryable if why[1] is None else why[1]
        return e.DatabaseUnavailable, True
    if facts.driver == _AWS_WRAPPER and facts.sqlstate == "08007" and phase == "statement":
        # The wrapper says "unknown" for a failover anywhere inside a
        # transaction; before COMMIT was sent nothing of it can have
        # committed, and the wrapper has already moved the connection on.
        return e.ConnectionLost, True
    if (
        phase == "commit"
        and facts.driver_class in ("InternalClientError", "InterfaceError")
        and _ANOTHER_OPERATION.search(facts.primary_message)
    ):
        # The COMMIT never left the client: the transaction is not committed,
        # and ends with the connection. A re-run is safe.
        return e.ConnectionLost, True
    if phase == "commit" and (
        ((lost or client_side_state) and not facts.server_reported)
        or facts.sqlstate in _UNKNOWN_AT_COMMIT
    ):
        # EOF or a reset after COMMIT was sent: the server may have committed.
        return e.CommitOutcomeUnknown, False

    rule: _Rule | None = None
    if facts.sqlstate:
        rule = _SQLSTATE_RULES.get(facts.sqlstate) or _SQLSTATE_CLASS_RULES.get(facts.sqlstate[:2])
        if facts.sqlstate == "0A000" and facts.driver_class == "InvalidCachedStatementError":
            # asyncpg: a prepared plan went stale after DDL; SQLAlchemy has
            # already invalidated its caches, so one more run succeeds.
            rule = (e.DatabaseFailure, True)
        if facts.sqlstate in ("26000", "42P05") and _DRIVER_STATEMENT.search(facts.primary_message):
            rule = (e.PoolerIncompatible, False)
        if facts.sqlstate == "25006" and facts.server_read_only is False:
            # The server accepts writes: the application made this transaction
            # READ ONLY, and re-running it would fail the same way.
            rule = (e.ReadOnlyTransaction, False)
    elif facts.mysql_errno is not None:
        rule = mysql_rule(facts.mysql_errno, mariadb=facts.mariadb, message=facts.primary_message)
        if facts.mysql_errno == 1792 and facts.server_read_only is False:
            # The application's own READ ONLY transaction: re-running fails the same way.
            rule = (e.ReadOnlyTransaction, False)
    elif facts.driver_code:
        rule = sqlite_rule(facts.driver_code)
    if phase == "connect" and rule is not None and issubclass(rule[0], e.ConnectionLost):
        return e.DatabaseUnavailable, True
    if rule is None:
        if lost:
            return (e.DatabaseUnavailable, True) if phase == "connect" else (e.ConnectionLost, True)
        if phase == "connect":
            # Nothing was sent yet; only an error the server itself reported
            # (and no rule knows) is treated as permanent.
            return e.DatabaseUnavailable, not facts.server_reported
        return e.DatabaseFailure, False
    cls, retry = rule
    return cls, cls.default_retryable if retry is None else retry


# -- redaction -------------------------------------------------------------

_KEY_VALUES = re.compile(r"(Key \([^)]*\))=\((?:[^()]|\([^()]*\))*\)")
_FAILING_ROW = re.compile(r"(Failing row contains) \(.*\)", re.DOTALL)
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')
_VALUE_AFTER_COLON = re.compile(r"(:\s*)(0x[0-9a-fA-F]+|'[^']*')")
# MySQL and MariaDB quote the offending value: "Duplicate entry 'a@b' for key",
# "Incorrect integer value: 'x' for column".
_MYSQL_VALUE = re.compile(r"(Duplicate entry |[Vv]alue:? )'(?:[^'\\]|\\.|'')*'")


def redact_text(
    text: str, *, sqlstate: str | None = None, secrets: tuple[str, ...] = (), values: bool = True
) -> str:
    """Remove data values and secrets from a server or driver message.

    ``Key (email)=(a@b)`` becomes ``Key (email)=(…)``, "Failing row contains
    (...)" loses the row, and for data exceptions (class 22, which quote the
    offending value) quoted text becomes ``"…"``. Every string in ``secrets``
    (the connection password) becomes ``***``. With ``values=False`` only
    the secrets go.
    """
    out = text
    if values:
        out = _KEY_VALUES.sub(r"\1=(…)", out)
        out = _FAILING_ROW.sub(r"\1 (…).", out)
        out = _MYSQL_VALUE.sub(r"\1'…'", out)
    if values and sqlstate is not None and sqlstate.startswith("22"):
        out = _QUOTED.sub('"…"', out)
        out = _VALUE_AFTER_COLON.sub(r"\1…", out)
    for secret in secrets:
        out = mask_secret(out, secret)
    return out


def _redact_in_place(
    exc: BaseException, sqlstate: str | None, secrets: tuple[str, ...], *, values: bool = True
) -> None:
    """Rewrite the messages of the driver exceptions in a chain, values removed.

    Structured fields stay (psycopg's ``diag``, asyncpg's ``constraint_name``);
    only the text that ``str()``, ``repr()`` and tracebacks print changes, so
    the chain can be logged without leaking the parameters the app hid.
    """
    for item in _chain(exc):
        if isinstance(item, e.ResilienceError):
            continue
        args: tuple[object, ...] = tuple(getattr(item, "args", ()))
        if args and isinstance(args[0], str):
            new_first = redact_text(args[0], sqlstate=sqlstate, secrets=secrets, values=values)
            if new_first != args[0]:
                item.args = (new_first, *args[1:])
        elif len(args) > 1 and isinstance(args[0], int) and isinstance(args[1], str):
            # MySQL drivers: (error number, message).
            new_message = redact_text(args[1], sqlstate=sqlstate, secrets=secrets, values=values)
            if new_message != args[1]:
                item.args = (args[0], new_message, *args[2:])
        detail = getattr(item, "detail", None)
        if isinstance(detail, str) and type(item).__module__.startswith(("asyncpg", "sqlalchemy")):
            redacted = redact_text(detail, sqlstate=sqlstate, secrets=secrets, values=values)
            if redacted != detail:
                with contextlib.suppress(AttributeError):
                    item.detail = redacted  # type: ignore[attr-defined]


def build_error(
    exc: BaseException,
    *,
    phase: Phase = "statement",
    is_disconnect: bool = False,
    show_parameters: bool = False,
    secrets: tuple[str, ...] = (),
    server_read_only: bool | None = None,
    mariadb: bool | None = None,
) -> e.DatabaseFailure:
    """Translate ``exc`` (a SQLAlchemy ``DBAPIError`` or a raw driver/socket error).

    The result keeps ``exc``'s statement and, as ``orig``, the driver's
    exception; it subclasses the SQLAlchemy class ``exc`` was (or would have
    been) so existing ``except`` clauses still match. Its ``str()`` is
    SQLAlchemy's own text for ``exc`` (parameters as ``exc.hide_parameters``
    decides) followed by the package's facts line.

    Args:
        exc: the exception to translate.
        phase: see :func:`classify`.
        is_disconnect: SQLAlchemy's verdict that the connection is unusable.
        show_parameters: keep the values in the server's message in
            ``summary`` (the text the package's own records use); off, they
            are redacted there.
        secrets: strings (the connection password) never to show, anywhere.
        server_read_only: what the server last reported of itself (see
            :attr:`ErrorFacts.server_read_only`); decides a 25006.
        mariadb: a MySQL-family server's flavour (see :attr:`ErrorFacts.mariadb`).

    Where ``exc`` hides its parameters (the engine was created with
    ``hide_parameters=True``), the values the server echoes in its message
    (``Key (email)=(a@b)``, ``invalid input syntax for type integer: "x"``) are
    parameters too: they are redacted in the driver exceptions of the chain,
    so no traceback shows them.
    """
    facts = extract_facts(exc)
    if server_read_only is not None:
        facts = replace(facts, server_read_only=server_read_only)
    if mariadb is not None and facts.mysql_errno is not None:
        facts = replace(facts, mariadb=mariadb)
    client_exc = None if isinstance(exc, sa_exc.DBAPIError) else exc
    if client_exc is not None and not isinstance(client_exc, CONNECT_FAILURES) and facts.sqlstate:
        client_exc = None
    cls, retryable = classify(
        facts, phase=phase, is_disconnect=is_disconnect, client_exception=client_exc
    )
    orig: BaseException | None
    source: sa_exc.DBAPIError | None = None
    code: str | None = None
    if isinstance(exc, sa_exc.DBAPIError):
        sa_class: type[sa_exc.DBAPIError] | None = type(exc)
        if isinstance(exc, e.DatabaseFailure):
            sa_class = None
        statement, params, orig = exc.statement, exc.params, exc.orig
        invalidated = exc.connection_invalidated or is_disconnect
        ismulti = exc.ismulti
        hide = exc.hide_parameters
        code = exc.__dict__.get("code")
        source = exc
    else:
        sa_class = None
        statement, params, orig = None, None, exc
        invalidated = is_disconnect or isinstance(exc, CONNECT_FAILURES)
        ismulti = None
        hide = not show_parameters
    summary = facts.primary_message or (
        f"{type(orig).__name__}: {_first_line(str(orig))}" if orig is not None else ""
    )
    if not show_parameters:
        summary = redact_text(summary, sqlstate=facts.sqlstate, secrets=secrets)
    elif secrets:
        summary = redact_text(summary, secrets=secrets)
    for item in (orig, source):
        if item is not None and (hide or secrets):
            _redact_in_place(item, facts.sqlstate, secrets, values=hide)
    if statement and secrets:
        statement = redact_text(statement, secrets=secrets)
    final_cls = e.combined_class(cls, sa_class)
    err = final_cls(
        summary,
        sqlstate=facts.sqlstate,
        driver_code=facts.driver_code,
        constraint_name=facts.constraint_name,
        table_name=facts.table_name,
        column_name=facts.column_name,
        schema_name=facts.schema_name,
        retryable=retryable,
        statement=statement,
        params=params,
        orig=orig,
        hide_parameters=hide,
        connection_invalidated=invalidated,
        ismulti=ismulti,
        code=code,
    )
    if source is not None and not isinstance(source, e.DatabaseFailure):
        err.follow_invalidation_of(source)
    return err
