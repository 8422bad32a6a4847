"""What every command shares: exit codes, the one-line command error, URL and driver checks."""

from __future__ import annotations

import argparse
import importlib
import math
from collections.abc import Callable

from sqlalchemy.engine import URL, make_url

from sqlalchemy_resilience._util.urls import MALFORMED_URL_HINT, malformed_url_reason

__all__ = [
    "EXIT_DRIVER_MISSING",
    "EXIT_FAILED",
    "EXIT_TEMPFAIL",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "CommandError",
    "check_driver",
    "parse_url",
    "require_module",
    "seconds_arg",
]

#: A migration (or a check) failed.
EXIT_FAILED = 1
EXIT_USAGE = 64
EXIT_UNAVAILABLE = 69
EXIT_DRIVER_MISSING = 78
#: Try again later: another instance is migrating, or a table lock was not obtained.
EXIT_TEMPFAIL = 75

# The extra that installs each driver the package supports.
_EXTRAS = {
    "asyncpg": "asyncpg",
    "psycopg": "psycopg",
    "aiosqlite": "aiosqlite",
    "pymysql": "pymysql",
    "aiomysql": "aiomysql",
    "asyncmy": "asyncmy",
    "MySQLdb": "mysqlclient",
}
# Drivers whose distribution on PyPI is not named like the module they import.
_DISTRIBUTIONS = {"MySQLdb": "mysqlclient", "psycopg2": "psycopg2-binary", "cx_Oracle": "cx-Oracle"}


class CommandError(Exception):
    """A failure of the command itself: printed as one line, exits with ``code``.

    Example::

        raise CommandError(EXIT_USAGE, "--timeout must be > 0 seconds, got 0")
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_url(text: str, what: str) -> URL:
    """``text`` as a URL, or a one-line usage error that shows no part of it.

    Example::

        url = parse_url(args.url, "URL")
    """
    try:
        url = make_url(text)
    except Exception as exc:
        raise CommandError(
            EXIT_USAGE,
            f"{what} is not a SQLAlchemy URL ({type(exc).__name__}); {MALFORMED_URL_HINT}",
        ) from None
    reason = malformed_url_reason(url)
    if reason is not None:
        raise CommandError(EXIT_USAGE, f"{what}: {reason}")
    return url


def check_driver(url: URL) -> None:
    """A one-line error naming what to install when ``url``'s driver is missing."""
    try:
        dialect = url.get_dialect()
        dialect.import_dbapi()
    except ImportError as exc:
        module = (getattr(exc, "name", None) or url.get_driver_name()).split(".")[0]
        extra = _EXTRAS.get(module)
        hint = (
            f'pip install "sqlalchemy-resilience[{extra}]"'
            if extra
            else f"pip install {_DISTRIBUTIONS.get(module, module)}"
        )
        raise CommandError(
            EXIT_DRIVER_MISSING,
            f"the driver for {url.drivername} ({module}) is not installed: {hint}",
        ) from None
    except Exception as exc:  # an unknown dialect name
        raise CommandError(
            EXIT_USAGE, f"no SQLAlchemy dialect for {url.drivername!r} ({type(exc).__name__})"
        ) from None


def seconds_arg(*, positive: bool) -> Callable[[str], float]:
    """An argparse ``type=`` for a number of seconds: finite, ``> 0`` (``positive``) or ``>= 0``.

    A bad value is argparse's one-line usage error (exit 64), before the
    command does anything.

    Example::

        health.add_argument("--timeout", type=seconds_arg(positive=True), default=2.0)
    """
    bound = "> 0" if positive else ">= 0"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be a number of seconds {bound}, got {text!r}"
            ) from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(
                f"must be a finite number of seconds {bound}, got {text}"
            )
        return value

    return parse


def require_module(module: str, extra: str, command: str) -> None:
    """A one-line error naming the extra to install when ``command`` needs a missing ``module``.

    Example::

        require_module("alembic", "alembic", "migrate")
    """
    try:
        importlib.import_module(module)
    except ImportError:
        raise CommandError(
            EXIT_DRIVER_MISSING,
            f"{command} needs {module}, which is not installed: "
            f'pip install "sqlalchemy-resilience[{extra}]"',
        ) from None
