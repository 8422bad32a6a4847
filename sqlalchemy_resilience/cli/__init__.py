"""The ``sqlalchemy-resilience`` command line and its demo tour."""

from __future__ import annotations

from .main import build_parser as build_parser
from .main import main as main

__all__ = ["build_parser", "main"]
