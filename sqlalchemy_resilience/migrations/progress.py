"""Where DDL is not transactional (MySQL, MariaDB): the revision in flight, never run twice unasked.

On PostgreSQL and SQLite a revision's DDL, its version row and its checksum
commit together or not at all (see :mod:`.runner`). MySQL commits every DDL
statement on its own: a revision that fails or is killed half-way leaves the
statements it had run, while the version table still names the revision
before it. Running it again would repeat them -- fail on "table exists" at
best, apply a data change twice at worst.

So there, before each revision, ``run_migrations`` writes and commits a row
naming it (:data:`~sqlalchemy_resilience.schema.migration_steps`), and deletes
the row in the transaction that moves the version table, so "applied" and "no
longer in flight" are one fact. A row still there when the next run starts is
a revision interrupted half-way:

* ``run_migrations`` refuses to run any revision (stamps still work), with one
  line saying which revision, since when, and what to do;
* ``verify_migrations`` reports it (finding kind ``"interrupted"``);
* once the schema has been put right by hand, ``alembic stamp <revision>`` (it
  was finished by hand) clears it, or ``-x rerun_interrupted=1`` (it was
  undone by hand) runs the revision again from its start.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, event, insert, inspect, select
from sqlalchemy.engine import Connection

from sqlalchemy_resilience.schema import migration_steps

__all__ = [
    "InFlight",
    "StepTracker",
    "forgetter",
    "in_flight",
    "interrupted_message",
    "is_interrupted",
    "non_transactional_ddl",
    "stamp_target",
]


@dataclass(frozen=True)
class InFlight:
    """A revision a run started and did not finish.

    Attributes:
        revision: the revision id.
        direction: ``"upgrade"`` or ``"downgrade"``.
        started_by: ``"<host> pid <pid>"`` of the process that started it.
        started_at: when it started (the database's clock).
    """

    revision: str
    direction: str
    started_by: str
    started_at: datetime | None


def non_transactional_ddl(connection: Connection, transactional_ddl: bool) -> bool:
    """Whether a revision's DDL commits statement by statement here (MySQL, MariaDB),
    given Alembic's ``transactional_ddl`` for the dialect.

    SQLite is transactional once ``run_migrations`` begins its transactions
    explicitly, whatever Alembic's SQLite implementation says.
    """
    return connection.dialect.name != "sqlite" and not transactional_ddl


def in_flight(connection: Connection, version_table: str) -> InFlight | None:
    """The revision started and not finished for ``version_table``, or None."""
    if not inspect(connection).has_table(migration_steps.name):
        return None
    table = migration_steps
    row = connection.execute(
        select(table.c.revision, table.c.direction, table.c.started_by, table.c.started_at).where(
            table.c.version_table == version_table
        )
    ).first()
    if row is None:
        return None
    return InFlight(row.revision, row.direction, row.started_by, row.started_at)


def is_interrupted(step: InFlight, applied: Iterable[str]) -> bool:
    """Whether ``step`` stopped half-way, given the revisions applied now.

    An upgrade whose revision is applied (or a downgrade whose revision is
    not) ended after all, or was stamped by hand: nothing is half-done.
    """
    done = step.revision in set(applied)
    return not done if step.direction == "upgrade" else done


def stamp_target(step: InFlight, script: Any) -> str:
    """What ``alembic stamp`` takes to record ``step`` as finished by hand."""
    if step.direction == "upgrade":
        return step.revision
    try:
        down = script.get_revision(step.revision).down_revision
    except Exception:  # the revision's file is gone: the operator knows better
        return f"{step.revision}-1"
    if down is None:
        return "base"
    return down if isinstance(down, str) else " ".join(down)


def interrupted_message(step: InFlight, version_table: str, script: Any) -> str:
    """One line: which revision stopped half-way, and the two ways on."""
    when = f" at {step.started_at:%Y-%m-%d %H:%M:%S}" if step.started_at else ""
    finished = stamp_target(step, script)
    return (
        f"the {step.direction} of revision {step.revision} ({version_table}) started{when} "
        f"by {step.started_by} did not finish, and this database's DDL is not "
        "transactional: part of it may be applied. Compare the schema with the revision, "
        f"then either finish it by hand and run 'alembic stamp {finished}', or undo it "
        "by hand and migrate with -x rerun_interrupted=1 to run it again from its start"
    )


def _applied(script: Any, heads: Iterable[str]) -> set[str]:
    heads = tuple(heads)
    if not heads:
        return set()
    return {r.revision for r in script.revision_map.iterate_revisions(heads, "base")}


def _started_by() -> str:
    return f"{socket.gethostname()} pid {os.getpid()}"[:200]


def _mark(connection: Connection, version_table: str, revision: str, direction: str) -> None:
    # Committed before the revision's first statement: a process killed inside
    # it leaves this row behind, whatever the revision had done by then.
    if connection.in_transaction():
        connection.commit()  # the reads Alembic autobegan
    table = migration_steps
    connection.execute(delete(table).where(table.c.version_table == version_table))
    connection.execute(
        insert(table).values(
            version_table=version_table,
            revision=revision,
            direction=direction,
            started_by=_started_by(),
        )
    )
    connection.commit()


class StepTracker:
    """Alembic's migration function (``fn``), marking each revision in flight before it runs.

    Before the first revision (not before stamps), a revision interrupted by
    an earlier run stops this one with ``refuse(message)``, unless
    ``rerun_interrupted``. While in use as a context manager it counts the
    statements each revision has completed, so a lock timeout on a revision's
    first statement (nothing of it applied) can be retried safely.

    Args:
        steps_of: Alembic's own ``fn`` (from ``EnvironmentContext.context_opts``).
        connection: the migrating connection.
        version_table: the version table.
        script: the ``ScriptDirectory``.
        rerun_interrupted: run an interrupted revision again instead of refusing.
        refuse: builds the exception that stops the run.

    Example::

        tracker = StepTracker(fn, connection=conn, version_table="alembic_version",
                              script=script, rerun_interrupted=False, refuse=CommandError)
        context.configure(connection=conn, fn=tracker.steps, ...)
        with tracker:
            context.run_migrations()
    """

    def __init__(
        self,
        steps_of: Callable[..., Iterable[Any]],
        *,
        connection: Connection,
        version_table: str,
        script: Any,
        rerun_interrupted: bool,
        refuse: Callable[[str], BaseException],
    ) -> None:
        self._steps_of = steps_of
        self._connection = connection
        self._version_table = version_table
        self._script = script
        self._rerun = rerun_interrupted
        self._refuse = refuse
        self._checked = False
        self._current: InFlight | None = None
        self._completed = 0

    def steps(self, heads: Any, context: Any) -> Iterator[Any]:
        """What Alembic runs: its own steps, each marked before it is handed over."""
        connection, table = self._connection, self._version_table
        for step in self._steps_of(heads, context):
            info = step.info
            if not info.is_stamp:
                if not self._checked:
                    self._checked = True
                    previous = in_flight(connection, table)
                    if (
                        previous is not None
                        and not self._rerun
                        and is_interrupted(previous, _applied(self._script, heads))
                    ):
                        raise self._refuse(interrupted_message(previous, table, self._script))
                # Upgrading or downgrading, the revision whose statements run.
                direction = "upgrade" if info.is_upgrade else "downgrade"
                revision = str(info.up_revision_id)
                _mark(connection, table, revision, direction)
                self._current = InFlight(revision, direction, _started_by(), None)
                self._completed = 0
            yield step

    def _completed_one(self, *args: Any) -> None:
        self._completed += 1

    def __enter__(self) -> StepTracker:
        event.listen(self._connection, "after_cursor_execute", self._completed_one)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(self._connection, "after_cursor_execute", self._completed_one)

    def retry_is_safe(self) -> bool:
        """After a failure: whether the revision in flight had completed no statement.

        If so its mark is removed (nothing of it is applied) and True is
        returned; a rerun starts it cleanly.
        """
        if self._current is None or self._completed:
            return False
        connection = self._connection
        if connection.in_transaction():
            connection.rollback()
        table = migration_steps
        connection.execute(delete(table).where(table.c.version_table == self._version_table))
        connection.commit()
        self._current, self._checked = None, False
        return True

    def interrupted_now(self) -> str:
        """The one-line advice for the revision that just stopped half-way."""
        if self._current is None:
            return "no revision is in flight"
        return interrupted_message(self._current, self._version_table, self._script)


def forgetter(version_table: str) -> Callable[..., None]:
    """The ``on_version_apply`` callback that ends the in-flight mark with the version change.

    It runs in the revision's own transaction, after the version row moved:
    both commit together. A stamp clears the mark too (the operator's way to
    say an interrupted revision was finished by hand).
    """

    def forget(*, ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
        connection: Connection | None = ctx.connection
        if connection is None or ctx.as_sql:
            return
        if inspect(connection).has_table(migration_steps.name):
            table = migration_steps
            connection.execute(delete(table).where(table.c.version_table == version_table))

    return forget
