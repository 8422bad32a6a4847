"""``verify_migrations``: does the database still match the revision files that built it?"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import pool
from sqlalchemy.engine import URL, Connection, create_engine, make_url
from sqlalchemy.ext.asyncio import create_async_engine

from .checksums import VerifyReport, verify_connection

__all__ = ["verify_migrations"]


def _version_table(config: Any, version_table: str | None) -> str:
    return version_table or config.get_main_option("version_table") or "alembic_version"


def verify_migrations(
    config: Any,
    *,
    url: str | URL | None = None,
    connection: Connection | None = None,
    version_table: str | None = None,
) -> VerifyReport:
    """Compare the applied revisions with the scripts (Flyway's ``validate``).

    Reports a revision edited after it was applied (its checksum differs), an
    applied revision unknown to the scripts, a recorded revision whose file is
    gone, and revisions applied before checksums were kept (information only).

    Args:
        config: the ``alembic.config.Config`` (its ``script_location`` and
            ``sqlalchemy.url``), or the path of an alembic.ini.
        url: the database, instead of the config's ``sqlalchemy.url``.
        connection: a sync connection to read from instead of connecting.
        version_table: default ``version_table`` in the config, else ``alembic_version``.

    Example::

        report = verify_migrations(Config("alembic.ini"), url=os.environ["DATABASE_URL"])
        for finding in report.problems:
            print(finding.kind, finding.revision, finding.detail)
        sys.exit(0 if report.ok else 1)
    """
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    if isinstance(config, str):
        config = Config(config)
    script = ScriptDirectory.from_config(config)
    table = _version_table(config, version_table)
    if connection is not None:
        return verify_connection(connection, script, table)
    raw = url or config.get_main_option("sqlalchemy.url")
    if not raw:
        raise ValueError("verify_migrations needs url= (or sqlalchemy.url in the config)")
    database = make_url(raw)
    if database.get_dialect().is_async:

        async def read() -> VerifyReport:
            engine = create_async_engine(database, poolclass=pool.NullPool)
            try:
                async with engine.connect() as conn:
                    return await conn.run_sync(verify_connection, script, table)
            finally:
                await engine.dispose()

        return asyncio.run(read())
    engine = create_engine(database, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return verify_connection(conn, script, table)
    finally:
        engine.dispose()
