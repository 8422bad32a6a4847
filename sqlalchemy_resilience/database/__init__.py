"""The ``Database`` facade (async) and ``SyncDatabase`` (sync): one object per database."""

from __future__ import annotations

from .facade import Database as Database
from .settings import ENV_VARIABLES as ENV_VARIABLES
from .settings import PoolSettings as PoolSettings
from .settings import settings_from_env as settings_from_env
from .sync import SyncDatabase as SyncDatabase

__all__ = ["ENV_VARIABLES", "Database", "PoolSettings", "SyncDatabase", "settings_from_env"]
