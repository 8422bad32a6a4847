"""The slow-query log: one record per statement over the threshold (or still running).

Records go to the logger ``sqlalchemy_resilience.slow_query``. Each carries its
facts twice: in the message (for humans reading a plain log) and as namespaced
``extra`` attributes (for structured logging)::

    sqlalchemy_resilience.duration     float seconds (for an in-flight report: so far)
    sqlalchemy_resilience.statement    the normalized statement
    sqlalchemy_resilience.rowcount     rows, or None where the driver reports none
    sqlalchemy_resilience.database     database name
    sqlalchemy_resilience.host         "host:port" (never user or password)
    sqlalchemy_resilience.call_site    "path/to/file.py:LINE in function"
    sqlalchemy_resilience.in_flight    True for the watchdog's report of a running statement
    sqlalchemy_resilience.error        error class name when the slow statement failed
    sqlalchemy_resilience.plan         EXPLAIN (FORMAT JSON) plan, when explain_slow_queries is on
    sqlalchemy_resilience.parameters   SQLAlchemy's repr of the parameters, only with log_parameters=True

The call site is found by :class:`~sqlalchemy_resilience.core.callsites.CallSites`.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["emit_slow_query", "plan_summary", "slow_query_logger"]

slow_query_logger = logging.getLogger("sqlalchemy_resilience.slow_query")


def emit_slow_query(
    *,
    database: str | None,
    host: str | None,
    duration: float,
    statement: str,
    rowcount: int | None,
    call_site: str | None,
    in_flight: bool = False,
    error: str | None = None,
    plan: Any = None,
    parameters: str | None = None,
) -> None:
    """Log one slow-query record with its facts in the message and in ``extra``.

    Example::

        emit_slow_query(database="app", host="db:5432", duration=1.2,
                        statement="SELECT ... WHERE id = ?", rowcount=1,
                        call_site="app/views.py:42 in show")
    """
    extra: dict[str, Any] = {
        "sqlalchemy_resilience.duration": duration,
        "sqlalchemy_resilience.statement": statement,
        "sqlalchemy_resilience.rowcount": rowcount,
        "sqlalchemy_resilience.database": database,
        "sqlalchemy_resilience.host": host,
        "sqlalchemy_resilience.call_site": call_site,
        "sqlalchemy_resilience.in_flight": in_flight,
        "sqlalchemy_resilience.error": error,
    }
    if plan is not None:
        extra["sqlalchemy_resilience.plan"] = plan
    if parameters is not None:
        extra["sqlalchemy_resilience.parameters"] = parameters
    where = f"{database or '-'} on {host or 'local'}"
    if in_flight:
        slow_query_logger.warning(
            "query still running after %.3f s (%s) at %s: %s",
            duration,
            where,
            call_site or "<unknown>",
            statement,
            extra=extra,
        )
        return
    outcome = f"failed with {error}" if error else f"{'?' if rowcount is None else rowcount} rows"
    message = "slow query: %.3f s, %s (%s) at %s: %s"
    args: list[Any] = [duration, outcome, where, call_site or "<unknown>", statement]
    if parameters is not None:
        message += " parameters: %s"
        args.append(parameters)
    if plan is not None:
        message += " plan: %s"
        args.append(plan_summary(plan))
    slow_query_logger.warning(message, *args, extra=extra)


def plan_summary(plan: Any) -> str:
    """One line for the log message from an ``EXPLAIN (FORMAT JSON)`` plan (the full plan is in ``extra``)."""
    try:
        node = plan[0]["Plan"]
        relation = f" on {node['Relation Name']}" if "Relation Name" in node else ""
        return (
            f"{node['Node Type']}{relation} (cost {node['Total Cost']}, rows {node['Plan Rows']})"
        )
    except (LookupError, TypeError):
        return "attached"
