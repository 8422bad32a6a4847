"""Whether the server behind a connection takes writes, and if not, why.

The question a health endpoint asks after a failover: this node answers
``SELECT 1``, but is it the writer? Each reason is one short phrase:

* PostgreSQL: ``in recovery`` (a standby), ``transaction_read_only`` (a
  primary fenced or demoted with ``default_transaction_read_only``);
* MySQL/MariaDB: ``read_only``, ``innodb_read_only`` (an Aurora MySQL reader);
* a Galera node (MariaDB with ``wsrep_on``): ``wsrep_ready OFF``,
  ``wsrep_cluster_status non-Primary`` (no quorum), ``wsrep_local_state_comment
  Donor/Desynced`` (not synced): a node that answers but should not be given writes.

SQLite has no server role: no reason, ever.

Example::

    with engine.connect() as conn:
        reasons = writer_refusals(conn)   # [] on a writer
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection

__all__ = ["writer_refusals"]

_POSTGRESQL = text(
    "SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.current_setting('transaction_read_only')"
)
_MYSQL = text("SELECT @@global.read_only, @@global.innodb_read_only")
_MARIADB = text("SELECT @@global.read_only, @@global.innodb_read_only, @@global.wsrep_on")
# Galera's own state, by name: each one that is off is a reason of its own.
_WSREP = text(
    "SHOW GLOBAL STATUS WHERE Variable_name IN "
    "('wsrep_ready', 'wsrep_cluster_status', 'wsrep_local_state_comment')"
)
_GALERA_WANTS = {
    "wsrep_ready": "ON",
    "wsrep_cluster_status": "Primary",
    "wsrep_local_state_comment": "Synced",
}


def writer_refusals(conn: Connection) -> list[str]:
    """Why the server of ``conn`` takes no writes: an empty list on a writer.

    Runs one or two read-only queries on ``conn`` (inside its current
    transaction, if any). For an ``AsyncConnection`` use
    ``await conn.run_sync(writer_refusals)``.

    Example::

        async with engine.connect() as conn:
            reasons = await conn.run_sync(writer_refusals)
            if reasons:
                print("not the writer:", ", ".join(reasons))
    """
    dialect = conn.dialect
    if dialect.name == "postgresql":
        in_recovery, read_only = conn.execute(_POSTGRESQL).one()
        return [
            reason
            for reason, applies in (
                ("in recovery", bool(in_recovery)),
                ("transaction_read_only", read_only == "on"),
            )
            if applies
        ]
    if dialect.name != "mysql":
        return []
    mariadb = bool(getattr(dialect, "is_mariadb", False))
    row = conn.execute(_MARIADB if mariadb else _MYSQL).one()
    reasons = [
        name for name, value in (("read_only", row[0]), ("innodb_read_only", row[1])) if value
    ]
    if mariadb and row[2]:
        status = {str(name).lower(): str(value) for name, value in conn.execute(_WSREP)}
        reasons += [
            f"{name} {status.get(name, 'missing')}"
            for name, wanted in _GALERA_WANTS.items()
            if status.get(name) != wanted
        ]
    return reasons
