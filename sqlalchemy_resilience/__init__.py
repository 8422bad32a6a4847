"""sqlalchemy-resilience: make an existing SQLAlchemy 2.x application resilient and observable.

Example::

    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy_resilience import UniqueViolation, instrument

    engine = create_async_engine("postgresql+asyncpg://app@db/app")
    instrument(engine)  # driver errors now arrive as typed, user-safe exceptions
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import AlreadyApplied as AlreadyApplied
from .errors import AuthenticationFailed as AuthenticationFailed
from .errors import BatchChunkFailed as BatchChunkFailed
from .errors import CheckViolation as CheckViolation
from .errors import CircuitOpenError as CircuitOpenError
from .errors import CommitOutcomeUnknown as CommitOutcomeUnknown
from .errors import ConnectionLost as ConnectionLost
from .errors import ConstraintViolation as ConstraintViolation
from .errors import DatabaseFailure as DatabaseFailure
from .errors import DatabaseNotFound as DatabaseNotFound
from .errors import DatabaseUnavailable as DatabaseUnavailable
from .errors import DeadlockDetected as DeadlockDetected
from .errors import DurableTransactionError as DurableTransactionError
from .errors import ExclusionViolation as ExclusionViolation
from .errors import ForeignKeyViolation as ForeignKeyViolation
from .errors import InsufficientResources as InsufficientResources
from .errors import InvalidCursor as InvalidCursor
from .errors import InvalidData as InvalidData
from .errors import InvalidStatement as InvalidStatement
from .errors import JobConflict as JobConflict
from .errors import JobInputMismatch as JobInputMismatch
from .errors import LockNotAvailable as LockNotAvailable
from .errors import MigrationLockTimeout as MigrationLockTimeout
from .errors import MigrationThroughPooler as MigrationThroughPooler
from .errors import NotAtomic as NotAtomic
from .errors import NotNullViolation as NotNullViolation
from .errors import NotSupported as NotSupported
from .errors import PermissionDenied as PermissionDenied
from .errors import PoolerIncompatible as PoolerIncompatible
from .errors import PoolExhausted as PoolExhausted
from .errors import QueryTimeout as QueryTimeout
from .errors import ReadOnlyServer as ReadOnlyServer
from .errors import ReadOnlyTransaction as ReadOnlyTransaction
from .errors import ResilienceError as ResilienceError
from .errors import RetryExhausted as RetryExhausted
from .errors import SagaCompensated as SagaCompensated
from .errors import SagaCompensationFailed as SagaCompensationFailed
from .errors import SagaInProgress as SagaInProgress
from .errors import SagaLeaseLost as SagaLeaseLost
from .errors import SerializationFailure as SerializationFailure
from .errors import SnapshotTooOld as SnapshotTooOld
from .errors import StorageFailure as StorageFailure
from .errors import TooManyConnections as TooManyConnections
from .errors import TransactionConflict as TransactionConflict
from .errors import UniqueViolation as UniqueViolation
from .errors import WriteSetTooLarge as WriteSetTooLarge

if TYPE_CHECKING:
    from .batch import bulk_insert as bulk_insert
    from .batch import bulk_insert_sync as bulk_insert_sync
    from .database import Database as Database
    from .database import SyncDatabase as SyncDatabase
    from .instrumentation import instrument as instrument
    from .pagination import paginate as paginate
    from .pagination import paginate_sync as paginate_sync
    from .pool import health_check as health_check
    from .pool import health_check_sync as health_check_sync
    from .retry import CircuitBreaker as CircuitBreaker
    from .retry import RetryPolicy as RetryPolicy
    from .retry import run_transaction as run_transaction
    from .retry import run_transaction_sync as run_transaction_sync
    from .saga import Saga as Saga
    from .transactions import on_commit as on_commit
    from .transactions import transaction as transaction
    from .transactions import transaction_sync as transaction_sync

# The verbs are imported when first used: ``import sqlalchemy_resilience``
# (for the error tree, say) loads neither the ORM nor asyncio nor tenacity.
_LAZY = {
    "bulk_insert": ".batch",
    "bulk_insert_sync": ".batch",
    "Database": ".database",
    "SyncDatabase": ".database",
    "instrument": ".instrumentation",
    "paginate": ".pagination",
    "paginate_sync": ".pagination",
    "health_check": ".pool",
    "health_check_sync": ".pool",
    "CircuitBreaker": ".retry",
    "RetryPolicy": ".retry",
    "run_transaction": ".retry",
    "run_transaction_sync": ".retry",
    "Saga": ".saga",
    "on_commit": ".transactions",
    "transaction": ".transactions",
    "transaction_sync": ".transactions",
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
    "AlreadyApplied",
    "AuthenticationFailed",
    "BatchChunkFailed",
    "CheckViolation",
    "CircuitBreaker",
    "CircuitOpenError",
    "CommitOutcomeUnknown",
    "ConnectionLost",
    "ConstraintViolation",
    "Database",
    "DatabaseFailure",
    "DatabaseNotFound",
    "DatabaseUnavailable",
    "DeadlockDetected",
    "DurableTransactionError",
    "ExclusionViolation",
    "ForeignKeyViolation",
    "InsufficientResources",
    "InvalidCursor",
    "InvalidData",
    "InvalidStatement",
    "JobConflict",
    "JobInputMismatch",
    "LockNotAvailable",
    "MigrationLockTimeout",
    "MigrationThroughPooler",
    "NotAtomic",
    "NotNullViolation",
    "NotSupported",
    "PermissionDenied",
    "PoolExhausted",
    "PoolerIncompatible",
    "QueryTimeout",
    "ReadOnlyServer",
    "ReadOnlyTransaction",
    "ResilienceError",
    "RetryExhausted",
    "RetryPolicy",
    "Saga",
    "SagaCompensated",
    "SagaCompensationFailed",
    "SagaInProgress",
    "SagaLeaseLost",
    "SerializationFailure",
    "SnapshotTooOld",
    "StorageFailure",
    "SyncDatabase",
    "TooManyConnections",
    "TransactionConflict",
    "UniqueViolation",
    "WriteSetTooLarge",
    "__version__",
    "bulk_insert",
    "bulk_insert_sync",
    "health_check",
    "health_check_sync",
    "instrument",
    "on_commit",
    "paginate",
    "paginate_sync",
    "run_transaction",
    "run_transaction_sync",
    "transaction",
    "transaction_sync",
]
