"""``paginate`` and ``paginate_sync``: keyset pages with signed cursors, one SELECT per page.

Built on sqlakeyset where it fits: its typed value encoding (``cursor``) and
the bookkeeping of its ``Paging`` (which rows border a page and which
positions the next and previous cursors hold), re-done in ``_page`` to read
the keys of three rows instead of every row. Added here: NULL-safe keys and the tiebreaker (``ordering``),
the keyset condition built for the cursor's values, signed cursors, the
``Page`` shape and the sync/async twins. Reading a key's value from a row is
done here too (``_locate``): sqlakeyset's column wrappers render every ORDER
BY element to SQL text on each call and match selected columns by the first
word of that text, which pairs ``a + b`` (or ``x IS NULL``) with a selected
``a`` (``x``); rows are trimmed of the appended key columns by SQLAlchemy's
own ``Result.columns()`` (``target``), as sqlakeyset's trimmed rows lose
their mapping on SQLAlchemy 2.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import false
from sqlalchemy.engine import Row
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
    mapped: tuple[_KeyColumn, ...]
    extra: tuple[ColumnElement[Any], ...]
    place: tuple[Any, ...] | None
    backwards: bool
    entity: bool
    codec: CursorCodec
    page_size: int
    keep: int | None


class _KeyColumn:
    """Where one sort key's value is in a result row, and how the page's ORDER BY names it."""

    __slots__ = ("extra_column", "index", "name", "order")

    def __init__(
        self,
        order: ColumnElement[Any],
        *,
        index: int = -1,
        name: str = "",
        extra_column: ColumnElement[Any] | None = None,
    ) -> None:
        self.order = order
        self.index = index
        self.name = name
        self.extra_column = extra_column

    def get_from_row(self, row: Row[Any]) -> Any:
        if self.extra_column is not None:
            return row._mapping[self.name]
        if self.name:
            return getattr(row[self.index], self.name)
        return row[self.index]


def _same(element: Any, target: ColumnElement[Any]) -> bool:
    return isinstance(element, ColumnElement) and strip_expression(element).compare(target)


def _locate(key: SortKey, index: int, stmt: Select[Any], orm: bool) -> _KeyColumn:
    """Where a key's value is in a result row, or the labelled column to append for it.

    Matched by expression equality; sqlakeyset's own matching renders each
    ORDER BY element to SQL text on every call and compares first words,
    which pairs ``a + b`` (or ``x IS NULL``) with a selected ``a`` (``x``).
    """
    clause = key.clause
    if key.kind != "null_flag":
        name = getattr(key.target, "name", None)
        if orm:
            for position, description in enumerate(stmt.column_descriptions):
                entity = entity_of(description)
                if entity is None:
                    expr = description.get("expr")
                    unwrap = getattr(expr, "__clause_element__", None)
                    if _same(unwrap() if unwrap is not None else expr, key.target):
                        return _KeyColumn(clause, index=position)
                    continue
                for prop in entity.mapper.column_attrs:
                    if name is not None and all(c.name != name for c in prop.columns):
                        continue
                    attribute = getattr(description["expr"], prop.key, None)
                    element = getattr(attribute, "__clause_element__", lambda: None)()
                    if _same(element, key.target):
                        return _KeyColumn(clause, index=position, name=prop.key)
        else:
            for position, column in enumerate(stmt.selected_columns):
                if _same(column, key.target):
                    return _KeyColumn(clause, index=position)
    # A fixed label per position keeps the SQL text, hence SQLAlchemy's
    # compiled cache and pg_stat_statements, the same for every page.
    label = f"_sqlalchemy_resilience_k{index}"
    sort_value = key.target.is_(None) if key.kind == "null_flag" else key.target
    extra = sort_value.label(label)
    return _KeyColumn(extra if key.ascending else extra.desc(), name=label, extra_column=extra)


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
    paged = select.order_by(None).order_by(*(m.order for m in mapped))
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
    """The page from the rows fetched (one more than the page size, to see past its end).

    The bookkeeping of sqlakeyset's ``Paging``, reading the keys of the three
    rows that bound the page only (``Paging`` wants the keys of every row).
    """
    rows, out = fetched
    size = plan.page_size
    shown = list(out[:size])

    def key(index: int) -> tuple[Any, ...]:
        return tuple(m.get_from_row(rows[index]) for m in plan.mapped)

    # In fetch order: the cursor's place, the first and last rows shown, the row past them.
    bounds = [
        plan.place,
        key(0) if shown else None,
        key(len(shown) - 1) if shown else None,
        key(size) if len(rows) > size else None,
    ]
    if plan.backwards:
        shown.reverse()
        bounds.reverse()
    before, first, last, beyond = bounds
    has_next, has_previous = beyond is not None, before is not None
    next_place = last if last is not None else before
    previous_place = first if first is not None else beyond
    return Page(
        items=[row[0] for row in shown] if plan.entity else shown,
        next_cursor=plan.codec.encode(next_place, backwards=False) if has_next else None,
        previous_cursor=(
            plan.codec.encode(previous_place, backwards=True) if has_previous else None
        ),
        has_next=has_next,
        has_previous=has_previous,
        page_size=size,
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
