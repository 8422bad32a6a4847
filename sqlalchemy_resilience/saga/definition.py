"""What a saga is: its steps, each an action and a compensation, and what each gets to see.

A :class:`Saga` is a frozen definition built step by step (``.step()``
returns a new saga); running it is :mod:`.driver`'s job. A step is a
*database* step by default -- its action runs in a transaction on the saga's
database, with ``ctx.session``, and commits together with the saga log's
record of it -- or ``external=True``: an action outside the database (an HTTP
call), handed ``ctx.idempotency_key`` to pass on, recorded after it returns.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy_resilience._util.seconds import to_seconds
from sqlalchemy_resilience.retry.policy import RetryPolicy
from sqlalchemy_resilience.schema import SAGA_ID_MAX_LENGTH

__all__ = ["Action", "SagaContext", "SagaDefinition", "Step", "check_name", "decode", "encode"]

#: An action or compensation: ``fn(ctx)``, plain or ``async``.
Action = Callable[["SagaContext"], Any]

_NAME = re.compile(r"^[A-Za-z0-9_.:\-]+$")


def check_name(kind: str, value: object) -> str:
    """A saga, step or id name: 1-200 characters of letters, digits and ``_ . : -``."""
    if not isinstance(value, str) or not value or len(value) > SAGA_ID_MAX_LENGTH:
        raise ValueError(
            f"{kind} must be a string of 1 to {SAGA_ID_MAX_LENGTH} characters, got {value!r}"
        )
    if not _NAME.match(value):
        raise ValueError(
            f"{kind} may hold letters, digits and '_', '.', ':', '-' only, got {value!r}"
        )
    return value


def encode(what: str, value: Any) -> str:
    """``value`` as the JSON the saga log stores, or a TypeError naming what it was."""
    try:
        return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{what} must be JSON-serializable to be kept in the saga log: {exc}"
        ) from exc


def decode(text: str | None) -> Any:
    """The value back from the saga log's JSON."""
    return None if text is None else json.loads(text)


@dataclass
class SagaContext:
    """What an action or compensation is called with.

    Attributes:
        saga_id: the saga's id (the caller's, or a generated one).
        step: this step's name.
        data: what the saga was started with (as JSON gave it back, in durable mode).
        results: the results of the steps before this one, by step name.
        result: in a compensation, this step's own action result; else None.
        session: a database step's session (``AsyncSession``, or ``Session`` for
            ``execute_sync``), in the transaction that also records the step; None
            for external steps.
        compensating: True in a compensation.
        attempt: 1 on the first try of this action in this process, 2 after a retry...

    Example::

        async def charge(ctx: SagaContext) -> dict[str, str]:
            reply = await payments.charge(ctx.data["amount"], idempotency_key=ctx.idempotency_key)
            return {"charge_id": reply.id}
    """

    saga_id: str
    step: str
    data: Any
    results: Mapping[str, Any]
    result: Any = None
    session: Any = None
    compensating: bool = False
    attempt: int = 1

    @property
    def idempotency_key(self) -> str:
        """``"<saga_id>:<step>"`` (``":compensate"`` appended in a compensation): stable across
        retries, crashes and recoveries -- hand it to the system the step calls."""
        key = f"{self.saga_id}:{self.step}"
        return f"{key}:compensate" if self.compensating else key


@dataclass(frozen=True)
class Step:
    """One step: its name, action, optional compensation, and where the action runs."""

    name: str
    action: Action
    compensation: Action | None = None
    external: bool = False


@dataclass(frozen=True)
class SagaDefinition:
    """The validated, frozen parts of a :class:`~sqlalchemy_resilience.Saga`."""

    name: str
    steps: tuple[Step, ...] = ()
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(attempts=3))
    compensation_retry: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(
            attempts=5, initial_backoff=0.1, max_backoff=2.0, retry_on=lambda exc: True
        )
    )
    lease: float = 60.0

    @staticmethod
    def build(
        name: str,
        *,
        retry: RetryPolicy | None,
        compensation_retry: RetryPolicy | None,
        lease: float | timedelta,
    ) -> SagaDefinition:
        check_name("name", name)
        for option, policy in (("retry", retry), ("compensation_retry", compensation_retry)):
            if policy is not None and not isinstance(policy, RetryPolicy):
                raise TypeError(f"{option} must be a RetryPolicy or None, got {policy!r}")
        seconds = to_seconds("lease", lease, allow_zero=False)
        base = SagaDefinition(name=name, lease=seconds)
        return SagaDefinition(
            name=name,
            retry=retry or base.retry,
            compensation_retry=compensation_retry or base.compensation_retry,
            lease=seconds,
        )

    def with_step(self, step: Step) -> SagaDefinition:
        check_name("step name", step.name)
        if any(s.name == step.name for s in self.steps):
            raise ValueError(f"step {step.name!r} is already in saga {self.name!r}")
        if not callable(step.action):
            raise TypeError(f"action of step {step.name!r} must be callable, got {step.action!r}")
        if step.compensation is not None and not callable(step.compensation):
            raise TypeError(
                f"compensate of step {step.name!r} must be callable or None, got {step.compensation!r}"
            )
        if not isinstance(step.external, bool):
            raise TypeError(f"external must be True or False, got {step.external!r}")
        return SagaDefinition(
            name=self.name,
            steps=(*self.steps, step),
            retry=self.retry,
            compensation_retry=self.compensation_retry,
            lease=self.lease,
        )
