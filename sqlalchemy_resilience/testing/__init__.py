"""Helpers for your own tests: a test mode, fault injection, a throwaway PostgreSQL.

* :func:`set_testing` / :func:`in_test_mode`: retries without backoff, capped
  attempts, circuit breakers that admit every call (:mod:`.mode`);
* :func:`inject_fault`: the Nth matching statement of an engine fails through
  the real driver (:mod:`.faults`);
* :class:`~sqlalchemy_resilience.testing.embedded.EmbeddedPostgres`: a
  throwaway server from the system's binaries or the ``pgserver`` wheel
  (:mod:`.embedded`, also importable as ``sqlalchemy_resilience.embedded``).
"""

from __future__ import annotations

from .faults import FaultInjector as FaultInjector
from .faults import FaultKind as FaultKind
from .faults import inject_fault as inject_fault
from .mode import in_test_mode as in_test_mode
from .mode import is_testing as is_testing
from .mode import set_testing as set_testing

__all__ = [
    "FaultInjector",
    "FaultKind",
    "in_test_mode",
    "inject_fault",
    "is_testing",
    "set_testing",
]
