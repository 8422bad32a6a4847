"""The migrations part of ``sqlalchemy-resilience demo``: two instances start at once, one migrates.

A three-revision Alembic project whose ``env.py`` is ``run_migrations`` is
written to a temporary folder; two ``alembic upgrade head`` processes start
together against the demo database (the first revision takes a second, so
they overlap). One takes the migration lock and applies the three revisions;
the other waits for it, finds the schema at head and applies nothing. Then
``verify_migrations`` checks the files against the recorded checksums, before
and after a revision file is edited.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import tempfile
from pathlib import Path
from typing import TextIO

from sqlalchemy import MetaData, Table, create_engine, inspect
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import create_async_engine

from sqlalchemy_resilience.migrations import verify_migrations
from sqlalchemy_resilience.schema import migration_checksums, migration_steps

from .migration_project import alembic as run_alembic
from .migration_project import write_project

__all__ = ["migrations_tour"]

_TABLES = ("mig_items", "mig_log", "mig_extra", "alembic_version")


def _applied(output: str) -> list[str]:
    """The revisions an instance's log says it ran."""
    return [target for _, target in re.findall(r"Running upgrade (\S*) -> (\S+),", output)]


def _waited(output: str) -> str | None:
    found = re.search(r"waited ([0-9.]+)s for the migration lock", output)
    return found.group(1) if found else None


def _drop_tables(conn: Connection) -> None:
    existing = set(inspect(conn).get_table_names())
    for name in (*_TABLES, migration_checksums.name, migration_steps.name):
        if name in existing:
            Table(name, MetaData()).drop(conn)


def _drop(url: URL) -> None:
    """Remove what the tour creates (and what an earlier, interrupted tour left)."""
    if url.get_dialect().is_async:

        async def drop() -> None:
            engine = create_async_engine(url)
            try:
                async with engine.begin() as conn:
                    await conn.run_sync(_drop_tables)
            finally:
                await engine.dispose()

        asyncio.run(drop())
        return
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            _drop_tables(conn)
    finally:
        engine.dispose()


def migrations_tour(url: URL, out: TextIO) -> bool:
    """Run the migrations part against ``url``; True when exactly one instance applied the revisions."""
    if importlib.util.find_spec("alembic") is None:
        print(
            "\nmigrations: skipped, Alembic is not installed "
            "(pip install 'sqlalchemy-resilience[alembic]')",
            file=out,
        )
        return True
    print("\nmigrations: two instances run `alembic upgrade head` at the same moment", file=out)
    database = url
    _drop(database)
    ok = True
    with tempfile.TemporaryDirectory(prefix="sr-demo-migrations-") as folder:
        ini = write_project(Path(folder))
        first = run_alembic(ini, url, "upgrade", "head", sleep_r1="1")
        second = run_alembic(ini, url, "upgrade", "head")
        results: list[tuple[int, str]] = []
        for process in (first, second):
            stdout, stderr = process.communicate(timeout=120)
            results.append((process.returncode, stdout + stderr))
        for name, (code, output) in zip(("instance A", "instance B"), results, strict=True):
            applied = _applied(output)
            waited = _waited(output)
            what = (
                f"applied {', '.join(applied)}" if applied else "applied nothing (already at head)"
            )
            wait = f"waited {waited}s for the lock, " if waited else ""
            print(f"  {name}: exit {code}, {wait}{what}", file=out)
            ok = ok and code == 0
        applied_total = sum(len(_applied(output)) for _, output in results)
        ok = ok and applied_total == 3
        report = verify_migrations(str(ini), url=database)
        print(
            f"  verify_migrations: {len(report.applied)} revisions, checksums "
            f"{'match' if report.ok else 'differ'}",
            file=out,
        )
        ok = ok and report.ok
        r2 = Path(folder) / "migrations" / "versions" / "r2.py"
        r2.write_text(r2.read_text() + "\n# edited after it was applied\n")
        edited = verify_migrations(str(ini), url=database)
        for finding in edited.problems:
            print(
                f"  after editing r2.py: {finding.kind} {finding.revision} ({finding.detail})",
                file=out,
            )
        ok = ok and [f.kind for f in edited.problems] == ["edited"]
    _drop(database)
    return ok
