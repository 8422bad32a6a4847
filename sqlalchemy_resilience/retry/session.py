"""``resilient_sessionmaker``: sessions that retry where it is safe and go through the breaker.

A :class:`ResilientAsyncSession` retries only the call that starts a
transaction (checkout and first statement, with nothing pending), where no
work can be lost; every call goes through the circuit breaker. A failure
later in the transaction is raised typed, with a note telling the caller to
re-run the unit of work (:func:`~.transaction.run_transaction` does that).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sqlalchemy_resilience._util.autocommit import autocommit_source, statement_reads_only
from sqlalchemy_resilience.transactions.atomic import routes_itself

from .breaker import CircuitBreaker
from .policy import RetryBudget, RetryPolicy
from .unit import (
    _DEFAULT_POLICY,
    _commit_failure,
    _raise_translated,
    _retry_async,
    _retrying_kwargs,
    breaker_guard,
    breaker_wait_until,
)

__all__ = ["ResilientAsyncSession", "resilient_sessionmaker"]


_NO_STATEMENT: Any = object()


def _statement(args: tuple[Any, ...], kw: dict[str, Any]) -> Any:
    return args[0] if args else kw.get("statement", _NO_STATEMENT)


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

    Example::

        Session = resilient_sessionmaker(engine)
        async with Session() as session:  # a ResilientAsyncSession
            await session.execute(select(User))
    """

    resilience_retry: RetryPolicy = _DEFAULT_POLICY
    resilience_breaker: CircuitBreaker | None = None

    async def _resilient(
        self, call: Callable[[], Awaitable[Any]], statement: Any = _NO_STATEMENT
    ) -> Any:
        starts_transaction = not self.in_transaction() and not (
            self.new or self.dirty or self.deleted
        )
        breaker = self.resilience_breaker
        policy = self.resilience_retry
        # A statement that may write, on a connection that commits it on its
        # own (AUTOCOMMIT from any source): a lost reply is an unknown COMMIT.
        autocommits = [False]
        may_write = statement is not _NO_STATEMENT and not statement_reads_only(statement)

        # Before its transaction starts, a statement may wait at an open
        # breaker as a unit of work does; inside one, it fails fast.
        wait_until = breaker_wait_until(policy, time.monotonic()) if starts_transaction else None

        async def once() -> Any:
            guard: AbstractAsyncContextManager[Any] = breaker_guard(breaker, wait_until)
            async with guard:
                if starts_transaction and may_write and not routes_itself(self.sync_session):
                    sync = (await AsyncSession.connection(self)).sync_connection
                    autocommits[0] = sync is not None and autocommit_source(sync) is not None
                try:
                    return await call()
                except Exception as exc:
                    failure = _commit_failure(exc) if autocommits[0] else exc
                    if failure is exc:
                        raise
                    raise failure from exc

        budget = policy.budget or RetryBudget.for_engine(self.bind)
        if starts_transaction:
            budget.deposit()  # a unit of work starts: it earns its share of retries
        try:
            return await once()
        except Exception as first:
            retryable = policy.is_retryable(first)
            if not (starts_transaction and retryable and policy.attempts > 1):
                _raise_translated(first, rerun_note=retryable and not starts_transaction)
            errors: list[BaseException] = [first]

        async def again() -> Any:
            # Discard the broken transaction and its connection first.
            await self.rollback()
            return await once()

        return await _retry_async(
            _retrying_kwargs(policy, budget, errors, time.monotonic(), False),
            errors[0],
            again,
        )

    if not TYPE_CHECKING:
        # At run time these wrap AsyncSession's methods (their signatures are
        # copied below); a type checker sees AsyncSession's own, overloads
        # included: ``await session.get(User, 1)`` is ``User | None``.

        async def execute(self, *args: Any, **kw: Any) -> Any:
            """``AsyncSession.execute``, retried when it starts the transaction."""
            return await self._resilient(
                lambda: AsyncSession.execute(self, *args, **kw), _statement(args, kw)
            )

        async def scalar(self, *args: Any, **kw: Any) -> Any:
            """``AsyncSession.scalar``, retried when it starts the transaction."""
            return await self._resilient(
                lambda: AsyncSession.scalar(self, *args, **kw), _statement(args, kw)
            )

        async def get(self, *args: Any, **kw: Any) -> Any:
            """``AsyncSession.get``, retried when it starts the transaction."""
            return await self._resilient(lambda: AsyncSession.get(self, *args, **kw))

        async def get_one(self, *args: Any, **kw: Any) -> Any:
            """``AsyncSession.get_one``, retried when it starts the transaction."""
            return await self._resilient(lambda: AsyncSession.get_one(self, *args, **kw))

        async def stream(self, *args: Any, **kw: Any) -> Any:
            """``AsyncSession.stream``, retried when it starts the transaction."""
            return await self._resilient(
                lambda: AsyncSession.stream(self, *args, **kw), _statement(args, kw)
            )

        async def connection(self, *args: Any, **kw: Any) -> Any:
            """``AsyncSession.connection`` (the checkout), retried when it starts the transaction."""
            return await self._resilient(lambda: AsyncSession.connection(self, *args, **kw))

        async def flush(self, *args: Any, **kw: Any) -> None:
            """``AsyncSession.flush`` through the breaker (never retried: it writes)."""
            await self._resilient(lambda: AsyncSession.flush(self, *args, **kw))

        async def commit(self) -> None:
            """``AsyncSession.commit`` through the breaker (never retried: see CommitOutcomeUnknown)."""
            await self._resilient(lambda: _commit_classified(self))


# What introspection (help(), IDEs, inspect.signature) shows is AsyncSession's.
for _name in ("execute", "scalar", "get", "get_one", "stream", "connection", "flush", "commit"):
    _method = vars(ResilientAsyncSession)[_name]
    _method.__signature__ = inspect.signature(getattr(AsyncSession, _name))
del _name, _method


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
