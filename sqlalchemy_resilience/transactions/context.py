"""``transaction()`` and ``transaction_sync()``: begin, commit on success, roll back on error.

What the hand-written ``async with session.begin():`` does not: scoped
timeouts and read-only/deferrable on PostgreSQL (``SET LOCAL``, gone with the
transaction), a savepoint when nested, ``durable=True`` refusing to nest,
``on_commit`` callbacks, ``BEGIN IMMEDIATE`` on SQLite, and a typed
:class:`CommitOutcomeUnknown` when the connection dies during COMMIT.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, overload

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.util import greenlet_spawn

from sqlalchemy_resilience._util.seconds import Seconds
from sqlalchemy_resilience.errors.classify import build_error
from sqlalchemy_resilience.errors.hierarchy import DurableTransactionError, ResilienceError
from sqlalchemy_resilience.errors.translate import translate_error

from .atomic import require_atomic, routes_itself
from .options import TransactionOptions, Undo, prepare
from .partial import forget_lost_statement, refuse_partial_commit
from .scope import CommitScope, owning_scope
from .sqlite import BEGIN_OPTION

__all__ = ["SyncTransactionContext", "TransactionContext", "transaction", "transaction_sync"]

_log = logging.getLogger("sqlalchemy_resilience.transaction")

W = TypeVar("W")


@dataclass(frozen=True)
class _Plan:
    """What entering a transaction on this target means, decided before anything runs."""

    engine: Engine
    nested: bool
    parent: CommitScope | None
    managed: bool


def _engine_of(bind: Any) -> Engine:
    return bind.engine if isinstance(bind, Connection) else bind


def _plan(
    owner: Session | AsyncSession | Connection | AsyncConnection, options: TransactionOptions
) -> _Plan:
    if isinstance(owner, (Session, AsyncSession)):
        engine = _engine_of(owner.get_bind())
    elif isinstance(owner, AsyncConnection):
        engine = owner.sync_engine
    else:
        engine = owner.engine
    parent = owning_scope(owner)
    nested = owner.in_transaction() or parent is not None
    if nested and options.durable:
        raise DurableTransactionError(
            "transaction(durable=True) was opened inside another transaction: it would be a "
            "savepoint committed by the outer transaction, not a commit of its own"
        )
    if (
        nested is False
        and options.isolation_level is not None
        and isinstance(owner, (Connection, AsyncConnection))
    ):
        raise ValueError(
            "isolation_level on a connection you pass in would outlive the transaction; "
            "set it with conn.execution_options(isolation_level=...) or pass the engine or a session"
        )
    options.check(engine.dialect.name, nested=nested)
    return _Plan(
        engine=engine,
        nested=nested,
        parent=parent,
        managed=(parent.managed if parent is not None else not nested),
    )


def _commit_error(failure: BaseException, *, outermost: bool) -> BaseException:
    """A failure at COMMIT (or RELEASE), typed; a lost connection at COMMIT is an unknown outcome."""
    if isinstance(failure, ResilienceError):
        return failure
    if outermost and isinstance(failure, sa_exc.DBAPIError):
        return build_error(failure, phase="commit", is_disconnect=failure.connection_invalidated)
    return translate_error(failure)


def _reraise(failure: BaseException, *, outermost: bool) -> None:
    typed = _commit_error(failure, outermost=outermost)
    if typed is failure:
        raise failure
    raise typed from failure


_TARGETS_ASYNC = (AsyncSession, AsyncConnection, AsyncEngine, async_sessionmaker)
_TARGETS_SYNC = (Session, Connection, Engine, sessionmaker)


class SyncTransactionContext(Generic[W]):
    """What :func:`transaction_sync` returns: ``with`` it to get the session or connection.

    It is also the one implementation of :func:`transaction`: the async
    context runs it on the ``AsyncSession``'s ``sync_session`` (or the
    ``AsyncConnection``'s ``sync_connection``) inside SQLAlchemy's greenlet,
    with the async object as the owner of the commit scope.

    Example::

        with transaction_sync(Session, statement_timeout=5) as session:
            session.add(order)
    """

    __slots__ = (
        "_conn",
        "_guarded",
        "_is_async",
        "_name",
        "_options",
        "_owned",
        "_owner",
        "_plan",
        "_scope",
        "_target",
        "_tx",
        "_undo",
    )

    def __init__(
        self,
        target: Any,
        options: TransactionOptions,
        *,
        owner: Any = None,
        name: str = "transaction_sync()",
    ) -> None:
        if owner is None and not isinstance(target, _TARGETS_SYNC):
            raise TypeError(
                "transaction_sync() takes a Session, Connection, Engine or sessionmaker, "
                f"got {type(target).__name__}"
                + ("; use transaction()" if isinstance(target, _TARGETS_ASYNC) else "")
            )
        self._target = target
        self._options = options
        # The async object whose sync side this is (the scope's owner), or None.
        self._owner: Any = owner
        self._is_async = owner is not None
        self._name = name
        self._owned: Any = None  # a session or connection this context opened, and closes
        self._conn: Any = None
        # The connection whose lost-statement mark decides the commit (partial.py).
        self._guarded: Connection | None = None
        self._tx: Any = None
        self._undo: Undo | None = None
        self._scope: CommitScope | None = None
        self._plan: _Plan | None = None

    def __enter__(self) -> W:
        target = self._target
        if isinstance(target, sessionmaker):
            target = self._owned = target()
        elif isinstance(target, Engine):
            target = self._owned = target.connect()
        try:
            if isinstance(target, Session):
                self._enter_session(target)
            else:
                self._enter_connection(target)
        except BaseException:
            self._abort()
            raise
        return target  # type: ignore[no-any-return]

    def _open(self, owner: Any) -> _Plan:
        if self._plan is not None:
            raise RuntimeError(
                "a transaction() context can be entered once; call transaction() again"
            )
        owner = self._owner if self._owner is not None else owner
        plan = self._plan = _plan(owner, self._options)
        self._scope = CommitScope(
            owner, parent=plan.parent, is_async=self._is_async, managed=plan.managed
        ).enter()
        return plan

    def _enter_session(self, session: Session) -> None:
        plan = self._open(session)
        options = self._options
        if plan.nested:
            self._tx = session.begin_nested()
            if options.timeouts():
                self._conn = session.connection()
        else:
            self._tx = session.begin()
            if options.needs_connection(plan.engine.dialect.name):
                self._conn = session.connection(
                    execution_options=options.execution_options(plan.engine)
                )
            conn = self._conn
            if conn is None and not routes_itself(session):
                conn = session.connection()
            require_atomic(self._name, conn, session.get_bind())
            forget_lost_statement(conn)
            self._guarded = conn
        if self._conn is not None:
            self._undo = prepare(self._conn, options, nested=plan.nested, engine=plan.engine)

    def _enter_connection(self, conn: Connection) -> None:
        plan = self._open(conn)
        options = self._options
        self._conn = conn
        if plan.nested:
            self._tx = conn.begin_nested()
        else:
            extra = options.execution_options(plan.engine)
            if extra:
                conn.execution_options(**extra)
            self._tx = conn.begin()
            forget_lost_statement(conn)
            self._guarded = conn
            require_atomic(self._name, conn)
        if plan.nested and not options.timeouts():
            return
        if options.needs_connection(plan.engine.dialect.name):
            self._undo = prepare(conn, options, nested=plan.nested, engine=plan.engine)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        scope = self._end(exc)
        if scope is not None:
            scope.run_callbacks_sync()
        return False

    def _end(self, exc: BaseException | None) -> CommitScope | None:
        """Commit (no ``exc``) or roll back; the scope whose callbacks now run, if it committed.

        The async context calls this in SQLAlchemy's greenlet and awaits the
        callbacks itself (they may be coroutines).
        """
        scope = self._scope
        assert scope is not None and self._plan is not None
        nested = self._plan.nested
        committed = False
        try:
            if exc is None:
                try:
                    if self._undo is not None and self._conn is not None:
                        self._undo(self._conn, True)
                    if not nested:
                        refuse_partial_commit(self._guarded)
                    self._tx.commit()
                except BaseException as failure:
                    scope.discard()
                    self._rollback_quietly(undo=False)
                    _reraise(failure, outermost=not nested)
                committed = True
            else:
                scope.discard()
                self._rollback_quietly(undo=True)
        finally:
            scope.leave()
            self._finish()
        if not committed:
            return None
        if nested:
            scope.release()
            return None
        return scope

    def _rollback_quietly(self, *, undo: bool) -> None:
        # The error that got us here is what the caller must see; a rollback
        # on a dead connection fails too, and SQLAlchemy discards it.
        try:
            if undo and self._undo is not None and self._conn is not None:
                self._undo(self._conn, False)
        except Exception:
            _log.debug("could not restore settings before rollback", exc_info=True)
            self._invalidate_quietly()
        try:
            if self._tx is not None:
                self._tx.rollback()
        except Exception:
            _log.debug("rollback after a failed transaction failed", exc_info=True)

    def _invalidate_quietly(self) -> None:
        try:
            if self._conn is not None and not self._conn.closed:
                self._conn.invalidate()
        except Exception:
            _log.debug("invalidate failed", exc_info=True)

    def _abort(self) -> None:
        if self._scope is not None:
            self._scope.discard()
            self._scope.leave()
        self._rollback_quietly(undo=True)
        self._finish()

    def _finish(self) -> None:
        target = self._target
        plan = self._plan
        # A caller's SQLite connection got the package's begin option for this
        # transaction only; take it off again.
        if (
            isinstance(target, Connection)
            and plan is not None
            and not plan.nested
            and plan.engine.dialect.name == "sqlite"
        ):
            try:
                target.execution_options(**{BEGIN_OPTION: None})
            except Exception:
                _log.debug("could not clear the begin option", exc_info=True)
        owned, self._owned = self._owned, None
        if owned is not None:
            owned.close()


class TransactionContext(Generic[W]):
    """What :func:`transaction` returns: ``async with`` it to get the session or connection.

    Example::

        async with transaction(Session, isolation_level="SERIALIZABLE") as session:
            session.add(order)
    """

    __slots__ = ("_options", "_owned", "_sync", "_target")

    def __init__(self, target: Any, options: TransactionOptions) -> None:
        if not isinstance(target, _TARGETS_ASYNC):
            raise TypeError(
                "transaction() takes an AsyncSession, AsyncConnection, AsyncEngine or "
                f"async_sessionmaker, got {type(target).__name__}"
                + ("; use transaction_sync()" if isinstance(target, _TARGETS_SYNC) else "")
            )
        self._target = target
        self._options = options
        self._owned: AsyncSession | AsyncConnection | None = None
        self._sync: SyncTransactionContext[Any] | None = None

    async def __aenter__(self) -> W:
        if self._sync is not None:
            raise RuntimeError(
                "a transaction() context can be entered once; call transaction() again"
            )
        target = self._target
        if isinstance(target, async_sessionmaker):
            target = self._owned = target()
        elif isinstance(target, AsyncEngine):
            target = self._owned = await target.connect()
        if isinstance(target, AsyncSession):
            sync_target: Any = target.sync_session
        else:
            if target.sync_connection is None:
                await target.start()
            sync_target = target.sync_connection
        self._sync = SyncTransactionContext(
            sync_target, self._options, owner=target, name="transaction()"
        )
        try:
            await greenlet_spawn(self._sync.__enter__)
        except BaseException:
            await self._close_owned()
            raise
        return target  # type: ignore[return-value]

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        assert self._sync is not None
        try:
            scope: CommitScope | None = await greenlet_spawn(self._sync._end, exc)
        finally:
            await self._close_owned()
        if scope is not None:
            await scope.run_callbacks()
        return False

    async def _close_owned(self) -> None:
        owned, self._owned = self._owned, None
        if owned is not None:
            await owned.close()


@overload
def transaction(
    target: AsyncSession | async_sessionmaker[Any],
    *,
    isolation_level: str | None = ...,
    read_only: bool = ...,
    deferrable: bool = ...,
    statement_timeout: Seconds | None = ...,
    lock_timeout: Seconds | None = ...,
    idle_in_transaction_timeout: Seconds | None = ...,
    durable: bool = ...,
) -> TransactionContext[AsyncSession]: ...


@overload
def transaction(
    target: AsyncConnection | AsyncEngine,
    *,
    isolation_level: str | None = ...,
    read_only: bool = ...,
    deferrable: bool = ...,
    statement_timeout: Seconds | None = ...,
    lock_timeout: Seconds | None = ...,
    idle_in_transaction_timeout: Seconds | None = ...,
    durable: bool = ...,
) -> TransactionContext[AsyncConnection]: ...


def transaction(
    target: AsyncSession | async_sessionmaker[Any] | AsyncConnection | AsyncEngine,
    *,
    isolation_level: str | None = None,
    read_only: bool = False,
    deferrable: bool = False,
    statement_timeout: Seconds | None = None,
    lock_timeout: Seconds | None = None,
    idle_in_transaction_timeout: Seconds | None = None,
    durable: bool = False,
) -> TransactionContext[Any]:
    """An async context manager: begin, commit when the block succeeds, roll back when it raises.

    ``async with`` it yields the session (for a session or sessionmaker) or
    the connection (for a connection or engine) to work with.

    Args:
        target: a session, a connection, an engine (a new connection, closed at
            the end) or a sessionmaker (a new session, closed at the end).
        isolation_level: SQLAlchemy's name (``"SERIALIZABLE"``, ``"REPEATABLE
            READ"``, ...), for the outermost transaction of a session or engine.
        read_only: PostgreSQL ``SET TRANSACTION READ ONLY``; SQLite ``PRAGMA
            query_only`` for the transaction and a ``BEGIN DEFERRED``.
        deferrable: PostgreSQL ``DEFERRABLE`` (with ``read_only=True`` and
            ``isolation_level="SERIALIZABLE"``): waits for a safe snapshot once,
            then can never fail with a serialization error.
        statement_timeout: PostgreSQL ``statement_timeout`` for this
            transaction only (seconds or ``timedelta``; 0 turns it off).
        lock_timeout: PostgreSQL ``lock_timeout``; on SQLite the
            ``busy_timeout`` for this transaction (including its ``BEGIN IMMEDIATE``).
        idle_in_transaction_timeout: PostgreSQL
            ``idle_in_transaction_session_timeout`` for this transaction.
        durable: refuse to run inside another transaction (raise
            :class:`DurableTransactionError`), so leaving the block means committed.

    Nested inside another transaction on the same session or connection (also
    inside ``run_transaction``'s unit of work), the block is a savepoint:
    an error rolls back to it and propagates. Its timeouts apply inside it
    and are put back when it ends; ``isolation_level`` and ``read_only`` belong
    to the outermost transaction and raise ``ValueError`` here.

    Raises:
        TypeError, ValueError: an option has the wrong type or value (before anything runs).
        NotSupported: the database cannot honour an option (SQLite has no
            ``statement_timeout``).
        DurableTransactionError: ``durable=True`` inside another transaction.
        CommitOutcomeUnknown: the connection was lost while COMMIT was in flight.

    Example::

        async with transaction(session, isolation_level="SERIALIZABLE",
                               statement_timeout=5, lock_timeout=timedelta(seconds=1)):
            account = await session.get(Account, 1, with_for_update=True)
            account.balance -= 10
            on_commit(partial(notify, account.id))   # after COMMIT, never after a rollback
    """
    options = TransactionOptions.build(
        isolation_level=isolation_level,
        read_only=read_only,
        deferrable=deferrable,
        statement_timeout=statement_timeout,
        lock_timeout=lock_timeout,
        idle_in_transaction_timeout=idle_in_transaction_timeout,
        durable=durable,
    )
    return TransactionContext(target, options)


@overload
def transaction_sync(
    target: Session | sessionmaker[Any],
    *,
    isolation_level: str | None = ...,
    read_only: bool = ...,
    deferrable: bool = ...,
    statement_timeout: Seconds | None = ...,
    lock_timeout: Seconds | None = ...,
    idle_in_transaction_timeout: Seconds | None = ...,
    durable: bool = ...,
) -> SyncTransactionContext[Session]: ...


@overload
def transaction_sync(
    target: Connection | Engine,
    *,
    isolation_level: str | None = ...,
    read_only: bool = ...,
    deferrable: bool = ...,
    statement_timeout: Seconds | None = ...,
    lock_timeout: Seconds | None = ...,
    idle_in_transaction_timeout: Seconds | None = ...,
    durable: bool = ...,
) -> SyncTransactionContext[Connection]: ...


def transaction_sync(
    target: Session | sessionmaker[Any] | Connection | Engine,
    *,
    isolation_level: str | None = None,
    read_only: bool = False,
    deferrable: bool = False,
    statement_timeout: Seconds | None = None,
    lock_timeout: Seconds | None = None,
    idle_in_transaction_timeout: Seconds | None = None,
    durable: bool = False,
) -> SyncTransactionContext[Any]:
    """The synchronous twin of :func:`transaction`, for ``Session``, ``Connection`` and ``Engine``.

    Same options and behaviour as :func:`transaction`.

    Example::

        with transaction_sync(Session, lock_timeout=2) as session:
            session.add(Order(id=1))
            on_commit(lambda: print("committed"))
    """
    options = TransactionOptions.build(
        isolation_level=isolation_level,
        read_only=read_only,
        deferrable=deferrable,
        statement_timeout=statement_timeout,
        lock_timeout=lock_timeout,
        idle_in_transaction_timeout=idle_in_transaction_timeout,
        durable=durable,
    )
    return SyncTransactionContext(target, options)
