"""Alembic migrations made safe for production: locked, time-boxed, verified.

``runner`` holds ``run_migrations`` (the body of an ``env.py``), ``lock`` the
migration lock, ``checksums`` the record of applied revision files and the
comparison behind ``verify_migrations`` (``verify``), ``check`` the
``check_migrations`` walk (up, down and up again, schemas compared).
"""

from __future__ import annotations

from sqlalchemy_resilience.errors.operations import MigrationLockTimeout as MigrationLockTimeout
from sqlalchemy_resilience.errors.operations import MigrationThroughPooler as MigrationThroughPooler

from .check import CheckFinding as CheckFinding
from .check import CheckReport as CheckReport
from .check import check_migrations as check_migrations
from .check import schema_snapshot as schema_snapshot
from .checksums import Finding as Finding
from .checksums import VerifyReport as VerifyReport
from .checksums import file_checksum as file_checksum
from .lock import LockInfo as LockInfo
from .lock import lock_key as lock_key
from .lock import migration_lock as migration_lock
from .runner import MigrationSettings as MigrationSettings
from .runner import run_migrations as run_migrations
from .template import init_migrations as init_migrations
from .verify import verify_migrations as verify_migrations

__all__ = [
    "CheckFinding",
    "CheckReport",
    "Finding",
    "LockInfo",
    "MigrationLockTimeout",
    "MigrationSettings",
    "MigrationThroughPooler",
    "VerifyReport",
    "check_migrations",
    "file_checksum",
    "init_migrations",
    "lock_key",
    "migration_lock",
    "run_migrations",
    "schema_snapshot",
    "verify_migrations",
]
