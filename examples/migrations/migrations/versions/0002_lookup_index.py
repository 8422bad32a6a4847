"""An index on the lookup table.

Revision ID: 0002_lookup_index
Revises: 0001_lookup
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0002_lookup_index"
down_revision = "0001_lookup"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The table holds a few dozen rows: the lock of a plain CREATE INDEX lasts
    # milliseconds, and CONCURRENTLY cannot run in the migration's transaction.
    # [ignore]
    # lint: ignore[require-concurrent-index-creation]
    op.create_index("ix_small", "lookup", ["code"])
    # [/ignore]


def downgrade() -> None:
    op.drop_index("ix_small", table_name="lookup")
