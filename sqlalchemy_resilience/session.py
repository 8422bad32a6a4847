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
from typing import Any, TypeVar

import tenacity
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from .breaker import CircuitBreaker
from .classify import build_error
from .errors import CommitOutcomeUnknown, ResilienceError, RetryExhausted
from .retry import RetryBudget, RetryPolicy, log_retry

__all__ = ["run_transaction", "run_transaction_sync"]

T = TypeVar("T")

_log = logging.getLogger("sqlalchemy_resilience.session")

ISOLATION_LEVELS = frozenset(
    {"SERIALIZABLE", "REPEATABLE READ", "READ COMMITTED", "READ UNCOMMITTED", "AUTOCOMMIT"}
)

_DEFAULT_POLICY = RetryPolicy()


def _validate(isolation_level: str | None, read_only: bool, idempotent: bool) -> None:
    if isolation_level is not None and isolation_level not in ISOLATION_LEVELS:
        raise ValueError(
            f"isolation_level must be one of {sorted(ISOLATION_LEVELS)}, got {isolation_level!r}"
        )
    for name, value in (("read_only", read_only), ("idempotent", idempotent)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")


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


def _raise_translated(exc: BaseException) -> None:
    from .instrument import translate_error

    translated = translate_error(exc)
    if translated is not exc:
        raise translated from exc
    raise exc


def _read_only_sql(dialect_name: str) -> tuple[str, str | None]:
    if dialect_name == "postgresql":
        return "SET TRANSACTION READ ONLY", None
    if dialect_name == "sqlite":
        return "PRAGMA query_only = ON", "PRAGMA query_only = OFF"
    raise ValueError(f"read_only=True is supported on postgresql and sqlite, not {dialect_name!r}")


async def _attempt_async(
    factory: Callable[[], AsyncSession],
    fn: Callable[[AsyncSession], Awaitable[T]],
    breaker: CircuitBreaker | None,
    isolation_level: str | None,
    read_only: bool,
) -> T:
    guard: AbstractAsyncContextManager[Any] = breaker.guard() if breaker else nullcontext()
    async with guard, factory() as session:
        reset_sql: str | None = None
        try:
            if isolation_level is not None:
                await session.connection(execution_options={"isolation_level": isolation_level})
            if read_only:
                conn = await session.connection()
                set_sql, reset_sql = _read_only_sql(conn.dialect.name)
                await conn.exec_driver_sql(set_sql)
            result = await fn(session)
            try:
                await session.commit()
            except Exception as exc:
                failure = _commit_failure(exc)
                if failure is exc:
                    raise
                raise failure from exc
            return result
        finally:
            if reset_sql is not None:
                await _reset_async(session, reset_sql)


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

    Returns:
        What ``fn`` returned on the attempt that committed.

    Raises:
        CircuitOpenError: the breaker refused the call (never wrapped).
        CommitOutcomeUnknown: the connection died during COMMIT (not idempotent).
        RetryExhausted: every attempt failed retryably; ``.errors`` holds each.
        ResilienceError: the first non-retryable failure, translated.

    Example::

        async def transfer(session: AsyncSession) -> None:
            await session.execute(update(Account).where(Account.id == 1).values(balance=Account.balance - 10))
            await session.execute(update(Account).where(Account.id == 2).values(balance=Account.balance + 10))

        await run_transaction(Session, transfer, isolation_level="SERIALIZABLE")
    """
    _validate(isolation_level, read_only, idempotent)
    policy = retry or _DEFAULT_POLICY
    budget = policy.budget or RetryBudget.for_engine(_bind_of(sessionmaker))
    started = time.monotonic()
    try:
        result = await _attempt_async(sessionmaker, fn, breaker, isolation_level, read_only)
    except Exception as first:
        if policy.attempts == 1 or not policy.is_retryable(first, idempotent=idempotent):
            _raise_translated(first)
        errors: list[BaseException] = [first]
    else:
        budget.record_success()
        return result
    return await _retry_async(
        sessionmaker,
        fn,
        policy=policy,
        budget=budget,
        errors=errors,
        started=started,
        breaker=breaker,
        isolation_level=isolation_level,
        read_only=read_only,
        idempotent=idempotent,
    )


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


async def _retry_async(
    factory: Callable[[], AsyncSession],
    fn: Callable[[AsyncSession], Awaitable[T]],
    *,
    policy: RetryPolicy,
    budget: RetryBudget,
    errors: list[BaseException],
    started: float,
    breaker: CircuitBreaker | None,
    isolation_level: str | None,
    read_only: bool,
    idempotent: bool,
) -> T:
    replayed = False
    retrying = tenacity.AsyncRetrying(
        **_retrying_kwargs(policy, budget, errors, started, idempotent)
    )
    try:
        async for attempt in retrying:
            with attempt:
                if not replayed:
                    # Attempt 1 already ran outside tenacity (the fast path);
                    # hand its failure to tenacity so it counts and backs off.
                    replayed = True
                    raise errors[0]
                return await _attempt_async(factory, fn, breaker, isolation_level, read_only)
    except RetryExhausted:
        raise
    except Exception as exc:
        _raise_translated(exc)
    raise AssertionError("unreachable")  # pragma: no cover


# -- sync twin -------------------------------------------------------------------


def _attempt_sync(
    factory: Callable[[], Session],
    fn: Callable[[Session], T],
    breaker: CircuitBreaker | None,
    isolation_level: str | None,
    read_only: bool,
) -> T:
    guard: AbstractContextManager[Any] = breaker.guard() if breaker else nullcontext()
    with guard, factory() as session:
        reset_sql: str | None = None
        try:
            if isolation_level is not None:
                session.connection(execution_options={"isolation_level": isolation_level})
            if read_only:
                conn = session.connection()
                set_sql, reset_sql = _read_only_sql(conn.dialect.name)
                conn.exec_driver_sql(set_sql)
            result = fn(session)
            try:
                session.commit()
            except Exception as exc:
                failure = _commit_failure(exc)
                if failure is exc:
                    raise
                raise failure from exc
            return result
        finally:
            if reset_sql is not None:
                try:
                    session.rollback()
                    session.connection().exec_driver_sql(reset_sql)
                    session.commit()
                except Exception:
                    _log.warning("could not reset %r; invalidating", reset_sql, exc_info=True)
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
) -> T:
    """The synchronous twin of :func:`run_transaction`, for ``sessionmaker`` and ``Session``.

    Example::

        total = run_transaction_sync(Session, lambda s: s.scalar(select(func.count(User.id))),
                                     read_only=True)
    """
    _validate(isolation_level, read_only, idempotent)
    policy = retry or _DEFAULT_POLICY
    budget = policy.budget or RetryBudget.for_engine(_bind_of(sessionmaker))
    started = time.monotonic()
    try:
        result = _attempt_sync(sessionmaker, fn, breaker, isolation_level, read_only)
    except Exception as first:
        if policy.attempts == 1 or not policy.is_retryable(first, idempotent=idempotent):
            _raise_translated(first)
        errors: list[BaseException] = [first]
    else:
        budget.record_success()
        return result
    replayed = False
    retrying = tenacity.Retrying(**_retrying_kwargs(policy, budget, errors, started, idempotent))
    try:
        for attempt in retrying:
            with attempt:
                if not replayed:
                    replayed = True
                    raise errors[0]
                return _attempt_sync(sessionmaker, fn, breaker, isolation_level, read_only)
    except RetryExhausted:
        raise
    except Exception as exc:
        _raise_translated(exc)
    raise AssertionError("unreachable")  # pragma: no cover
