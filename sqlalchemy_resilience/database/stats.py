"""The facades' figures: ``stats()`` as one JSON-ready mapping, and replicas in ``health()``."""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy_resilience.deploy import ReplicaSet
from sqlalchemy_resilience.pool import HealthReport, pool_stats
from sqlalchemy_resilience.retry import RetryBudget

from .parts import DatabaseCore

__all__ = ["database_stats", "replica_health"]


def database_stats(core: DatabaseCore, *, top: int = 10) -> dict[str, Any]:
    """Top statements, pool figures, breaker, retry budget, replicas and the pooler check.

    Example::

        database_stats(core, top=5)["statements"][0]["statement"]
    """
    given: object = top
    if isinstance(given, bool) or not isinstance(given, int) or top < 0:
        raise ValueError(f"top must be an int >= 0, got {top!r}")
    instr = core.instrumentation()
    statements: list[dict[str, Any]] = []
    if instr is not None and instr.stats is not None:
        statements = [s.to_dict() for s in instr.stats.top(top)] if top else []
    breaker = core.breaker
    budget = core.retry.budget or RetryBudget.for_engine(core.engine)
    figures: dict[str, Any] = {
        "database": core.name,
        "statements": statements,
        "pool": dict(pool_stats(core.engine)),
        "breaker": None
        if breaker is None
        else {
            "name": breaker.name,
            "state": breaker.state.name.lower(),
            "retry_after": breaker.retry_after(),
        },
        "retry_budget": {
            "available": round(budget.available, 3),
            "ratio": budget.ratio,
            "min_per_second": budget.min_per_second,
            "denied": budget.denied,
        },
        "replicas": None,
        "pooler": None if core.pooler_report is None else core.pooler_report.to_dict(),
    }
    replica_set = core.replica_set
    if replica_set is not None:
        figures["replicas"] = {
            "routed": dict(replica_set.routed),
            "status": [dataclasses.asdict(s) for s in replica_set.status()],
        }
    return figures


def replica_health(report: HealthReport, replica_set: ReplicaSet | None) -> HealthReport:
    """``report`` with a warning per replica out of rotation (healthy becomes degraded).

    Example::

        replica_health(await health_check(engine), replica_set).warnings
    """
    if replica_set is None:
        return report
    out = [s for s in replica_set.status() if not s.eligible]
    if not out:
        return report
    warnings = report.warnings + tuple(
        f"replica {s.name} is out of rotation ({s.state}"
        + (f", {s.lag:.1f}s behind" if s.lag is not None else "")
        + "); its reads go elsewhere"
        for s in out
    )
    status = "degraded" if report.status == "healthy" else report.status
    return dataclasses.replace(report, status=status, warnings=warnings)
