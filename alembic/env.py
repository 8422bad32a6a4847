"""Alembic environment for sqlalchemy-resilience's own tables.

The database URL comes from ``DATABASE_URL`` (or ``sqlalchemy.url`` in the
config); async driver URLs (``postgresql+asyncpg``, ``sqlite+aiosqlite``) run
through an AsyncEngine, sync ones through an Engine. The password is never
logged. The package's tables get their own version table
(``sqlalchemy_resilience_alembic_version``) so they never collide with the
application's migrations in the same database.
"""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, create_engine, pool
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from sqlalchemy_resilience.schema import metadata

config = context.config
if config.config_file_name is not None:
    # alembic.ini's [loggers]: "Running upgrade ..." on stderr, as users expect.
    fileConfig(config.config_file_name)
target_metadata = metadata
VERSION_TABLE = config.get_main_option("version_table") or "sqlalchemy_resilience_alembic_version"


def _database_url() -> str:
    url = os.environ.get("DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set DATABASE_URL (or sqlalchemy.url in alembic.ini) to migrate")
    return url


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of connecting."""
    context.configure(
        url=_database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        version_table=VERSION_TABLE,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_with)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    """Connect (sync or async driver) and run the migrations."""
    url = _database_url()
    if make_url(url).get_dialect().is_async:
        asyncio.run(_run_async(url))
        return
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run_with(connection)
            connection.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
