"""The public face: :class:`Saga`, :func:`recover_sagas` and :func:`get_saga` (with sync twins)."""

from __future__ import annotations

import inspect
import logging
import os
import secrets
import socket
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import Session
from sqlalchemy.util import greenlet_spawn

from sqlalchemy_resilience.errors.operations import (
    SagaCompensated,
    SagaCompensationFailed,
    SagaInProgress,
    SagaLeaseLost,
)
from sqlalchemy_resilience.retry.policy import RetryPolicy

from . import store
from .definition import Action, SagaDefinition, Step, check_name
from .driver import Driver
from .metrics import count
from .store import SagaRecord, TxRunner

__all__ = [
    "RecoveryReport",
    "Saga",
    "get_saga",
    "get_saga_sync",
    "recover_sagas",
    "recover_sagas_sync",
]

_log = logging.getLogger("sqlalchemy_resilience.saga")


def _instance_id() -> str:
    # Host, pid and a random part: readable in the log, unique per process.
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(4)}"


#: This process's id in the saga log.
INSTANCE_ID = _instance_id()


def driver_token(instance: str = INSTANCE_ID) -> str:
    """An owner id for one driving of one saga: the instance plus a random part.

    Per driving, not per process: a ``recover_sagas`` in the same process that
    takes over a saga whose lease ran out (a step slower than the lease) must
    make the slow driver's next log write fail, as another process's would.
    """
    return f"{instance}/{secrets.token_hex(3)}"


def _is_async_factory(sessionmaker: Any) -> bool:
    if isinstance(sessionmaker, async_sessionmaker):
        return True
    if callable(sessionmaker):
        return False
    raise TypeError(
        f"sessionmaker must be an async_sessionmaker or a sessionmaker, got {sessionmaker!r}"
    )


class Saga:
    """A saga: ordered steps, each an action and a compensation, driven to completion or undone.

    Build it once (``.step()`` returns a new, frozen saga) and run it per
    business transaction. On a step's failure the completed steps are
    compensated in reverse, each compensation retried under
    ``compensation_retry``; if compensations fail too, every failure is raised
    together (:class:`SagaCompensationFailed`, an ``ExceptionGroup``).

    With ``sessionmaker=`` the saga is **durable**: its log lives in the
    application's database (:func:`~sqlalchemy_resilience.schema.create_saga_tables`
    or the package's Alembic revision), a database step's write and its log
    record commit in one transaction (applied exactly once), an external step
    gets ``ctx.idempotency_key`` (``"<saga_id>:<step>"``) and its outcome is
    recorded before the next step starts, and :func:`recover_sagas` finishes
    sagas a crash interrupted. Starting a saga id that exists returns (or
    raises) that saga's outcome instead of running it again.

    Args:
        name: the saga's name (letters, digits, ``_ . : -``); recovery finds
            a saga's definition by it.
        retry: how a step's action is retried (database steps: transient
            database errors, via ``run_transaction``; external steps: what the
            policy's classifier accepts). Default: 3 attempts.
        compensation_retry: how a compensation is retried; default 5 attempts
            on any error (compensations must be idempotent).
        lease: how long a driver owns a saga without touching the log before
            another instance may take it over (renewed at every step). Longer
            than your slowest step.

    Example::

        place_order = (
            Saga("place_order")
            .step("reserve", reserve_stock, compensate=release_stock)
            .step("charge", charge_card, compensate=refund_card, external=True)
            .step("ship", create_shipment, compensate=cancel_shipment)
        )
        results = await place_order.execute({"sku": "A1", "qty": 2}, saga_id=f"order-{order_id}",
                                        sessionmaker=Session)
        # at start-up, and every minute or so:
        await recover_sagas(Session, [place_order])
    """

    __slots__ = ("_definition",)

    def __init__(
        self,
        name: str,
        *,
        retry: RetryPolicy | None = None,
        compensation_retry: RetryPolicy | None = None,
        lease: float | timedelta = 60.0,
    ) -> None:
        self._definition = SagaDefinition.build(
            name, retry=retry, compensation_retry=compensation_retry, lease=lease
        )

    @classmethod
    def _of(cls, definition: SagaDefinition) -> Saga:
        saga = cls.__new__(cls)
        saga._definition = definition
        return saga

    @property
    def name(self) -> str:
        """The saga's name."""
        return self._definition.name

    @property
    def steps(self) -> tuple[Step, ...]:
        """The steps, in order."""
        return self._definition.steps

    @property
    def definition(self) -> SagaDefinition:
        """The frozen definition (name, steps, policies, lease)."""
        return self._definition

    def step(
        self,
        name: str,
        action: Action,
        *,
        compensate: Action | None = None,
        external: bool = False,
    ) -> Saga:
        """A new saga with one more step.

        Args:
            name: unique within the saga.
            action: ``fn(ctx)`` (plain or ``async``); its return value -- JSON
                in durable mode -- is ``ctx.results[name]`` for later steps.
            compensate: ``fn(ctx)`` undoing the action (``ctx.result`` is what
                the action returned); None: nothing to undo.
            external: the action works outside the saga's database; it gets
                no session, should pass ``ctx.idempotency_key`` on, and must
                raise only when it did not apply.

        Example::

            saga = Saga("signup").step("create_user", create_user, compensate=delete_user)
        """
        return Saga._of(
            self._definition.with_step(
                Step(name=name, action=action, compensation=compensate, external=external)
            )
        )

    def __repr__(self) -> str:
        return f"<Saga {self.name!r} steps={[s.name for s in self.steps]}>"

    # -- running -----------------------------------------------------------------

    def _driver(self, sessionmaker: Any, durable: bool, *, is_async: bool) -> Driver:
        if not self._definition.steps:
            raise ValueError(f"saga {self.name!r} has no steps")
        if not isinstance(durable, bool):
            raise TypeError(f"durable must be True or False, got {durable!r}")
        if not is_async:
            for step in self._definition.steps:
                for fn in (step.action, step.compensation):
                    if fn is not None and inspect.iscoroutinefunction(fn):
                        raise TypeError(
                            f"step {step.name!r}: an execute_sync saga's actions must be plain "
                            "functions, not async ones (use execute())"
                        )
        runner = None
        if sessionmaker is not None:
            factory_async = _is_async_factory(sessionmaker)
            if factory_async != is_async:
                raise TypeError(
                    "execute() needs an async_sessionmaker and execute_sync() a sessionmaker, got "
                    f"{type(sessionmaker).__name__}"
                )
            runner = TxRunner(sessionmaker, is_async=is_async, retry=self._definition.retry)
        elif durable:
            raise ValueError("a durable saga needs sessionmaker= (its log lives in that database)")
        else:
            database_steps = [s.name for s in self._definition.steps if not s.external]
            if database_steps:
                raise ValueError(
                    f"step {database_steps[0]!r} is a database step: run the saga with "
                    "sessionmaker= (or declare the step external=True)"
                )
        return Driver(
            self._definition, runner, owner=driver_token(), durable=durable, is_async=is_async
        )

    async def execute(
        self,
        data: Any = None,
        *,
        saga_id: str | None = None,
        sessionmaker: async_sessionmaker[Any] | None = None,
        durable: bool | None = None,
    ) -> dict[str, Any]:
        """Run the saga and return each step's result by name.

        Args:
            data: the saga's input, ``ctx.data`` for every step (JSON in durable mode).
            saga_id: a stable id (an order id) makes a second start return the
                first run's outcome; default: a new UUID.
            sessionmaker: where database steps run and (durable) the log lives.
            durable: default True when a ``sessionmaker`` is given.

        Raises:
            SagaCompensated: a step failed; everything before it was undone.
            SagaCompensationFailed: a step failed and compensations failed too.
            SagaInProgress: another instance is driving this saga id now.
            SagaLeaseLost: another instance took this saga over mid-way.
        """
        saga_id = check_name("saga_id", saga_id) if saga_id is not None else str(uuid.uuid4())
        durable = sessionmaker is not None if durable is None else durable
        driver = self._driver(sessionmaker, durable, is_async=True)
        result: dict[str, Any] = await greenlet_spawn(driver.start, saga_id, data)
        return result

    def execute_sync(
        self,
        data: Any = None,
        *,
        saga_id: str | None = None,
        sessionmaker: Callable[[], Session] | None = None,
        durable: bool | None = None,
    ) -> dict[str, Any]:
        """The blocking twin of :meth:`execute`: plain-function steps, a ``sessionmaker``.

        Example::

            results = signup.execute_sync({"email": email}, saga_id=request_id, sessionmaker=Session)
        """
        saga_id = check_name("saga_id", saga_id) if saga_id is not None else str(uuid.uuid4())
        durable = sessionmaker is not None if durable is None else durable
        driver = self._driver(sessionmaker, durable, is_async=False)
        return driver.start(saga_id, data)

    async def redrive(
        self, saga_id: str, *, sessionmaker: async_sessionmaker[Any]
    ) -> dict[str, Any]:
        """Run again the compensations of a ``compensation_failed`` saga that have not succeeded.

        Also resumes an interrupted saga whose lease ran out. The outcome is
        what :meth:`execute` would give: :class:`SagaCompensated` when every
        compensation now succeeded.

        Raises:
            LookupError: no saga ``saga_id`` of this name is waiting to be re-driven.
        """
        driver = self._driver(sessionmaker, True, is_async=True)
        result: dict[str, Any] = await greenlet_spawn(
            _redrive, driver, check_name("saga_id", saga_id)
        )
        return result

    def redrive_sync(self, saga_id: str, *, sessionmaker: Callable[[], Session]) -> dict[str, Any]:
        """The synchronous twin of :meth:`redrive`."""
        driver = self._driver(sessionmaker, True, is_async=False)
        return _redrive(driver, check_name("saga_id", saga_id))


def _redrive(driver: Driver, saga_id: str) -> dict[str, Any]:
    assert driver.runner is not None
    name, owner, lease = driver.definition.name, driver.owner, driver.definition.lease

    def take(session: Session) -> SagaRecord | None:
        ids = store.claim(
            session,
            owner=owner,
            lease=lease,
            names=[name],
            saga_id=saga_id,
            statuses=(store.COMPENSATION_FAILED, *store.ACTIVE),
        )
        if not ids:
            return None
        store.set_saga(session, saga_id, status=store.COMPENSATING)
        record = store.load(session, saga_id)
        if record is not None and record.failed_step is None:
            record.status = store.RUNNING  # interrupted before any failure: resume forward
            store.set_saga(session, saga_id, status=store.RUNNING)
        return record

    record = driver.runner.log(take)
    if record is None:
        raise LookupError(
            f"no saga {saga_id!r} of {name!r} is compensation_failed or interrupted (lease run out)"
        )
    _log.info("saga %s (%s): re-driven by an operator", saga_id, name)
    return driver.drive(record)


@dataclass
class RecoveryReport:
    """What :func:`recover_sagas` did.

    Attributes:
        completed, compensated, compensation_failed: the saga ids driven to each end state.
        lost: ids another instance took over while this one drove them.
        errors: ids whose driving failed for another reason (the database
            went away...), with the error; they stay claimable once the lease ends.

    Example::

        report = await recover_sagas(Session, [place_order])
        print(report.recovered)
    """

    completed: list[str] = field(default_factory=list)
    compensated: list[str] = field(default_factory=list)
    compensation_failed: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def recovered(self) -> list[str]:
        """Every saga id this call took over."""
        return [
            *self.completed,
            *self.compensated,
            *self.compensation_failed,
            *self.lost,
            *self.errors,
        ]


def _recover(
    runner: TxRunner, sagas: Iterable[Saga], *, limit: int | None, owner: str
) -> RecoveryReport:
    definitions = {}
    for saga in sagas:
        if not isinstance(saga, Saga):
            raise TypeError(f"sagas must be Saga objects, got {saga!r}")
        if saga.name in definitions:
            raise ValueError(f"two sagas are named {saga.name!r}")
        definitions[saga.name] = saga
    if not definitions:
        raise ValueError("recover_sagas needs the Saga definitions to resume (sagas=[...])")
    given: object = limit  # untyped callers: check at run time
    if given is not None and (isinstance(given, bool) or not isinstance(given, int) or given < 1):
        raise ValueError(f"limit must be an int >= 1 or None, got {limit!r}")
    lease = min(s.definition.lease for s in definitions.values())

    def take(session: Session, token: str) -> SagaRecord | None:
        # One at a time: a saga claimed in a batch would sit leased-but-idle
        # while the others are driven, and its lease could run out.
        ids = store.claim(session, owner=token, lease=lease, names=list(definitions), limit=1)
        return store.load(session, ids[0]) if ids else None

    report = RecoveryReport()
    while limit is None or len(report.recovered) < limit:
        token = driver_token(owner)
        record = runner.log(lambda session, token=token: take(session, token))  # type: ignore[misc]
        if record is None:
            break
        saga = definitions[record.name]
        driver = Driver(
            saga.definition,
            TxRunner(runner.sessionmaker, is_async=runner.is_async, retry=saga.definition.retry),
            owner=token,
            durable=True,
            is_async=runner.is_async,
        )
        count("recovered", record.name)
        _log.info(
            "saga %s (%s): recovering (%s at step %d)",
            record.saga_id,
            record.name,
            record.status,
            record.position,
        )
        try:
            driver.drive(record)
            report.completed.append(record.saga_id)
        except SagaCompensated:
            report.compensated.append(record.saga_id)
        except SagaCompensationFailed:
            report.compensation_failed.append(record.saga_id)
        except (SagaLeaseLost, SagaInProgress):
            report.lost.append(record.saga_id)
        except Exception as exc:
            report.errors[record.saga_id] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            _log.warning("saga %s (%s): recovery failed: %s", record.saga_id, record.name, exc)
    return report


async def recover_sagas(
    sessionmaker: async_sessionmaker[Any],
    sagas: Iterable[Saga],
    *,
    limit: int | None = None,
) -> RecoveryReport:
    """Drive every interrupted saga (its driver's lease ran out) to a terminal state.

    Call it at start-up and periodically. A ``running`` saga resumes forward
    at the step it stood at (a database step that had not committed runs; an
    external step that had started is called again with the same idempotency
    key) and compensates if a step then fails; a ``compensating`` one finishes
    its compensations. Two instances recovering at once never take the same
    saga (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite's write lock).

    Args:
        sessionmaker: the database of the saga log.
        sagas: the definitions to resume, matched by name; sagas of other names are left alone.
        limit: take at most this many sagas in this call.

    Example::

        report = await recover_sagas(Session, [place_order, signup])
        log.info("recovered %d sagas", len(report.recovered))
    """
    if not _is_async_factory(sessionmaker):
        raise TypeError("recover_sagas needs an async_sessionmaker; use recover_sagas_sync")
    definitions = list(sagas)
    retry = definitions[0].definition.retry if definitions else RetryPolicy(attempts=3)
    runner = TxRunner(sessionmaker, is_async=True, retry=retry)
    report: RecoveryReport = await greenlet_spawn(
        _recover, runner, definitions, limit=limit, owner=INSTANCE_ID
    )
    return report


def recover_sagas_sync(
    sessionmaker: Callable[[], Session], sagas: Iterable[Saga], *, limit: int | None = None
) -> RecoveryReport:
    """The synchronous twin of :func:`recover_sagas` (for sagas run with ``execute_sync``).

    Example::

        report = recover_sagas_sync(Session, [place_order])
    """
    if _is_async_factory(sessionmaker):
        raise TypeError("recover_sagas_sync needs a sessionmaker; use recover_sagas")
    definitions = list(sagas)
    retry = definitions[0].definition.retry if definitions else RetryPolicy(attempts=3)
    runner = TxRunner(sessionmaker, is_async=False, retry=retry)
    return _recover(runner, definitions, limit=limit, owner=INSTANCE_ID)


async def get_saga(sessionmaker: async_sessionmaker[Any], saga_id: str) -> SagaRecord | None:
    """The saga as its log has it (status, steps, errors), for an operator; None if unknown.

    Example::

        record = await get_saga(Session, "order-42")
        print(record.status, record.to_dict())
    """
    runner = TxRunner(sessionmaker, is_async=True, retry=RetryPolicy(attempts=3))
    record: SagaRecord | None = await greenlet_spawn(runner.log, lambda s: store.load(s, saga_id))
    return record


def get_saga_sync(sessionmaker: Callable[[], Session], saga_id: str) -> SagaRecord | None:
    """The synchronous twin of :func:`get_saga`.

    Example::

        record = get_saga_sync(Session, "order-42")
        print(record.status if record else "unknown")
    """
    runner = TxRunner(sessionmaker, is_async=False, retry=RetryPolicy(attempts=3))
    record: SagaRecord | None = runner.log(lambda s: store.load(s, saga_id))
    return record
