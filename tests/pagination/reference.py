"""The tests' reference orderings, run by the database itself to say what the pages must hold."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import UnaryExpression

_NULLS = {operators.nulls_first_op: True, operators.nulls_last_op: False}


def portable(order: Sequence[Any], dialect: str) -> list[Any]:
    """``order`` as the database can run it: on MySQL/MariaDB, which have no
    ``NULLS FIRST``/``LAST``, each such key becomes ``(x IS NULL)`` then ``x``.

    ``paginate`` does the same internally; the reference is written by hand in
    the test's terms so that it does not check the package against itself.
    """
    if dialect != "mysql":
        return list(order)
    result: list[Any] = []
    for key in order:
        first = (
            _NULLS.get(getattr(key, "modifier", None)) if isinstance(key, UnaryExpression) else None
        )
        if first is None:
            result.append(key)
            continue
        directed = key.element
        column = directed.element if isinstance(directed, UnaryExpression) else directed
        flag = column.is_(None)
        result += [flag.desc() if first else flag.asc(), directed]
    return result
