"""Pagination: keyset pages with signed cursors (``paginate``) and numbered pages (``paginate_offset``).

``keyset`` holds ``paginate``/``paginate_sync``, ``ordering`` turns a
statement's ORDER BY into NULL-safe, unique sort keys and the keyset
condition, ``cursor`` signs and verifies cursors, ``page`` defines ``Page``
and ``OffsetPage`` and their JSON form, ``offset`` holds the LIMIT/OFFSET
fallback, ``target`` runs the one SELECT on a session, connection or engine.
"""

from __future__ import annotations

from .cursor import SECRET_ENV as SECRET_ENV
from .keyset import MAX_PAGE_SIZE as MAX_PAGE_SIZE
from .keyset import paginate as paginate
from .keyset import paginate_sync as paginate_sync
from .offset import paginate_offset as paginate_offset
from .offset import paginate_offset_sync as paginate_offset_sync
from .page import OffsetPage as OffsetPage
from .page import Page as Page
from .page import jsonable as jsonable

__all__ = [
    "MAX_PAGE_SIZE",
    "SECRET_ENV",
    "OffsetPage",
    "Page",
    "jsonable",
    "paginate",
    "paginate_offset",
    "paginate_offset_sync",
    "paginate_sync",
]
