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
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Any, cast

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.util import await_only, greenlet_spawn

from sqlalchemy_resilience._util.cut import cut
from sqlalchemy_resilience._util.seconds import Seconds, to_seconds
from sqlalchemy_resilience.errors.hierarchy import (
    CommitOutcomeUnknown,
    QueryTimeout,
    RetryExhausted,
)
from sqlalchemy_resilience.errors.translate import describe, translate_error
from sqlalchemy_resilience.transactions.atomic import require_atomic, routes_itself
from sqlalchemy_resilience.transactions.options import Undo, prepare
from sqlalchemy_resilience.transactions.partial import forget_lost_statement, refuse_partial_commit
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
    _resolved,
    _retry_async,
    _retry_sync,
    _retrying_kwargs,
    _Unit,
    _validate,
    _xact_status,
    breaker_guard,
    breaker_wait_until,
)

__all__ = ["run_transaction", "run_transaction_sync"]

_log = logging.getLogger("sqlalchemy_resilience.session")


def _engine_of(bind: Any) -> Any:
    return bind.engine if isinstance(bind, Connection) else bind


def _attempt(session: Session, unit: _Unit, call: Callable[[], T], name: str) -> T:
    """One attempt's logic, written once, on SQLAlchemy's sync ``Session``.

    The blocking twin calls it directly; the async one runs it on the
    ``AsyncSession``'s ``sync_session`` inside SQLAlchemy's greenlet
    (``greenlet_spawn``, as ``AsyncSession`` itself does), where ``call``
    awaits the user's coroutine with ``await_only``.
    """
    conn: Connection | None = None
    undo: Undo | None = None
    try:
        bind = session.get_bind()
        engine = _engine_of(bind)
        if unit.options.needs_connection(engine.dialect.name):
            conn = session.connection(execution_options=unit.options.execution_options(engine))
        elif unit.idempotency_key is not None or not routes_itself(session):
            conn = session.connection()
        require_atomic(name, conn, bind)
        forget_lost_statement(conn)
        if unit.options.needs_connection(engine.dialect.name):
            assert conn is not None
            undo = prepare(conn, unit.options, nested=False, engine=engine)
        if unit.idempotency_key is not None:
            assert conn is not None
            if not unit.claim(conn):
                if undo is not None:
                    undo(conn, False)
                    undo = None
                session.rollback()
                return cast(T, unit.key_taken())
        result = call()
        unit.xid = None
        if unit.resolve:
            unit.xid = _current_xid(session)
        if undo is not None and conn is not None:
            undo(conn, True)
            undo = None
        # A statement rolled back alone (MySQL's 1205) is never committed around.
        refuse_partial_commit(conn)
        unit.committing = True
        unit.pending = result
        try:
            session.commit()
        except Exception as exc:
            unit.committing = False
            failure = unit.commit_failed(exc, result)
            if failure is exc:
                raise
            raise failure from exc
        # Cancellation leaves `committing` set on purpose: the deadline
        # wrapper reads it to tell an unknown COMMIT from a stuck statement.
        unit.committing = False
        unit.scope = unit.attempt_scope  # committed: its on_commit callbacks run
        return result
    except BaseException:
        if undo is not None and conn is not None:
            _undo_quietly(conn, undo)
        raise


def _undo_quietly(conn: Connection, undo: Undo) -> None:
    try:
        undo(conn, False)
    except Exception as exc:
        # A connection whose settings could not be put back must not be reused.
        _log.warning(
            "could not restore the connection's settings; invalidating it: %s",
            describe(translate_error(exc)),
        )
        try:
            conn.invalidate()
        except Exception:
            _log.debug("invalidate after failed restore failed", exc_info=True)


async def _attempt_async(
    factory: Callable[[], AsyncSession],
    fn: Callable[[AsyncSession], Awaitable[T]],
    unit: _Unit,
) -> T:
    guard: AbstractAsyncContextManager[Any] = breaker_guard(unit.breaker, unit.breaker_wait_until)
    unit.committing = False
    async with guard, factory() as session:
        scope = unit.attempt_scope = CommitScope(session, parent=None, is_async=True).enter()
        try:
            result: T = await greenlet_spawn(
                _attempt,
                session.sync_session,
                unit,
                lambda: await_only(fn(session)),
                "run_transaction",
            )
            return result
        finally:
            scope.leave()


def _attempt_sync(factory: Callable[[], Session], fn: Callable[[Session], T], unit: _Unit) -> T:
    guard: AbstractContextManager[Any] = breaker_guard(unit.breaker, unit.breaker_wait_until)
    unit.committing = False
    with guard, factory() as session:
        scope = unit.attempt_scope = CommitScope(session, parent=None, is_async=False).enter()
        try:
            return _attempt(session, unit, lambda: fn(session), "run_transaction_sync")
        finally:
            scope.leave()


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
        status = await greenlet_spawn(
            _xact_status,
            lambda: factory().sync_session,
            unit.xid,
            timeout=_RESOLUTION_TIMEOUT,
            sleep=lambda delay: await_only(asyncio.sleep(delay)),
        )
        return cast(T, _resolved(unit, status, exc))


def _resolving_attempt_sync(
    factory: Callable[[], Session], fn: Callable[[Session], T], unit: _Unit, timeout: float | None
) -> T:
    try:
        return _timed_attempt_sync(factory, fn, unit, timeout)
    except CommitOutcomeUnknown as exc:
        if not unit.resolve or unit.xid is None:
            raise
        status = _xact_status(factory, unit.xid, timeout=_RESOLUTION_TIMEOUT, sleep=time.sleep)
        return cast(T, _resolved(unit, status, exc))


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


class _Watch:
    """The deadline of one blocking attempt: the connections it began on, cut when it expires."""

    __slots__ = ("committing", "connections", "done", "expired", "lock", "unit")

    def __init__(self, unit: _Unit) -> None:
        self.unit = unit
        self.lock = threading.Lock()
        self.connections: list[Any] = []
        self.done = False
        self.expired = False
        self.committing = False

    def began(self, session: Session, transaction: Any, connection: Connection) -> None:
        with self.lock:
            self.connections.append(connection.connection.dbapi_connection)

    def committed(self, session: Session) -> None:
        with self.lock:
            self.done = True  # COMMIT answered: nothing left to cut

    def expire(self) -> None:
        with self.lock:
            if self.done:
                return
            self.expired = True
            self.committing = self.unit.committing
            connections = list(self.connections)
        # Outside the lock: a cancel request to the server may take a moment.
        for dbapi_connection in connections:
            if dbapi_connection is not None and not cut(dbapi_connection):
                _log.warning(
                    "attempt_timeout: no way to interrupt a %s connection; "
                    "the attempt runs until the driver returns",
                    type(dbapi_connection).__name__,
                )

    def finish(self) -> bool:
        """Stop watching; True when the deadline had expired."""
        with self.lock:
            self.done = True
            return self.expired


def _timed_attempt_sync(
    factory: Callable[[], Session], fn: Callable[[Session], T], unit: _Unit, timeout: float | None
) -> T:
    if timeout is None:
        return _attempt_sync(factory, fn, unit)
    watch = _Watch(unit)

    def watched() -> Session:
        session = factory()
        event.listen(session, "after_begin", watch.began)
        event.listen(session, "after_commit", watch.committed)
        return session

    timer = threading.Timer(timeout, watch.expire)
    timer.daemon = True
    timer.start()
    try:
        result = _attempt_sync(watched, fn, unit)
    except Exception as exc:
        if not watch.finish():
            raise
        if watch.committing:
            unit.unknown_commit = True
            unit.pending_scope = unit.attempt_scope
            raise CommitOutcomeUnknown(
                f"attempt_timeout of {timeout:g}s expired while COMMIT was in flight",
                connection_invalidated=True,
            ) from exc
        raise QueryTimeout(
            f"attempt_timeout of {timeout:g}s expired; the connection was discarded",
            retryable=True,
            connection_invalidated=True,
        ) from exc
    finally:
        timer.cancel()
    watch.finish()  # succeeded: a deadline that passed meanwhile changes nothing
    return result


def _seconds_or_none(attempt_timeout: Seconds | None) -> float | None:
    if attempt_timeout is None:
        return None
    return to_seconds("attempt_timeout", attempt_timeout, allow_zero=False)


def _check_resolve(resolve_commit_outcome: object) -> bool:
    if not isinstance(resolve_commit_outcome, bool):
        raise TypeError(
            f"resolve_commit_outcome must be True or False, got {resolve_commit_outcome!r}"
        )
    return resolve_commit_outcome


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
    timeout = _seconds_or_none(attempt_timeout)
    policy = retry or _DEFAULT_POLICY
    budget = policy.budget or RetryBudget.for_engine(_bind_of(sessionmaker))
    unit = _Unit(breaker, isolation_level, read_only, idempotency_key)
    unit.resolve = _check_resolve(resolve_commit_outcome)
    idempotent = idempotent or idempotency_key is not None
    started = time.monotonic()
    unit.breaker_wait_until = breaker_wait_until(policy, started)
    budget.deposit()
    try:
        result = await _resolving_attempt(sessionmaker, fn, unit, timeout)
    except Exception as first:
        if policy.attempts == 1 or not policy.is_retryable(first, idempotent=idempotent):
            _raise_translated(first)
        errors: list[BaseException] = [first]
    else:
        await _run_callbacks_async(unit)
        return result
    try:
        result = await _retry_async(
            _retrying_kwargs(policy, budget, errors, started, idempotent),
            errors[0],
            lambda: _resolving_attempt(sessionmaker, fn, unit, timeout),
        )
    except Exception as exc:
        _still_unknown(unit, exc)
        raise
    await _run_callbacks_async(unit)
    return result


def _still_unknown(unit: _Unit, exc: BaseException) -> None:
    """An earlier attempt's COMMIT outcome stays unknown when a re-run ends in another error.

    The re-run of idempotent work after a lost COMMIT can be refused before
    it learns anything (an open breaker, a denied retry, a refused connect):
    reporting that error alone would tell the caller the work was not
    applied, when the earlier COMMIT may have been.
    """
    if unit.unknown_commit and not isinstance(exc, (CommitOutcomeUnknown, RetryExhausted)):
        raise CommitOutcomeUnknown(
            f"an earlier attempt's COMMIT was in flight when its connection was lost, and the "
            f"re-run then failed with {type(exc).__name__}: the work may or may not be applied",
            connection_invalidated=False,
        ) from exc


async def _run_callbacks_async(unit: _Unit) -> None:
    # Outside the retry loop: a failing callback must not re-run committed work.
    scope, unit.scope = unit.scope, None
    if scope is not None and scope.callbacks:
        await scope.run_callbacks()


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
    attempt_timeout: Seconds | None = None,
    resolve_commit_outcome: bool = False,
) -> T:
    """The blocking twin of :func:`run_transaction`, for ``sessionmaker`` and ``Session``.

    The same parameters and guarantees. ``attempt_timeout`` cuts a blocked
    attempt from a timer thread: the connection's socket is shut down
    (psycopg, psycopg2, PyMySQL) or ``sqlite3``'s ``interrupt()`` is called,
    so the driver returns at once and SQLAlchemy discards the connection; a
    connect still in progress is bounded by the driver's own connect timeout.

    Example::

        total = run_transaction_sync(Session, lambda s: s.scalar(select(func.count(User.id))),
                                     read_only=True)
    """
    _validate(isolation_level, read_only, idempotent, idempotency_key)
    timeout = _seconds_or_none(attempt_timeout)
    policy = retry or _DEFAULT_POLICY
    budget = policy.budget or RetryBudget.for_engine(_bind_of(sessionmaker))
    unit = _Unit(breaker, isolation_level, read_only, idempotency_key)
    unit.resolve = _check_resolve(resolve_commit_outcome)
    idempotent = idempotent or idempotency_key is not None
    started = time.monotonic()
    unit.breaker_wait_until = breaker_wait_until(policy, started)
    budget.deposit()
    try:
        result = _resolving_attempt_sync(sessionmaker, fn, unit, timeout)
    except Exception as first:
        if policy.attempts == 1 or not policy.is_retryable(first, idempotent=idempotent):
            _raise_translated(first)
        errors: list[BaseException] = [first]
    else:
        _run_callbacks_sync(unit)
        return result
    try:
        result = _retry_sync(
            _retrying_kwargs(policy, budget, errors, started, idempotent),
            errors[0],
            lambda: _resolving_attempt_sync(sessionmaker, fn, unit, timeout),
        )
    except Exception as exc:
        _still_unknown(unit, exc)
        raise
    _run_callbacks_sync(unit)
    return result


def _run_callbacks_sync(unit: _Unit) -> None:
    scope, unit.scope = unit.scope, None
    if scope is not None and scope.callbacks:
        scope.run_callbacks_sync()


# -- resilient_sessionmaker ---------------------------------------------------------
