"""The ``sqlalchemy-resilience`` command line.

Example::

    $ sqlalchemy-resilience demo                      # SQLite, no server
    $ sqlalchemy-resilience demo --embedded-postgres  # a throwaway PostgreSQL
    $ sqlalchemy-resilience demo --url postgresql+asyncpg://app:pw@db/app
    $ sqlalchemy-resilience health postgresql+asyncpg://app:pw@db/app --json
"""

from __future__ import annotations

import argparse
import os
import shutil
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
        from sqlalchemy_resilience.testing.embedded import EmbeddedPostgres, EmbeddedPostgresError

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


def _cmd_health(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from sqlalchemy import create_engine
    from sqlalchemy.ext.asyncio import create_async_engine

    from sqlalchemy_resilience.instrumentation import instrument
    from sqlalchemy_resilience.pool import HealthReport, health_check

    try:
        url = make_url(args.url)
    except Exception as exc:
        raise SystemExit(f"URL is not a SQLAlchemy URL: {type(exc).__name__}") from None
    if args.timeout <= 0:
        raise SystemExit(f"--timeout must be > 0 seconds, got {args.timeout}")
    report: HealthReport
    if url.get_dialect().is_async:

        async def check() -> HealthReport:
            engine = create_async_engine(url)
            instrument(engine)
            try:
                return await health_check(engine, timeout=args.timeout)
            finally:
                # Never wait on a server that does not answer.
                await asyncio.wait({asyncio.ensure_future(engine.dispose())}, timeout=1)

        report = asyncio.run(check())
    else:
        engine = create_engine(url)
        instrument(engine)
        try:
            report = health_check(engine, timeout=args.timeout)
        finally:
            engine.dispose()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        latency = f"{report.latency * 1000:.1f} ms" if report.latency is not None else "-"
        print(f"{report.status}: {url.render_as_string(hide_password=True)} (round trip {latency})")
        if report.error:
            print(f"  error: {report.error}: {report.detail}")
        for warning in report.warnings:
            print(f"  warning: {warning}")
    return {"healthy": 0, "degraded": 1, "unhealthy": 2}[report.status]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    from sqlalchemy_resilience._version import __version__

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
    health = sub.add_parser(
        "health",
        help="check a database: healthy / degraded / unhealthy (exit 0 / 1 / 2)",
        description="Probe a database with SELECT 1 within a timeout and print the health report.",
    )
    health.add_argument("url", help="a SQLAlchemy URL (the password is never printed)")
    health.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    health.add_argument("--json", action="store_true", help="print the report as JSON")
    health.set_defaults(func=_cmd_health)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sqlalchemy-resilience`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code
