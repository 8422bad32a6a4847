"""``paginate`` and ``paginate_sync``: keyset pages with signed cursors, one SELECT per page.

Built on sqlakeyset where it fits: its ordering-column wrappers (how a key's
value is read from a row, or appended to the SELECT when the row lacks it),
its row trimming, its ``Paging`` bookkeeping (which rows border the page) and
its typed bookmark encoding. Added here: NULL-safe keys and the tiebreaker
(``ordering``), the keyset condition built for the cursor's values, signed
cursors (``cursor``), the ``Page`` shape and the sync/async twins.
Matching a key to a selected column is done here by expression equality:
sqlakeyset compares the first word of the rendered SQL, which pairs
``a + b`` (or ``x IS NULL``) with a selected ``a`` (or ``x``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from sqlakeyset.columns import (
    OC,
    AppendedColumn,
    AttributeColumn,
    DirectColumn,
    MappedOrderColumn,
)
from sqlakeyset.constants import ORDER_COL_PREFIX
from sqlakeyset.results import Paging
from sqlalchemy import false
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import Select

from sqlalchemy_resilience.errors import InvalidCursor

from .cursor import CursorCodec, Secret, resolve_secret
from .ordering import SortKey, check_place, keyset_condition, ordering_of, strip_expression
from .page import Page
from .target import (
    AsyncTarget,
    Fetched,
    SyncTarget,
    check_async,
    check_sync,
    dialect_of,
    entity_of,
    fetch,
    fetch_sync,
    is_orm,
    single_entity,
)

__all__ = ["MAX_PAGE_SIZE", "paginate", "paginate_sync"]

T = TypeVar("T")

#: The largest ``page_size`` accepted.
MAX_PAGE_SIZE = 100_000


def check_page_size(page_size: object) -> int:
    """``page_size`` if it is an int in 1..MAX_PAGE_SIZE, else a ValueError/TypeError naming it."""
    if isinstance(page_size, bool) or not isinstance(page_size, int):
        raise TypeError(f"page_size must be an int, got {type(page_size).__name__}")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")
    return page_size


def check_select(stmt: object, name: str) -> Select[Any]:
    """``stmt`` if it is a SELECT without LIMIT/OFFSET of its own."""
    if not isinstance(stmt, Select):
        raise TypeError(f"{name} takes a select() statement, got {type(stmt).__name__}")
    if stmt._limit_clause is not None or stmt._offset_clause is not None:
        raise ValueError(
            f"{name} sets LIMIT and OFFSET itself: remove .limit()/.offset() from the statement"
        )
    return stmt


@dataclass(frozen=True)
class _Plan:
    select: Select[Any]
    mapped: tuple[MappedOrderColumn, ...]
    extra: tuple[ColumnElement[Any], ...]
    place: tuple[Any, ...] | None
    backwards: bool
    entity: bool
    codec: CursorCodec
    page_size: int
    keep: int | None


def _locate(key: SortKey, index: int, stmt: Select[Any], orm: bool) -> MappedOrderColumn:
    """Where a key's value is in a result row, or the column to append for it."""
    oc = OC(key.clause(), enable_warnings=False)  # type: ignore[no-untyped-call]
    if key.kind != "null_flag":
        if orm:
            for position, description in enumerate(stmt.column_descriptions):
                entity = entity_of(description)
                if entity is not None:
                    for prop in entity.mapper.column_attrs:
                        attribute = getattr(description["expr"], prop.key, None)
                        clause = getattr(attribute, "__clause_element__", None)
                        if clause is not None and strip_expression(clause()).compare(key.target):
                            return AttributeColumn(oc, position, prop.key)  # type: ignore[no-untyped-call]
                    continue
                expr = description.get("expr")
                clause = getattr(expr, "__clause_element__", None)
                element = clause() if clause is not None else expr
                if isinstance(element, ColumnElement) and strip_expression(element).compare(
                    key.target
                ):
                    return DirectColumn(oc, position)  # type: ignore[no-untyped-call]
        else:
            for position, column in enumerate(stmt.selected_columns):
                if strip_expression(column).compare(key.target):
                    return DirectColumn(oc, position)  # type: ignore[no-untyped-call]
    # A fixed label per position keeps the SQL text, hence SQLAlchemy's
    # compiled cache and pg_stat_statements, the same for every page.
    return AppendedColumn(oc, name=f"{ORDER_COL_PREFIX}{index}")  # type: ignore[no-untyped-call]


def _plan(
    target: SyncTarget | AsyncTarget,
    stmt: object,
    *,
    page_size: object,
    after: object,
    before: object,
    cursor: object,
    secret: Secret | None,
    order_is_unique: bool,
) -> _Plan:
    select = check_select(stmt, "paginate")
    size = check_page_size(page_size)
    given = [
        (name, value)
        for name, value in (("after", after), ("before", before), ("cursor", cursor))
        if value not in (None, "")
    ]
    if len(given) > 1:
        raise ValueError(
            f"pass at most one of after=, before= and cursor=, got {', '.join(n for n, _ in given)}"
        )
    keys = resolve_secret(secret)
    ordering = ordering_of(select, dialect_of(target, select), order_is_unique=order_is_unique)
    codec = CursorCodec(keys, ordering.fingerprint)
    place: tuple[Any, ...] | None = None
    backwards = False
    if given:
        name, value = given[0]
        place, backwards = codec.decode(value, backwards={"after": False, "before": True}.get(name))
        if place is not None:
            problem = check_place(ordering.keys, place)
            if problem is not None:
                raise InvalidCursor("values", problem)
    orm = is_orm(target)
    directed = ordering.directed(backwards)
    mapped = tuple(_locate(key, index, select, orm) for index, key in enumerate(directed))
    extra = tuple(m.extra_column for m in mapped if m.extra_column is not None)
    paged = select.order_by(None).order_by(*(m.ob_clause for m in mapped))
    if extra:
        paged = paged.add_columns(*extra)
    if place is not None:
        condition = keyset_condition(directed, place)
        if condition is not True:
            clause = false() if condition is False else condition
            paged = paged.having(clause) if select._group_by_clauses else paged.where(clause)
    return _Plan(
        select=paged.limit(size + 1),
        mapped=mapped,
        extra=extra,
        place=place,
        backwards=backwards,
        entity=single_entity(select, orm),
        codec=codec,
        page_size=size,
        keep=(len(select.column_descriptions) if orm else len(select.selected_columns))
        if extra
        else None,
    )


def _page(plan: _Plan, fetched: Fetched) -> Page[Any]:
    rows, out = fetched
    places = [tuple(m.get_from_row(row) for m in plan.mapped) for row in rows]  # type: ignore[no-untyped-call]
    paging: Paging[Any] = Paging(
        list(out), plan.page_size, plan.backwards, plan.place, places=places
    )
    items = [row[0] for row in paging.rows] if plan.entity else list(paging.rows)
    has_next, has_previous = paging.has_next, paging.has_previous
    return Page(
        items=items,
        next_cursor=plan.codec.encode(paging.next.place, backwards=False) if has_next else None,
        previous_cursor=(
            plan.codec.encode(paging.previous.place, backwards=True) if has_previous else None
        ),
        has_next=has_next,
        has_previous=has_previous,
        page_size=plan.page_size,
    )


async def paginate(
    target: AsyncTarget,
    stmt: Select[Any],
    *,
    page_size: int = 20,
    after: str | None = None,
    before: str | None = None,
    cursor: str | None = None,
    secret: Secret | None = None,
    order_is_unique: bool = False,
) -> Page[Any]:
    """One keyset page of ``stmt``: rows after (or before) a cursor, in one SELECT.

    The statement's ORDER BY decides the order (any number of columns, mixed
    directions, NULLs where the statement or the database puts them); the
    primary key is appended when the ORDER BY alone could tie. Pages stay
    stable when rows are inserted or deleted between requests: no row is
    shown twice or skipped because another one moved.

    Args:
        target: an ``AsyncSession`` (ORM entities come back as entities), an
            ``AsyncConnection`` or an ``AsyncEngine``.
        stmt: a ``select()`` without LIMIT/OFFSET.
        page_size: rows per page, 1 to 100,000.
        after: a page's ``next_cursor``: the page after it.
        before: a page's ``previous_cursor``: the page before it.
        cursor: either kind, for APIs with a single ``cursor`` parameter.
        secret: the key cursors are signed with (str or bytes, at least 16
            bytes), or a list of keys, newest first, to rotate; default the
            ``SQLALCHEMY_RESILIENCE_CURSOR_SECRET`` environment variable.
        order_is_unique: skip the tiebreaker when you know the ORDER BY is
            unique although no unique key of each table is in it.

    Raises:
        InvalidCursor: (a ValueError) a cursor this application did not issue
            for this ordering, before any SQL runs.

    Example::

        stmt = select(Order).where(Order.customer_id == cid).order_by(Order.created_at.desc())
        page = await paginate(session, stmt, page_size=50, after=request_cursor, secret=KEY)
        return {"items": [o.to_json() for o in page], "next": page.next_cursor}
    """
    check_async(target, "paginate")
    plan = _plan(
        target,
        stmt,
        page_size=page_size,
        after=after,
        before=before,
        cursor=cursor,
        secret=secret,
        order_is_unique=order_is_unique,
    )
    return _page(plan, await fetch(target, plan.select, plan.keep))


def paginate_sync(
    target: SyncTarget,
    stmt: Select[Any],
    *,
    page_size: int = 20,
    after: str | None = None,
    before: str | None = None,
    cursor: str | None = None,
    secret: Secret | None = None,
    order_is_unique: bool = False,
) -> Page[Any]:
    """The sync twin of :func:`paginate`, for a ``Session``, ``Connection`` or ``Engine``.

    Example::

        with Session(engine) as session:
            page = paginate_sync(session, select(User).order_by(User.name), page_size=20, secret=KEY)
            more = paginate_sync(session, select(User).order_by(User.name), after=page.next_cursor, secret=KEY)
    """
    check_sync(target, "paginate")
    plan = _plan(
        target,
        stmt,
        page_size=page_size,
        after=after,
        before=before,
        cursor=cursor,
        secret=secret,
        order_is_unique=order_is_unique,
    )
    return _page(plan, fetch_sync(target, plan.select, plan.keep))
