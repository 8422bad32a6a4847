"""The hook core: one engine's wrappers and listeners, the registry, shared engine helpers.

It sits just above :mod:`~sqlalchemy_resilience.errors` and below every
feature. Features hand it callables (:class:`HookParts`); it never imports them.
"""

from __future__ import annotations

from .callsites import CallSites as CallSites
from .engines import sync_engine as sync_engine
from .hooks import EngineHooks as EngineHooks
from .hooks import HookParts as HookParts
from .registry import find_part as find_part
from .registry import hooks_of as hooks_of

__all__ = ["CallSites", "EngineHooks", "HookParts", "find_part", "hooks_of", "sync_engine"]
