"""A transaction that lost a statement is rolled back, never committed.

On MySQL and MariaDB a lock wait timeout (1205) rolls back only the statement
that waited (``innodb_rollback_on_timeout`` is off by default): the
transaction stays open, and an application that catches the error and goes on
would commit the rest without it. Error translation marks the connection when
such an error passes through it (:data:`STATEMENT_ROLLED_BACK`); the
package's own transactions -- ``transaction()`` and ``run_transaction`` -- look
for the mark before they commit, and roll back instead, raising a retryable
:class:`~sqlalchemy_resilience.LockNotAvailable` (``run_transaction`` re-runs
the unit of work whole).
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

from sqlalchemy_resilience.errors.hierarchy import LockNotAvailable
from sqlalchemy_resilience.errors.translate import STATEMENT_ROLLED_BACK

__all__ = ["forget_lost_statement", "refuse_partial_commit"]


def forget_lost_statement(conn: Connection | None) -> None:
    """Clear a mark left by an earlier transaction on this (pooled) connection."""
    if conn is not None and not conn.closed:
        conn.info.pop(STATEMENT_ROLLED_BACK, None)


def refuse_partial_commit(conn: Connection | None) -> None:
    """Raise instead of committing when a statement of this transaction was rolled back alone.

    Raises:
        LockNotAvailable: retryable; the caller rolls back, and ``run_transaction``
            re-runs the whole unit of work.
    """
    if conn is None or conn.closed:
        return
    lost = conn.info.pop(STATEMENT_ROLLED_BACK, None)
    if lost is None:
        return
    raise LockNotAvailable(
        f"a statement of this transaction failed ({lost}) and only that statement was "
        "rolled back; the transaction is rolled back instead of committed without it",
        retryable=True,
    )
