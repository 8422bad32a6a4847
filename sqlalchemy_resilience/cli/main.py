"""The ``sqlalchemy-resilience`` command line.

Exit codes: ``health`` returns 0 healthy, 1 degraded, 2 unhealthy; ``demo``
returns 0 when every step behaved and 1 otherwise; ``migrate`` 0 done and 1 a
migration failed, 75 try again later (the migration lock or a table lock);
``verify-migrations`` 0 clean, 1 problems. Failures of the command
itself have codes of their own (BSD ``sysexits``), so a health check can tell
"unhealthy" from "called wrongly": 64 usage error (bad arguments or URL), 69
the database could not be reached or refused the demo, 78 the URL's driver is
not installed. Each is one line on stderr, never a traceback.

Example::

    $ sqlalchemy-resilience demo                      # SQLite, no server
    $ sqlalchemy-resilience demo --embedded-postgres  # a throwaway PostgreSQL
    $ sqlalchemy-resilience demo --url postgresql+asyncpg://app:pw@db/app
    $ sqlalchemy-resilience health postgresql+asyncpg://app:pw@db/app --json
    $ sqlalchemy-resilience stats --demo
    $ sqlalchemy-resilience bench --embedded-postgres
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from typing import NoReturn

from sqlalchemy.engine import URL

from .common import EXIT_DRIVER_MISSING as EXIT_DRIVER_MISSING
from .common import EXIT_UNAVAILABLE as EXIT_UNAVAILABLE
from .common import EXIT_USAGE as EXIT_USAGE
from .common import CommandError as CommandError
from .common import check_driver as _check_driver
from .common import parse_url as _parse_url
from .common import require_module as _require_module
from .common import seconds_arg as _seconds_arg

__all__ = [
    "EXIT_DRIVER_MISSING",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "CommandError",
    "build_parser",
    "main",
]


class _Parser(argparse.ArgumentParser):
    """argparse with the package's usage errors: one line naming the command, exit 64."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


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


def _demo_sections() -> tuple[str, ...]:
    from .demo.run import SECTIONS

    return SECTIONS


def _cmd_demo(args: argparse.Namespace) -> int:
    from functools import partial

    from .demo import default_sqlite_url
    from .demo import run_demo as run_all

    sections = args.section
    for name in sections or ():
        if name not in _demo_sections():
            raise CommandError(
                EXIT_USAGE,
                f"--section must be one of {', '.join(_demo_sections())}, got {name!r}",
            )
    run_demo = partial(run_all, sections=sections)

    if args.url:
        url = _parse_url(args.url, "--url")
        _check_driver(url)
        return _unavailable_as_one_line(url, lambda: run_demo(url))
    if args.embedded_postgres:
        from sqlalchemy_resilience.testing.embedded import EmbeddedPostgres, EmbeddedPostgresError

        driver = _embedded_driver()
        try:
            with EmbeddedPostgres() as pg:
                print(f"started an embedded PostgreSQL from {pg.bin_dir}")
                return run_demo(pg.url(driver=driver), server=pg)
        except EmbeddedPostgresError as exc:
            raise CommandError(
                EXIT_UNAVAILABLE, f"could not start an embedded PostgreSQL: {exc}"
            ) from None
    workdir = tempfile.mkdtemp(prefix="sr-demo-")
    try:
        return run_demo(default_sqlite_url(workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _unavailable_as_one_line(url: URL, run: Callable[[], int]) -> int:
    from sqlalchemy import exc as sa_exc

    from sqlalchemy_resilience.errors import ResilienceError, translate_error
    from sqlalchemy_resilience.errors.translate import describe

    try:
        return run()
    except (ResilienceError, sa_exc.DBAPIError, OSError) as exc:
        error = translate_error(exc)
        raise CommandError(
            EXIT_UNAVAILABLE,
            f"could not run the demo on {url.render_as_string(hide_password=True)}: "
            f"{describe(error)}",
        ) from None


def _cmd_health(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from sqlalchemy import create_engine
    from sqlalchemy.ext.asyncio import create_async_engine

    from sqlalchemy_resilience.instrumentation import instrument
    from sqlalchemy_resilience.pool import HealthReport, health_check, health_check_sync

    url = _parse_url(args.url, "URL")
    _check_driver(url)
    report: HealthReport
    if url.get_dialect().is_async:

        async def check() -> HealthReport:
            engine = create_async_engine(url)
            instr = instrument(engine)
            try:
                return await health_check(engine, timeout=args.timeout, monitor=instr.pool)
            finally:
                # Never wait on a server that does not answer.
                await asyncio.wait({asyncio.ensure_future(engine.dispose())}, timeout=1)

        report = asyncio.run(check())
    else:
        engine = create_engine(url)
        instr = instrument(engine)
        try:
            report = health_check_sync(engine, timeout=args.timeout, monitor=instr.pool)
        finally:
            engine.dispose()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        latency = f"{report.latency * 1000:.1f} ms" if report.latency is not None else "-"
        print(f"{report.status}: {url.render_as_string(hide_password=True)} (round trip {latency})")
        if report.error:
            # The detail starts with the class already; say it once.
            detail = report.detail or report.error
            if not detail.startswith(report.error):
                detail = f"{report.error}: {detail}"
            print(f"  error: {detail}")
        for warning in report.warnings:
            print(f"  warning: {warning}")
    return {"healthy": 0, "degraded": 1, "unhealthy": 2}[report.status]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    from sqlalchemy_resilience._version import __version__

    parser = _Parser(
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
    demo.add_argument(
        "--section",
        action="append",
        metavar="NAME",
        help="run only this part (repeatable): " + ", ".join(_demo_sections()),
    )
    demo.set_defaults(func=_cmd_demo)
    health = sub.add_parser(
        "health",
        help="check a database: healthy / degraded / unhealthy (exit 0 / 1 / 2)",
        description=(
            "Probe a database with SELECT 1 within a timeout and print the health report. "
            "Exit codes: 0 healthy, 1 degraded, 2 unhealthy, 64 usage, 78 driver missing."
        ),
    )
    health.add_argument("url", help="a SQLAlchemy URL (the password is never printed)")
    health.add_argument(
        "--timeout", type=_seconds_arg(positive=True), default=2.0, help="seconds (default 2)"
    )
    health.add_argument("--json", action="store_true", help="print the report as JSON")
    health.set_defaults(func=_cmd_health)
    from .bench import add_bench_command
    from .migrate import add_migration_commands
    from .stats import add_stats_command

    add_migration_commands(sub)
    add_stats_command(sub)
    add_bench_command(sub)
    return parser


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps its subparsers here, and nowhere public
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sqlalchemy-resilience`` command; returns the exit code.

    Example::

        sys.exit(main(["health", "sqlite:///app.db"]))
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # Said by the command that was given them, not by the top level.
        command = _subcommands(parser).get(args.command, parser)
        command.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        for module, package_extra in getattr(args, "needs", {}).items():
            _require_module(module, package_extra, args.command)
        code: int = args.func(args)
    except CommandError as exc:
        print(f"{parser.prog}: {exc.message}", file=sys.stderr)
        return exc.code
    return code
