"""One unit of work: its options and validation, commit-failure classification, the retry loop.

Shared by :func:`~.transaction.run_transaction`, its sync twin and
:class:`~.session.ResilientAsyncSession`: the checks of their options, what a
failure at COMMIT means (:class:`CommitOutcomeUnknown` or a definite error),
what one ``run_transaction`` call remembers between attempts (the idempotency
key and the result of an attempt whose COMMIT outcome was unknown, the xid
for ``pg_xact_status``), and the slow path that enters tenacity only after a
first attempt has failed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from contextlib import nullcontext
from typing import Any, TypeVar

import tenacity
from sqlalchemy import exc as sa_exc
from sqlalchemy import insert, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from sqlalchemy_resilience.errors.classify import RETRY_ONCE, build_error
from sqlalchemy_resilience.errors.hierarchy import (
    AlreadyApplied,
    CommitOutcomeUnknown,
    ConnectionLost,
    ResilienceError,
    RetryExhausted,
    TransactionConflict,
)
from sqlalchemy_resilience.errors.translate import translate_error
from sqlalchemy_resilience.schema import IDEMPOTENCY_KEY_MAX_LENGTH, idempotency_keys
from sqlalchemy_resilience.transactions.options import TransactionOptions
from sqlalchemy_resilience.transactions.scope import CommitScope

from .breaker import BreakerGuard, CircuitBreaker
from .policy import RetryBudget, RetryPolicy, log_retry

T = TypeVar("T")

_log = logging.getLogger("sqlalchemy_resilience.session")

_RERUN_NOTE = (
    "the transaction had already done work when this failed, so it was not retried here; "
    "re-run the whole unit of work (sqlalchemy_resilience.run_transaction does that)"
)

ISOLATION_LEVELS = frozenset(
    {"SERIALIZABLE", "REPEATABLE READ", "READ COMMITTED", "READ UNCOMMITTED"}
)

_DEFAULT_POLICY = RetryPolicy()


def _validate(
    isolation_level: str | None, read_only: bool, idempotent: bool, idempotency_key: str | None
) -> None:
    if isolation_level is not None and isolation_level not in ISOLATION_LEVELS:
        raise ValueError(
            f"isolation_level must be one of {sorted(ISOLATION_LEVELS)} or None, "
            f"got {isolation_level!r}"
            + (
                "; a unit of work cannot autocommit: each statement would commit on its own "
                "and a re-run would apply the committed ones twice"
                if isolation_level == "AUTOCOMMIT"
                else ""
            )
        )
    for name, value in (("read_only", read_only), ("idempotent", idempotent)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    if idempotency_key is not None:
        given: object = idempotency_key
        if not isinstance(given, str) or not 0 < len(given) <= IDEMPOTENCY_KEY_MAX_LENGTH:
            raise ValueError(
                f"idempotency_key must be a string of 1 to {IDEMPOTENCY_KEY_MAX_LENGTH}"
                f" characters, got {idempotency_key!r}"
            )


def _bind_of(factory: Any) -> Any:
    kw = getattr(factory, "kw", None)
    return kw.get("bind") if isinstance(kw, dict) else None


def _commit_failure(exc: BaseException) -> BaseException:
    """What a failure raised by COMMIT means.

    Errors the server sent in reply (40001, a deferred constraint) are
    definite; a lost connection or a client timeout leaves the outcome
    unknown. On an instrumented engine the error is already translated.
    """
    if isinstance(exc, ResilienceError):
        return exc
    if isinstance(exc, sa_exc.DBAPIError):
        return build_error(exc, phase="commit", is_disconnect=exc.connection_invalidated)
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return CommitOutcomeUnknown(f"{type(exc).__name__} while COMMIT was in flight", orig=exc)
    return exc


def _raise_translated(exc: BaseException, *, rerun_note: bool = False) -> None:
    translated = translate_error(exc)
    if rerun_note and hasattr(translated, "add_note"):  # Python >= 3.11
        translated.add_note(_RERUN_NOTE)
    if translated is not exc:
        raise translated from exc
    raise exc


# The dialects whose INSERT has ON CONFLICT DO NOTHING ... RETURNING.
_UPSERTS: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def breaker_guard(
    breaker: CircuitBreaker | None, wait_until: float | None
) -> BreakerGuard | nullcontext[None]:
    """The breaker's guard for one attempt: waiting at an open breaker until
    ``wait_until`` (``time.monotonic()``; inf: no limit of the caller's), or
    failing fast when None."""
    if breaker is None:
        return nullcontext()
    if wait_until is None:
        return breaker.guard()
    wait = None if math.isinf(wait_until) else max(0.0, wait_until - time.monotonic())
    return breaker.guard(waits=True, wait=wait)


def breaker_wait_until(policy: RetryPolicy, started: float) -> float | None:
    """Until when a unit of work started at ``started`` waits at an open breaker (see :func:`breaker_guard`)."""
    if not policy.wait_at_breaker:
        return None
    deadline = policy.deadline_seconds
    return math.inf if deadline is None else started + deadline


class _Unit:
    """One run_transaction call: its options and what earlier attempts left behind."""

    __slots__ = (
        "attempt_scope",
        "breaker",
        "breaker_wait_until",
        "committing",
        "idempotency_key",
        "isolation_level",
        "options",
        "pending",
        "pending_scope",
        "read_only",
        "resolve",
        "scope",
        "unknown_commit",
        "xid",
    )

    def __init__(
        self,
        breaker: CircuitBreaker | None,
        isolation_level: str | None,
        read_only: bool,
        idempotency_key: str | None,
    ) -> None:
        self.breaker = breaker
        # Wait at an open breaker until this time.monotonic() (inf: as long
        # as its failover_window allows); None: fail fast.
        self.breaker_wait_until: float | None = None
        self.isolation_level = isolation_level
        self.read_only = read_only
        # Applied like transaction()'s: SET TRANSACTION READ ONLY, or on SQLite
        # BEGIN IMMEDIATE / DEFERRED and query_only, undone before COMMIT.
        self.options = TransactionOptions(isolation_level=isolation_level, read_only=read_only)
        self.idempotency_key = idempotency_key
        # The result of an attempt whose COMMIT outcome was unknown: if a
        # later attempt finds the key taken, that attempt did commit.
        self.pending: Any = None
        self.unknown_commit = False
        self.committing = False  # COMMIT sent and not answered (for attempt_timeout)
        self.resolve = False  # record the xid before COMMIT to resolve an unknown outcome
        self.xid: str | None = None
        # on_commit callbacks: the current attempt's scope, the scope of the
        # attempt whose COMMIT outcome was unknown, and the one that committed.
        self.attempt_scope: CommitScope | None = None
        self.pending_scope: CommitScope | None = None
        self.scope: CommitScope | None = None

    def claim(self, conn: Connection) -> bool:
        """Insert this unit's key in its transaction; False when the key is already committed.

        A key another transaction inserted and has not committed yet makes
        this wait for that transaction (the unique index's lock), on every
        database: then False if it committed, True if it rolled back.
        """
        name = conn.dialect.name
        if name in ("mysql", "mariadb"):
            # No RETURNING on MySQL: INSERT IGNORE reports 1 row inserted, or 0
            # for a key already there. (The key's length is checked up front:
            # IGNORE would otherwise truncate a long one.)
            result = conn.execute(
                insert(idempotency_keys).values(key=self.idempotency_key).prefix_with("IGNORE")
            )
            return bool(result.rowcount == 1)
        upsert = _UPSERTS.get(name)
        if upsert is None:
            raise ValueError(
                "idempotency_key is supported on postgresql, sqlite, mysql and mariadb, "
                f"not {name!r}"
            )
        statement = (
            upsert(idempotency_keys)
            .values(key=self.idempotency_key)
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(idempotency_keys.c.key)
        )
        return conn.execute(statement).first() is not None

    def key_taken(self) -> Any:
        """What an attempt returns when it finds its key already committed."""
        if self.unknown_commit:
            _log.info(
                "commit outcome resolved: an earlier attempt committed (idempotency key found)"
            )
            self.scope = self.pending_scope
            return self.pending
        assert self.idempotency_key is not None
        raise AlreadyApplied(self.idempotency_key)

    def commit_failed(self, exc: BaseException, result: Any) -> BaseException:
        failure = _commit_failure(exc)
        if isinstance(failure, CommitOutcomeUnknown):
            self.unknown_commit = True
            self.pending_scope = self.attempt_scope
            self.pending = result
        return failure


def _current_xid(session: Session) -> str | None:
    conn = session.connection()
    if conn.dialect.name != "postgresql":
        raise ValueError(
            f"resolve_commit_outcome needs PostgreSQL (pg_xact_status), not {conn.dialect.name!r}"
        )
    # NULL when the transaction wrote nothing: then there is nothing to resolve.
    value = session.execute(text("SELECT pg_current_xact_id_if_assigned()::text")).scalar()
    return None if value is None else str(value)


def _xact_status(
    open_session: Callable[[], Session],
    xid: str,
    *,
    timeout: float,
    sleep: Callable[[float], object],
) -> str | None:
    """Ask the server what became of ``xid``: committed, aborted, or None (still unknown).

    Written once on the sync ``Session``: the async twin runs it in
    SQLAlchemy's greenlet with an ``AsyncSession``'s ``sync_session`` and an
    ``asyncio.sleep`` awaited through ``await_only``.
    """
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            with open_session() as session:
                status = session.execute(
                    text("SELECT pg_xact_status(CAST(CAST(:xid AS text) AS xid8))"),
                    {"xid": xid},
                ).scalar()
        except Exception:
            status = None  # the server may still be coming back
            _log.debug("pg_xact_status(%s) failed; retrying", xid, exc_info=True)
        if status in ("committed", "aborted"):
            return str(status)
        if time.monotonic() + delay > deadline:
            return None
        # "in progress": the backend has not finished dying yet.
        sleep(delay)
        delay = min(delay * 2, 1.0)


def _resolved(unit: _Unit, status: str | None, exc: CommitOutcomeUnknown) -> Any:
    """The outcome pg_xact_status gave: the pending result, a retryable loss, or ``exc`` again."""
    if status == "committed":
        _log.info("commit outcome resolved: transaction %s committed", unit.xid)
        unit.scope = unit.pending_scope
        return unit.pending
    if status == "aborted":
        _log.info("commit outcome resolved: transaction %s aborted; re-running", unit.xid)
        raise ConnectionLost(
            f"COMMIT was lost and transaction {unit.xid} did not commit (pg_xact_status)",
            retryable=True,
            connection_invalidated=True,
        ) from exc
    raise exc


# How long the resolver asks pg_xact_status before it gives up (server restarting...).
_RESOLUTION_TIMEOUT = 15.0


async def _retry_async(
    retrying_kwargs: dict[str, Any],
    first: BaseException,
    again: Callable[[], Awaitable[T]],
) -> T:
    """The slow path after a failed first attempt: tenacity decides, ``again`` re-runs."""
    replayed = False
    try:
        async for attempt in tenacity.AsyncRetrying(**retrying_kwargs):
            with attempt:
                if not replayed:
                    # Attempt 1 already ran outside tenacity (the fast path);
                    # hand its failure to tenacity so it counts and backs off.
                    replayed = True
                    raise first
                return await again()
    except RetryExhausted:
        raise
    except Exception as exc:
        _raise_translated(exc)
    raise AssertionError("unreachable")  # pragma: no cover


def _retry_sync(retrying_kwargs: dict[str, Any], first: BaseException, again: Callable[[], T]) -> T:
    """The synchronous twin of :func:`_retry_async`."""
    replayed = False
    try:
        for attempt in tenacity.Retrying(**retrying_kwargs):
            with attempt:
                if not replayed:
                    replayed = True
                    raise first
                return again()
    except RetryExhausted:
        raise
    except Exception as exc:
        _raise_translated(exc)
    raise AssertionError("unreachable")  # pragma: no cover


def _is_contention(exc: BaseException) -> bool:
    """40001 / 40P01 (and SQLite's BUSY_SNAPSHOT): a healthy server asking for a re-run."""
    if isinstance(exc, TransactionConflict):
        return True
    if isinstance(exc, ResilienceError) or not isinstance(exc, sa_exc.DBAPIError):
        return False
    return isinstance(translate_error(exc), TransactionConflict)


def _retrying_kwargs(
    policy: RetryPolicy,
    budget: RetryBudget,
    errors: list[BaseException],
    started: float,
    idempotent: bool,
) -> dict[str, Any]:
    """tenacity's arguments for the retries after ``errors[0]``."""

    def should_retry(exc: BaseException) -> bool:
        if exc is not errors[-1]:
            errors.append(exc)
        if not policy.is_retryable(exc, idempotent=idempotent):
            return False
        code = getattr(exc, "sqlstate", None)
        if code in RETRY_ONCE and any(getattr(e, "sqlstate", None) == code for e in errors[:-1]):
            return False  # the same failure twice in a row: it will not go away
        if _is_contention(exc):
            return True  # bounded by attempts, backoff and deadline, not the budget
        return budget.try_acquire()

    def exhausted(state: tenacity.RetryCallState) -> Any:
        raise RetryExhausted(errors) from errors[-1]

    return {
        "stop": policy.stop_strategy(elapsed=time.monotonic() - started),
        "wait": policy.wait_strategy(),
        "retry": tenacity.retry_if_exception(should_retry),
        "before_sleep": log_retry,
        "retry_error_callback": exhausted,
    }


# -- sync twin -------------------------------------------------------------------
