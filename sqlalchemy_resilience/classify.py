"""Kept for ``sqlalchemy_resilience.classify``; see :mod:`sqlalchemy_resilience.errors.classify`."""

from __future__ import annotations

from sqlalchemy_resilience.errors.classify import ErrorFacts as ErrorFacts
from sqlalchemy_resilience.errors.classify import Phase as Phase
from sqlalchemy_resilience.errors.classify import build_error as build_error
from sqlalchemy_resilience.errors.classify import classify as classify
from sqlalchemy_resilience.errors.classify import extract_facts as extract_facts
from sqlalchemy_resilience.errors.classify import redact_text as redact_text

__all__ = ["ErrorFacts", "Phase", "build_error", "classify", "extract_facts", "redact_text"]
