"""The ``demo`` tour: error translation, retries, observability and the pool, on a real database.

The tour plays the application: its modules count as application code for
call sites (slow-query records and leak reports point into them).
"""

from __future__ import annotations

from .run import default_sqlite_url as default_sqlite_url
from .run import run_demo as run_demo

__all__ = ["default_sqlite_url", "run_demo"]
