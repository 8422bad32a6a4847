"""Helpers every layer uses on an engine: unwrap, name it safely, read its pool."""

from __future__ import annotations

import logging
import sys
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeGuard

from sqlalchemy.engine import Engine

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "async_engine_for",
    "database_and_host",
    "engine_for",
    "is_async_engine",
    "pool_status",
    "register_secrets",
    "safe_url",
    "secrets_of",
    "sync_engine",
]

# Secrets an engine uses that its URL does not show (a password provider's
# current token), by engine; read when a record is redacted.
_SECRET_SOURCES: weakref.WeakKeyDictionary[Engine, Callable[[], tuple[str, ...]]] = (
    weakref.WeakKeyDictionary()
)

_log = logging.getLogger("sqlalchemy_resilience")


def is_async_engine(engine: object) -> TypeGuard[AsyncEngine]:
    """Whether ``engine`` is an ``AsyncEngine``, without importing SQLAlchemy's asyncio extension.

    That extension loads the ORM (≈ 100 ms); an application that never
    imported it cannot hold an ``AsyncEngine``.

    Example::

        is_async_engine(create_engine("sqlite://"))   # False
    """
    module = sys.modules.get("sqlalchemy.ext.asyncio.engine")
    return module is not None and isinstance(engine, module.AsyncEngine)


def sync_engine(engine: Engine | AsyncEngine) -> Engine:
    """The sync ``Engine`` behind ``engine`` (itself for an ``Engine``).

    Raises:
        TypeError: ``engine`` is neither an ``Engine`` nor an ``AsyncEngine``.

    Example::

        sync_engine(create_async_engine("sqlite+aiosqlite://")).dialect.name  # "sqlite"
    """
    if is_async_engine(engine):
        return engine.sync_engine
    if isinstance(engine, Engine):
        return engine
    raise TypeError(
        f"engine must be a sqlalchemy Engine or AsyncEngine, got {type(engine).__name__}"
    )


def async_engine_for(name: str, engine: object) -> AsyncEngine:
    """``engine`` if it is an ``AsyncEngine``; otherwise a TypeError naming the blocking twin.

    The package's async functions take an ``AsyncEngine`` and their ``_sync``
    twins an ``Engine``; the error says which one the caller wanted.

    Example::

        engine = async_engine_for("health_check", engine)
    """
    if is_async_engine(engine):
        return engine
    if isinstance(engine, Engine):
        raise TypeError(f"{name} takes an AsyncEngine; for an Engine call {name}_sync()")
    raise TypeError(f"{name} takes a sqlalchemy AsyncEngine, got {type(engine).__name__}")


def engine_for(name: str, engine: object) -> Engine:
    """``engine`` if it is an ``Engine``; otherwise a TypeError naming the async twin.

    Example::

        engine = engine_for("health_check_sync", engine)
    """
    if isinstance(engine, Engine):
        return engine
    if is_async_engine(engine):
        twin = name.removesuffix("_sync")
        raise TypeError(f"{name} takes an Engine; for an AsyncEngine await {twin}()")
    raise TypeError(f"{name} takes a sqlalchemy Engine, got {type(engine).__name__}")


def safe_url(engine: Engine) -> str:
    """The engine's URL with the password hidden, for messages."""
    return engine.url.render_as_string(hide_password=True)


def secrets_of(engine: Engine) -> tuple[str, ...]:
    """Strings that must never appear in the package's records (the URL's password, read now).

    The password may be an object whose ``str()`` returns a fresh token
    (cloud IAM authentication), so it is read when needed, not kept.
    """
    password = engine.url.password
    text = "" if password is None else str(password)
    found = (text,) if text else ()
    source = _SECRET_SOURCES.get(engine)
    return found + source() if source is not None else found


def register_secrets(engine: Engine, source: Callable[[], tuple[str, ...]] | None) -> None:
    """Have :func:`secrets_of` also return what ``source()`` returns (None: forget it).

    Example::

        register_secrets(engine, lambda: (current_token,))
    """
    if source is None:
        _SECRET_SOURCES.pop(engine, None)
    else:
        _SECRET_SOURCES[engine] = source


def database_and_host(engine: Engine) -> tuple[str | None, str | None]:
    """``(database, "host:port")`` as records name them (never user or password)."""
    url = engine.url
    host = f"{url.host}:{url.port}" if url.host and url.port else (url.host or None)
    return url.database, host


def pool_status(engine: Engine) -> dict[str, Any]:
    """The pool's class, size, checked-out, overflow, checked-in, timeout and max overflow."""
    pool = engine.pool
    status: dict[str, Any] = {"pool_class": type(pool).__name__}
    for name in ("size", "checkedout", "overflow", "checkedin"):
        method = getattr(pool, name, None)
        if callable(method):
            try:
                status[name] = method()
            except Exception:  # pragma: no cover - status is best effort
                _log.debug("pool.%s() failed", name, exc_info=True)
    timeout = getattr(pool, "_timeout", None)
    if timeout is not None:
        status["timeout"] = timeout
    max_overflow = getattr(pool, "_max_overflow", None)
    if max_overflow is not None:
        status["max_overflow"] = max_overflow
    return status
