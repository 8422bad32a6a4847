"""The package's own tables.

Create them with the package's Alembic environment (``alembic -c
<site-packages>/../alembic.ini upgrade head`` from a source checkout, or your
own migration copying the revision) or, for tests and small apps, with
``metadata.create_all(engine)``.

Example::

    from sqlalchemy_resilience.schema import metadata
    metadata.create_all(engine)   # sync Engine; for AsyncEngine use conn.run_sync
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, MetaData, String, Table, func

__all__ = ["IDEMPOTENCY_KEY_MAX_LENGTH", "idempotency_keys", "metadata"]

#: Every table of the package, for ``create_all`` and Alembic autogenerate.
metadata = MetaData()

#: Longest idempotency key accepted by :func:`~sqlalchemy_resilience.run_transaction`.
IDEMPOTENCY_KEY_MAX_LENGTH = 255

#: One row per unit of work committed with an ``idempotency_key``: the row is
#: inserted in the same transaction as the work, so "the key exists" and "the
#: work committed" are the same fact.
idempotency_keys = Table(
    "sqlalchemy_resilience_idempotency",
    metadata,
    Column("key", String(IDEMPOTENCY_KEY_MAX_LENGTH), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
