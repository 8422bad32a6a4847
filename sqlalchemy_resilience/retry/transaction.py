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
from typing import Any, cast

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import Session

from sqlalchemy_resilience._util.seconds import Seconds, to_seconds
from sqlalchemy_resilience.errors.hierarchy import (
    CommitOutcomeUnknown,
    ConnectionLost,
    QueryTimeout,
)
from sqlalchemy_resilience.errors.translate import describe, translate_error
from sqlalchemy_resilience.transactions.atomic import require_atomic, routes_itself
from sqlalchemy_resilience.transactions.options import Undo, prepare
from sqlalchemy_resilience.transactions.scope import CommitScope

from .breaker import CircuitBreaker
from .policy import RetryBudget, RetryPolicy
from .unit import (
    _DEFAULT_POLICY,
    _RESOLUTION_TIMEOUT,
    T,
    _bind_of,
    _current_xid,
    _raise_translated,
    _retry_async,
    _retry_sync,
    _retrying_kwargs,
    _Unit,
    _validate,
    _xact_status,
)

__all__ = ["run_transaction", "run_transaction_sync"]

_log = logging.getLogger("sqlalchemy_resilience.session")


def _engine_of(bind: Any) -> Any:
    return bind.engine if isinstance(bind, Connection) else bind


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
        scope = unit.attempt_scope = CommitScope(session, parent=None, is_async=True).enter()
        conn: AsyncConnection | None = None
        undo: Undo | None = None
        try:
            bind = session.get_bind()
            engine = _engine_of(bind)
            if unit.options.needs_connection(engine.dialect.name):
                conn = await session.connection(
                    execution_options=unit.options.execution_options(engine)
                )
            elif unit.idempotency_key is not None or not routes_itself(session.sync_session):
                conn = await session.connection()
            require_atomic("run_transaction", None if conn is None else conn.sync_connection, bind)
            if unit.options.needs_connection(engine.dialect.name):
                assert conn is not None
                undo = await conn.run_sync(prepare, unit.options, nested=False, engine=engine)
            if unit.idempotency_key is not None:
                assert conn is not None
                claimed = await conn.execute(unit.claim_statement(conn.dialect.name))
                if claimed.first() is None:
                    if undo is not None:
                        await conn.run_sync(undo, False)
                        undo = None
                    await session.rollback()
                    return cast(T, unit.key_taken())
            result = await fn(session)
            unit.xid = None
            if unit.resolve:
                unit.xid = await _current_xid(session)
            if undo is not None and conn is not None:
                await conn.run_sync(undo, True)
                undo = None
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
            unit.scope = scope
            return result
        except BaseException:
            if undo is not None and conn is not None:
                await _undo_quietly_async(conn, undo)
            raise
        finally:
            scope.leave()


async def _undo_quietly_async(conn: AsyncConnection, undo: Undo) -> None:
    try:
        await conn.run_sync(undo, False)
    except Exception as exc:
        # A connection whose settings could not be put back must not be reused.
        _log.warning(
            "could not restore the connection's settings; invalidating it: %s",
            describe(translate_error(exc)),
        )
        try:
            await conn.invalidate()
        except Exception:
            _log.debug("invalidate after failed restore failed", exc_info=True)


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
            unit.scope = unit.pending_scope
            return cast(T, unit.pending)
        if status == "aborted":
            _log.info("commit outcome resolved: transaction %s aborted; re-running", xid)
            raise ConnectionLost(
                f"COMMIT was lost and transaction {xid} did not commit (pg_xact_status)",
                retryable=True,
                connection_invalidated=True,
            ) from exc
        raise


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
        unit.pending_scope = unit.attempt_scope
        raise CommitOutcomeUnknown(
            f"attempt_timeout of {timeout:g}s expired while COMMIT was in flight",
            connection_invalidated=True,
        )
    raise QueryTimeout(
        f"attempt_timeout of {timeout:g}s expired; the connection was discarded",
        retryable=True,
        connection_invalidated=True,
    )


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
        await _run_callbacks_async(unit)
        return result
    charged = [0]
    result = await _retry_async(
        _retrying_kwargs(policy, budget, errors, started, idempotent, charged),
        errors[0],
        lambda: _resolving_attempt(sessionmaker, fn, unit, timeout),
    )
    budget.refund(charged[0])  # the retries paid off: the database is serving
    await _run_callbacks_async(unit)
    return result


async def _run_callbacks_async(unit: _Unit) -> None:
    # Outside the retry loop: a failing callback must not re-run committed work.
    scope, unit.scope = unit.scope, None
    if scope is not None and scope.callbacks:
        await scope.run_callbacks()


def _attempt_sync(factory: Callable[[], Session], fn: Callable[[Session], T], unit: _Unit) -> T:
    guard: AbstractContextManager[Any] = unit.breaker.guard() if unit.breaker else nullcontext()
    with guard, factory() as session:
        scope = unit.attempt_scope = CommitScope(session, parent=None, is_async=False).enter()
        conn: Connection | None = None
        undo: Undo | None = None
        try:
            bind = session.get_bind()
            engine = _engine_of(bind)
            if unit.options.needs_connection(engine.dialect.name):
                conn = session.connection(execution_options=unit.options.execution_options(engine))
            elif unit.idempotency_key is not None or not routes_itself(session):
                conn = session.connection()
            require_atomic("run_transaction_sync", conn, bind)
            if unit.options.needs_connection(engine.dialect.name):
                assert conn is not None
                undo = prepare(conn, unit.options, nested=False, engine=engine)
            if unit.idempotency_key is not None:
                assert conn is not None
                if conn.execute(unit.claim_statement(conn.dialect.name)).first() is None:
                    if undo is not None:
                        undo(conn, False)
                        undo = None
                    session.rollback()
                    return cast(T, unit.key_taken())
            result = fn(session)
            if undo is not None and conn is not None:
                undo(conn, True)
                undo = None
            try:
                session.commit()
            except Exception as exc:
                failure = unit.commit_failed(exc, result)
                if failure is exc:
                    raise
                raise failure from exc
            unit.scope = scope
            return result
        except BaseException:
            if undo is not None and conn is not None:
                _undo_quietly_sync(conn, undo)
            raise
        finally:
            scope.leave()


def _undo_quietly_sync(conn: Connection, undo: Undo) -> None:
    try:
        undo(conn, False)
    except Exception as exc:
        _log.warning(
            "could not restore the connection's settings; invalidating it: %s",
            describe(translate_error(exc)),
        )
        try:
            conn.invalidate()
        except Exception:
            _log.debug("invalidate after failed restore failed", exc_info=True)


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
        _run_callbacks_sync(unit)
        return result
    charged = [0]
    result = _retry_sync(
        _retrying_kwargs(policy, budget, errors, started, idempotent, charged),
        errors[0],
        lambda: _attempt_sync(sessionmaker, fn, unit),
    )
    budget.refund(charged[0])  # the retries paid off: the database is serving
    _run_callbacks_sync(unit)
    return result


def _run_callbacks_sync(unit: _Unit) -> None:
    scope, unit.scope = unit.scope, None
    if scope is not None and scope.callbacks:
        scope.run_callbacks_sync()


# -- resilient_sessionmaker ---------------------------------------------------------
