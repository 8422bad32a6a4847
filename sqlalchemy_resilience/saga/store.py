"""The saga log: its SQL, written once over a sync ``Session``, and the transactions around it.

Every change to a saga's row first *renews its lease*: ``UPDATE ... WHERE id
AND owner = me AND status IN (...)``. That statement row-locks the saga on
PostgreSQL (SQLite's ``BEGIN IMMEDIATE`` already serializes writers), so a
driver whose lease was taken over finds 0 rows, raises :class:`SagaLeaseLost`
and its transaction -- the step's own write included -- rolls back. Times come
from the database's clock (seconds since the epoch), so instances on
machines with skewed clocks agree on when a lease has run out.

:class:`TxRunner` runs these functions: in an ``AsyncSession`` through
``run_sync`` under :func:`run_transaction` (async sagas), or in a ``Session``
under :func:`run_transaction_sync` (``execute_sync`` sagas).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, and_, func, literal_column, or_, select, update
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from sqlalchemy.util import await_only

from sqlalchemy_resilience.errors.operations import SagaLeaseLost
from sqlalchemy_resilience.retry.policy import RetryPolicy
from sqlalchemy_resilience.retry.transaction import run_transaction, run_transaction_sync
from sqlalchemy_resilience.schema import saga_steps, sagas

from .definition import decode

__all__ = ["SagaRecord", "StepRecord", "TxRunner"]

T = TypeVar("T")

RUNNING = "running"
COMPENSATING = "compensating"
COMPLETED = "completed"
COMPENSATED = "compensated"
COMPENSATION_FAILED = "compensation_failed"
ACTIVE = (RUNNING, COMPENSATING)
TERMINAL = (COMPLETED, COMPENSATED, COMPENSATION_FAILED)

# Step statuses.
STARTED = "running"
DONE = "completed"
FAILED = "failed"

_INSERTS = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
    "mysql": mysql.insert,
    "mariadb": mysql.insert,
}
_MYSQL_FAMILY = ("mysql", "mariadb")


@dataclass
class StepRecord:
    """One step as the log has it.

    Example::

        for step in record.steps:
            print(step.name, step.status)
    """

    name: str
    position: int
    status: str
    result: Any = None
    error: str | None = None
    attempts: int = 0


@dataclass
class SagaRecord:
    """A saga as the log has it: what an operator sees, and what recovery resumes from.

    Attributes:
        saga_id, name: the saga.
        status: ``running``, ``compensating``, ``completed``, ``compensated`` or
            ``compensation_failed``.
        position: the index of the next step to run (or, compensating, of the
            last step not yet compensated, plus one).
        data: what it was started with.
        failed_step, error: the step whose action failed, and how.
        owner: the instance driving it (None once it ended).
        lease_remaining: seconds until the owner's lease ends (negative: expired).
        recoveries: how many times recovery took it over.
        steps: each started step, by name.

    Example::

        record = await get_saga(Session, "order-42")
        print(record.status, [s.name for s in record.steps])
    """

    saga_id: str
    name: str
    status: str
    position: int
    data: Any
    failed_step: str | None = None
    error: str | None = None
    owner: str | None = None
    lease_remaining: float | None = None
    recoveries: int = 0
    steps: dict[str, StepRecord] = field(default_factory=dict)

    def results(self) -> dict[str, Any]:
        """The results of the steps whose action completed, by step name."""
        return {
            name: s.result
            for name, s in sorted(self.steps.items(), key=lambda kv: kv[1].position)
            if s.status in (DONE, COMPENSATED, COMPENSATION_FAILED)
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for an operator's tooling."""
        return {
            "saga_id": self.saga_id,
            "name": self.name,
            "status": self.status,
            "position": self.position,
            "failed_step": self.failed_step,
            "error": self.error,
            "owner": self.owner,
            "recoveries": self.recoveries,
            "steps": [
                {"step": s.name, "status": s.status, "attempts": s.attempts, "error": s.error}
                for s in sorted(self.steps.values(), key=lambda s: s.position)
            ],
        }


# -- SQL, over a sync Session -----------------------------------------------------


def _now(session: Session) -> ColumnElement[Any]:
    dialect = _dialect(session)
    if dialect == "postgresql":
        return func.extract("epoch", func.clock_timestamp())
    if dialect in _MYSQL_FAMILY:
        # SYSDATE(6), not NOW(): the time the row is written, not the statement's start.
        return func.unix_timestamp(func.sysdate(literal_column("6")))  # microseconds
    # julianday of the Unix epoch is 2440587.5.
    return (func.julianday("now") - 2440587.5) * 86400.0


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _insert(session: Session) -> Any:
    dialect = _dialect(session)
    insert = _INSERTS.get(dialect)
    if insert is None:
        raise ValueError(
            f"durable sagas need PostgreSQL, SQLite, MySQL or MariaDB, not {dialect!r}"
        )
    return insert


def insert_saga(
    session: Session, saga_id: str, name: str, data: str, owner: str, lease: float
) -> bool:
    """Start a saga's row; False when a saga with this id exists already."""
    values = {
        "id": saga_id,
        "name": name,
        "status": RUNNING,
        "position": 0,
        "data": data,
        "owner": owner,
        "lease_until": _now(session) + lease,
    }
    if _dialect(session) in _MYSQL_FAMILY:
        # No RETURNING on MySQL: INSERT IGNORE inserts 1 row, or 0 for an id taken.
        result = session.execute(_insert(session)(sagas).values(**values).prefix_with("IGNORE"))
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]
    stmt = (
        _insert(session)(sagas)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(sagas.c.id)
    )
    return session.execute(stmt).first() is not None


def own(
    session: Session, saga_id: str, owner: str, lease: float, statuses: Sequence[str] = ACTIVE
) -> None:
    """Renew this owner's lease (and lock the row), or raise :class:`SagaLeaseLost`."""
    result = session.execute(
        update(sagas)
        .where(sagas.c.id == saga_id, sagas.c.owner == owner, sagas.c.status.in_(statuses))
        .values(
            lease_until=_now(session) + lease,
            version=sagas.c.version + 1,
            updated_at=func.now(),
        )
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise SagaLeaseLost(saga_id)


def load(session: Session, saga_id: str) -> SagaRecord | None:
    """The saga's row and its steps, or None."""
    row = session.execute(
        select(sagas, (sagas.c.lease_until - _now(session)).label("remaining")).where(
            sagas.c.id == saga_id
        )
    ).first()
    if row is None:
        return None
    record = SagaRecord(
        saga_id=row.id,
        name=row.name,
        status=row.status,
        position=row.position,
        data=decode(row.data),
        failed_step=row.failed_step,
        error=row.error,
        owner=row.owner,
        lease_remaining=None if row.remaining is None else float(row.remaining),
        recoveries=row.recoveries,
    )
    for step in session.execute(
        select(saga_steps).where(saga_steps.c.saga_id == saga_id).order_by(saga_steps.c.position)
    ):
        record.steps[step.step] = StepRecord(
            name=step.step,
            position=step.position,
            status=step.status,
            result=decode(step.result),
            error=step.error,
            attempts=step.attempts,
        )
    return record


def _lease_expired(session: Session) -> ColumnElement[bool]:
    return or_(sagas.c.lease_until.is_(None), sagas.c.lease_until < _now(session))


def claim(
    session: Session,
    *,
    owner: str,
    lease: float,
    names: Iterable[str],
    statuses: Sequence[str] = ACTIVE,
    saga_id: str | None = None,
    limit: int | None = None,
    expired_only: bool = True,
) -> list[str]:
    """Take over sagas nobody drives (lease run out): the ids now owned by ``owner``.

    On PostgreSQL the candidates are locked ``FOR UPDATE SKIP LOCKED``, so two
    instances claiming at once split them between them; SQLite's write lock
    serializes claimers, and the second one sees the first one's leases.
    """
    conditions: list[ColumnElement[bool]] = [
        sagas.c.name.in_(list(names)),
        sagas.c.status.in_(statuses),
    ]
    if expired_only:
        conditions.append(_lease_expired(session))
    if saga_id is not None:
        conditions.append(sagas.c.id == saga_id)
    query = (
        select(sagas.c.id)
        .where(and_(*conditions))
        .order_by(sagas.c.created_at, sagas.c.id)
        .with_for_update(skip_locked=True)
    )
    if limit is not None:
        query = query.limit(limit)
    ids = list(session.execute(query).scalars())
    if ids:
        session.execute(
            update(sagas)
            .where(sagas.c.id.in_(ids))
            .values(
                owner=owner,
                lease_until=_now(session) + lease,
                recoveries=sagas.c.recoveries + 1,
                version=sagas.c.version + 1,
                updated_at=func.now(),
            )
        )
    return ids


def set_step(
    session: Session,
    saga_id: str,
    step: str,
    position: int,
    status: str,
    *,
    owner: str,
    result: str | None = None,
    error: str | None = None,
    count_attempt: bool = False,
) -> None:
    """Insert or update one step's row."""
    values: dict[str, Any] = {
        "saga_id": saga_id,
        "step": step,
        "position": position,
        "status": status,
        "owner": owner,
        "attempts": 1 if count_attempt else 0,
    }
    if result is not None:
        values["result"] = result
    if error is not None:
        values["error"] = error
    stmt = _insert(session)(saga_steps).values(**values)
    changes: dict[str, Any] = {"status": status, "owner": owner, "updated_at": func.now()}
    if result is not None:
        changes["result"] = result
    if error is not None:
        changes["error"] = error
    if count_attempt:
        changes["attempts"] = saga_steps.c.attempts + 1
    if _dialect(session) in _MYSQL_FAMILY:
        session.execute(stmt.on_duplicate_key_update(**changes))
        return
    session.execute(stmt.on_conflict_do_update(index_elements=["saga_id", "step"], set_=changes))


def step_status(session: Session, saga_id: str, step: str) -> tuple[str, str | None] | None:
    """A step's ``(status, result JSON)``, or None when it never started."""
    row = session.execute(
        select(saga_steps.c.status, saga_steps.c.result).where(
            saga_steps.c.saga_id == saga_id, saga_steps.c.step == step
        )
    ).first()
    return None if row is None else (row.status, row.result)


def set_saga(session: Session, saga_id: str, **values: Any) -> None:
    """Update the saga's row (after :func:`own` in the same transaction)."""
    session.execute(
        update(sagas).where(sagas.c.id == saga_id).values(updated_at=func.now(), **values)
    )


# -- transactions -----------------------------------------------------------------


class TxRunner:
    """Runs log transactions on an ``async_sessionmaker`` (awaited) or a ``sessionmaker`` (blocking).

    Each transaction is a :func:`run_transaction` (or its sync twin) with the
    saga's retry policy, declared idempotent: every function here first reads
    or checks what is already recorded, so re-running after an unknown COMMIT
    outcome cannot apply anything twice.
    """

    def __init__(
        self, sessionmaker: Callable[[], Any], *, is_async: bool, retry: RetryPolicy
    ) -> None:
        self.sessionmaker = sessionmaker
        self.is_async = is_async
        self.retry = retry

    def log(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn(session)`` -- log statements only -- in one transaction.

        Called from the saga driver, which for an async saga runs in
        SQLAlchemy's greenlet: the async ``run_transaction`` is awaited there
        with ``await_only``.
        """
        if self.is_async:

            async def unit(session: AsyncSession) -> T:
                return await session.run_sync(fn)

            result: T = await_only(
                run_transaction(self.sessionmaker, unit, retry=self.retry, idempotent=True)
            )
            return result
        return run_transaction_sync(self.sessionmaker, fn, retry=self.retry, idempotent=True)

    def step(
        self,
        before: Callable[[Session], Any],
        call: Callable[[Any, Any], Any],
        after: Callable[[Session, Any, Any], T],
    ) -> T:
        """``before(sync_session)``, then ``call(session, before's value)`` (the user's
        action, with the session it works with), then ``after(...)``: one transaction."""
        if self.is_async:

            async def unit(session: AsyncSession) -> T:
                prior = await session.run_sync(before)
                value = call(session, prior)
                if inspect.isawaitable(value):
                    value = await value
                return await session.run_sync(after, prior, value)

            result: T = await_only(
                run_transaction(self.sessionmaker, unit, retry=self.retry, idempotent=True)
            )
            return result

        def sync_unit(session: Session) -> T:
            prior = before(session)
            value = call(session, prior)
            if inspect.isawaitable(value):
                _close(value)
                raise TypeError(
                    "an execute_sync saga's actions must be plain functions, not async ones"
                )
            return after(session, prior, value)

        return run_transaction_sync(self.sessionmaker, sync_unit, retry=self.retry, idempotent=True)


def _close(value: Awaitable[Any]) -> None:
    close = getattr(value, "close", None)
    if callable(close):
        close()
