"""Every error number MariaDB defines, server and client, through the classifier.

``tests/data/mariadb-mysqld_error.h`` and ``tests/data/mariadb-errmsg.h`` are
MariaDB Connector/C 10.11's headers (LGPL-2.1, their comments kept). The
classifier is a pure function of the facts, so the sweep needs no server; the
classes it decides are checked against the real server in ``test_errors_mysql``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import sqlalchemy_resilience as sr
from sqlalchemy_resilience.errors.classify import ErrorFacts, Phase, classify
from sqlalchemy_resilience.errors.messages import available_locales
from sqlalchemy_resilience.errors.mysql_codes import (
    CLIENT_LOST,
    is_client_error,
    mysql_errno,
    mysql_rule,
)

DATA = Path(__file__).parent.parent / "data"


def _numbers(name: str, prefix: str) -> dict[int, str]:
    found = {}
    for line in (DATA / name).read_text(encoding="utf-8").splitlines():
        m = re.match(rf"^#define ({prefix}\w+)\s+(\d+)", line)
        if m and not m.group(1).endswith(("_FIRST", "_LAST", "_MIN_ERROR", "_MAX_ERROR")):
            found[int(m.group(2))] = m.group(1)
    return found


SERVER = _numbers("mariadb-mysqld_error.h", "ER_")
CLIENT = _numbers("mariadb-errmsg.h", "C?E?R_")

# The retry-safety table (DESIGN.md): what may be re-run, and as what.
RETRYABLE = {
    1213: sr.DeadlockDetected,
    1205: sr.LockNotAvailable,
    1020: sr.SerializationFailure,
    1290: sr.ReadOnlyServer,
    1792: sr.ReadOnlyServer,
    1836: sr.ReadOnlyServer,
    1927: sr.ConnectionLost,
    1053: sr.ConnectionLost,
    1047: sr.DatabaseUnavailable,
    1040: sr.TooManyConnections,
    1203: sr.TooManyConnections,
    1637: sr.InsufficientResources,
}
NEVER = {
    1062: sr.UniqueViolation,
    1451: sr.ForeignKeyViolation,
    1452: sr.ForeignKeyViolation,
    1048: sr.NotNullViolation,
    4025: sr.CheckViolation,
    1406: sr.InvalidData,
    1264: sr.InvalidData,
    1969: sr.QueryTimeout,
    1317: sr.QueryTimeout,
    1045: sr.AuthenticationFailed,
    1044: sr.PermissionDenied,
    1049: sr.DatabaseNotFound,
    1064: sr.InvalidStatement,
}


def _facts(errno: int, mariadb: bool | None = True) -> ErrorFacts:
    return ErrorFacts(
        driver_code=str(errno),
        server_reported=not is_client_error(errno),
        driver="pymysql",
        mysql_errno=errno,
        mariadb=mariadb,
    )


def test_the_reference_lists_are_whole() -> None:
    assert len(SERVER) > 1100 and min(SERVER) == 1000
    assert {2006, 2013, 2003} <= set(CLIENT)


@pytest.mark.parametrize("errno", sorted(SERVER))
def test_every_server_number_classifies(errno: int) -> None:
    for phase in ("connect", "statement", "commit"):
        cls, retryable = classify(_facts(errno), phase=phase)  # type: ignore[arg-type]
        assert issubclass(cls, sr.DatabaseFailure)
        # A server-sent error is never an unknown COMMIT outcome: the server answered.
        assert cls is not sr.CommitOutcomeUnknown
        if phase == "statement" and errno not in RETRYABLE:
            assert retryable is False, (errno, SERVER[errno], cls)


@pytest.mark.parametrize(("errno", "expected"), sorted(RETRYABLE.items()))
def test_the_retryable_numbers(errno: int, expected: type[sr.DatabaseFailure]) -> None:
    cls, retryable = classify(_facts(errno), phase="statement")
    assert (cls, retryable) == (expected, True)


@pytest.mark.parametrize(("errno", "expected"), sorted(NEVER.items()))
def test_the_numbers_never_retried(errno: int, expected: type[sr.DatabaseFailure]) -> None:
    assert classify(_facts(errno), phase="statement") == (expected, False)


@pytest.mark.parametrize("errno", sorted(CLIENT_LOST))
def test_a_lost_connection_is_rerun_before_commit_and_unknown_at_commit(errno: int) -> None:
    assert classify(_facts(errno), phase="statement") == (sr.ConnectionLost, True)
    assert classify(_facts(errno), phase="commit") == (sr.CommitOutcomeUnknown, False)
    assert classify(_facts(errno), phase="connect") == (sr.DatabaseUnavailable, True)


def test_numbers_above_3000_are_read_by_flavour() -> None:
    # 4031: a client interaction timeout on MySQL 8, a missing trigger on MariaDB.
    assert classify(_facts(4031, mariadb=False)) == (sr.ConnectionLost, True)
    assert classify(_facts(4031, mariadb=True)) == (sr.InvalidStatement, False)
    assert mysql_rule(4031, mariadb=None) is None  # not known: not guessed
    assert classify(_facts(4031, mariadb=None)) == (sr.DatabaseFailure, False)
    assert classify(_facts(3819, mariadb=False))[0] is sr.CheckViolation
    assert classify(_facts(3024, mariadb=False))[0] is sr.QueryTimeout
    assert classify(_facts(3024, mariadb=True)) == (sr.DatabaseFailure, False)  # unused there


def test_galeras_write_set_limit_is_told_apart_from_the_unknown_error() -> None:
    """1105 is "unknown error"; with Galera's message it is a write-set over the limit."""
    from dataclasses import replace

    too_big = replace(_facts(1105), primary_message="Maximum writeset size exceeded")
    assert classify(too_big, phase="commit") == (sr.WriteSetTooLarge, False)
    assert issubclass(sr.WriteSetTooLarge, sr.InsufficientResources)
    assert classify(_facts(1105)) == (sr.DatabaseFailure, False)


def test_every_client_number_classifies() -> None:
    for errno in sorted(CLIENT):
        if not 1000 <= errno < 10000:
            continue
        cls, _ = classify(_facts(errno), phase="statement")
        assert issubclass(cls, sr.DatabaseFailure), errno


def test_the_number_is_read_from_every_drivers_exception_shape() -> None:
    class OperationalError(Exception):
        pass

    assert mysql_errno(OperationalError(1213, "Deadlock found")) == 1213
    assert mysql_errno(OperationalError("(2013, 'Lost connection')")) == 2013
    assert mysql_errno(OperationalError("no number")) is None
    assert mysql_errno(OperationalError(True, "not a number")) is None


def test_every_number_the_retry_table_names_has_a_rule_of_its_own() -> None:
    """The rest are generic (DatabaseFailure, never re-run): counted, not hidden."""
    ruled = {n for n in SERVER if mysql_rule(n, mariadb=True) is not None}
    assert set(RETRYABLE) | set(NEVER) <= ruled
    print(f"\n{len(ruled)} of {len(SERVER)} MariaDB server numbers have a rule of their own")


def test_every_class_the_numbers_reach_speaks_every_locale() -> None:
    reached = {classify(_facts(n))[0] for n in [*SERVER, *CLIENT] if 1000 <= n < 10000}
    for cls in reached:
        for locale in available_locales():
            assert cls("x").user_message(locale), (cls, locale)


@pytest.mark.parametrize("phase", ["connect", "statement", "commit"])
def test_a_refused_connect_is_unavailable_in_any_phase(phase: Phase) -> None:
    assert classify(_facts(2003), phase=phase)[0] in (sr.DatabaseUnavailable,)


def test_the_docs_table_says_what_the_classifier_does() -> None:
    """docs/mysql.md's error table, row by row, against the classifier."""
    page = (Path(__file__).parents[2] / "docs" / "mysql.md").read_text(encoding="utf-8")
    section = page.split("## Errors and what is re-run", 1)[1].split("\n## ", 1)[0]
    checked = 0
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0][:1].isdigit():
            continue
        expected = getattr(sr, re.findall(r"`(\w+)`", cells[2])[0])
        for part in cells[0].split(","):
            number = int(re.match(r"\s*(\d+)", part).group(1))  # type: ignore[union-attr]
            mariadb = "(MySQL)" not in part
            assert classify(_facts(number, mariadb=mariadb))[0] is expected, (number, expected)
            checked += 1
    assert checked >= 40
