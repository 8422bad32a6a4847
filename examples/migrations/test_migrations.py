"""The project's own migration test (docs/migrations.md): `pytest test_migrations.py`."""

from __future__ import annotations

# [check]
from sqlalchemy_resilience.migrations import check_migrations


def test_migrations(tmp_path):  # a pytest test
    check_migrations("alembic.ini", url=f"sqlite:///{tmp_path / 'check.db'}").assert_ok()


# [/check]
