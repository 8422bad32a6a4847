"""Helpers for your own tests: a test mode, fault injection, a throwaway PostgreSQL.

* :func:`set_testing` / :func:`in_test_mode`: retries without backoff, capped
  attempts, circuit breakers that admit every call (:mod:`.mode`);
* :func:`assert_max_queries` / :func:`count_queries`: a query budget for a
  block, failing with the normalized statements and their call sites, N+1
  repeats flagged (:mod:`.budget`; also pytest fixtures of the same names);
* :func:`inject_fault`: the Nth matching statement of an engine fails through
  the real driver (:mod:`.faults`);
* :class:`~sqlalchemy_resilience.testing.embedded.EmbeddedPostgres`: a
  throwaway server from the system's binaries or the ``pgserver`` wheel
  (:mod:`.embedded`).
"""

from __future__ import annotations

from .budget import QueryBudgetExceeded as QueryBudgetExceeded
from .budget import QueryCounter as QueryCounter
from .budget import RecordedStatement as RecordedStatement
from .budget import assert_max_queries as assert_max_queries
from .budget import count_queries as count_queries
from .faults import FaultInjector as FaultInjector
from .faults import FaultKind as FaultKind
from .faults import inject_fault as inject_fault
from .mode import in_test_mode as in_test_mode
from .mode import is_testing as is_testing
from .mode import set_testing as set_testing

__all__ = [
    "FaultInjector",
    "FaultKind",
    "QueryBudgetExceeded",
    "QueryCounter",
    "RecordedStatement",
    "assert_max_queries",
    "count_queries",
    "in_test_mode",
    "inject_fault",
    "is_testing",
    "set_testing",
]
