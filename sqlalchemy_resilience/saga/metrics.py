"""The sagas' OpenTelemetry counters, in the package's own namespace (never ``db.client.*``).

``sqlalchemy_resilience.sagas.started``, ``.completed``, ``.compensated``,
``.failed`` (compensation failed: an operator must act) and ``.recovered``
(taken over by :func:`~sqlalchemy_resilience.saga.recover_sagas`), each with the
attribute ``sqlalchemy_resilience.saga.name``. A no-op until the application
installs a MeterProvider.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["count"]

_log = logging.getLogger("sqlalchemy_resilience.saga")

_DESCRIPTIONS = {
    "started": "Sagas started",
    "completed": "Sagas that ran every step",
    "compensated": "Sagas that failed and compensated every completed step",
    "failed": "Sagas left compensation_failed for an operator",
    "recovered": "Interrupted sagas taken over by recover_sagas",
}

_counters: dict[str, Any] = {}


def _counter(event: str) -> Any:
    counter = _counters.get(event)
    if counter is None:
        from opentelemetry import metrics

        counter = _counters[event] = metrics.get_meter("sqlalchemy_resilience").create_counter(
            f"sqlalchemy_resilience.sagas.{event}",
            unit="{saga}",
            description=_DESCRIPTIONS[event],
        )
    return counter


def count(event: str, saga: str, amount: int = 1) -> None:
    """Add ``amount`` to the ``event`` counter for saga ``saga``; never raises."""
    try:
        _counter(event).add(amount, {"sqlalchemy_resilience.saga.name": saga})
    except Exception:  # metrics must never break a saga
        _log.debug("saga counter %s failed", event, exc_info=True)
