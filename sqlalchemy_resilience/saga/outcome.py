"""How a saga ends when it does not complete: the errors :meth:`Saga.run` raises.

* :class:`SagaCompensated` -- a step failed and every completed step was
  compensated: the saga left nothing behind.
* :class:`SagaCompensationFailed` -- a step failed and at least one
  compensation failed too, after its retries: an ``ExceptionGroup`` of the
  step's error and each compensation's, each annotated with its step. The saga
  is left ``compensation_failed`` in the log for an operator to see and re-drive.
* :class:`SagaInProgress` -- a saga with this id is being driven elsewhere.
* :class:`SagaLeaseLost` -- this process stopped driving a saga another
  instance took over (its lease had expired); nothing was applied twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy_resilience.errors.hierarchy import ResilienceError

__all__ = [
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
            await place_order.run({"sku": "A1", "qty": 2}, saga_id=order_id, sessionmaker=Session)
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


class SagaCompensationFailed(ExceptionGroup[Exception]):
    """A step failed and compensating failed too: every failure, raised together.

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
        self = super().__new__(cls, message, list(errors))
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
        super().__init__(self.message, list(errors))

    def derive(self, excs: Sequence[Exception]) -> SagaCompensationFailed:  # type: ignore[override]
        return SagaCompensationFailed(
            self.saga_id, self.failed_step, excs, self.compensation_failures
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
