"""migration steps: the revision in flight where DDL is not transactional (MySQL, MariaDB)

Revision ID: 0005_migration_steps
Revises: 0004_migration_checksums
Create Date: 2026-12-07

``run_migrations`` creates this table itself where it needs it (before the
first revision it runs); here it is created only where it is missing.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_migration_steps"
down_revision: str | Sequence[str] | None = "0004_migration_checksums"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "sqlalchemy_resilience_migration_step"


def upgrade() -> None:
    if not op.get_context().as_sql and sa.inspect(op.get_bind()).has_table(TABLE):
        return
    op.create_table(
        TABLE,
        sa.Column("version_table", sa.String(200), primary_key=True),
        sa.Column("revision", sa.String(200), nullable=False),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("started_by", sa.String(200), nullable=False),
        sa.Column(
            "started_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )


def downgrade() -> None:
    op.drop_table(TABLE)
