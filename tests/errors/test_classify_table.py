"""Every SQLSTATE PostgreSQL defines, through the classifier: the retry-safety table holds.

``tests/data/postgresql-errcodes.txt`` is PostgreSQL's own ``errcodes.txt``
(its copyright header kept). The classifier is a pure function of the facts an
exception carries, so this sweep needs no server; the classes it decides are
checked against real failures in the other ``test_errors_*`` modules.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

import sqlalchemy_resilience as sr
from sqlalchemy_resilience.errors.classify import (
    RETRY_ONCE,
    ErrorFacts,
    Phase,
    build_error,
    classify,
    sqlite_code_name,
)
from sqlalchemy_resilience.errors.messages import available_locales

ERRCODES = Path(__file__).parent.parent / "data" / "postgresql-errcodes.txt"


def _error_codes() -> list[tuple[str, str]]:
    codes = []
    for line in ERRCODES.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([0-9A-Z]{5})\s+E\s+\S+\s*(\S*)", line)
        if m:
            codes.append((m.group(1), m.group(2)))
    return codes


# 72000 snapshot_too_old exists up to PostgreSQL 16; the reference list is newer.
CODES = [*_error_codes(), ("72000", "snapshot_too_old")]

# The retry-safety table of DESIGN.md / FAULTS.md section 1, for a failure the
# server reported during a statement: every code that may be re-run, and why.
RETRYABLE_IN_STATEMENT: dict[str, type[sr.DatabaseFailure]] = {
    "08000": sr.ConnectionLost,
    "08001": sr.DatabaseUnavailable,
    "08003": sr.ConnectionLost,
    "08004": sr.DatabaseUnavailable,
    "08006": sr.ConnectionLost,
    "08P01": sr.ConnectionLost,
    "25006": sr.ReadOnlyServer,
    "25P03": sr.ConnectionLost,
    "40000": sr.TransactionConflict,
    "40001": sr.SerializationFailure,
    "40P01": sr.DeadlockDetected,
    "53300": sr.TooManyConnections,
    "57P01": sr.ConnectionLost,
    "57P02": sr.ConnectionLost,
    "57P03": sr.DatabaseUnavailable,
    "57P05": sr.ConnectionLost,
    "72000": sr.SnapshotTooOld,
}

# Codes whose class the table names, retryable or not.
EXACT: dict[str, type[sr.DatabaseFailure]] = {
    "40002": sr.ConstraintViolation,
    "40003": sr.CommitOutcomeUnknown,
    "08007": sr.CommitOutcomeUnknown,
    "55P03": sr.LockNotAvailable,
    "57014": sr.QueryTimeout,
    "57P04": sr.DatabaseNotFound,
    "3D000": sr.DatabaseNotFound,
    "28000": sr.AuthenticationFailed,
    "28P01": sr.AuthenticationFailed,
    "23505": sr.UniqueViolation,
    "23P01": sr.ExclusionViolation,
    "42501": sr.PermissionDenied,
    "53100": sr.InsufficientResources,
    "53200": sr.InsufficientResources,
    "58030": sr.StorageFailure,
    "XX001": sr.StorageFailure,
    "XX002": sr.StorageFailure,
}


def _classify(code: str, phase: Phase = "statement") -> tuple[type[sr.DatabaseFailure], bool]:
    return classify(ErrorFacts(sqlstate=code, server_reported=True), phase=phase)


def test_reference_list_is_complete() -> None:
    """The copied errcodes.txt is the whole list (the sweep below is not vacuous)."""
    assert len(CODES) > 250
    assert {"25006", "08P01", "40001", "3D000"} <= {code for code, _ in CODES}


@pytest.mark.parametrize(("code", "name"), CODES, ids=[c for c, _ in CODES])
def test_every_sqlstate_has_a_class_and_only_the_table_retries(code: str, name: str) -> None:
    """Each code maps to a DatabaseFailure class; only the table's codes are retryable."""
    cls, retryable = _classify(code)
    assert issubclass(cls, sr.DatabaseFailure)
    if code in RETRYABLE_IN_STATEMENT:
        assert (cls, retryable) == (RETRYABLE_IN_STATEMENT[code], True), name
    else:
        assert retryable is False, f"{code} {name} must not be retried by default"
    if code in EXACT:
        assert cls is EXACT[code], name
    klass = code[:2]
    if klass == "22":
        assert cls is sr.InvalidData
    elif klass == "23":
        assert issubclass(cls, sr.ConstraintViolation)
    elif klass == "42":
        assert issubclass(cls, sr.InvalidStatement)
    elif klass == "58":
        assert cls is sr.StorageFailure


@pytest.mark.parametrize(("code", "name"), CODES, ids=[c for c, _ in CODES])
def test_a_server_error_at_commit_keeps_its_meaning(code: str, name: str) -> None:
    """An ErrorResponse in reply to COMMIT is definite (the server said no), except
    08P01, whose outcome is unknown at COMMIT as any lost session's is."""
    cls, retryable = _classify(code, "commit")
    if code == "08P01":
        assert (cls, retryable) == (sr.CommitOutcomeUnknown, False)
    else:
        assert (cls, retryable) == _classify(code), name


def test_protocol_violation_is_one_rule_in_every_phase() -> None:
    """08P01: retry (nothing applied) at connect and mid-statement, unknown at COMMIT."""
    assert _classify("08P01", "connect") == (sr.DatabaseUnavailable, True)
    assert _classify("08P01", "statement") == (sr.ConnectionLost, True)
    assert _classify("08P01", "commit") == (sr.CommitOutcomeUnknown, False)
    assert "08P01" in RETRY_ONCE


def test_read_only_depends_on_what_the_server_reported() -> None:
    """25006 is a failover (retry) unless the server reported it accepts writes."""
    for reported in (True, None):
        facts = ErrorFacts(sqlstate="25006", server_reported=True, server_read_only=reported)
        assert classify(facts) == (sr.ReadOnlyServer, True)
    facts = ErrorFacts(sqlstate="25006", server_reported=True, server_read_only=False)
    assert classify(facts) == (sr.ReadOnlyTransaction, False)


NON_WAITING = [sr.AuthenticationFailed, sr.DatabaseNotFound, sr.StorageFailure]
WAIT_WORDS = {"en": "try again in a moment", "ja": "しばらくしてから再度お試しください"}


@pytest.mark.parametrize("cls", NON_WAITING, ids=lambda c: c.__name__)
@pytest.mark.parametrize("locale", ["en", "ja"])
def test_failures_that_waiting_will_not_fix_do_not_say_try_again(
    cls: type[sr.DatabaseFailure], locale: str
) -> None:
    """3D000, 28xxx, 57P04, SQLITE_CANTOPEN, storage failures: their own wording in every locale."""
    assert set(WAIT_WORDS) <= set(available_locales())
    message = cls("x").user_message(locale)
    assert WAIT_WORDS[locale] not in message
    assert message != sr.DatabaseUnavailable("x").user_message(locale)
    generic = sr.DatabaseUnavailable("x", retryable=False).user_message(locale)
    assert WAIT_WORDS[locale] not in generic


def _sqlite_error(message: str, code: int | None = None, name: str | None = None) -> Exception:
    err = sqlite3.OperationalError(message)
    if code is not None:
        err.sqlite_errorcode = code
    if name is not None:
        err.sqlite_errorname = name
    return err


@pytest.mark.parametrize(
    ("code", "name", "message", "expected", "retryable"),
    [
        (778, None, "disk I/O error", sr.StorageFailure, False),  # SQLITE_IOERR_WRITE
        (779, None, "database disk image is malformed", sr.StorageFailure, False),
        (26, None, "file is not a database", sr.StorageFailure, False),
        (13, None, "database or disk is full", sr.InsufficientResources, False),
        (1032, None, "attempt to write a readonly database", sr.PermissionDenied, False),
        (264, None, "attempt to write a readonly database", sr.LockNotAvailable, True),
        (526, None, "unable to open database file", sr.DatabaseNotFound, False),
        (517, None, "database is locked", sr.SerializationFailure, True),
        (517, "SQLITE_BUSY_SNAPSHOT", "database is locked", sr.SerializationFailure, True),
        (3850, "SQLITE_IOERR_FSYNC", "disk I/O error", sr.StorageFailure, False),
        (None, None, "disk I/O error", sr.StorageFailure, False),
        (None, None, "file is not a database", sr.StorageFailure, False),
        (None, None, "database or disk is full", sr.InsufficientResources, False),
    ],
)
def test_sqlite_by_number_then_name_then_text(
    code: int | None,
    name: str | None,
    message: str,
    expected: type[sr.DatabaseFailure],
    retryable: bool,
) -> None:
    """An extended code no rule names is classified by its primary code; text is the last resort."""
    err = build_error(_sqlite_error(message, code, name))
    assert isinstance(err, expected)
    assert err.retryable is retryable
    assert err.driver_code == sqlite_code_name(_sqlite_error(message, code, name))
