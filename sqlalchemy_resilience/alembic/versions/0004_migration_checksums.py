"""migration checksums: what each applied revision's file was when it ran

Revision ID: 0004_migration_checksums
Revises: 0003_batch_jobs
Create Date: 2026-12-02

``run_migrations`` creates this table itself (before its first migration, so
it can record this very revision); here it is created only where it is missing.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_migration_checksums"
down_revision: str | Sequence[str] | None = "0003_batch_jobs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "sqlalchemy_resilience_migration_checksum"


def upgrade() -> None:
    if not op.get_context().as_sql and sa.inspect(op.get_bind()).has_table(TABLE):
        return
    op.create_table(
        TABLE,
        sa.Column("version_table", sa.String(200), primary_key=True),
        sa.Column("revision", sa.String(200), primary_key=True),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.Column("filename", sa.String(400), nullable=False),
        sa.Column(
            "applied_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )


def downgrade() -> None:
    op.drop_table(TABLE)
