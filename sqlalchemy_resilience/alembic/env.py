"""Alembic environment for sqlalchemy-resilience's own tables.

The database URL comes from ``DATABASE_URL`` (or ``sqlalchemy.url`` in the
config); async driver URLs (``postgresql+asyncpg``, ``sqlite+aiosqlite``) run
through an AsyncEngine, sync ones through an Engine. The password is never
logged. The package's tables get their own version table
(``sqlalchemy_resilience_alembic_version``) so they never collide with the
application's migrations in the same database.

The body is :func:`sqlalchemy_resilience.migrations.run_migrations`: the
migration lock, ``lock_timeout`` per migration, connect retries and revision
checksums, as in any application's ``env.py`` that uses it.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from sqlalchemy_resilience.migrations import run_migrations
from sqlalchemy_resilience.schema import metadata

config = context.config
if (
    config.config_file_name is not None
    and config.attributes.get("configure_logger", True)
    and config.file_config.has_section("loggers")
):
    # alembic.ini's [loggers]: "Running upgrade ..." on stderr, as users expect
    # (not for in-process runs such as check_migrations, which keep theirs; not
    # for an application's minimal ini without logging sections).
    fileConfig(config.config_file_name)

VERSION_TABLE = config.get_main_option("version_table") or "sqlalchemy_resilience_alembic_version"
run_migrations(metadata, version_table=VERSION_TABLE)
