"""Which engines are instrumented: one :class:`~.hooks.EngineHooks` per engine at a time.

The registry holds engines and their hooks weakly: an instrumented engine the
application drops is freed like any other (its hooks are kept alive by the
engine itself, through the wrapper installed on it), and its background parts
stop with it.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from .engines import safe_url, sync_engine
from .hooks import EngineHooks

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["find_part", "hooks_of", "register", "unregister"]

_registry: weakref.WeakKeyDictionary[Engine, weakref.ref[EngineHooks]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def register(hooks: EngineHooks) -> None:
    """Record ``hooks`` as its engine's.

    Raises:
        RuntimeError: the engine already has attached hooks (detach those first).
    """
    with _lock:
        # A detached handle unregisters itself, so any entry is a live one
        # (attached, or attaching in another thread right now).
        found = _registry.get(hooks.engine)
        existing = found() if found is not None else None
        if existing is not None and existing is not hooks:
            raise RuntimeError(
                f"engine {safe_url(hooks.engine)} is already instrumented; "
                "call .detach() on the existing Instrumentation first"
            )
        _registry[hooks.engine] = weakref.ref(hooks)


def unregister(hooks: EngineHooks) -> None:
    """Forget ``hooks`` (only if they are still the engine's)."""
    with _lock:
        found = _registry.get(hooks.engine)
        if found is not None and found() in (hooks, None):
            del _registry[hooks.engine]


def hooks_of(engine: Engine | AsyncEngine) -> EngineHooks | None:
    """The attached hooks of ``engine``, or None."""
    found = _registry.get(sync_engine(engine))
    hooks = found() if found is not None else None
    return hooks if hooks is not None and hooks.attached else None


def find_part(engine: Engine | AsyncEngine, cls: type[Any]) -> Any:
    """The part of class ``cls`` an attached instrumentation provided for ``engine``, or None."""
    hooks = hooks_of(engine)
    return hooks.find(cls) if hooks is not None else None
