"""What a page is: :class:`Page` (keyset) and :class:`OffsetPage`, and their JSON form.

Both are immutable records holding the rows as SQLAlchemy returned them
(``Row`` objects, or ORM instances when the statement selects one entity), so
application code works with them as usual. ``to_dict()`` gives the JSON form
-- rows as objects keyed by column name, ORM instances by their column
attributes, dates in ISO 8601, decimals and UUIDs as strings -- and pydantic
(hence FastAPI) serialises a ``Page`` returned from a handler through the
same function, so ``return page`` works as-is.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import enum
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from sqlalchemy import inspect
from sqlalchemy.engine import Row

__all__ = ["OffsetPage", "Page", "jsonable"]

T = TypeVar("T")


def jsonable(value: Any) -> Any:
    """``value`` in JSON types: rows and ORM instances as objects, dates as ISO 8601.

    Example::

        >>> jsonable({"at": datetime.date(2026, 12, 2), "amount": decimal.Decimal("1.50")})
        {'at': '2026-12-02', 'amount': '1.50'}
    """
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Row):
        return {str(k): jsonable(v) for k, v in value._mapping.items()}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    state = inspect(value, raiseerr=False)
    mapper = getattr(state, "mapper", None)
    if mapper is not None and not isinstance(value, type):
        return {attr.key: jsonable(getattr(value, attr.key)) for attr in mapper.column_attrs}
    raise TypeError(f"cannot put a {type(value).__name__} into JSON; convert the items first")


class _Record:
    """Immutable attributes named by ``_fields``, compared and shown like a dataclass.

    Not a dataclass on purpose: pydantic builds its own schema for a
    parametrised generic dataclass (``Page[Item]``), ignoring the hook below.
    """

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def __init__(self, **values: Any) -> None:
        missing = [name for name in self._fields if name not in values]
        unknown = [name for name in values if name not in self._fields]
        if missing or unknown:
            raise TypeError(
                f"{type(self).__name__} needs {list(self._fields)}, got {sorted(values)}"
            )
        for name in self._fields:
            object.__setattr__(self, name, values[name])

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self._fields)

    __hash__ = None  # type: ignore[assignment]  # the items are a list

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._fields)
        return f"{type(self).__name__}({shown})"

    def to_dict(self) -> dict[str, Any]:
        """The page in JSON types (see :func:`jsonable`).

        Example::

            return JSONResponse(page.to_dict())
        """
        return {name: jsonable(getattr(self, name)) for name in self._fields}

    def to_json(self) -> str:
        """``json.dumps(self.to_dict())``."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Callable[[Any], Any]) -> Any:
        # pydantic (and FastAPI) serialise a returned page through to_dict();
        # imported here so that pydantic stays optional.
        from pydantic_core import core_schema  # type: ignore[import-not-found, unused-ignore]

        return core_schema.is_instance_schema(
            cls,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda page: page.to_dict(), when_used="always"
            ),
        )


class Page(_Record, Generic[T]):
    """One keyset page: the rows and the cursors to the pages on either side.

    Attributes:
        items: the rows, in the statement's order (ORM instances when the
            statement selects a single entity).
        next_cursor: pass as ``after=`` for the next page; None on the last page.
        previous_cursor: pass as ``before=`` for the previous page; None on the first.
        has_next, has_previous: whether those pages exist (as of this query).
        page_size: the page size asked for.

    Example::

        page = await paginate(session, select(User).order_by(User.created_at), page_size=50, secret=KEY)
        for user in page:
            ...
        json_body = page.to_dict()   # {"items": [...], "next_cursor": "...", ...}
    """

    __slots__ = ("has_next", "has_previous", "items", "next_cursor", "page_size", "previous_cursor")
    _fields = ("items", "next_cursor", "previous_cursor", "has_next", "has_previous", "page_size")

    items: list[T]
    next_cursor: str | None
    previous_cursor: str | None
    has_next: bool
    has_previous: bool
    page_size: int

    def __init__(
        self,
        *,
        items: list[T],
        next_cursor: str | None,
        previous_cursor: str | None,
        has_next: bool,
        has_previous: bool,
        page_size: int,
    ) -> None:
        super().__init__(
            items=items,
            next_cursor=next_cursor,
            previous_cursor=previous_cursor,
            has_next=has_next,
            has_previous=has_previous,
            page_size=page_size,
        )

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class OffsetPage(_Record, Generic[T]):
    """One page by number (LIMIT/OFFSET): the fallback when clients need "page 7 of 40".

    Attributes:
        items: the rows.
        page: the page number, from 1.
        page_size: the page size.
        total: the number of rows of the whole query, when ``with_total=True``.
        has_next, has_previous: whether those pages exist.

    Example::

        page = await paginate_offset(session, stmt, page=3, page_size=20, with_total=True)
        print(page.total, page.pages)
    """

    __slots__ = ("has_next", "has_previous", "items", "page", "page_size", "total")
    _fields = ("items", "page", "page_size", "total", "has_next", "has_previous")

    items: list[T]
    page: int
    page_size: int
    total: int | None
    has_next: bool
    has_previous: bool

    def __init__(
        self,
        *,
        items: list[T],
        page: int,
        page_size: int,
        total: int | None,
        has_next: bool,
        has_previous: bool,
    ) -> None:
        super().__init__(
            items=items,
            page=page,
            page_size=page_size,
            total=total,
            has_next=has_next,
            has_previous=has_previous,
        )

    @property
    def pages(self) -> int | None:
        """The number of pages, when the total is known (at least 1)."""
        if self.total is None:
            return None
        return max(1, -(-self.total // self.page_size))

    def to_dict(self) -> dict[str, Any]:
        """The page in JSON types, with ``pages`` added."""
        return {**super().to_dict(), "pages": self.pages}

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)
