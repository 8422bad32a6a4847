"""Sagas: ordered steps with compensations, an optional durable log, and crash recovery.

``definition`` holds what a saga is (steps, context), ``driver`` runs one
forward and back, ``store`` is the durable log's SQL, ``api`` the public
:class:`Saga`, :func:`recover_sagas` and :func:`get_saga`, ``outcome`` the
errors a saga ends with, ``metrics`` its counters.
"""

from __future__ import annotations

from sqlalchemy_resilience.errors.operations import SagaCompensated as SagaCompensated
from sqlalchemy_resilience.errors.operations import SagaCompensationFailed as SagaCompensationFailed
from sqlalchemy_resilience.errors.operations import SagaInProgress as SagaInProgress
from sqlalchemy_resilience.errors.operations import SagaLeaseLost as SagaLeaseLost
from sqlalchemy_resilience.errors.operations import SagaStepFailed as SagaStepFailed

from .api import RecoveryReport as RecoveryReport
from .api import Saga as Saga
from .api import get_saga as get_saga
from .api import get_saga_sync as get_saga_sync
from .api import recover_sagas as recover_sagas
from .api import recover_sagas_sync as recover_sagas_sync
from .definition import SagaContext as SagaContext
from .store import SagaRecord as SagaRecord
from .store import StepRecord as StepRecord

__all__ = [
    "RecoveryReport",
    "Saga",
    "SagaCompensated",
    "SagaCompensationFailed",
    "SagaContext",
    "SagaInProgress",
    "SagaLeaseLost",
    "SagaRecord",
    "SagaStepFailed",
    "StepRecord",
    "get_saga",
    "get_saga_sync",
    "recover_sagas",
    "recover_sagas_sync",
]
