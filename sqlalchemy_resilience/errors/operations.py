"""The errors of the package's own operations: sagas, batch writes, migrations.

They are :class:`~sqlalchemy_resilience.errors.base.ResilienceError` like the
translated database errors (the whole tree is drawn in
:mod:`~sqlalchemy_resilience.errors.hierarchy`), so one ``except
ResilienceError`` sees every failure the package reports.

* :class:`SagaCompensated`, :class:`SagaCompensationFailed` (also an
  ``ExceptionGroup`` of the step's error and each failed compensation's),
  :class:`SagaInProgress`, :class:`SagaLeaseLost`: how a saga ends when it does
  not complete; :class:`SagaStepFailed` stands for a failure read back from the
  saga log.
* :class:`BatchChunkFailed`, :class:`JobConflict`, :class:`JobInputMismatch`:
  bulk writes.
* :class:`MigrationThroughPooler`, :class:`MigrationLockTimeout`: migrations.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .base import ResilienceError, new_error_id

__all__ = [
    "BatchChunkFailed",
    "JobConflict",
    "JobInputMismatch",
    "MigrationLockTimeout",
    "MigrationThroughPooler",
    "SagaCompensated",
    "SagaCompensationFailed",
    "SagaInProgress",
    "SagaLeaseLost",
    "SagaStepFailed",
]


class SagaCompensated(ResilienceError):
    """A step failed; every completed step before it was compensated, in reverse.

    Attributes:
        saga_id: the saga.
        failed_step: the step whose action failed.
        error: a one-line description of that failure (also in the log).
        compensated: the steps compensated, in the order it happened.

    The step's exception is ``__cause__`` when it happened in this process.

    Example::

        try:
            await place_order.execute({"sku": "A1", "qty": 2}, saga_id=order_id, sessionmaker=Session)
        except SagaCompensated as exc:
            log.info("order %s rolled back at %s", exc.saga_id, exc.failed_step)
    """

    message_key = "saga_failed"

    def __init__(
        self, saga_id: str, failed_step: str, error: str, compensated: Sequence[str] = ()
    ) -> None:
        super().__init__(
            f"saga {saga_id!r}: step {failed_step!r} failed ({error}); "
            f"compensated {list(compensated)}",
            retryable=False,
        )
        self.saga_id = saga_id
        self.failed_step = failed_step
        self.error = error
        self.compensated = tuple(compensated)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.saga_id, self.failed_step, self.error, self.compensated),
            {"error_id": self.error_id},
        )


class SagaStepFailed(Exception):
    """Stands for a step's or compensation's error read back from the saga log.

    When a saga's outcome is returned to a later start (or seen by an
    operator), the original exceptions are gone; their recorded one-line
    descriptions come back as these.

    Example::

        except SagaCompensationFailed as group:
            for failure in group.exceptions:  # SagaStepFailed when read from the log
                print(getattr(failure, "step", "?"), failure)
    """

    def __init__(self, step: str, description: str) -> None:
        super().__init__(f"{step}: {description}")
        self.step = step
        self.description = description


class SagaCompensationFailed(ResilienceError, ExceptionGroup[Exception]):
    """A step failed and compensating failed too: every failure, raised together.

    An ``ExceptionGroup`` (``except*`` sees each failure) and a
    :class:`ResilienceError` (``except ResilienceError`` sees the saga's end).
    ``exceptions`` holds the failed step's error first, then each failed
    compensation's (each with a note naming its step). The saga is
    ``compensation_failed`` in the log: fix the cause, then
    :meth:`Saga.redrive` runs the compensations that have not succeeded yet.

    Attributes:
        saga_id: the saga.
        failed_step: the step whose action failed.
        compensation_failures: step name -> one-line error, for each failed compensation.

    Example::

        except SagaCompensationFailed as group:
            alert(f"saga {group.saga_id} needs an operator: {list(group.compensation_failures)}")
    """

    message_key = "saga_failed"

    saga_id: str
    failed_step: str
    compensation_failures: dict[str, str]

    def __new__(
        cls,
        saga_id: str,
        failed_step: str,
        errors: Sequence[Exception],
        compensation_failures: Mapping[str, str],
    ) -> SagaCompensationFailed:
        message = (
            f"saga {saga_id!r}: step {failed_step!r} failed and the compensation of "
            f"{sorted(compensation_failures)} failed too"
        )
        self = ExceptionGroup.__new__(cls, message, list(errors))
        self.saga_id = saga_id
        self.failed_step = failed_step
        self.compensation_failures = dict(compensation_failures)
        return self

    def __init__(
        self,
        saga_id: str,
        failed_step: str,
        errors: Sequence[Exception],
        compensation_failures: Mapping[str, str],
    ) -> None:
        # The group's own constructor (ResilienceError's would pass it one argument).
        ExceptionGroup.__init__(self, self.message, list(errors))
        self.retryable = False
        self.sqlstate = None
        self.error_id = new_error_id()

    def derive(self, excs: Sequence[Exception]) -> SagaCompensationFailed:  # type: ignore[override]
        return SagaCompensationFailed(
            self.saga_id, self.failed_step, excs, self.compensation_failures
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.saga_id, self.failed_step, list(self.exceptions), self.compensation_failures),
            {"error_id": self.error_id},
        )


class SagaInProgress(ResilienceError):
    """A saga with this id is running in another process or task; try again later.

    Attributes:
        saga_id: the saga.
        retry_after: seconds until its driver's lease runs out (then it can be taken over).

    Example::

        except SagaInProgress as exc:
            return Response(status_code=409, headers={"Retry-After": str(round(exc.retry_after))})
    """

    message_key = "in_progress"
    default_retryable = True

    def __init__(self, saga_id: str, retry_after: float) -> None:
        super().__init__(
            f"saga {saga_id!r} is being driven elsewhere; its lease ends in {retry_after:.1f}s"
        )
        self.saga_id = saga_id
        self.retry_after = max(float(retry_after), 0.0)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.saga_id, self.retry_after), {"error_id": self.error_id})


class SagaLeaseLost(ResilienceError):
    """This driver's lease on a saga ran out and another instance took it over.

    Raised at the next step boundary; the step that was under way was not
    recorded, so the new driver re-runs it (a database step rolled back; an
    external call is repeated with the same idempotency key).

    Example::

        except SagaLeaseLost:
            ...  # another instance took over; it will finish the saga
    """

    def __init__(self, saga_id: str) -> None:
        super().__init__(f"saga {saga_id!r} is now driven by another instance")
        self.saga_id = saga_id

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.saga_id,), {"error_id": self.error_id})


class BatchChunkFailed(ResilienceError):
    """A chunk failed for good: the run stopped there; the chunks before it stay committed.

    Attributes:
        chunk: the chunk's index (0-based).
        first_row, last_row: the input positions (0-based) of the chunk's rows.
        bad_row: the input position of the first row that fails on its own, or
            None when no single row does (the chunk failed as a whole: a lost
            connection, a deadline, ...).
        rows_committed: rows committed before this chunk (by this call and,
            for a job, the runs before it).

    The translated database error is ``__cause__``.

    Example::

        try:
            await bulk_insert(engine, Event, rows)
        except BatchChunkFailed as exc:
            print(exc.chunk, exc.bad_row, exc.rows_committed, exc.error)
    """

    def __init__(
        self,
        *,
        chunk: int,
        first_row: int,
        last_row: int,
        bad_row: int | None,
        rows_committed: int,
        error: str,
    ) -> None:
        where = f"at row {bad_row}" if bad_row is not None else "(no single row fails alone)"
        super().__init__(
            f"chunk {chunk} (rows {first_row}-{last_row}) failed {where}: {error}; "
            f"the {rows_committed} rows before it stay committed",
            retryable=False,
        )
        self.chunk = chunk
        self.first_row = first_row
        self.last_row = last_row
        self.bad_row = bad_row
        self.rows_committed = rows_committed
        self.error = error

    def __reduce__(self) -> tuple[Any, ...]:
        options = {
            "chunk": self.chunk,
            "first_row": self.first_row,
            "last_row": self.last_row,
            "bad_row": self.bad_row,
            "rows_committed": self.rows_committed,
            "error": self.error,
        }
        return (_rebuild_batch_failure, (options,), {"error_id": self.error_id})


class JobConflict(ResilienceError):
    """Another run of the same job committed the chunk this run was about to commit.

    Attributes:
        job: the job name.
        chunk: the chunk this run tried to commit.

    Example::

        try:
            await bulk_insert(engine, Event, rows, job="backfill-1")
        except JobConflict:
            ...  # another instance runs this job now
    """

    def __init__(self, job: str, chunk: int) -> None:
        super().__init__(
            f"batch job {job!r}: chunk {chunk} was committed by another run of the same job; "
            "stopping this one (run one instance of a job at a time)",
            retryable=False,
        )
        self.job = job
        self.chunk = chunk

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job, self.chunk), {"error_id": self.error_id})


class JobInputMismatch(ResilienceError, ValueError):
    """A resumed job's input cannot be the one it started with: nothing was written.

    Raised when the input ends before the rows the job already committed, or
    when the job's record is inconsistent with its chunk size.

    Attributes:
        job: the job name.
        rows_done: rows the job committed before.

    Example::

        try:
            await bulk_insert(engine, Event, rows, job="backfill-1")
        except JobInputMismatch as exc:
            print(exc.rows_done)   # the rows committed by the earlier run
    """

    def __init__(self, job: str, rows_done: int, detail: str) -> None:
        super().__init__(
            f"batch job {job!r} committed {rows_done} rows before; {detail}. Resume it with "
            "the same rows in the same order (more may follow), or use another job name",
            retryable=False,
        )
        self.job = job
        self.rows_done = rows_done
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.job, self.rows_done, self.detail), {"error_id": self.error_id})


class MigrationThroughPooler(ResilienceError, RuntimeError):
    """Refused: migrating through a transaction-mode pooler, where the lock would not hold.

    The migration lock is a session-level advisory lock and the timeouts are
    session settings; a transaction pooler (PgBouncer, RDS Proxy, Supavisor)
    hands the server session to other clients between transactions, so the
    lock would protect nothing and the settings would leak. Migrate through a
    direct URL or a session-mode pool (``lock=False`` opts out of the lock and this check).

    Example::

        try:
            run_migrations(target_metadata)
        except MigrationThroughPooler:
            sys.exit("set DATABASE_URL to the server, not the pooler, for migrations")
    """

    message_key = "service_unavailable"


class MigrationLockTimeout(ResilienceError, TimeoutError):
    """Another instance held the migration lock for longer than the wait allowed.

    Attributes:
        waited: seconds waited.
        holder: the PostgreSQL backend pid holding the lock, when known.

    Example::

        try:
            run_migrations(target_metadata, lock_wait=60)
        except MigrationLockTimeout as exc:
            sys.exit(f"another instance is still migrating (pid {exc.holder})")
    """

    message_key = "service_unavailable"
    default_retryable = True

    def __init__(self, waited: float, holder: int | None = None) -> None:
        who = f" (held by backend pid {holder})" if holder is not None else ""
        super().__init__(
            f"waited {waited:.1f}s for the migration lock{who}; another instance is migrating"
        )
        self.waited = waited
        self.holder = holder

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.waited, self.holder), {"error_id": self.error_id})


def _rebuild_batch_failure(options: dict[str, Any]) -> BatchChunkFailed:
    return BatchChunkFailed(**options)
