"""Kept for ``from sqlalchemy_resilience.embedded import EmbeddedPostgres``; see :mod:`sqlalchemy_resilience.testing.embedded`."""

from __future__ import annotations

from sqlalchemy_resilience.testing.embedded import EmbeddedPostgres as EmbeddedPostgres
from sqlalchemy_resilience.testing.embedded import EmbeddedPostgresError as EmbeddedPostgresError
from sqlalchemy_resilience.testing.embedded import find_pg_bin as find_pg_bin

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError", "find_pg_bin"]
