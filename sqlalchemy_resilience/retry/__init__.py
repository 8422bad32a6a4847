"""Retry and circuit breaking: policy and budget, the breaker, units of work, resilient sessions."""

from __future__ import annotations

from .breaker import CircuitBreaker as CircuitBreaker
from .breaker_state import BreakerState as BreakerState
from .breaker_state import BreakerTransition as BreakerTransition
from .breaker_state import is_infrastructure_failure as is_infrastructure_failure
from .policy import RetryBudget as RetryBudget
from .policy import RetryPolicy as RetryPolicy
from .session import ResilientAsyncSession as ResilientAsyncSession
from .session import resilient_sessionmaker as resilient_sessionmaker
from .transaction import run_transaction as run_transaction
from .transaction import run_transaction_sync as run_transaction_sync

__all__ = [
    "BreakerState",
    "BreakerTransition",
    "CircuitBreaker",
    "ResilientAsyncSession",
    "RetryBudget",
    "RetryPolicy",
    "is_infrastructure_failure",
    "resilient_sessionmaker",
    "run_transaction",
    "run_transaction_sync",
]
