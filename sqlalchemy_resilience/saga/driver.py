"""Driving one saga: forward step by step, and on a failure back through the compensations.

The same code drives a new saga, resumes one after a crash (the log says
where it stood) and re-drives one whose compensations failed. Durable or
not, async or ``execute_sync``, only the :class:`~.store.TxRunner` differs.

What each step costs in durable mode: a database step is **one** transaction
(lease renewal, the action's own statements, the step's record); an external
step is two (mark started; record the result) around the call.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session
from sqlalchemy.util import await_only

from sqlalchemy_resilience.errors.hierarchy import RetryExhausted
from sqlalchemy_resilience.errors.operations import (
    SagaCompensated,
    SagaCompensationFailed,
    SagaInProgress,
    SagaLeaseLost,
    SagaStepFailed,
)
from sqlalchemy_resilience.errors.translate import describe, translate_error
from sqlalchemy_resilience.retry.policy import RetryPolicy

from . import store
from .definition import Action, SagaContext, SagaDefinition, Step, decode, encode
from .metrics import count
from .store import SagaRecord, StepRecord, TxRunner

__all__ = ["Driver"]

_log = logging.getLogger("sqlalchemy_resilience.saga")

_SKIP = object()  # a step or compensation the log says is already done


class _RanButFailed(Exception):
    """An external action ran but its result cannot be recorded (not JSON): compensate it too."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _unwrap(exc: Exception) -> Exception:
    """The last error of a :class:`RetryExhausted` (noted with the attempts), else ``exc``."""
    if isinstance(exc, RetryExhausted) and isinstance(exc.errors[-1], Exception):
        last = exc.errors[-1]
        if hasattr(last, "add_note"):
            last.add_note(f"(the last of {exc.attempts} attempts)")
        return last
    return exc


def _advance(position: int, last: bool) -> dict[str, Any]:
    """The saga row's change when the step at ``position`` is recorded done.

    The last step also ends the saga, in the same transaction (one less per saga).
    """
    if last:
        return {
            "position": position + 1,
            "status": store.COMPLETED,
            "owner": None,
            "lease_until": None,
        }
    return {"position": position + 1}


def _one_line(exc: BaseException, *, external: bool = False) -> str:
    # An external step's socket error is the other system's (its HTTP call),
    # not a database outage: there only SQLAlchemy's own errors (the saga log's
    # writes) are translated.
    if external and not isinstance(exc, sa_exc.SQLAlchemyError):
        return describe(exc)[:2000]
    return describe(translate_error(exc))[:2000]


class Driver:
    """Drives sagas of one definition for one owner (an instance id)."""

    def __init__(
        self,
        definition: SagaDefinition,
        runner: TxRunner | None,
        *,
        owner: str,
        durable: bool,
        is_async: bool,
    ) -> None:
        self.definition = definition
        self.runner = runner
        self.owner = owner
        self.durable = durable
        self.is_async = is_async

    def sleep(self, seconds: float) -> None:
        """A retry's backoff: ``asyncio.sleep`` awaited from the greenlet for an async saga."""
        if self.is_async:
            await_only(asyncio.sleep(seconds))
        else:
            time.sleep(seconds)

    # -- log helpers -------------------------------------------------------------

    def _log(self, fn: Callable[[Session], Any]) -> Any:
        if not self.durable:
            return None
        assert self.runner is not None
        return self.runner.log(fn)

    def _record(
        self, record: SagaRecord, message: str, *args: Any, level: int = logging.INFO
    ) -> None:
        _log.log(
            level,
            "saga %s (%s): " + message,
            record.saga_id,
            record.name,
            *args,
            extra={
                "sqlalchemy_resilience.saga_id": record.saga_id,
                "sqlalchemy_resilience.saga": record.name,
                "sqlalchemy_resilience.saga_status": record.status,
            },
        )

    # -- starting ----------------------------------------------------------------

    def start(self, saga_id: str, data: Any) -> dict[str, Any]:
        """Run a new saga, or return (raise) the outcome of the one with this id."""
        definition = self.definition
        data_json = encode("the saga's data", data)
        record = SagaRecord(saga_id, definition.name, store.RUNNING, 0, decode(data_json))
        if self.durable:
            owner, lease = self.owner, definition.lease
            inserted = self._log(
                lambda s: store.insert_saga(s, saga_id, definition.name, data_json, owner, lease)
            )
            if not inserted:
                return self._existing(saga_id)
        count("started", definition.name)
        self._record(record, "started")
        return self.drive(record)

    def _existing(self, saga_id: str) -> dict[str, Any]:
        definition, owner, lease = self.definition, self.owner, self.definition.lease
        existing: SagaRecord | None = self._log(lambda s: store.load(s, saga_id))
        if existing is None:  # pragma: no cover - deleted between the two statements
            raise SagaInProgress(saga_id, 0.0)
        if existing.name != definition.name:
            raise ValueError(
                f"saga id {saga_id!r} belongs to saga {existing.name!r}, not {definition.name!r}"
            )
        if existing.status in store.TERMINAL:
            self._record(existing, "already %s: returning its outcome", existing.status)
            return self.outcome(existing)
        claimed = self._log(
            lambda s: store.claim(
                s, owner=owner, lease=lease, names=[definition.name], saga_id=saga_id
            )
        )
        if not claimed:
            raise SagaInProgress(saga_id, existing.lease_remaining or 0.0)
        resumed: SagaRecord = self._log(lambda s: store.load(s, saga_id))
        self._record(resumed, "interrupted earlier; resuming at step %d", resumed.position)
        return self.drive(resumed)

    def outcome(self, record: SagaRecord) -> dict[str, Any]:
        """A finished saga's outcome: its results, or the error it ended with."""
        if record.status == store.COMPLETED:
            return record.results()
        failed_step = record.failed_step or "?"
        step_error = SagaStepFailed(failed_step, record.error or "")
        if record.status == store.COMPENSATED:
            compensated = [
                s.name
                for s in sorted(record.steps.values(), key=lambda s: -s.position)
                if s.status == store.COMPENSATED
            ]
            raise SagaCompensated(record.saga_id, failed_step, record.error or "", compensated)
        failures = {
            s.name: s.error or ""
            for s in record.steps.values()
            if s.status == store.COMPENSATION_FAILED
        }
        errors: list[Exception] = [step_error]
        errors += [SagaStepFailed(name, text) for name, text in failures.items()]
        raise SagaCompensationFailed(record.saga_id, failed_step, errors, failures)

    # -- driving -----------------------------------------------------------------

    def drive(self, record: SagaRecord) -> dict[str, Any]:
        """Take ``record`` from where it stands to a terminal state."""
        results = record.results()
        failure: Exception | None = None
        if record.status == store.RUNNING:
            steps = self.definition.steps
            # Durable, the last step's transaction also ends the saga; a saga
            # resumed with every step done (an older log) is ended here.
            ended_by_last_step = self.durable and record.position < len(steps)
            for position in range(record.position, len(steps)):
                step = steps[position]
                try:
                    value = self._forward(record, step, position, results)
                except (SagaLeaseLost, SagaInProgress):
                    raise
                except Exception as exc:
                    failure = _unwrap(exc.cause if isinstance(exc, _RanButFailed) else exc)
                    self._failed(
                        record, step, position, failure, ran=isinstance(exc, _RanButFailed)
                    )
                    break
                results[step.name] = value
                record.position = position + 1
            else:
                if not ended_by_last_step:
                    self._finish(record, store.COMPLETED)
                record.status = store.COMPLETED
                count("completed", record.name)
                self._record(record, "completed")
                return results
        return self._compensate(record, results, failure)

    def _context(
        self, record: SagaRecord, step: Step, results: dict[str, Any], **kw: Any
    ) -> SagaContext:
        return SagaContext(
            saga_id=record.saga_id,
            step=step.name,
            data=record.data,
            results=dict(results),
            **kw,
        )

    def _forward(
        self, record: SagaRecord, step: Step, position: int, results: dict[str, Any]
    ) -> Any:
        self._record(record, "step %s started", step.name, level=logging.DEBUG)
        if not step.external:
            value = self._database_step(record, step, position, results)
        else:
            value = self._external_step(record, step, position, results)
        record.steps[step.name] = StepRecord(step.name, position, store.DONE, value)
        self._record(record, "step %s completed", step.name)
        return value

    def _database_step(
        self, record: SagaRecord, step: Step, position: int, results: dict[str, Any]
    ) -> Any:
        if self.runner is None:
            raise ValueError(
                f"step {step.name!r} is a database step: run the saga with sessionmaker= "
                "(or declare the step external=True)"
            )
        saga_id, owner, lease, durable = (
            record.saga_id,
            self.owner,
            self.definition.lease,
            self.durable,
        )
        attempts = [0]
        tries = [0]
        last = position == len(self.definition.steps) - 1

        def before(session: Session) -> Any:
            tries[0] += 1
            if not durable:
                return None
            store.own(session, saga_id, owner, lease)
            if tries[0] == 1:
                # A first try cannot find its step done: the log's position and
                # the step's record change in one transaction.
                return None
            return store.step_status(session, saga_id, step.name)

        def call(session: Any, prior: Any) -> Any:
            if prior is not None and prior[0] == store.DONE:
                return _SKIP  # an attempt whose COMMIT outcome was unknown did commit
            attempts[0] += 1
            ctx = self._context(record, step, results, session=session, attempt=attempts[0])
            return step.action(ctx)

        def after(session: Session, prior: Any, value: Any) -> Any:
            if value is _SKIP:
                return decode(prior[1])
            text = encode(f"the result of step {step.name!r}", value)
            if durable:
                store.set_step(
                    session,
                    saga_id,
                    step.name,
                    position,
                    store.DONE,
                    owner=owner,
                    result=text,
                    count_attempt=True,
                )
                store.set_saga(session, saga_id, **_advance(position, last))
            return decode(text)

        return self.runner.step(before, call, after)

    def _external_step(
        self, record: SagaRecord, step: Step, position: int, results: dict[str, Any]
    ) -> Any:
        saga_id, owner, lease = record.saga_id, self.owner, self.definition.lease
        last = position == len(self.definition.steps) - 1

        def started(session: Session) -> Any:
            store.own(session, saga_id, owner, lease)
            prior = store.step_status(session, saga_id, step.name)
            if prior is None or prior[0] != store.DONE:
                store.set_step(
                    session,
                    saga_id,
                    step.name,
                    position,
                    store.STARTED,
                    owner=owner,
                    count_attempt=True,
                )
            return prior

        prior = self._log(started)
        if prior is not None and prior[0] == store.DONE:  # pragma: no cover - position lags status
            return decode(prior[1])
        value = self._call(step.action, record, step, results, self.definition.retry)
        try:
            text: str | None = encode(f"the result of step {step.name!r}", value)
            bad: Exception | None = None
        except TypeError as exc:
            text, bad = None, exc

        def completed(session: Session) -> None:
            store.own(session, saga_id, owner, lease)
            store.set_step(
                session, saga_id, step.name, position, store.DONE, owner=owner, result=text
            )
            store.set_saga(session, saga_id, **_advance(position, last and bad is None))

        self._log(completed)
        if bad is not None:
            record.steps[step.name] = StepRecord(step.name, position, store.DONE, None)
            raise _RanButFailed(bad)
        return decode(text)

    def _call(
        self,
        fn: Action,
        record: SagaRecord,
        step: Step,
        results: dict[str, Any],
        policy: RetryPolicy,
        *,
        result: Any = None,
        compensating: bool = False,
    ) -> Any:
        """An external action or compensation, retried under ``policy``."""
        for attempt in policy.as_tenacity_sync(sleep=self.sleep):
            with attempt:
                ctx = self._context(
                    record,
                    step,
                    results,
                    result=result,
                    compensating=compensating,
                    attempt=attempt.retry_state.attempt_number,
                )
                value = fn(ctx)
                if inspect.isawaitable(value):
                    value = await_only(value)  # an async saga: in SQLAlchemy's greenlet
                return value
        raise AssertionError("unreachable")  # pragma: no cover

    def _failed(
        self, record: SagaRecord, step: Step, position: int, failure: BaseException, *, ran: bool
    ) -> None:
        saga_id, owner, lease = record.saga_id, self.owner, self.definition.lease
        error = _one_line(failure, external=step.external)

        def mark(session: Session) -> None:
            store.own(session, saga_id, owner, lease)
            if not ran:
                store.set_step(
                    session, saga_id, step.name, position, store.FAILED, owner=owner, error=error
                )
            store.set_saga(
                session, saga_id, status=store.COMPENSATING, failed_step=step.name, error=error
            )

        self._log(mark)
        record.status, record.failed_step, record.error = store.COMPENSATING, step.name, error
        if not ran:
            record.steps[step.name] = StepRecord(step.name, position, store.FAILED, None, error)
        self._record(
            record, "step %s failed: %s; compensating", step.name, error, level=logging.WARNING
        )

    # -- compensating ------------------------------------------------------------

    def _compensate(
        self, record: SagaRecord, results: dict[str, Any], failure: Exception | None
    ) -> dict[str, Any]:
        by_name = {s.name: s for s in self.definition.steps}
        todo = [
            s
            for s in sorted(record.steps.values(), key=lambda s: -s.position)
            if s.status in (store.DONE, store.COMPENSATION_FAILED) and s.name in by_name
        ]
        compensated: list[str] = []
        failures: dict[str, Exception] = {}
        for entry in todo:
            step = by_name[entry.name]
            try:
                self._compensate_one(record, step, entry, results)
            except (SagaLeaseLost, SagaInProgress):
                raise
            except Exception as exc:
                error = _unwrap(exc)
                failures[step.name] = error
                self._compensation_failed(record, step, entry, error)
                continue
            entry.status = store.COMPENSATED
            compensated.append(step.name)
            self._record(record, "step %s compensated", step.name)
        failed_step = record.failed_step or "?"
        if failures:
            summary = {
                name: _one_line(exc, external=by_name[name].external)
                for name, exc in failures.items()
            }
            self._finish(record, store.COMPENSATION_FAILED)
            count("failed", record.name)
            self._record(
                record,
                "compensation failed for %s; left for an operator",
                sorted(failures),
                level=logging.ERROR,
            )
            errors: list[Exception] = [
                failure if failure is not None else SagaStepFailed(failed_step, record.error or "")
            ]
            for name, error in failures.items():
                if hasattr(error, "add_note"):
                    error.add_note(f"while compensating step {name!r} of saga {record.saga_id!r}")
                errors.append(error)
            raise SagaCompensationFailed(record.saga_id, failed_step, errors, summary)
        self._finish(record, store.COMPENSATED)
        count("compensated", record.name)
        self._record(record, "compensated (%s)", ", ".join(compensated) or "nothing to undo")
        raise SagaCompensated(
            record.saga_id, failed_step, record.error or "", compensated
        ) from failure

    def _compensate_one(
        self, record: SagaRecord, step: Step, entry: StepRecord, results: dict[str, Any]
    ) -> None:
        saga_id, owner, lease, durable = (
            record.saga_id,
            self.owner,
            self.definition.lease,
            self.durable,
        )
        policy = self.definition.compensation_retry
        if step.compensation is None:

            def nothing(session: Session) -> None:
                store.own(session, saga_id, owner, lease)
                store.set_step(
                    session, saga_id, step.name, entry.position, store.COMPENSATED, owner=owner
                )

            self._log(nothing)
            return
        compensation = step.compensation
        if not step.external:
            assert self.runner is not None
            attempts = [0]

            def before(session: Session) -> Any:
                if not durable:
                    return None
                store.own(session, saga_id, owner, lease)
                return store.step_status(session, saga_id, step.name)

            def call(session: Any, prior: Any) -> Any:
                if prior is not None and prior[0] == store.COMPENSATED:
                    return _SKIP
                attempts[0] += 1
                ctx = self._context(
                    record,
                    step,
                    results,
                    session=session,
                    result=entry.result,
                    compensating=True,
                    attempt=attempts[0],
                )
                return compensation(ctx)

            def after(session: Session, prior: Any, value: Any) -> None:
                if value is not _SKIP and durable:
                    store.set_step(
                        session, saga_id, step.name, entry.position, store.COMPENSATED, owner=owner
                    )

            runner = TxRunner(self.runner.sessionmaker, is_async=self.runner.is_async, retry=policy)
            runner.step(before, call, after)
            return
        self._call(
            compensation, record, step, results, policy, result=entry.result, compensating=True
        )

        def done(session: Session) -> None:
            store.own(session, saga_id, owner, lease)
            store.set_step(
                session, saga_id, step.name, entry.position, store.COMPENSATED, owner=owner
            )

        self._log(done)

    def _compensation_failed(
        self, record: SagaRecord, step: Step, entry: StepRecord, exc: BaseException
    ) -> None:
        saga_id, owner, lease = record.saga_id, self.owner, self.definition.lease
        error = _one_line(exc, external=step.external)
        entry.status, entry.error = store.COMPENSATION_FAILED, error

        def mark(session: Session) -> None:
            store.own(session, saga_id, owner, lease)
            store.set_step(
                session,
                saga_id,
                step.name,
                entry.position,
                store.COMPENSATION_FAILED,
                owner=owner,
                error=error,
            )

        self._log(mark)
        self._record(
            record, "compensation of %s failed: %s", step.name, error, level=logging.WARNING
        )

    def _finish(self, record: SagaRecord, status: str) -> None:
        saga_id, owner, lease = record.saga_id, self.owner, self.definition.lease

        def finish(session: Session) -> None:
            store.own(session, saga_id, owner, lease)
            store.set_saga(session, saga_id, status=status, owner=None, lease_until=None)

        self._log(finish)
        record.status = status
