"""Production deployments: transaction-mode poolers, rotating credentials, read replicas, Galera."""

from __future__ import annotations

from .credentials import Credential as Credential
from .credentials import PasswordProvider as PasswordProvider
from .credentials import use_password_provider as use_password_provider
from .galera import SyncWait as SyncWait
from .galera import read_your_writes as read_your_writes
from .pooler import PoolerReport as PoolerReport
from .pooler import PoolerWarning as PoolerWarning
from .pooler import PoolMode as PoolMode
from .pooler import check_pooler as check_pooler
from .pooler import check_pooler_sync as check_pooler_sync
from .pooler import keeps_prepared_statements as keeps_prepared_statements
from .pooler import pooler_safe_options as pooler_safe_options
from .pooler import unnamed_statement as unnamed_statement
from .replicas import ReplicaSet as ReplicaSet
from .replicas import ReplicaStatus as ReplicaStatus
from .replicas import primary_failure as primary_failure
from .routing import RoutingAsyncSession as RoutingAsyncSession
from .routing import RoutingSession as RoutingSession
from .routing import routing_sessionmaker as routing_sessionmaker
from .routing import use_primary as use_primary

__all__ = [
    "Credential",
    "PasswordProvider",
    "PoolMode",
    "PoolerReport",
    "PoolerWarning",
    "ReplicaSet",
    "ReplicaStatus",
    "RoutingAsyncSession",
    "RoutingSession",
    "SyncWait",
    "check_pooler",
    "check_pooler_sync",
    "keeps_prepared_statements",
    "pooler_safe_options",
    "primary_failure",
    "read_your_writes",
    "routing_sessionmaker",
    "unnamed_statement",
    "use_password_provider",
    "use_primary",
]
