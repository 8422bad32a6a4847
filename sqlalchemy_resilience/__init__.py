"""sqlalchemy-resilience: make an existing SQLAlchemy 2.x application resilient and observable.

Example::

    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy_resilience import UniqueViolation, instrument

    engine = create_async_engine("postgresql+asyncpg://app@db/app")
    instrument(engine)  # driver errors now arrive as typed, user-safe exceptions
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .batch import BulkResult as BulkResult
from .batch import bulk_insert as bulk_insert
from .batch import bulk_insert_sync as bulk_insert_sync
from .batch import bulk_update as bulk_update
from .batch import bulk_update_sync as bulk_update_sync
from .database import Database as Database
from .database import PoolSettings as PoolSettings
from .database import SyncDatabase as SyncDatabase
from .deploy import Credential as Credential
from .deploy import PasswordProvider as PasswordProvider
from .deploy import PoolerReport as PoolerReport
from .deploy import PoolerWarning as PoolerWarning
from .deploy import ReplicaSet as ReplicaSet
from .deploy import ReplicaStatus as ReplicaStatus
from .deploy import check_pooler as check_pooler
from .deploy import check_pooler_sync as check_pooler_sync
from .deploy import pooler_safe_options as pooler_safe_options
from .deploy import routing_sessionmaker as routing_sessionmaker
from .deploy import use_password_provider as use_password_provider
from .deploy import use_primary as use_primary
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
from .errors import register_messages as register_messages
from .errors import translate_error as translate_error
from .instrumentation import Instrumentation as Instrumentation
from .instrumentation import instrument as instrument
from .instrumentation import instrumentation_of as instrumentation_of
from .observe import QueryStats as QueryStats
from .observe import StatementStats as StatementStats
from .observe import normalize_statement as normalize_statement
from .pagination import OffsetPage as OffsetPage
from .pagination import Page as Page
from .pagination import paginate as paginate
from .pagination import paginate_offset as paginate_offset
from .pagination import paginate_offset_sync as paginate_offset_sync
from .pagination import paginate_sync as paginate_sync
from .pool import AutosizeDecision as AutosizeDecision
from .pool import HealthReport as HealthReport
from .pool import IdlePing as IdlePing
from .pool import MaintenanceReport as MaintenanceReport
from .pool import PoolAutosizer as PoolAutosizer
from .pool import PoolMaintainer as PoolMaintainer
from .pool import ResizeResult as ResizeResult
from .pool import health_check as health_check
from .pool import ping_idle_connections as ping_idle_connections
from .pool import pool_stats as pool_stats
from .pool import resize_pool as resize_pool
from .pool import warm_up as warm_up
from .retry import BreakerState as BreakerState
from .retry import BreakerTransition as BreakerTransition
from .retry import CircuitBreaker as CircuitBreaker
from .retry import ResilientAsyncSession as ResilientAsyncSession
from .retry import RetryBudget as RetryBudget
from .retry import RetryPolicy as RetryPolicy
from .retry import is_infrastructure_failure as is_infrastructure_failure
from .retry import resilient_sessionmaker as resilient_sessionmaker
from .retry import run_transaction as run_transaction
from .retry import run_transaction_sync as run_transaction_sync
from .saga import RecoveryReport as RecoveryReport
from .saga import Saga as Saga
from .saga import SagaContext as SagaContext
from .saga import SagaRecord as SagaRecord
from .saga import get_saga as get_saga
from .saga import get_saga_sync as get_saga_sync
from .saga import recover_sagas as recover_sagas
from .saga import recover_sagas_sync as recover_sagas_sync
from .schema import create_batch_tables as create_batch_tables
from .schema import create_saga_tables as create_saga_tables
from .transactions import SQLiteSettings as SQLiteSettings
from .transactions import configure_sqlite as configure_sqlite
from .transactions import on_commit as on_commit
from .transactions import transaction as transaction
from .transactions import transaction_sync as transaction_sync

try:
    __version__ = version("sqlalchemy-resilience")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    from ._version import __version__

__all__ = [
    "AlreadyApplied",
    "AuthenticationFailed",
    "AutosizeDecision",
    "BatchChunkFailed",
    "BreakerState",
    "BreakerTransition",
    "BulkResult",
    "CheckViolation",
    "CircuitBreaker",
    "CircuitOpenError",
    "CommitOutcomeUnknown",
    "ConnectionLost",
    "ConstraintViolation",
    "Credential",
    "Database",
    "DatabaseFailure",
    "DatabaseNotFound",
    "DatabaseUnavailable",
    "DeadlockDetected",
    "DurableTransactionError",
    "ExclusionViolation",
    "ForeignKeyViolation",
    "HealthReport",
    "IdlePing",
    "Instrumentation",
    "InsufficientResources",
    "InvalidCursor",
    "InvalidData",
    "InvalidStatement",
    "JobConflict",
    "JobInputMismatch",
    "LockNotAvailable",
    "MaintenanceReport",
    "MigrationLockTimeout",
    "MigrationThroughPooler",
    "NotAtomic",
    "NotNullViolation",
    "NotSupported",
    "OffsetPage",
    "Page",
    "PasswordProvider",
    "PermissionDenied",
    "PoolAutosizer",
    "PoolExhausted",
    "PoolMaintainer",
    "PoolSettings",
    "PoolerIncompatible",
    "PoolerReport",
    "PoolerWarning",
    "QueryStats",
    "QueryTimeout",
    "ReadOnlyServer",
    "ReadOnlyTransaction",
    "RecoveryReport",
    "ReplicaSet",
    "ReplicaStatus",
    "ResilienceError",
    "ResilientAsyncSession",
    "ResizeResult",
    "RetryBudget",
    "RetryExhausted",
    "RetryPolicy",
    "SQLiteSettings",
    "Saga",
    "SagaCompensated",
    "SagaCompensationFailed",
    "SagaContext",
    "SagaInProgress",
    "SagaLeaseLost",
    "SagaRecord",
    "SerializationFailure",
    "SnapshotTooOld",
    "StatementStats",
    "StorageFailure",
    "SyncDatabase",
    "TooManyConnections",
    "TransactionConflict",
    "UniqueViolation",
    "__version__",
    "bulk_insert",
    "bulk_insert_sync",
    "bulk_update",
    "bulk_update_sync",
    "check_pooler",
    "check_pooler_sync",
    "configure_sqlite",
    "create_batch_tables",
    "create_saga_tables",
    "get_saga",
    "get_saga_sync",
    "health_check",
    "instrument",
    "instrumentation_of",
    "is_infrastructure_failure",
    "normalize_statement",
    "on_commit",
    "paginate",
    "paginate_offset",
    "paginate_offset_sync",
    "paginate_sync",
    "ping_idle_connections",
    "pool_stats",
    "pooler_safe_options",
    "recover_sagas",
    "recover_sagas_sync",
    "register_messages",
    "resilient_sessionmaker",
    "resize_pool",
    "routing_sessionmaker",
    "run_transaction",
    "run_transaction_sync",
    "transaction",
    "transaction_sync",
    "translate_error",
    "use_password_provider",
    "use_primary",
    "warm_up",
]
