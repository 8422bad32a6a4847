"""Resumable batch writes: a job's progress in ``sqlalchemy_resilience_batch_job``.

Each chunk advances its job's row **in the chunk's own transaction**, with a
compare-and-set on the number of chunks done: the chunk's rows and "chunk N
is done" commit together or not at all, and two runs of the same job cannot
both commit chunk N (the second finds the count moved and stops with
:class:`JobConflict`). Re-running a crashed job skips exactly the rows it recorded
and continues with the next: no duplicates, no gaps -- provided the rows come
in the same order each time (a query with ``ORDER BY``, a file, a range). An
input shorter than what the job already committed cannot be that input: the
run is refused with :class:`JobInputMismatch` before it writes anything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection

from sqlalchemy_resilience.errors.operations import JobConflict, JobInputMismatch
from sqlalchemy_resilience.schema import JOB_NAME_MAX_LENGTH, batch_jobs

__all__ = [
    "JobState",
    "advance",
    "check_job_name",
    "finish",
    "open_job",
    "short_input",
]

RUNNING = "running"
FINISHED = "finished"

_INSERTS = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
    "mysql": mysql.insert,
    "mariadb": mysql.insert,
}


def check_job_name(job: object) -> str:
    """A job name: a non-empty string of at most 200 characters."""
    if not isinstance(job, str) or not 0 < len(job) <= JOB_NAME_MAX_LENGTH:
        raise ValueError(
            f"job must be a string of 1 to {JOB_NAME_MAX_LENGTH} characters, got {job!r}"
        )
    return job


@dataclass(frozen=True)
class JobState:
    """Where a job stands: chunks and rows committed, and whether it finished."""

    chunks_done: int
    rows_done: int
    finished: bool


def open_job(conn: Connection, job: str, table_name: str, chunk_size: int) -> JobState:
    """Create the job's row if new; its state. A job re-run with another table or chunk size is refused."""
    dialect = conn.dialect.name
    insert: Any = _INSERTS.get(dialect)
    if insert is None:
        raise ValueError(
            f"resumable jobs need PostgreSQL, SQLite, MySQL or MariaDB, not {dialect!r}"
        )
    new = insert(batch_jobs).values(
        job=job, table_name=table_name, chunk_size=chunk_size, status=RUNNING
    )
    if dialect in ("mysql", "mariadb"):
        conn.execute(new.prefix_with("IGNORE"))  # an existing job's row stays as it is
    else:
        conn.execute(new.on_conflict_do_nothing(index_elements=["job"]))
    row = conn.execute(select(batch_jobs).where(batch_jobs.c.job == job)).one()
    if row.table_name != table_name:
        raise ValueError(
            f"batch job {job!r} wrote to table {row.table_name!r}, not {table_name!r}; "
            "use another job name"
        )
    if row.chunk_size != chunk_size:
        raise ValueError(
            f"batch job {job!r} ran with chunk_size={row.chunk_size}; resume it with the same "
            f"chunk_size (got {chunk_size}) so that its chunks line up"
        )
    state = JobState(int(row.chunks_done), int(row.rows_done), row.status == FINISHED)
    if not state.chunks_done <= state.rows_done <= state.chunks_done * chunk_size:
        # Every committed chunk holds 1 to chunk_size rows.
        raise JobInputMismatch(
            job,
            state.rows_done,
            f"its record says {state.chunks_done} chunks of at most {chunk_size} rows, "
            "which cannot hold them",
        )
    return state


def short_input(job: str, rows_done: int) -> Callable[[int], JobInputMismatch]:
    """What a resumed job raises when its input ends after ``seen`` of its committed rows."""

    def error(seen: int) -> JobInputMismatch:
        return JobInputMismatch(job, rows_done, f"this input has only {seen} rows")

    return error


def advance(conn: Connection, job: str, chunk: int, rows: int) -> None:
    """Record chunk ``chunk`` (``rows`` rows) as done, in the chunk's transaction."""
    result = conn.execute(
        update(batch_jobs)
        .where(batch_jobs.c.job == job, batch_jobs.c.chunks_done == chunk)
        .values(
            chunks_done=chunk + 1,
            rows_done=batch_jobs.c.rows_done + rows,
            updated_at=func.now(),
        )
    )
    if result.rowcount != 1:
        raise JobConflict(job, chunk)


def finish(conn: Connection, job: str) -> None:
    """Mark the job finished: a later run with this name writes nothing."""
    conn.execute(
        update(batch_jobs)
        .where(batch_jobs.c.job == job)
        .values(status=FINISHED, updated_at=func.now())
    )
