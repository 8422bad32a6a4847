"""saga log: sagas and their steps

Revision ID: 0002_saga_log
Revises: 0001_idempotency_keys
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_saga_log"
down_revision: str | Sequence[str] | None = "0001_idempotency_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    now = sa.func.now()
    op.create_table(
        "sqlalchemy_resilience_saga",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("failed_step", sa.String(200)),
        sa.Column("error", sa.Text),
        sa.Column("owner", sa.String(64)),
        sa.Column("lease_until", sa.Double),
        sa.Column("recoveries", sa.Integer, nullable=False, server_default="0"),
        sa.Column("version", sa.Integer, nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
    )
    op.create_index(
        "ix_sqlalchemy_resilience_saga_status",
        "sqlalchemy_resilience_saga",
        ["status", "lease_until"],
    )
    op.create_table(
        "sqlalchemy_resilience_saga_step",
        sa.Column("saga_id", sa.String(200), primary_key=True),
        sa.Column("step", sa.String(200), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("result", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("owner", sa.String(64)),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.ForeignKeyConstraint(["saga_id"], ["sqlalchemy_resilience_saga.id"], ondelete="CASCADE"),
    )


def downgrade() -> None:
    op.drop_table("sqlalchemy_resilience_saga_step")
    op.drop_index("ix_sqlalchemy_resilience_saga_status", table_name="sqlalchemy_resilience_saga")
    op.drop_table("sqlalchemy_resilience_saga")
