"""Where a page is read from: a session, a connection or an engine, sync or async.

One page is one SELECT. A session runs it in its current transaction (ORM
entities come back as entities); a connection runs it as Core; an engine
lends a connection for that one statement.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Connection, Engine, Result, Row
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Mapper, Session
from sqlalchemy.orm.util import AliasedInsp
from sqlalchemy.sql.selectable import Select

__all__ = [
    "AsyncTarget",
    "Fetched",
    "SyncTarget",
    "check_async",
    "check_sync",
    "dialect_of",
    "entity_of",
    "fetch",
    "fetch_sync",
    "is_orm",
    "single_entity",
]

SyncTarget = Session | Connection | Engine
AsyncTarget = AsyncSession | AsyncConnection | AsyncEngine

#: The rows as fetched, and the same rows without the appended key columns.
Fetched = tuple[Sequence[Row[Any]], Sequence[Row[Any]]]

_SYNC = (Session, Connection, Engine)
_ASYNC = (AsyncSession, AsyncConnection, AsyncEngine)


def check_sync(target: object, name: str) -> None:
    """TypeError unless ``target`` is a sync session, connection or engine."""
    if isinstance(target, _ASYNC):
        raise TypeError(
            f"{name}_sync needs a sync target; await {name}(...) for {type(target).__name__}"
        )
    if not isinstance(target, _SYNC):
        raise TypeError(
            f"{name}_sync target must be a Session, Connection or Engine, got {type(target).__name__}"
        )


def check_async(target: object, name: str) -> None:
    """TypeError unless ``target`` is an async session, connection or engine."""
    if isinstance(target, _SYNC):
        raise TypeError(
            f"{name} needs an async target; call {name}_sync(...) for {type(target).__name__}"
        )
    if not isinstance(target, _ASYNC):
        raise TypeError(
            f"{name} target must be an AsyncSession, AsyncConnection or AsyncEngine, "
            f"got {type(target).__name__}"
        )


def dialect_of(target: SyncTarget | AsyncTarget, stmt: Select[Any]) -> Dialect:
    """The dialect the statement will run on."""
    if isinstance(target, AsyncSession):
        target = target.sync_session
    if isinstance(target, Session):
        return target.get_bind(clause=stmt).dialect
    return target.dialect


def is_orm(target: object) -> bool:
    """Whether rows come back through the ORM (entities as entities)."""
    return isinstance(target, Session | AsyncSession)


def entity_of(description: dict[str, Any]) -> Mapper[Any] | AliasedInsp[Any] | None:
    """The ORM entity a ``column_descriptions`` entry selects whole, else None."""
    from sqlalchemy import inspect

    found = inspect(description.get("expr"), raiseerr=False)
    return found if isinstance(found, Mapper | AliasedInsp) else None


def single_entity(stmt: Select[Any], orm: bool) -> bool:
    """Whether each row is one ORM instance (``select(User)`` run by a session)."""
    if not orm:
        return False
    descriptions = stmt.column_descriptions
    return len(descriptions) == 1 and entity_of(descriptions[0]) is not None


def _unique(result: Result[Any]) -> Result[Any]:
    # A joined eager load of a collection repeats the parent row; the ORM
    # insists on unique() for it (sqlakeyset's test of the same condition).
    state = getattr(result, "_unique_filter_state", None)
    if isinstance(state, tuple) and state and state[0] is None:
        return result.unique()
    return result


def _rows(result: Result[Any], keep: int | None) -> Fetched:
    if keep is None:
        rows = _unique(result).fetchall()
        return rows, rows
    # The rows with the appended key columns (to read the keys) and without
    # them (what the caller gets), from one frozen copy of the result.
    frozen = result.freeze()
    return _unique(frozen()).fetchall(), _unique(frozen().columns(*range(keep))).fetchall()


def fetch_sync(target: SyncTarget, stmt: Select[Any], keep: int | None = None) -> Fetched:
    """``(rows, rows trimmed to their first keep columns)`` of ``stmt`` on a sync target."""
    if isinstance(target, Engine):
        with target.connect() as connection:
            return _rows(connection.execute(stmt), keep)
    return _rows(target.execute(stmt), keep)


async def fetch(target: AsyncTarget, stmt: Select[Any], keep: int | None = None) -> Fetched:
    """``(rows, rows trimmed to their first keep columns)`` of ``stmt`` on an async target."""
    if isinstance(target, AsyncEngine):
        async with target.connect() as connection:
            return _rows(await connection.execute(stmt), keep)
    return _rows(await target.execute(stmt), keep)
