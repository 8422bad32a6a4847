"""``paginate_offset`` and its sync twin: numbered pages by LIMIT/OFFSET, the documented fallback.

Offset pages are what clients that show "page 7 of 40" need, and what keyset
pages are not. They cost more the deeper they go (the database reads and
discards every row before the offset: see the benchmark in the docs) and they
shift when rows are inserted between requests, so prefer :func:`paginate`.
The ORDER BY gets the same tiebreaker as keyset pages, so the order, at
least, is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Row
from sqlalchemy.sql.selectable import Select

from .keyset import check_page_size, check_select
from .ordering import total_order
from .page import OffsetPage
from .target import (
    AsyncTarget,
    SyncTarget,
    check_async,
    check_sync,
    fetch,
    fetch_sync,
    is_orm,
    single_entity,
)

__all__ = ["MAX_PAGE_NUMBER", "paginate_offset", "paginate_offset_sync"]

#: The largest page number accepted (an OFFSET beyond it is a scan no request should make).
MAX_PAGE_NUMBER = 10_000_000


def _statements(
    stmt: object, page: object, page_size: object, with_total: bool, order_is_unique: bool
) -> tuple[Select[Any], Select[Any] | None, int, int]:
    select_ = check_select(stmt, "paginate_offset")
    size = check_page_size(page_size)
    if isinstance(page, bool) or not isinstance(page, int):
        raise TypeError(f"page must be an int, got {type(page).__name__}")
    if not 1 <= page <= MAX_PAGE_NUMBER:
        raise ValueError(f"page must be between 1 and {MAX_PAGE_NUMBER}, got {page}")
    ordered = total_order(select_, order_is_unique=order_is_unique)
    rows = ordered.limit(size + 1).offset((page - 1) * size)
    count = None
    if with_total:
        count = select(func.count()).select_from(select_.order_by(None).subquery())
    return rows, count, page, size


def _page(
    rows: Sequence[Row[Any]], total: int | None, page: int, size: int, entity: bool
) -> OffsetPage[Any]:
    shown = list(rows[:size])
    return OffsetPage(
        items=[row[0] for row in shown] if entity else shown,
        page=page,
        page_size=size,
        total=total,
        has_next=len(rows) > size,
        has_previous=page > 1,
    )


async def paginate_offset(
    target: AsyncTarget,
    stmt: Select[Any],
    *,
    page: int = 1,
    page_size: int = 20,
    with_total: bool = False,
    order_is_unique: bool = False,
) -> OffsetPage[Any]:
    """Page number ``page`` of ``stmt`` by LIMIT/OFFSET, with the total row count if asked.

    Args:
        target: an ``AsyncSession``, ``AsyncConnection`` or ``AsyncEngine``.
        stmt: a ``select()`` without LIMIT/OFFSET.
        page: from 1.
        page_size: rows per page, 1 to 100,000.
        with_total: also run ``SELECT count(*)`` over the statement (one more
            query, which reads every matching row).
        order_is_unique: as for :func:`paginate`.

    Example::

        page = await paginate_offset(session, select(User).order_by(User.name), page=2, with_total=True)
        print(f"page {page.page} of {page.pages}")
    """
    check_async(target, "paginate_offset")
    rows_stmt, count_stmt, number, size = _statements(
        stmt, page, page_size, with_total, order_is_unique
    )
    rows, _ = await fetch(target, rows_stmt)
    total = None
    if count_stmt is not None:
        total = int((await fetch(target, count_stmt))[0][0][0])
    return _page(rows, total, number, size, single_entity(rows_stmt, is_orm(target)))


def paginate_offset_sync(
    target: SyncTarget,
    stmt: Select[Any],
    *,
    page: int = 1,
    page_size: int = 20,
    with_total: bool = False,
    order_is_unique: bool = False,
) -> OffsetPage[Any]:
    """The sync twin of :func:`paginate_offset`.

    Example::

        page = paginate_offset_sync(session, select(User).order_by(User.name), page=2)
    """
    check_sync(target, "paginate_offset")
    rows_stmt, count_stmt, number, size = _statements(
        stmt, page, page_size, with_total, order_is_unique
    )
    rows, _ = fetch_sync(target, rows_stmt)
    total = None
    if count_stmt is not None:
        total = int(fetch_sync(target, count_stmt)[0][0][0])
    return _page(rows, total, number, size, single_entity(rows_stmt, is_orm(target)))
