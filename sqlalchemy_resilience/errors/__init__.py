"""Typed errors: the hierarchy, the classifier, user messages and translation.

``hierarchy`` draws the tree; ``classify`` reads a driver exception into
facts and picks the class; ``messages`` holds the end-user wording;
``translate`` is where an exception becomes a typed one.
"""

from __future__ import annotations

from .hierarchy import AlreadyApplied as AlreadyApplied
from .hierarchy import AuthenticationFailed as AuthenticationFailed
from .hierarchy import BatchChunkFailed as BatchChunkFailed
from .hierarchy import CheckViolation as CheckViolation
from .hierarchy import CircuitOpenError as CircuitOpenError
from .hierarchy import CommitOutcomeUnknown as CommitOutcomeUnknown
from .hierarchy import ConnectionLost as ConnectionLost
from .hierarchy import ConstraintViolation as ConstraintViolation
from .hierarchy import DatabaseFailure as DatabaseFailure
from .hierarchy import DatabaseNotFound as DatabaseNotFound
from .hierarchy import DatabaseUnavailable as DatabaseUnavailable
from .hierarchy import DeadlockDetected as DeadlockDetected
from .hierarchy import DurableTransactionError as DurableTransactionError
from .hierarchy import ExclusionViolation as ExclusionViolation
from .hierarchy import ForeignKeyViolation as ForeignKeyViolation
from .hierarchy import InsufficientResources as InsufficientResources
from .hierarchy import InvalidCursor as InvalidCursor
from .hierarchy import InvalidData as InvalidData
from .hierarchy import InvalidStatement as InvalidStatement
from .hierarchy import JobConflict as JobConflict
from .hierarchy import JobInputMismatch as JobInputMismatch
from .hierarchy import LockNotAvailable as LockNotAvailable
from .hierarchy import MigrationLockTimeout as MigrationLockTimeout
from .hierarchy import MigrationThroughPooler as MigrationThroughPooler
from .hierarchy import NotAtomic as NotAtomic
from .hierarchy import NotNullViolation as NotNullViolation
from .hierarchy import NotSupported as NotSupported
from .hierarchy import PermissionDenied as PermissionDenied
from .hierarchy import PoolerIncompatible as PoolerIncompatible
from .hierarchy import PoolExhausted as PoolExhausted
from .hierarchy import QueryTimeout as QueryTimeout
from .hierarchy import ReadOnlyServer as ReadOnlyServer
from .hierarchy import ReadOnlyTransaction as ReadOnlyTransaction
from .hierarchy import ResilienceError as ResilienceError
from .hierarchy import RetryExhausted as RetryExhausted
from .hierarchy import SagaCompensated as SagaCompensated
from .hierarchy import SagaCompensationFailed as SagaCompensationFailed
from .hierarchy import SagaInProgress as SagaInProgress
from .hierarchy import SagaLeaseLost as SagaLeaseLost
from .hierarchy import SagaStepFailed as SagaStepFailed
from .hierarchy import SerializationFailure as SerializationFailure
from .hierarchy import SnapshotTooOld as SnapshotTooOld
from .hierarchy import StorageFailure as StorageFailure
from .hierarchy import TooManyConnections as TooManyConnections
from .hierarchy import TransactionConflict as TransactionConflict
from .hierarchy import UniqueViolation as UniqueViolation
from .hierarchy import WriteSetTooLarge as WriteSetTooLarge
from .messages import MESSAGE_KEYS as MESSAGE_KEYS
from .messages import register_messages as register_messages
from .translate import translate_error as translate_error

__all__ = [
    "MESSAGE_KEYS",
    "AlreadyApplied",
    "AuthenticationFailed",
    "BatchChunkFailed",
    "CheckViolation",
    "CircuitOpenError",
    "CommitOutcomeUnknown",
    "ConnectionLost",
    "ConstraintViolation",
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
    "SagaCompensated",
    "SagaCompensationFailed",
    "SagaInProgress",
    "SagaLeaseLost",
    "SagaStepFailed",
    "SerializationFailure",
    "SnapshotTooOld",
    "StorageFailure",
    "TooManyConnections",
    "TransactionConflict",
    "UniqueViolation",
    "WriteSetTooLarge",
    "register_messages",
    "translate_error",
]
