"""resumable batch writes: their progress

Revision ID: 0003_batch_jobs
Revises: 0002_saga_log
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_batch_jobs"
down_revision: str | Sequence[str] | None = "0002_saga_log"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    now = sa.func.now()
    op.create_table(
        "sqlalchemy_resilience_batch_job",
        sa.Column("job", sa.String(200), primary_key=True),
        sa.Column("table_name", sa.String(400), nullable=False),
        sa.Column("chunk_size", sa.Integer, nullable=False),
        sa.Column("chunks_done", sa.Integer, nullable=False, server_default="0"),
        sa.Column("rows_done", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=now),
    )


def downgrade() -> None:
    op.drop_table("sqlalchemy_resilience_batch_job")
