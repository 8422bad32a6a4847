"""Refusing units of work that cannot be atomic: their connection commits every statement.

``transaction()``, ``run_transaction`` and the batch writers check the
connection a unit of work will use before anything runs on it; see
:mod:`sqlalchemy_resilience._util.autocommit` for where autocommit can come from.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from sqlalchemy_resilience._util.autocommit import autocommit_source, engine_autocommit_source
from sqlalchemy_resilience.errors.hierarchy import NotAtomic

__all__ = ["require_atomic", "routes_itself"]


def routes_itself(session: Session) -> bool:
    """Whether ``session``'s class picks engines per statement (its own ``get_bind``).

    Such a session (replica routing) is checked by its default bind's
    settings, so that no connection is opened before its first statement.

    Example::

        >>> routes_itself(Session())
        False
    """
    return type(session).get_bind is not Session.get_bind


def require_atomic(what: str, conn: Connection | None, bind: Any = None) -> None:
    """Raise :class:`NotAtomic` when the unit of work's statements would commit one by one.

    Args:
        what: the caller's name, for the message (``"run_transaction"``).
        conn: the connection the unit of work holds (every source is read,
            the driver's own autocommit too), or None to read ``bind``'s settings.
        bind: the engine (or connection) when no connection is held yet.

    Example::

        with engine.connect() as conn:
            require_atomic("my_unit", conn)   # NotAtomic on an AUTOCOMMIT connection
    """
    source = autocommit_source(conn) if conn is not None else engine_autocommit_source(bind)
    if source is not None:
        raise NotAtomic(what, source)
