"""Units of work that survive database failures: :func:`run_transaction` and its sync twin.

``run_transaction(Session, fn)`` runs ``fn(session)`` in one transaction on a
fresh session and commits. On a retryable failure it re-runs the **whole**
function on a new session -- in PostgreSQL any error aborts the transaction,
so the transaction is the only safe unit to repeat. What it never does:

* retry a failure the retry-safety table calls permanent (constraint, data,
  syntax errors);
* retry when the connection was lost while COMMIT was in flight: that raises
  :class:`CommitOutcomeUnknown`, unless the work is declared ``idempotent``;
* retry or swallow cancellation: ``CancelledError`` propagates, the session is
  closed and the connection goes back to (or is discarded by) the pool;
* touch the pool while the circuit breaker is open: :class:`CircuitOpenError`
  propagates as itself.

The success path costs one function call more than a bare session: tenacity
is entered only after a first attempt has failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager, nullcontext
from typing import Any, TypeVar, cast

import tenacity
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from ._time import Seconds, to_seconds
from .breaker import CircuitBreaker
from .classify import build_error
from .errors import (
    AlreadyApplied,
    CommitOutcomeUnknown,
    ConnectionLost,
    QueryTimeout,
    ResilienceError,
    RetryExhausted,
)
from .retry import RetryBudget, RetryPolicy, log_retry
from .schema import IDEMPOTENCY_KEY_MAX_LENGTH, idempotency_keys

__all__ = [
    "ResilientAsyncSession",
    "resilient_sessionmaker",
    "run_transaction",
    "run_transaction_sync",
]

T = TypeVar("T")

_log = logging.getLogger("sqlalchemy_resilience.session")

ISOLATION_LEVELS = frozenset(
    {"SERIALIZABLE", "REPEATABLE READ", "READ COMMITTED", "READ UNCOMMITTED", "AUTOCOMMIT"}
)

_DEFAULT_POLICY = RetryPolicy()


def _validate(
    isolation_level: str | None, read_only: bool, idempotent: bool, idempotency_key: str | None
) -> None:
    if isolation_level is not None and isolation_level not in ISOLATION_LEVELS:
        raise ValueError(
            f"isolation_level must be one of {sorted(ISOLATION_LEVELS)}, got {isolation_level!r}"
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
    from .instrument import translate_error

    translated = translate_error(exc)
    if rerun_note and hasattr(translated, "add_note"):  # Python >= 3.11
        translated.add_note(_RERUN_NOTE)
    if translated is not exc:
        raise translated from exc
    raise exc


def _read_only_sql(dialect_name: str) -> tuple[str, str | None]:
    if dialect_name == "postgresql":
        return "SET TRANSACTION READ ONLY", None
    if dialect_name == "sqlite":
        return "PRAGMA query_only = ON", "PRAGMA query_only = OFF"
    raise ValueError(f"read_only=True is supported on postgresql and sqlite, not {dialect_name!r}")


class _Unit:
    """One run_transaction call: its options and what earlier attempts left behind."""

    __slots__ = (
        "breaker",
        "committing",
        "idempotency_key",
        "isolation_level",
        "pending",
        "read_only",
        "resolve",
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
        self.isolation_level = isolation_level
        self.read_only = read_only
        self.idempotency_key = idempotency_key
        # The result of an attempt whose COMMIT outcome was unknown: if a
        # later attempt finds the key taken, that attempt did commit.
        self.pending: Any = None
        self.unknown_commit = False
        self.committing = False  # COMMIT sent and not answered (for attempt_timeout)
        self.resolve = False  # record the xid before COMMIT to resolve an unknown outcome
        self.xid: str | None = None

    def claim_statement(self, dialect_name: str) -> Any:
        if dialect_name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif dialect_name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
        else:
            raise ValueError(
                f"idempotency_key is supported on postgresql and sqlite, not {dialect_name!r}"
            )
        return (
            insert(idempotency_keys)
            .values(key=self.idempotency_key)
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(idempotency_keys.c.key)
        )

    def key_taken(self) -> Any:
        """What an attempt returns when it finds its key already committed."""
        if self.unknown_commit:
            _log.info(
                "commit outcome resolved: an earlier attempt committed (idempotency key found)"
            )
            return self.pending
        assert self.idempotency_key is not None
        raise AlreadyApplied(self.idempotency_key)

    def commit_failed(self, exc: BaseException, result: Any) -> BaseException:
        failure = _commit_failure(exc)
        if isinstance(failure, CommitOutcomeUnknown):
            self.unknown_commit = True
            self.pending = result
        return failure


async def _attempt_async(
    factory: Callable[[], AsyncSession],
    fn: Callable[[AsyncSession], Awaitable[T]],
    unit: _Unit,
) -> T:
    guard: AbstractAsyncContextManager[Any] = (
        unit.breaker.guard() if unit.breaker else nullcontext()
    )
    unit.committing = False
    async with guard, factory() as session:
        reset_sql: str | None = None
        try:
            if unit.isolation_level is not None:
                await session.connection(
                    execution_options={"isolation_level": unit.isolation_level}
                )
            if unit.read_only:
                conn = await session.connection()
                set_sql, reset_sql = _read_only_sql(conn.dialect.name)
                await conn.exec_driver_sql(set_sql)
            if unit.idempotency_key is not None:
                conn = await session.connection()
                claimed = await conn.execute(unit.claim_statement(conn.dialect.name))
                if claimed.first() is None:
                    await session.rollback()
                    return cast(T, unit.key_taken())
            result = await fn(session)
            unit.xid = None
            if unit.resolve:
                unit.xid = await _current_xid(session)
            unit.committing = True
            unit.pending = result
            try:
                await session.commit()
            except Exception as exc:
                unit.committing = False
                failure = unit.commit_failed(exc, result)
                if failure is exc:
                    raise
                raise failure from exc
            # Cancellation leaves `committing` set on purpose: the deadline
            # wrapper reads it to tell an unknown COMMIT from a stuck statement.
            unit.committing = False
            return result
        finally:
            if reset_sql is not None:
                await _reset_async(session, reset_sql)


async def _current_xid(session: AsyncSession) -> str | None:
    conn = await session.connection()
    if conn.dialect.name != "postgresql":
        raise ValueError(
            f"resolve_commit_outcome needs PostgreSQL (pg_xact_status), not {conn.dialect.name!r}"
        )
    # NULL when the transaction wrote nothing: then there is nothing to resolve.
    value = (await session.execute(text("SELECT pg_current_xact_id_if_assigned()::text"))).scalar()
    return None if value is None else str(value)


async def _xact_status(
    factory: Callable[[], AsyncSession], xid: str, *, timeout: float
) -> str | None:
    """Ask the server what became of ``xid``: committed, aborted, or None (still unknown)."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        try:
            async with factory() as session:
                status = (
                    await session.execute(
                        text("SELECT pg_xact_status(CAST(CAST(:xid AS text) AS xid8))"),
                        {"xid": xid},
                    )
                ).scalar()
        except Exception:
            status = None  # the server may still be coming back
            _log.debug("pg_xact_status(%s) failed; retrying", xid, exc_info=True)
        if status in ("committed", "aborted"):
            return str(status)
        if time.monotonic() + delay > deadline:
            return None
        # "in progress": the backend has not finished dying yet.
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)


async def _resolving_attempt(
    factory: Callable[[], AsyncSession],
    fn: Callable[[AsyncSession], Awaitable[T]],
    unit: _Unit,
    timeout: float | None,
) -> T:
    try:
        return await _timed_attempt(factory, fn, unit, timeout)
    except CommitOutcomeUnknown as exc:
        if not unit.resolve or unit.xid is None:
            raise
        xid = unit.xid
        status = await _xact_status(factory, xid, timeout=_RESOLUTION_TIMEOUT)
        if status == "committed":
            _log.info("commit outcome resolved: transaction %s committed", xid)
            return cast(T, unit.pending)
        if status == "aborted":
            _log.info("commit outcome resolved: transaction %s aborted; re-running", xid)
            raise ConnectionLost(
                f"COMMIT was lost and transaction {xid} did not commit (pg_xact_status)",
                retryable=True,
                connection_invalidated=True,
            ) from exc
        raise


# How long the resolver asks pg_xact_status before it gives up (server restarting...).
_RESOLUTION_TIMEOUT = 15.0


# How long a timed-out attempt may spend cleaning up before the caller moves
# on. SQLAlchemy's asyncpg close waits up to 2 s for a graceful close (then
# terminates); against a hung server the caller should not wait for that.
_CLEANUP_GRACE = 0.5

# Timed-out attempts still cleaning up in the background, kept referenced.
_cleanups: set[asyncio.Future[Any]] = set()


def _forget(task: asyncio.Future[Any]) -> None:
    _cleanups.discard(task)
    if not task.cancelled() and task.exception() is not None:
        _log.debug("a timed-out attempt ended with %r during cleanup", task.exception())


async def _timed_attempt(
    factory: Callable[[], AsyncSession],
    fn: Callable[[AsyncSession], Awaitable[T]],
    unit: _Unit,
    timeout: float | None,
) -> T:
    if timeout is None:
        return await _attempt_async(factory, fn, unit)
    task = asyncio.ensure_future(_attempt_async(factory, fn, unit))
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if done:
        return task.result()
    committing = unit.committing
    task.cancel()
    _cleanups.add(task)
    task.add_done_callback(_forget)
    # Give the cancelled attempt a moment to hand its connection back; a hung
    # server makes that slow, and then it finishes in the background.
    await asyncio.wait({task}, timeout=_CLEANUP_GRACE)
    if committing:
        # Cancelled while COMMIT was in flight: it may have committed.
        unit.unknown_commit = True
        raise CommitOutcomeUnknown(
            f"attempt_timeout of {timeout:g}s expired while COMMIT was in flight",
            connection_invalidated=True,
        )
    raise QueryTimeout(
        f"attempt_timeout of {timeout:g}s expired; the connection was discarded",
        retryable=True,
        connection_invalidated=True,
    )


async def _reset_async(session: AsyncSession, sql: str) -> None:
    try:
        await session.rollback()
        conn = await session.connection()
        await conn.exec_driver_sql(sql)
        await session.commit()
    except Exception:
        # A connection whose state could not be restored must not be reused.
        _log.warning("could not reset %r; invalidating the connection", sql, exc_info=True)
        try:
            conn = await session.connection()
            await conn.invalidate()
        except Exception:
            _log.debug("invalidate after failed reset failed", exc_info=True)


async def run_transaction(
    sessionmaker: Callable[[], AsyncSession],
    fn: Callable[[AsyncSession], Awaitable[T]],
    *,
    retry: RetryPolicy | None = None,
    breaker: CircuitBreaker | None = None,
    isolation_level: str | None = None,
    read_only: bool = False,
    idempotent: bool = False,
    idempotency_key: str | None = None,
    attempt_timeout: Seconds | None = None,
    resolve_commit_outcome: bool = False,
) -> T:
    """Run ``fn(session)`` in one transaction; re-run it whole on a retryable failure.

    Args:
        sessionmaker: an ``async_sessionmaker`` (or any callable returning an
            ``AsyncSession``); each attempt gets a new session.
        fn: the unit of work. It must not commit; it may flush and query.
            It can run more than once, so side effects outside the database
            belong after ``run_transaction`` returns.
        retry: the :class:`RetryPolicy` (default: ``RetryPolicy()``).
        breaker: a :class:`CircuitBreaker` every attempt goes through.
        isolation_level: SQLAlchemy's name, e.g. ``"SERIALIZABLE"``.
        read_only: run the transaction read-only (PostgreSQL ``SET TRANSACTION
            READ ONLY``; SQLite ``PRAGMA query_only``).
        idempotent: the work may be applied twice safely, so an unknown COMMIT
            outcome is retried too.
        idempotency_key: a unique key for this unit of work (a request id).
            It is inserted into ``sqlalchemy_resilience_idempotency`` in the
            same transaction, so the work commits at most once per key: after
            an unknown COMMIT outcome the retry finds the key (the earlier
            attempt committed: its result is returned) or not (it did not: the
            work runs again); a later call with the same key raises
            :class:`AlreadyApplied`. Needs the package's table
            (:mod:`sqlalchemy_resilience.schema`); PostgreSQL and SQLite.
        attempt_timeout: a deadline per attempt (seconds or ``timedelta``). An
            attempt that takes longer is cancelled -- SQLAlchemy discards its
            connection -- and counts as a retryable :class:`QueryTimeout`, or
            as :class:`CommitOutcomeUnknown` when COMMIT was in flight. Bounds a
            call against a hung server or network; ``RetryPolicy.deadline``
            bounds the whole call.
        resolve_commit_outcome: PostgreSQL: record the transaction id just
            before COMMIT (one extra round trip per attempt) and, when the
            connection is lost during COMMIT, ask the server
            (``pg_xact_status``) what happened: committed -- ``fn``'s result is
            returned; aborted -- the work is re-run; still unknown after 15 s --
            :class:`CommitOutcomeUnknown` is raised.

    Returns:
        What ``fn`` returned on the attempt that committed.

    Raises:
        AlreadyApplied: ``idempotency_key`` was committed by an earlier call.
        CircuitOpenError: the breaker refused the call (never wrapped).
        CommitOutcomeUnknown: the connection died during COMMIT (and the work
            is neither idempotent nor keyed).
        RetryExhausted: every attempt failed retryably; ``.errors`` holds each.
        ResilienceError: the first non-retryable failure, translated.

    Example::

        async def transfer(session: AsyncSession) -> None:
            await session.execute(update(Account).where(Account.id == 1).values(balance=Account.balance - 10))
            await session.execute(update(Account).where(Account.id == 2).values(balance=Account.balance + 10))

        await run_transaction(Session, transfer, isolation_level="SERIALIZABLE",
                              idempotency_key=request.headers["Idempotency-Key"])
    """
    _validate(isolation_level, read_only, idempotent, idempotency_key)
    timeout = (
        None
        if attempt_timeout is None
        else to_seconds("attempt_timeout", attempt_timeout, allow_zero=False)
    )
    policy = retry or _DEFAULT_POLICY
    budget = policy.budget or RetryBudget.for_engine(_bind_of(sessionmaker))
    if not isinstance(resolve_commit_outcome, bool):
        raise TypeError(
            f"resolve_commit_outcome must be True or False, got {resolve_commit_outcome!r}"
        )
    unit = _Unit(breaker, isolation_level, read_only, idempotency_key)
    unit.resolve = resolve_commit_outcome
    idempotent = idempotent or idempotency_key is not None
    started = time.monotonic()
    try:
        result = await _resolving_attempt(sessionmaker, fn, unit, timeout)
    except Exception as first:
        if policy.attempts == 1 or not policy.is_retryable(first, idempotent=idempotent):
            _raise_translated(first)
        errors: list[BaseException] = [first]
    else:
        budget.record_success()
        return result
    return await _retry_async(
        _retrying_kwargs(policy, budget, errors, started, idempotent),
        errors[0],
        lambda: _resolving_attempt(sessionmaker, fn, unit, timeout),
    )


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


def _retrying_kwargs(
    policy: RetryPolicy,
    budget: RetryBudget,
    errors: list[BaseException],
    started: float,
    idempotent: bool,
) -> dict[str, Any]:
    def should_retry(exc: BaseException) -> bool:
        if exc is not errors[-1]:
            errors.append(exc)
        if not policy.is_retryable(exc, idempotent=idempotent):
            return False
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


def _attempt_sync(factory: Callable[[], Session], fn: Callable[[Session], T], unit: _Unit) -> T:
    guard: AbstractContextManager[Any] = unit.breaker.guard() if unit.breaker else nullcontext()
    with guard, factory() as session:
        reset_sql: str | None = None
        try:
            if unit.isolation_level is not None:
                session.connection(execution_options={"isolation_level": unit.isolation_level})
            if unit.read_only:
                conn = session.connection()
                set_sql, reset_sql = _read_only_sql(conn.dialect.name)
                conn.exec_driver_sql(set_sql)
            if unit.idempotency_key is not None:
                conn = session.connection()
                if conn.execute(unit.claim_statement(conn.dialect.name)).first() is None:
                    session.rollback()
                    return cast(T, unit.key_taken())
            result = fn(session)
            try:
                session.commit()
            except Exception as exc:
                failure = unit.commit_failed(exc, result)
                if failure is exc:
                    raise
                raise failure from exc
            return result
        finally:
            if reset_sql is not None:
                _reset_sync(session, reset_sql)


def _reset_sync(session: Session, sql: str) -> None:
    try:
        session.rollback()
        session.connection().exec_driver_sql(sql)
        session.commit()
    except Exception:
        _log.warning("could not reset %r; invalidating the connection", sql, exc_info=True)
        try:
            session.connection().invalidate()
        except Exception:
            _log.debug("invalidate after failed reset failed", exc_info=True)


def run_transaction_sync(
    sessionmaker: Callable[[], Session],
    fn: Callable[[Session], T],
    *,
    retry: RetryPolicy | None = None,
    breaker: CircuitBreaker | None = None,
    isolation_level: str | None = None,
    read_only: bool = False,
    idempotent: bool = False,
    idempotency_key: str | None = None,
) -> T:
    """The synchronous twin of :func:`run_transaction`, for ``sessionmaker`` and ``Session``.

    Example::

        total = run_transaction_sync(Session, lambda s: s.scalar(select(func.count(User.id))),
                                     read_only=True)
    """
    _validate(isolation_level, read_only, idempotent, idempotency_key)
    policy = retry or _DEFAULT_POLICY
    budget = policy.budget or RetryBudget.for_engine(_bind_of(sessionmaker))
    unit = _Unit(breaker, isolation_level, read_only, idempotency_key)
    idempotent = idempotent or idempotency_key is not None
    started = time.monotonic()
    try:
        result = _attempt_sync(sessionmaker, fn, unit)
    except Exception as first:
        if policy.attempts == 1 or not policy.is_retryable(first, idempotent=idempotent):
            _raise_translated(first)
        errors: list[BaseException] = [first]
    else:
        budget.record_success()
        return result
    return _retry_sync(
        _retrying_kwargs(policy, budget, errors, started, idempotent),
        errors[0],
        lambda: _attempt_sync(sessionmaker, fn, unit),
    )


# -- resilient_sessionmaker ---------------------------------------------------------

_RERUN_NOTE = (
    "the transaction had already done work when this failed, so it was not retried here; "
    "re-run the whole unit of work (sqlalchemy_resilience.run_transaction does that)"
)


class ResilientAsyncSession(AsyncSession):
    """An ``AsyncSession`` that retries where nothing can be lost and goes through a breaker.

    A call that **starts** a transaction -- the checkout and the first
    statement, with no pending ORM changes -- is retried on a retryable
    failure (a stale pooled connection, a restarted server, a serialization
    failure on the first statement): the broken transaction is rolled back and
    the call repeated on a new connection. A failure later in the transaction
    is raised, translated, with a note to re-run the unit of work. Every call
    goes through the circuit breaker, so an open breaker refuses it before the
    pool is touched.

    Made by :func:`resilient_sessionmaker`; ``retry`` and ``breaker`` are read
    from the class attributes it sets.
    """

    resilience_retry: RetryPolicy = _DEFAULT_POLICY
    resilience_breaker: CircuitBreaker | None = None

    async def _resilient(self, call: Callable[[], Awaitable[Any]]) -> Any:
        starts_transaction = not self.in_transaction() and not (
            self.new or self.dirty or self.deleted
        )
        breaker = self.resilience_breaker
        policy = self.resilience_retry

        async def once() -> Any:
            guard: AbstractAsyncContextManager[Any] = (
                breaker.guard() if breaker is not None else nullcontext()
            )
            async with guard:
                return await call()

        try:
            return await once()
        except Exception as first:
            retryable = policy.is_retryable(first)
            if not (starts_transaction and retryable and policy.attempts > 1):
                _raise_translated(first, rerun_note=retryable and not starts_transaction)
            errors: list[BaseException] = [first]
        budget = policy.budget or RetryBudget.for_engine(self.bind)

        async def again() -> Any:
            # Discard the broken transaction and its connection first.
            await self.rollback()
            return await once()

        return await _retry_async(
            _retrying_kwargs(policy, budget, errors, time.monotonic(), False), errors[0], again
        )

    async def execute(self, *args: Any, **kw: Any) -> Any:
        """``AsyncSession.execute``, retried when it starts the transaction."""
        return await self._resilient(lambda: AsyncSession.execute(self, *args, **kw))

    async def scalar(self, *args: Any, **kw: Any) -> Any:
        """``AsyncSession.scalar``, retried when it starts the transaction."""
        return await self._resilient(lambda: AsyncSession.scalar(self, *args, **kw))

    async def get(self, *args: Any, **kw: Any) -> Any:
        """``AsyncSession.get``, retried when it starts the transaction."""
        return await self._resilient(lambda: AsyncSession.get(self, *args, **kw))

    async def get_one(self, *args: Any, **kw: Any) -> Any:
        """``AsyncSession.get_one``, retried when it starts the transaction."""
        return await self._resilient(lambda: AsyncSession.get_one(self, *args, **kw))

    async def stream(self, *args: Any, **kw: Any) -> Any:
        """``AsyncSession.stream``, retried when it starts the transaction."""
        return await self._resilient(lambda: AsyncSession.stream(self, *args, **kw))

    async def connection(self, *args: Any, **kw: Any) -> Any:
        """``AsyncSession.connection`` (the checkout), retried when it starts the transaction."""
        return await self._resilient(lambda: AsyncSession.connection(self, *args, **kw))

    async def flush(self, *args: Any, **kw: Any) -> None:
        """``AsyncSession.flush`` through the breaker (never retried: it writes)."""
        await self._resilient(lambda: AsyncSession.flush(self, *args, **kw))

    async def commit(self) -> None:
        """``AsyncSession.commit`` through the breaker (never retried: see CommitOutcomeUnknown)."""
        await self._resilient(lambda: _commit_classified(self))


async def _commit_classified(session: AsyncSession) -> None:
    try:
        await AsyncSession.commit(session)
    except Exception as exc:
        failure = _commit_failure(exc)
        if failure is exc:
            raise
        raise failure from exc


def resilient_sessionmaker(
    bind: Any = None,
    *,
    retry: RetryPolicy | None = None,
    breaker: CircuitBreaker | None = None,
    **kw: Any,
) -> async_sessionmaker[ResilientAsyncSession]:
    """An ``async_sessionmaker`` of :class:`ResilientAsyncSession`.

    Args:
        bind: the ``AsyncEngine`` (as for ``async_sessionmaker``).
        retry: the :class:`RetryPolicy` for calls that start a transaction.
        breaker: a :class:`CircuitBreaker` every call goes through.
        kw: anything else ``async_sessionmaker`` takes (``expire_on_commit``...).

    Example::

        Session = resilient_sessionmaker(engine, breaker=CircuitBreaker(), expire_on_commit=False)
        async with Session() as session:
            user = await session.get(User, 1)      # survives a stale pooled connection
    """
    if "class_" in kw:
        raise TypeError("resilient_sessionmaker makes its own session class; do not pass class_")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy, got {retry!r}")
    if breaker is not None and not isinstance(breaker, CircuitBreaker):
        raise TypeError(f"breaker must be a CircuitBreaker, got {breaker!r}")
    session_class = type(
        "ResilientAsyncSession",
        (ResilientAsyncSession,),
        {
            "resilience_retry": retry or _DEFAULT_POLICY,
            "resilience_breaker": breaker,
            "__module__": __name__,
        },
    )
    return async_sessionmaker(bind, class_=session_class, **kw)
