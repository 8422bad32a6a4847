"""Which engines are instrumented: one :class:`~.hooks.EngineHooks` per engine at a time."""

from __future__ import annotations

import threading
import weakref
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from .engines import safe_url, sync_engine
from .hooks import EngineHooks

__all__ = ["find_part", "hooks_of", "register", "unregister"]

_registry: weakref.WeakKeyDictionary[Engine, EngineHooks] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def register(hooks: EngineHooks) -> None:
    """Record ``hooks`` as its engine's.

    Raises:
        RuntimeError: the engine already has attached hooks (detach those first).
    """
    with _lock:
        # A detached handle unregisters itself, so any entry is a live one
        # (attached, or attaching in another thread right now).
        existing = _registry.get(hooks.engine)
        if existing is not None and existing is not hooks:
            raise RuntimeError(
                f"engine {safe_url(hooks.engine)} is already instrumented; "
                "call .detach() on the existing Instrumentation first"
            )
        _registry[hooks.engine] = hooks


def unregister(hooks: EngineHooks) -> None:
    """Forget ``hooks`` (only if they are still the engine's)."""
    with _lock:
        if _registry.get(hooks.engine) is hooks:
            del _registry[hooks.engine]


def hooks_of(engine: Engine | AsyncEngine) -> EngineHooks | None:
    """The attached hooks of ``engine``, or None."""
    found = _registry.get(sync_engine(engine))
    return found if found is not None and found.attached else None


def find_part(engine: Engine | AsyncEngine, cls: type[Any]) -> Any:
    """The part of class ``cls`` an attached instrumentation provided for ``engine``, or None."""
    hooks = hooks_of(engine)
    return hooks.find(cls) if hooks is not None else None
