"""The PostgreSQL a benchmark runs on: ``--postgres-url URL``, or ``--embedded-postgres`` (a throwaway server)."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from typing import Any

from sqlalchemy.engine import URL, make_url

__all__ = ["add_postgres_arguments", "postgres_url"]


def add_postgres_arguments(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """``--postgres-url`` and ``--embedded-postgres``, exclusive; returns the group for more choices."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--postgres-url", help="a postgresql+asyncpg:// URL to run against")
    group.add_argument(
        "--embedded-postgres",
        action="store_true",
        help="start a throwaway PostgreSQL (system binaries or the pgserver wheel)",
    )
    return group


@contextlib.contextmanager
def postgres_url(args: argparse.Namespace) -> Iterator[URL | None]:
    """The asyncpg URL the arguments name (None without either), the embedded server stopped after."""
    if getattr(args, "postgres_url", None):
        yield make_url(args.postgres_url)
    elif getattr(args, "embedded_postgres", False):
        from sqlalchemy_resilience.testing.embedded import EmbeddedPostgres

        server = EmbeddedPostgres()
        server.start()
        try:
            yield server.url(driver="asyncpg")
        finally:
            server.stop(cleanup=True)
    else:
        yield None


async def asyncpg_connect(url: URL) -> Any:
    """A raw asyncpg connection to ``url`` (the baseline every benchmark compares with)."""
    import asyncpg

    return await asyncpg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        database=url.database,
    )
