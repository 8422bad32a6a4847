"""``migrate`` and ``verify-migrations``: Alembic's upgrade and a checksum check, with one-line errors.

``migrate URL`` runs ``alembic upgrade`` in-process on the project's
alembic.ini (``-c``, default ``./alembic.ini``) against ``URL``, printing a
line per revision with its time. The URL reaches ``env.py`` as
``DATABASE_URL`` and as ``sqlalchemy.url``; it is never printed with its
password. Exit codes: 0 done, 1 a migration failed, 64 usage, 69 the
database could not be reached, 75 try again later (another instance kept
migrating past ``--lock-wait``, or a table lock was not obtained within
``lock_timeout``), 78 the driver is not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from sqlalchemy_resilience._util.masking import mask_secret
from sqlalchemy_resilience.migrations.runner import PROGRESS_ATTRIBUTE

from .common import (
    EXIT_DRIVER_MISSING,
    EXIT_FAILED,
    EXIT_TEMPFAIL,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CommandError,
    check_driver,
    parse_url,
    seconds_arg,
)
from .output import progress_bar

__all__ = ["add_migration_commands"]


class _Progress:
    """Prints each applied revision as a numbered line with its time (``run_migrations`` calls it)."""

    def __init__(self) -> None:
        self.count = 0
        self.started = self._last = time.monotonic()

    def __call__(self, step: Any) -> None:
        now = time.monotonic()
        self.count += 1
        source = ",".join(step.source_revision_ids) or "base"
        destination = ",".join(step.destination_revision_ids) or "base"
        verb = "upgrade" if step.is_upgrade else "downgrade"
        revision = step.up_revision
        doc = f"  {revision.doc}" if revision is not None and revision.doc else ""
        print(
            f"  [{self.count}] {verb} {source} -> {destination}{doc}  ({now - self._last:.2f} s)",
            flush=True,
        )
        self._last = now


@contextlib.contextmanager
def _environment(url: URL) -> Iterator[None]:
    """``DATABASE_URL`` for ``env.py`` while the command runs."""
    previous = os.environ.get("DATABASE_URL")
    os.environ["DATABASE_URL"] = url.render_as_string(hide_password=False)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("DATABASE_URL", None)
        else:
            os.environ["DATABASE_URL"] = previous


def _config(path: str, url: URL | None = None, x: list[str] | None = None) -> Any:
    from alembic.config import Config

    if not Path(path).is_file():
        raise CommandError(EXIT_USAGE, f"no Alembic config at {path} (give -c PATH/alembic.ini)")
    config = Config(path, cmd_opts=argparse.Namespace(x=x or []))
    if url is not None:
        # ConfigParser interpolates '%': a password containing one must be escaped.
        config.set_main_option(
            "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
        )
    return config


def _exit_code_of(exc: BaseException) -> int:
    from sqlalchemy_resilience.errors import DatabaseUnavailable, LockNotAvailable, translate_error
    from sqlalchemy_resilience.migrations import MigrationLockTimeout

    for candidate in (exc, exc.__cause__):
        if candidate is None:
            continue
        if isinstance(candidate, MigrationLockTimeout | LockNotAvailable):
            return EXIT_TEMPFAIL
        if isinstance(translate_error(candidate), DatabaseUnavailable):
            return EXIT_UNAVAILABLE
    return EXIT_FAILED


def _one_line(exc: BaseException, url: URL) -> str:
    from sqlalchemy import exc as sa_exc

    from sqlalchemy_resilience.errors import ResilienceError, translate_error
    from sqlalchemy_resilience.errors.translate import describe

    if isinstance(exc, ResilienceError | sa_exc.DBAPIError):
        text = describe(translate_error(exc))
    else:
        lines = str(exc).strip().splitlines()
        text = lines[0] if lines else type(exc).__name__
    return mask_secret(text, None if url.password is None else str(url.password))


def _cmd_migrate(args: argparse.Namespace) -> int:
    from alembic import command
    from alembic.util import CommandError as AlembicError

    url = parse_url(args.url, "URL")
    check_driver(url)
    x = [
        f"{name}={value}"
        for name, value in (("lock_wait", args.lock_wait), ("lock_timeout", args.lock_timeout))
        if value is not None
    ]
    if args.rerun_interrupted:
        x.append("rerun_interrupted=1")
    config = _config(args.config, url, x)
    shown = url.render_as_string(hide_password=True)
    # With --sql, stdout is the SQL script: say what happens on stderr.
    print(
        f"migrating {shown} to {args.to}{' (SQL only)' if args.sql else ''}",
        file=sys.stderr if args.sql else sys.stdout,
    )
    progress = _Progress()
    config.attributes[PROGRESS_ATTRIBUTE] = progress
    try:
        with _environment(url):
            command.upgrade(config, args.to, sql=args.sql)
    except (AlembicError, Exception) as exc:  # every failure is one line
        raise CommandError(_exit_code_of(exc), f"migration failed: {_one_line(exc, url)}") from None
    took = time.monotonic() - progress.started
    if args.sql:
        pass
    elif progress.count:
        print(f"done: {progress.count} revision(s) applied in {took:.2f} s")
    else:
        print(
            "done: nothing was applied (already at the target, or env.py does not use run_migrations)"
        )
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from sqlalchemy_resilience.migrations import verify_migrations

    url = parse_url(args.url, "URL")
    check_driver(url)
    config = _config(args.config, url, [])
    try:
        report = verify_migrations(config, url=url)
    except Exception as exc:
        raise CommandError(_exit_code_of(exc), f"could not verify: {_one_line(exc, url)}") from None
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "version_table": report.version_table,
                    "applied": list(report.applied),
                    "findings": [vars(f) | {"problem": f.is_problem} for f in report.findings],
                },
                indent=2,
            )
        )
    else:
        print(
            f"{len(report.applied)} revision(s) applied on {url.render_as_string(hide_password=True)}"
        )
        for finding in report.findings:
            print(
                f"  {'problem' if finding.is_problem else 'note'}: {finding.kind} {finding.revision}: {finding.detail}"
            )
        print(
            "ok: every applied revision matches its file"
            if report.ok
            else f"{len(report.problems)} problem(s)"
        )
    return 0 if report.ok else EXIT_FAILED


def _revision_count(config: Any) -> int | None:
    from alembic.script import ScriptDirectory

    try:
        return sum(1 for _ in ScriptDirectory.from_config(config).walk_revisions())
    except Exception:  # check_migrations reports a broken script directory itself
        return None


def _cmd_check(args: argparse.Namespace) -> int:
    from sqlalchemy_resilience.migrations import check_migrations

    url = parse_url(args.url, "URL")
    config = _config(args.config, url, [])
    print(f"checking the migrations of {args.config} on {url.render_as_string(hide_password=True)}")
    bar = progress_bar("up, down, up", "revisions")
    try:
        with bar:
            task = bar.add_task("walk", total=_revision_count(config))
            report = check_migrations(
                config,
                url=url,
                minimum_downgrade_revision=args.minimum_downgrade_revision,
                model_check=args.model_check,
                progress=lambda _revision: bar.advance(task),
            )
    except ValueError as exc:
        raise CommandError(EXIT_USAGE, str(exc)) from None
    except Exception as exc:  # every failure is one line
        raise CommandError(_exit_code_of(exc), f"could not check: {_one_line(exc, url)}") from None
    print(f"  {len(report.revisions)} revision(s) walked up, down and up again")
    for finding in report.findings:
        print(f"  problem: {finding}")
    print("ok: every check passed" if report.ok else f"{len(report.findings)} problem(s)")
    return 0 if report.ok else EXIT_FAILED


def _cmd_lint(args: argparse.Namespace) -> int:
    from sqlalchemy_resilience.migrations.lint import (
        DEFAULT_EXCLUDE,
        SquawkMissing,
        lint_migrations,
    )

    url = parse_url(args.url, "--url") if args.url else None
    config = _config(args.config)
    exclude = DEFAULT_EXCLUDE if args.all_rules is False else ()
    try:
        report = lint_migrations(
            config, url=url, squawk=args.squawk, exclude=exclude, pg_version=args.pg_version
        )
    except SquawkMissing as exc:
        raise CommandError(EXIT_DRIVER_MISSING, str(exc)) from None
    except Exception as exc:  # every failure is one line
        raise CommandError(
            EXIT_FAILED, f"could not lint: {' '.join(str(exc).split())[:300]}"
        ) from None
    for revision in report.revisions:
        mine = [f for f in report.findings if f.revision == revision]
        print(f"{revision}: {'ok' if not mine else f'{len(mine)} finding(s)'}")
        for finding in mine:
            where = f" (line {finding.line})" if finding.line else ""
            print(f"  {finding.rule}{where}: {finding.message}")
            print(f"    {finding.statement}")
    if report.silenced:
        print(f"{len(report.silenced)} finding(s) silenced by lint: ignore[...] markers")
    return 0 if report.ok else EXIT_FAILED


def _cmd_init(args: argparse.Namespace) -> int:
    from sqlalchemy_resilience.migrations import init_migrations

    try:
        ini = init_migrations(args.directory, ini=args.ini)
    except FileExistsError as exc:
        raise CommandError(EXIT_USAGE, str(exc)) from None
    print(f"wrote {args.directory}/ (env.py runs run_migrations) and {ini}")
    print(
        f"next: set target_metadata in {args.directory}/env.py; point it at the database "
        f"(export DATABASE_URL=..., or sqlalchemy.url in {ini}); then "
        "alembic revision --autogenerate -m 'first' and sqlalchemy-resilience migrate \"$DATABASE_URL\""
    )
    return 0


def add_migration_commands(sub: Any) -> None:
    """Register ``migrate`` and ``verify-migrations`` on the command's subparsers."""
    migrate = sub.add_parser(
        "migrate",
        help="apply Alembic migrations under the migration lock, a line per revision",
        description=(
            "Run `alembic upgrade` on the project's alembic.ini against URL. Exit codes: 0 done, "
            "1 a migration failed, 64 usage, 69 unreachable, 75 try again later (lock), 78 driver missing."
        ),
    )
    migrate.add_argument("url", help="a SQLAlchemy URL (the password is never printed)")
    migrate.add_argument("--to", default="head", help="target revision (default head)")
    migrate.add_argument("--sql", action="store_true", help="print the SQL instead of running it")
    migrate.add_argument(
        "-c", "--config", default="alembic.ini", help="the Alembic config (default ./alembic.ini)"
    )
    migrate.add_argument(
        "--lock-wait",
        type=seconds_arg(positive=False),
        help="seconds to wait for another instance (env.py with run_migrations)",
    )
    migrate.add_argument(
        "--lock-timeout",
        type=seconds_arg(positive=False),
        help="lock_timeout per migration, seconds (env.py with run_migrations)",
    )
    migrate.add_argument(
        "--rerun-interrupted",
        action="store_true",
        help="MySQL/MariaDB: run again, from its start, a revision an earlier run left "
        "half-way, once you have undone its effects by hand (env.py with run_migrations)",
    )
    migrate.set_defaults(func=_cmd_migrate, needs={"alembic": "alembic"})
    verify = sub.add_parser(
        "verify-migrations",
        help="compare applied revisions with their files (edited, unknown, missing)",
        description="Report revisions edited after they were applied. Exit 0 clean, 1 problems found.",
    )
    verify.add_argument("url", help="a SQLAlchemy URL (the password is never printed)")
    verify.add_argument(
        "-c", "--config", default="alembic.ini", help="the Alembic config (default ./alembic.ini)"
    )
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(func=_cmd_verify, needs={"alembic": "alembic"})
    check = sub.add_parser(
        "check-migrations",
        help="walk every revision up, down and up again on an empty database; compare schemas",
        description=(
            "Single head, every upgrade and downgrade, no trace left by a downgrade, models = DDL. "
            "URL must be an empty database of its own. Exit 0 clean, 1 problems, 64 not empty."
        ),
    )
    check.add_argument("url", help="an empty database (async URLs run through the sync driver)")
    check.add_argument(
        "-c", "--config", default="alembic.ini", help="the Alembic config (default ./alembic.ini)"
    )
    check.add_argument("--minimum-downgrade-revision", help="do not downgrade below this revision")
    check.add_argument(
        "--no-model-check",
        dest="model_check",
        action="store_false",
        help="do not compare the models with the migrated DDL (env.py without target_metadata)",
    )
    check.set_defaults(func=_cmd_check, needs={"alembic": "alembic"})
    lint = sub.add_parser(
        "lint-migrations",
        help="find unsafe operations in each revision (squawk, plus checks against the models)",
        description=(
            "Lint each revision's SQL (alembic upgrade --sql, PostgreSQL) with squawk and its "
            "operations against the models. Exit 0 clean, 1 findings, 78 squawk not installed."
        ),
    )
    lint.add_argument(
        "-c", "--config", default="alembic.ini", help="the Alembic config (default ./alembic.ini)"
    )
    lint.add_argument("--url", help="a database to look at for the data checks (tables with rows)")
    lint.add_argument("--squawk", help="the squawk binary (default: squawk on PATH)")
    lint.add_argument("--pg-version", help="the PostgreSQL version squawk assumes, e.g. 15")
    lint.add_argument(
        "--all-rules", action="store_true", help="keep squawk's style and timeout rules too"
    )
    lint.set_defaults(func=_cmd_lint, needs={"alembic": "alembic"})
    init = sub.add_parser(
        "init-migrations",
        help="create an Alembic environment whose env.py runs run_migrations",
        description="Alembic's generic template with an env.py using sqlalchemy-resilience's run_migrations.",
    )
    init.add_argument("directory", help="the new migrations folder")
    init.add_argument(
        "--ini", default="alembic.ini", help="where to write the config (default ./alembic.ini)"
    )
    init.set_defaults(func=_cmd_init, needs={"alembic": "alembic"})
