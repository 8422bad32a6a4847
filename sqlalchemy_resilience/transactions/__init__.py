"""Transactions: ``transaction()`` with scoped timeouts, ``on_commit``, and SQLite done right.

``context`` holds the context managers, ``options`` validates and applies a
transaction's options, ``scope`` the ``on_commit`` callbacks, ``sqlite`` the
SQLite connection settings and ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

from .context import SyncTransactionContext as SyncTransactionContext
from .context import TransactionContext as TransactionContext
from .context import transaction as transaction
from .context import transaction_sync as transaction_sync
from .scope import on_commit as on_commit
from .sqlite import SQLiteConfiguration as SQLiteConfiguration
from .sqlite import SQLiteSettings as SQLiteSettings
from .sqlite import configure_sqlite as configure_sqlite

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
