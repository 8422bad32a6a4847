"""``on_commit``: callbacks that run after the outermost commit, and only then.

Each :func:`~sqlalchemy_resilience.transaction` and each attempt of
:func:`~sqlalchemy_resilience.run_transaction` opens a *commit scope* in a
context variable (so concurrent tasks and threads each see their own). A
scope opened for a savepoint hands its callbacks to the enclosing scope when
the savepoint is released and drops them when it rolls back; the outermost
scope runs them after its COMMIT succeeded. A failed or re-run attempt simply
never runs its scope, so each callback runs once.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar, Token
from typing import Any

__all__ = ["CommitScope", "on_commit", "owning_scope"]

_log = logging.getLogger("sqlalchemy_resilience.transaction")

Callback = Callable[[], Any]


class CommitScope:
    """The callbacks registered inside one transaction or savepoint.

    ``owner`` is the session or connection the scope belongs to; ``parent``
    receives the callbacks when a savepoint is released (None for the
    outermost); ``managed`` is False for a savepoint whose outer transaction
    this package did not open -- its commit cannot be seen, so registering
    there is refused rather than silently never run.
    """

    __slots__ = ("callbacks", "is_async", "managed", "outer", "owner", "parent", "token")

    def __init__(
        self,
        owner: object,
        *,
        parent: CommitScope | None,
        is_async: bool,
        managed: bool = True,
    ) -> None:
        self.owner = owner
        self.parent = parent
        self.is_async = is_async
        self.managed = managed
        self.callbacks: list[tuple[Callback, bool]] = []
        self.outer: CommitScope | None = None
        self.token: Token[CommitScope | None] | None = None

    # -- lifetime ---------------------------------------------------------------

    def enter(self) -> CommitScope:
        """Make this the current scope (until :meth:`leave`)."""
        self.outer = _current.get()
        self.token = _current.set(self)
        return self

    def leave(self) -> None:
        """Stop being the current scope; restore the one that was current before."""
        if self.token is not None:
            try:
                _current.reset(self.token)
            except ValueError:
                # Left from another context (a task that copied it): put back
                # by value instead; the token belongs to the other context.
                _current.set(self.outer)
            self.token = None

    def release(self) -> None:
        """A savepoint was released: its callbacks now wait for the enclosing commit."""
        if self.parent is not None:
            self.parent.callbacks.extend(self.callbacks)
        self.callbacks = []

    def discard(self) -> None:
        """Rolled back or superseded: these callbacks never run."""
        if self.callbacks:
            _log.debug("dropping %d on_commit callback(s) after a rollback", len(self.callbacks))
        self.callbacks = []

    # -- running ----------------------------------------------------------------

    def run_callbacks_sync(self) -> None:
        """Run the callbacks of a committed transaction, in order (sync twin)."""
        callbacks, self.callbacks = self.callbacks, []
        for callback, robust in callbacks:
            try:
                result = callback()
                if inspect.isawaitable(result):
                    _close(result)
                    raise TypeError(
                        f"on_commit callback {_name(callback)} returned an awaitable inside a "
                        "synchronous transaction; register a plain function"
                    )
            except Exception:
                if not robust:
                    raise
                _log.exception("on_commit callback %s failed (robust=True)", _name(callback))

    async def run_callbacks(self) -> None:
        """Run the callbacks of a committed transaction, in order, awaiting async ones."""
        callbacks, self.callbacks = self.callbacks, []
        for callback, robust in callbacks:
            try:
                result = callback()
                if inspect.isawaitable(result):
                    await result
            except Exception:
                if not robust:
                    raise
                _log.exception("on_commit callback %s failed (robust=True)", _name(callback))


_current: ContextVar[CommitScope | None] = ContextVar(
    "sqlalchemy_resilience_commit_scope", default=None
)


def owning_scope(owner: object) -> CommitScope | None:
    """The innermost current scope belonging to ``owner`` (a session or connection), or None."""
    scope = _current.get()
    while scope is not None:
        if scope.owner is owner:
            return scope
        scope = scope.outer
    return None


def _name(callback: Callback) -> str:
    return getattr(callback, "__qualname__", None) or repr(callback)


def _close(awaitable: Awaitable[Any]) -> None:
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()  # no "coroutine was never awaited" warning on top of the TypeError


def on_commit(callback: Callback, *, robust: bool = False) -> None:
    """Run ``callback()`` after the current transaction commits -- never if it rolls back.

    Inside :func:`~sqlalchemy_resilience.transaction` (or its sync twin) or the
    unit of work of :func:`~sqlalchemy_resilience.run_transaction`. The callback
    runs after the *outermost* COMMIT succeeded; registered inside a savepoint
    (a nested ``transaction()``), it is dropped if that savepoint rolls back;
    registered by an attempt that ``run_transaction`` re-runs, it is dropped
    with that attempt, so it runs once. Callbacks run in registration order;
    in an async transaction a callback may be ``async`` (it is awaited).

    Args:
        callback: a function of no arguments (use ``functools.partial`` to bind some).
        robust: when the callback raises, log the error and run the next ones.
            Without it the error propagates from the end of the transaction
            block (the work *is* committed) and later callbacks do not run.

    Raises:
        RuntimeError: no transaction of this package is open here.
        TypeError: ``callback`` is not callable, or an ``async`` function in a
            synchronous transaction.

    Example::

        async with transaction(session):
            session.add(Order(id=order_id))
            on_commit(partial(send_confirmation_email, order_id))
        # the e-mail goes out only once the order is committed
    """
    if not callable(callback):
        raise TypeError(f"callback must be callable, got {callback!r}")
    if not isinstance(robust, bool):
        raise TypeError(f"robust must be True or False, got {robust!r}")
    scope = _current.get()
    if scope is None:
        raise RuntimeError(
            "on_commit() needs an enclosing transaction() or run_transaction(); "
            "outside one there is no commit to wait for"
        )
    if not scope.managed:
        raise RuntimeError(
            "on_commit() inside a savepoint whose outer transaction was not opened by "
            "transaction() or run_transaction(): that commit cannot be seen; open the outer "
            "transaction with transaction()"
        )
    if not scope.is_async and inspect.iscoroutinefunction(callback):
        raise TypeError(
            f"on_commit callback {_name(callback)} is async but the transaction is synchronous"
        )
    scope.callbacks.append((callback, robust))
