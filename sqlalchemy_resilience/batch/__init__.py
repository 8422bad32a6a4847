"""Batch writes: ``bulk_insert`` and ``bulk_update`` in chunked, retried, resumable transactions.

``writes`` holds the public functions, ``driver`` runs one retried
transaction per chunk, ``statements`` builds what a chunk writes (and the COPY
paths), ``tables`` resolves tables, columns and rows through SQLAlchemy,
``jobs`` records a resumable job's progress.
"""

from __future__ import annotations

from sqlalchemy_resilience.errors.operations import BatchChunkFailed as BatchChunkFailed
from sqlalchemy_resilience.errors.operations import JobConflict as JobConflict
from sqlalchemy_resilience.errors.operations import JobInputMismatch as JobInputMismatch

from .writes import BulkResult as BulkResult
from .writes import bulk_insert as bulk_insert
from .writes import bulk_insert_sync as bulk_insert_sync
from .writes import bulk_update as bulk_update
from .writes import bulk_update_sync as bulk_update_sync

__all__ = [
    "BatchChunkFailed",
    "BulkResult",
    "JobConflict",
    "JobInputMismatch",
    "bulk_insert",
    "bulk_insert_sync",
    "bulk_update",
    "bulk_update_sync",
]
