"""Transactions: ``transaction()`` with scoped timeouts, ``on_commit``, and SQLite done right.

``context`` holds the context managers, ``options`` validates and applies a
transaction's options, ``scope`` the ``on_commit`` callbacks, ``sqlite`` the
SQLite connection settings and ``BEGIN IMMEDIATE``.

Imported on first use: ``instrument(engine, sqlite=...)`` loads ``sqlite``
only, not the ORM-based context managers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .context import SyncTransactionContext as SyncTransactionContext
    from .context import TransactionContext as TransactionContext
    from .context import transaction as transaction
    from .context import transaction_sync as transaction_sync
    from .scope import on_commit as on_commit
    from .sqlite import SQLiteConfiguration as SQLiteConfiguration
    from .sqlite import SQLiteSettings as SQLiteSettings
    from .sqlite import configure_sqlite as configure_sqlite

_LAZY = {
    "SyncTransactionContext": ".context",
    "TransactionContext": ".context",
    "transaction": ".context",
    "transaction_sync": ".context",
    "on_commit": ".scope",
    "SQLiteConfiguration": ".sqlite",
    "SQLiteSettings": ".sqlite",
    "configure_sqlite": ".sqlite",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "SQLiteConfiguration",
    "SQLiteSettings",
    "SyncTransactionContext",
    "TransactionContext",
    "configure_sqlite",
    "on_commit",
    "transaction",
    "transaction_sync",
]
