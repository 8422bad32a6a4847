"""A statement's ORDER BY as keyset sort keys: directions, NULLs, and a unique tiebreaker.

Keyset pagination asks "which rows come after this one?", which has an answer
only when the ordering is total. So the ORDER BY is normalised before paging:

* every key gets an explicit direction (ASC when none is given);
* a column that may hold NULL (declared nullable, an expression, or on the
  optional side of an outer join) becomes two keys: ``(x IS NULL)`` then ``x``.
  The flag puts the NULLs where the statement asked (``NULLS FIRST``/``LAST``,
  else where the dialect puts them: last for ascending on PostgreSQL, first on
  SQLite), identically on every database, and turns "NULL compared with a
  value" -- which SQL answers with NULL, silently dropping rows -- into
  comparisons that are always true or false. sqlakeyset refuses NULLs
  (it warns that results will be wrong), which is why this module exists;
* when the keys do not include a unique key of every table the rows come
  from, those tables' primary-key columns are appended, so no two rows tie.

The keyset condition is then built for the cursor's values, which are known in
Python, so each comparison with NULL is decided here rather than by SQL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Boolean, Column, Table, UniqueConstraint, and_, false, or_, true, tuple_
from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import (
    Cast,
    ColumnElement,
    Grouping,
    Label,
    TextClause,
    TypeCoerce,
    UnaryExpression,
    _label_reference,
    _textual_label_reference,
)
from sqlalchemy.sql.selectable import Alias, FromClause, Join, Select
from sqlalchemy.sql.util import find_tables

__all__ = [
    "KeyKind",
    "Ordering",
    "SortKey",
    "check_place",
    "keyset_condition",
    "ordering_of",
    "strip_expression",
    "total_order",
]

KeyKind = Literal["value", "bool", "null_flag", "nullable_value"]

_ASC = operators.asc_op
_DESC = operators.desc_op
_NULLS_FIRST = operators.nulls_first_op
_NULLS_LAST = operators.nulls_last_op
_DIRECTIONS = (_ASC, _DESC, _NULLS_FIRST, _NULLS_LAST)
# Databases on which NULL sorts as larger than every value by default.
_NULLS_LARGE = frozenset({"postgresql", "oracle"})

Clause = ColumnElement[Any] | bool


@dataclass(frozen=True)
class SortKey:
    """One key of the normalised ordering.

    Attributes:
        sort: what ORDER BY sorts on (labels kept).
        target: the same without labels, for WHERE/HAVING; for a ``null_flag``
            key, the nullable expression whose NULL-ness is the flag.
        ascending: the direction when paging forwards.
        kind: ``value`` (never NULL), ``bool`` (a NOT NULL boolean: SQL has no
            ``<`` on booleans), ``null_flag`` (``target IS NULL``), or
            ``nullable_value`` (the value after its flag; NULL when the flag is set).
    """

    sort: ColumnElement[Any]
    target: ColumnElement[Any]
    ascending: bool
    kind: KeyKind
    #: The ORDER BY element for this key (derived).
    clause: ColumnElement[Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        expr = self.target.is_(None) if self.kind == "null_flag" else self.sort
        object.__setattr__(self, "clause", expr.asc() if self.ascending else expr.desc())

    def reversed(self) -> SortKey:
        """The key for paging backwards."""
        return SortKey(self.sort, self.target, not self.ascending, self.kind)

    def describe(self) -> str:
        """A stable text for the cursor's ordering fingerprint."""
        return f"{self.kind}{'+' if self.ascending else '-'}{self.clause.element}"


@dataclass(frozen=True)
class Ordering:
    """The normalised ordering of one statement.

    Attributes:
        keys: the sort keys, in order, forwards.
        fingerprint: 8 bytes identifying the ordering's shape (expressions,
            directions, NULL handling); a cursor carries it.
    """

    keys: tuple[SortKey, ...]
    fingerprint: bytes

    def directed(self, backwards: bool) -> tuple[SortKey, ...]:
        """The keys for paging in the given direction."""
        return tuple(k.reversed() for k in self.keys) if backwards else self.keys


def strip_expression(expr: ColumnElement[Any]) -> ColumnElement[Any]:
    """The expression under labels, groupings, casts and type coercions."""
    while isinstance(expr, Label | Grouping | Cast | TypeCoerce):
        expr = expr.element  # type: ignore[assignment]
    return expr


def _split_direction(
    element: ColumnElement[Any],
) -> tuple[ColumnElement[Any], bool, bool | None]:
    """``(expression, ascending, nulls_last or None when not given)``."""
    ascending = True
    nulls_last: bool | None = None
    while True:
        if isinstance(element, _label_reference):
            # order_by(a_label) / order_by(a_label.desc()): the label's name is rendered.
            element = element.element
            continue
        if not (isinstance(element, UnaryExpression) and element.modifier in _DIRECTIONS):
            break
        if element.modifier is _DESC:
            ascending = False
        elif element.modifier is _NULLS_FIRST:
            nulls_last = False
        elif element.modifier is _NULLS_LAST:
            nulls_last = True
        element = element.element
    if isinstance(element, TextClause | _textual_label_reference):
        raise ValueError(
            "paginate needs ORDER BY columns or expressions, not SQL text or a label "
            "name given as a string: write order_by(Model.column) or order_by(table.c.column)"
        )
    return element, ascending, nulls_last


def _sources(froms: Sequence[FromClause]) -> list[tuple[FromClause, bool]]:
    """Every table-like FROM item and whether it is on the optional side of an outer join."""
    found: list[tuple[FromClause, bool]] = []

    def walk(item: FromClause, optional: bool) -> None:
        if isinstance(item, Join):
            walk(item.left, optional or item.full)
            walk(item.right, optional or item.isouter or item.full)
        else:
            found.append((item, optional))

    for item in froms:
        walk(item, False)
    return found


def _final_froms(stmt: Select[Any]) -> Sequence[FromClause]:
    """``stmt.get_final_froms()``, without compiling the statement when that is not needed.

    ``get_final_froms()`` renders the whole statement to SQL text (a tenth of
    a millisecond, on every page). For the common statement -- tables or
    aliases of tables named by the columns, no joins, no explicit FROM, a
    WHERE that mentions no other table -- the FROM list is the columns'
    tables; anything else takes SQLAlchemy's own computation.
    """
    froms = stmt.columns_clause_froms
    if (
        stmt._setup_joins
        or stmt._from_obj
        or not froms
        or any(_table_of(item) is None for item in froms)
    ):
        return stmt.get_final_froms()
    where = stmt.whereclause
    if where is not None:
        known = {id(_plain(item)) for item in froms}
        mentioned = find_tables(where, check_columns=True, include_aliases=True)
        if any(id(_plain(item)) not in known for item in mentioned):
            return stmt.get_final_froms()
    return froms


def _may_be_null(expr: ColumnElement[Any], optional: Sequence[FromClause]) -> bool:
    expr = strip_expression(expr)
    if not isinstance(expr, Column):
        # A function, CASE, arithmetic...: NULL unless proven otherwise.
        return True
    table = _plain(expr.table)
    if any(table is _plain(item) for item in optional):
        return True
    return bool(expr.nullable)


def _plain(item: Any) -> Any:
    """The element without ORM annotations (an annotated table is a copy)."""
    deannotate = getattr(item, "_deannotate", None)
    return deannotate() if deannotate is not None else item


def _table_of(item: FromClause) -> Table | None:
    if isinstance(item, Table):
        return item
    if isinstance(item, Alias) and isinstance(item.element, Table):
        return item.element
    return None


def _unique_keys(item: FromClause) -> list[list[ColumnElement[Any]]] | None:
    """The NOT NULL unique keys of a table (or an alias of one); None when unknown."""
    table = _table_of(item)
    if table is None:
        return None
    keys: list[list[Column[Any]]] = []
    if table.primary_key.columns:
        keys.append(list(table.primary_key.columns))
    for constraint in table.constraints:
        if isinstance(constraint, UniqueConstraint) and constraint.columns:
            keys.append(list(constraint.columns))
    for index in table.indexes:
        # A functional unique index says nothing about the plain columns.
        if index.unique and index.columns and len(index.expressions) == len(index.columns):
            keys.append(list(index.columns))
    keys.extend([c] for c in table.columns if c.unique)
    usable = [key for key in keys if all(not c.nullable for c in key)]
    if item is table:
        return list(usable)  # type: ignore[arg-type]
    return [[item.c[c.key] for c in key] for key in usable]


def _covers(columns: Sequence[ColumnElement[Any]], key: Sequence[ColumnElement[Any]]) -> bool:
    plain = {id(_plain(c)) for c in columns}
    return all(id(_plain(k)) in plain or any(c.compare(k) for c in columns) for k in key)


def _describe_from(item: FromClause) -> str:
    return str(getattr(item, "description", None) or type(item).__name__)


def _tiebreaker(
    stmt: Select[Any],
    targets: list[ColumnElement[Any]],
    order_is_unique: bool,
    sources: list[tuple[FromClause, bool]],
) -> list[ColumnElement[Any]]:
    """Primary-key columns to append so that the ordering is total (possibly none)."""
    if order_is_unique:
        return []
    group_by = list(stmt._group_by_clauses)
    if group_by:
        if all(any(t.compare(strip_expression(g)) for t in targets) for g in group_by):
            return []
        raise ValueError(
            "paginate needs a unique ordering: this statement has GROUP BY, so add every "
            "GROUP BY expression to ORDER BY (or pass order_is_unique=True if the ORDER BY "
            "is unique already)"
        )
    missing: list[ColumnElement[Any]] = []
    for item, _optional in sources:
        keys = _unique_keys(item)
        if keys is not None and any(_covers(targets, key) for key in keys):
            continue
        table = _table_of(item)
        if keys is None or table is None or not table.primary_key.columns:
            raise ValueError(
                f"paginate needs a unique ordering: ORDER BY does not include a unique key of "
                f"{_describe_from(item)!r}, which has no primary key to add as a tiebreaker; "
                "add unique columns to ORDER BY, or pass order_is_unique=True if the ORDER BY "
                "is unique already"
            )
        pk = list(table.primary_key.columns)
        missing.extend(pk if item is table else [item.c[c.key] for c in pk])
    if missing and getattr(stmt, "_distinct", False):
        raise ValueError(
            "paginate needs a unique ordering: this SELECT DISTINCT's ORDER BY does not "
            "include a unique key, and adding one would change which rows are distinct; "
            "add unique columns to ORDER BY, or pass order_is_unique=True"
        )
    return missing


def total_order(stmt: Select[Any], *, order_is_unique: bool = False) -> Select[Any]:
    """``stmt`` with the tiebreaker columns appended to its ORDER BY (for offset pages)."""
    targets = [strip_expression(_split_direction(e)[0]) for e in stmt._order_by_clauses]
    extra = _tiebreaker(stmt, targets, order_is_unique, _sources(_final_froms(stmt)))
    return stmt.order_by(*extra) if extra else stmt


def ordering_of(stmt: Select[Any], dialect: Dialect, *, order_is_unique: bool = False) -> Ordering:
    """Normalise ``stmt``'s ORDER BY (see the module docstring); ValueError if it cannot be paged."""
    # Parsed first: a string in ORDER BY must be refused before anything
    # (get_final_froms() included) tries to resolve it.
    parsed = [_split_direction(element) for element in stmt._order_by_clauses]
    sources = _sources(_final_froms(stmt))
    optional = [item for item, is_optional in sources if is_optional]
    nulls_large = dialect.name in _NULLS_LARGE
    keys: list[SortKey] = []
    targets: list[ColumnElement[Any]] = []

    def add(sort: ColumnElement[Any], ascending: bool, nulls_last: bool | None) -> None:
        target = strip_expression(sort)
        targets.append(target)
        if _may_be_null(target, optional):
            if nulls_last is None:
                nulls_last = ascending if nulls_large else not ascending
            keys.append(SortKey(sort, target, nulls_last, "null_flag"))
            keys.append(SortKey(sort, target, ascending, "nullable_value"))
        elif isinstance(target.type, Boolean):
            keys.append(SortKey(sort, target, ascending, "bool"))
        else:
            keys.append(SortKey(sort, target, ascending, "value"))

    for sort, ascending, nulls_last in parsed:
        add(sort, ascending, nulls_last)
    for column in _tiebreaker(stmt, targets, order_is_unique, sources):
        add(column, True, None)
    if not keys:
        raise ValueError("paginate needs an ORDER BY (or a table with a primary key to order by)")
    digest = hashlib.sha256("\x1f".join(k.describe() for k in keys).encode()).digest()
    return Ordering(tuple(keys), digest[:8])


# --- the keyset condition ------------------------------------------------------------


def _and(a: Clause, b: Clause) -> Clause:
    if a is True:
        return b
    if b is True:
        return a
    if a is False or b is False:
        return False
    return and_(a, b)


def _or(a: Clause, b: Clause) -> Clause:
    if a is False:
        return b
    if b is False:
        return a
    if a is True or b is True:
        return True
    return or_(a, b)


def _bool_set(target: ColumnElement[Any], values: set[bool], *, flag: bool) -> Clause:
    """A condition true exactly for rows whose (flag or boolean) value is in ``values``."""
    if not values:
        return False
    if len(values) == 2:
        return True
    (value,) = values
    if flag:
        return target.is_(None) if value else target.is_not(None)
    return target.is_(true()) if value else target.is_(false())


def _bounds(key: SortKey, value: Any) -> tuple[Clause, Clause]:
    """``(strictly after value, at or after value)`` for one key in its direction."""
    if key.kind in ("bool", "null_flag"):
        later = {True} if (key.ascending and value is False) else set()
        if not key.ascending and value is True:
            later = {False}
        flag = key.kind == "null_flag"
        return _bool_set(key.target, later, flag=flag), _bool_set(
            key.target, later | {value}, flag=flag
        )
    if value is None:
        # Only rows whose flag equals the cursor's (all NULL here) reach this key.
        return False, True
    if key.ascending:
        return key.target > value, key.target >= value
    return key.target < value, key.target <= value


def check_place(keys: Sequence[SortKey], place: Sequence[Any]) -> str | None:
    """Why ``place`` cannot be a position in this ordering, or None when it can."""
    if len(place) != len(keys):
        return f"it holds {len(place)} values for an ordering of {len(keys)} keys"
    for index, (key, value) in enumerate(zip(keys, place, strict=True)):
        if key.kind in ("bool", "null_flag"):
            if not isinstance(value, bool):
                return f"key {index} must be a boolean"
        elif key.kind == "nullable_value":
            if (value is None) != (place[index - 1] is True):
                return f"key {index} does not agree with its NULL flag"
        elif value is None:
            return f"key {index} must not be NULL"
        if value is not None and key.kind in ("value", "nullable_value"):
            expected = _python_type(key.target)
            if expected is not None and not _fits(value, expected):
                return f"key {index} holds a {type(value).__name__}, not a {expected.__name__}"
    return None


def _python_type(expr: ColumnElement[Any]) -> type | None:
    try:
        found: object = expr.type.python_type
    except NotImplementedError:
        return None
    return found if isinstance(found, type) else None


def _fits(value: Any, expected: type) -> bool:
    if isinstance(value, bool) and expected is not bool:
        return False
    if expected is float:
        return isinstance(value, int | float)
    return isinstance(value, expected)


def keyset_condition(keys: Sequence[SortKey], place: Sequence[Any]) -> Clause:
    """The condition for rows strictly after ``place`` in the order of ``keys``.

    Built as ``k1 >= v1 AND (k1 > v1 OR (k2 >= v2 AND (k2 > v2 OR ...)))``: a
    conjunction at the top, whose first term an index on the leading key
    serves as a range bound.
    When every key is a NOT NULL value sorted the same way, it is one row-value
    comparison instead, ``(k1, k2) > (v1, v2)``, which PostgreSQL and SQLite
    (3.15+) serve from an index on ``(k1, k2)`` as well.
    """
    first = keys[0]
    if all(k.kind == "value" and k.ascending is first.ascending for k in keys):
        # Compared with a plain tuple, each value is bound with its column's
        # type (a TypeDecorator's bind processing included).
        left: ColumnElement[Any] = (
            first.target if len(keys) == 1 else tuple_(*(k.target for k in keys))
        )
        right: Any = place[0] if len(keys) == 1 else tuple(place)
        compared: ColumnElement[bool] = left > right if first.ascending else left < right
        return compared
    bounds = [_bounds(key, value) for key, value in zip(keys, place, strict=True)]
    condition = bounds[-1][0]
    for after, at_or_after in reversed(bounds[:-1]):
        condition = _and(at_or_after, _or(after, condition))
    return condition
