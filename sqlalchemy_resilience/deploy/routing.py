"""Routing sessions: reads to a :class:`~.replicas.ReplicaSet`'s replicas, writes to its primary.

:func:`routing_sessionmaker` makes sessions that route by statement in
``get_bind()`` (SQLAlchemy's documented hook for custom routing): a write (a
flush, DML, a locking SELECT, a ``text()`` that is not a plain SELECT, a
statement marked ``execution_options(routing="primary")``) goes to the
primary and the rest of the session stays there; otherwise one replica is
chosen per transaction. See :mod:`.replicas` for the replica set itself.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import TextClause

from .replicas import PRIMARY, ReplicaSet

__all__ = [
    "RoutingAsyncSession",
    "RoutingSession",
    "is_write_statement",
    "routing_sessionmaker",
    "use_primary",
]

_STICKY_KEY = "sqlalchemy_resilience.primary"
# A text() statement reads only when it is one plain SELECT: no locking
# clause, no SELECT INTO, no sequence or advisory-lock side effects.
_LEADING_COMMENTS = re.compile(r"^\s*(?:(?:--[^\n]*\n)|(?:/\*.*?\*/)|\s)*", re.DOTALL)
_WRITE_HINTS = re.compile(
    r"\bFOR\s+(?:UPDATE|SHARE|NO\s+KEY\s+UPDATE|KEY\s+SHARE)\b|\bINTO\b|\bnextval\s*\(|"
    r"\bsetval\s*\(|\bpg_advisory|\bset_config\s*\(|;\s*\S",
    re.IGNORECASE,
)


def is_write_statement(clause: Any) -> bool:
    """Whether ``clause`` writes (or locks) and so belongs on the primary.

    Example::

        is_write_statement(select(User).with_for_update())  # True
    """
    if clause is None:
        return False
    options = getattr(clause, "get_execution_options", None)
    if callable(options) and options().get("routing") == PRIMARY:
        return True
    if getattr(clause, "is_dml", False):
        return True
    if getattr(clause, "_for_update_arg", None) is not None:
        return True
    if isinstance(clause, TextClause):
        body = _LEADING_COMMENTS.sub("", clause.text, count=1)
        return body[:6].upper() != "SELECT" or bool(_WRITE_HINTS.search(body))
    # Anything else that is not a SELECT (DDL, a function call construct): the primary.
    return not getattr(clause, "is_select", False)


class RoutingSession(Session):
    """A ``Session`` whose ``get_bind()`` routes reads to replicas and writes to the primary.

    Made by :func:`routing_sessionmaker`; see the module docs for the rules.

    Example::

        Session = routing_sessionmaker(replica_set)
        with Session() as session:
            session.scalars(select(User)).all()   # a replica
            session.add(User(name="a"))
            session.commit()                      # the primary
            session.get(User, 1)                  # the primary: this session wrote
    """

    def __init__(self, *, replica_set: ReplicaSet, **kwargs: Any) -> None:
        kwargs.setdefault("bind", replica_set.primary_sync)
        super().__init__(**kwargs)
        self.replica_set = replica_set
        self._chosen: Engine | None = None
        self._served: set[Engine] = set()

    def get_bind(self, mapper: Any = None, clause: Any = None, **kw: Any) -> Engine:
        """The engine for ``clause``: the primary for writes (and after one), else a replica.

        Example::

            session.get_bind(clause=select(User))  # a replica's engine
        """
        replicas = self.replica_set
        primary = replicas.primary_sync
        if self.info.get(_STICKY_KEY):
            engine = primary
        elif self._flushing or is_write_statement(clause):
            self.info[_STICKY_KEY] = True
            engine = primary
        elif clause is None and mapper is None:
            # A connection asked for without a statement (``session.connection()``:
            # transaction options, an idempotency claim, raw work on the
            # Connection) may write: the primary.
            engine = primary
        else:
            if self._chosen is None:
                self._chosen = replicas.choose() or primary
            engine = self._chosen
        if clause is not None and engine not in self._served:
            self._served.add(engine)
            replicas.count(engine)
        return engine


@event.listens_for(RoutingSession, "after_transaction_end")
def _next_transaction_chooses_again(session: Session, transaction: Any) -> None:
    if transaction.parent is None and isinstance(session, RoutingSession):
        session._chosen = None
        session._served = set()


class RoutingAsyncSession(AsyncSession):
    """The ``AsyncSession`` form of :class:`RoutingSession`.

    Example::

        Session = routing_sessionmaker(async_replica_set)
        async with Session() as session:
            await session.scalars(select(User))
    """

    sync_session_class = RoutingSession

    def __init__(self, *, replica_set: ReplicaSet, **kwargs: Any) -> None:
        kwargs.setdefault("bind", replica_set.primary)
        super().__init__(replica_set=replica_set, **kwargs)
        self.replica_set = replica_set


def use_primary(session: Session | AsyncSession) -> None:
    """Send everything the session runs from now on to the primary.

    For a unit of work that must read the latest committed state (after a
    write in another session, or before a write it will make with
    ``isolation_level``), or statements the routing cannot see writing (a
    function with side effects called from a SELECT).

    Example::

        async with Session() as session:
            use_primary(session)
            balance = await session.scalar(select(Account.balance).where(Account.id == 1))
    """
    target = session.sync_session if isinstance(session, AsyncSession) else session
    target.info[_STICKY_KEY] = True


def routing_sessionmaker(
    replica_set: ReplicaSet, **kwargs: Any
) -> async_sessionmaker[RoutingAsyncSession] | sessionmaker[RoutingSession]:
    """A sessionmaker whose sessions route reads to ``replica_set``'s replicas.

    Args:
        replica_set: the :class:`ReplicaSet`.
        **kwargs: the usual sessionmaker options (``expire_on_commit=False`` ...);
            ``bind`` is the primary.

    Returns:
        An ``async_sessionmaker`` of :class:`RoutingAsyncSession` for async
        engines, a ``sessionmaker`` of :class:`RoutingSession` for sync ones.

    Example::

        Session = routing_sessionmaker(replica_set, expire_on_commit=False)
        await run_transaction(Session, work)  # retried units of work route too
    """
    if not isinstance(replica_set, ReplicaSet):
        raise TypeError(f"replica_set must be a ReplicaSet, got {replica_set!r}")
    if replica_set.is_async:
        return async_sessionmaker(class_=RoutingAsyncSession, replica_set=replica_set, **kwargs)
    return sessionmaker(class_=RoutingSession, replica_set=replica_set, **kwargs)
