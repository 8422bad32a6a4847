"""The ``sqlalchemy-resilience`` command line.

Example::

    $ sqlalchemy-resilience demo                      # SQLite, no server
    $ sqlalchemy-resilience demo --embedded-postgres  # a throwaway PostgreSQL
    $ sqlalchemy-resilience demo --url postgresql+asyncpg://app:pw@db/app
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

from sqlalchemy.engine import URL, make_url

__all__ = ["main"]


def _embedded_driver() -> str:
    for module, driver in (("asyncpg", "asyncpg"), ("psycopg", "psycopg")):
        try:
            __import__(module)
        except ImportError:
            continue
        return driver
    raise SystemExit(
        "--embedded-postgres needs a PostgreSQL driver: "
        "pip install 'sqlalchemy-resilience[asyncpg,embedded]'"
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import default_sqlite_url, run_demo

    if args.url and args.embedded_postgres:
        raise SystemExit("use either --url or --embedded-postgres, not both")
    if args.url:
        try:
            url: URL = make_url(args.url)
        except Exception as exc:
            raise SystemExit(f"--url is not a SQLAlchemy URL: {type(exc).__name__}") from None
        return run_demo(url)
    if args.embedded_postgres:
        from .embedded import EmbeddedPostgres, EmbeddedPostgresError

        driver = _embedded_driver()
        try:
            with EmbeddedPostgres() as pg:
                print(f"started an embedded PostgreSQL from {pg.bin_dir}")
                return run_demo(pg.url(driver=driver), server=pg)
        except EmbeddedPostgresError as exc:
            raise SystemExit(f"could not start an embedded PostgreSQL: {exc}") from None
    workdir = tempfile.mkdtemp(prefix="sr-demo-")
    try:
        return run_demo(default_sqlite_url(workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="sqlalchemy-resilience",
        description="Resilience and observability for SQLAlchemy applications.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="tour the package on SQLite (default), an embedded PostgreSQL or any URL",
        description="Provoke real database failures and show how they are translated.",
    )
    target = demo.add_mutually_exclusive_group()
    target.add_argument(
        "--url",
        default=os.environ.get("SQLALCHEMY_RESILIENCE_DEMO_URL"),
        help="a SQLAlchemy URL to run against (its demo tables are created and dropped)",
    )
    target.add_argument(
        "--embedded-postgres",
        action="store_true",
        help="start a throwaway PostgreSQL (system binaries or the pgserver wheel)",
    )
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sqlalchemy-resilience`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
