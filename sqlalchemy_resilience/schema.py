"""The package's own tables.

Create them with the package's Alembic environment (``alembic -c
<site-packages>/../alembic.ini upgrade head`` from a source checkout, or your
own migration copying the revisions) or, for tests and small apps, with
``metadata.create_all(engine)`` / :func:`create_saga_tables`.

Example::

    from sqlalchemy_resilience.schema import metadata
    metadata.create_all(engine)   # sync Engine; for AsyncEngine use conn.run_sync
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Double,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
)
from sqlalchemy.engine import Connection, Engine

__all__ = [
    "IDEMPOTENCY_KEY_MAX_LENGTH",
    "JOB_NAME_MAX_LENGTH",
    "SAGA_ID_MAX_LENGTH",
    "batch_jobs",
    "create_batch_tables",
    "create_migration_tables",
    "create_saga_tables",
    "idempotency_keys",
    "metadata",
    "migration_checksums",
    "migration_steps",
    "saga_steps",
    "sagas",
]

#: Every table of the package, for ``create_all`` and Alembic autogenerate.
metadata = MetaData()

#: Longest idempotency key accepted by :func:`~sqlalchemy_resilience.run_transaction`.
IDEMPOTENCY_KEY_MAX_LENGTH = 255

#: Longest saga id (and saga or step name) the saga log accepts.
SAGA_ID_MAX_LENGTH = 200

#: One row per unit of work committed with an ``idempotency_key``: the row is
#: inserted in the same transaction as the work, so "the key exists" and "the
#: work committed" are the same fact.
idempotency_keys = Table(
    "sqlalchemy_resilience_idempotency",
    metadata,
    Column("key", String(IDEMPOTENCY_KEY_MAX_LENGTH), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

#: One row per durable saga: where it is (``status``, ``position``), what it
#: was started with (``data``, JSON), who drives it (``owner`` until
#: ``lease_until``, in the database's clock, seconds since the epoch: a double,
#: since MySQL's FLOAT is single precision and rounds today's epoch to 128 s) and
#: why it failed. ``version`` counts the row's updates.
sagas = Table(
    "sqlalchemy_resilience_saga",
    metadata,
    Column("id", String(SAGA_ID_MAX_LENGTH), primary_key=True),
    Column("name", String(SAGA_ID_MAX_LENGTH), nullable=False),
    Column("status", String(32), nullable=False),
    Column("position", Integer, nullable=False),
    Column("data", Text, nullable=False),
    Column("failed_step", String(SAGA_ID_MAX_LENGTH)),
    Column("error", Text),
    Column("owner", String(64)),
    Column("lease_until", Double),
    Column("recoveries", Integer, nullable=False, server_default="0"),
    Column("version", Integer, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_sqlalchemy_resilience_saga_status", "status", "lease_until"),
)

#: One row per step of a durable saga that has started: its status, its
#: result (JSON), how many times its action was started, the error it failed with.
saga_steps = Table(
    "sqlalchemy_resilience_saga_step",
    metadata,
    Column("saga_id", String(SAGA_ID_MAX_LENGTH), primary_key=True),
    Column("step", String(SAGA_ID_MAX_LENGTH), primary_key=True),
    Column("position", Integer, nullable=False),
    Column("status", String(32), nullable=False),
    Column("result", Text),
    Column("error", Text),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("owner", String(64)),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    ForeignKeyConstraint(["saga_id"], ["sqlalchemy_resilience_saga.id"], ondelete="CASCADE"),
)


#: Longest job name of a resumable batch write.
JOB_NAME_MAX_LENGTH = 200

#: One row per resumable batch write (``bulk_insert(..., job=...)``): how many
#: chunks and rows have committed. Each chunk's rows and the advance of this row
#: commit in one transaction, so "recorded" and "written" are the same fact.
batch_jobs = Table(
    "sqlalchemy_resilience_batch_job",
    metadata,
    Column("job", String(JOB_NAME_MAX_LENGTH), primary_key=True),
    Column("table_name", String(400), nullable=False),
    Column("chunk_size", Integer, nullable=False),
    Column("chunks_done", Integer, nullable=False, server_default="0"),
    Column("rows_done", BigInteger, nullable=False, server_default="0"),
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


#: One row per revision applied by :func:`~sqlalchemy_resilience.migrations.run_migrations`:
#: the SHA-256 of the revision's file when it was applied, per version table
#: (an application's migrations and this package's can share a database).
#: Written in the migration's own transaction, deleted when it is downgraded.
migration_checksums = Table(
    "sqlalchemy_resilience_migration_checksum",
    metadata,
    Column("version_table", String(200), primary_key=True),
    Column("revision", String(200), primary_key=True),
    Column("checksum", String(64), nullable=False),
    Column("filename", String(400), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


#: Where DDL is not transactional (MySQL, MariaDB): the revision a
#: ``run_migrations`` has started and not finished, per version table. Written
#: (and committed) before the revision's first statement, deleted in the
#: transaction that records it as applied; a row left behind is a revision
#: interrupted half-way, which ``verify_migrations`` reports and
#: ``run_migrations`` refuses to run again unless told to.
migration_steps = Table(
    "sqlalchemy_resilience_migration_step",
    metadata,
    Column("version_table", String(200), primary_key=True),
    Column("revision", String(200), nullable=False),
    Column("direction", String(16), nullable=False),
    Column("started_by", String(200), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)


def create_migration_tables(bind: Engine | Connection) -> None:
    """Create the migration checksum and step tables if they do not exist (``run_migrations``
    does it itself).

    Example::

        create_migration_tables(engine)
    """
    if not isinstance(bind, (Engine, Connection)):
        raise TypeError(
            f"bind must be a sqlalchemy Engine or Connection, got {type(bind).__name__}"
        )
    metadata.create_all(bind, tables=[migration_checksums, migration_steps])


def create_batch_tables(bind: Engine | Connection) -> None:
    """Create the resumable-batch table if it does not exist (what the Alembic revision creates).

    Example::

        async with async_engine.begin() as conn:
            await conn.run_sync(create_batch_tables)
    """
    if not isinstance(bind, (Engine, Connection)):
        raise TypeError(
            "bind must be a sqlalchemy Engine or Connection (for an AsyncEngine: "
            f"await conn.run_sync(create_batch_tables)), got {type(bind).__name__}"
        )
    metadata.create_all(bind, tables=[batch_jobs])


def create_saga_tables(bind: Engine | Connection) -> None:
    """Create the saga log tables if they do not exist (what the Alembic revision creates).

    Example::

        create_saga_tables(engine)                      # sync Engine or Connection
        async with async_engine.begin() as conn:        # AsyncEngine
            await conn.run_sync(create_saga_tables)
    """
    if not isinstance(bind, (Engine, Connection)):
        raise TypeError(
            "bind must be a sqlalchemy Engine or Connection (for an AsyncEngine: "
            f"await conn.run_sync(create_saga_tables)), got {type(bind).__name__}"
        )
    metadata.create_all(bind, tables=[sagas, saga_steps])
