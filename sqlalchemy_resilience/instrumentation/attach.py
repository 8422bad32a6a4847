"""``instrument(engine)``: validate the options, compose the parts, attach them.

Everything is chosen here, at attach time, so the per-statement path holds
only what is on. The handle it returns, :class:`~.handle.Instrumentation`,
owns exactly the hooks it added; :meth:`~.handle.Instrumentation.detach`
removes those and nothing else, so another engine's instrumentation (or the
application's own listeners) stay. An engine can be instrumented once at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Unpack

from sqlalchemy.engine import Engine

from sqlalchemy_resilience.core.engines import sync_engine
from sqlalchemy_resilience.core.registry import hooks_of

from .handle import Instrumentation
from .options import InstrumentChanges, InstrumentOptions, options_with

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["instrument", "instrumentation_of"]


def instrument(
    engine: Engine | AsyncEngine,
    options: InstrumentOptions | None = None,
    **changes: Unpack[InstrumentChanges],
) -> Instrumentation:
    """Attach this package's hooks to ``engine`` and return the handle that owns them.

    One call gives: typed error translation, a slow-query log with the
    application call site, per-statement statistics (``.stats``), pool
    figures (``.pool_stats()``) and OpenTelemetry metrics per the database
    semantic conventions.

    Args:
        engine: an ``Engine`` or ``AsyncEngine``.
        options: an :class:`~sqlalchemy_resilience.instrumentation.InstrumentOptions`
            (default: its defaults).
        **changes: any option of ``InstrumentOptions`` by name, applied on top
            of ``options`` (``slow_query_threshold=0.25``, ``leak_threshold=30``, ...).

    Raises:
        TypeError: ``engine`` is not an engine, an option is unknown or has the wrong type.
        ValueError: an option is out of range (e.g. a negative threshold, or
            ``explain_slow_queries`` on a database other than PostgreSQL).
        RuntimeError: the engine is already instrumented (detach first).

    Example::

        engine = create_async_engine("postgresql+asyncpg://app@db/app")
        instr = instrument(engine, slow_query_threshold=0.25)
        try:
            async with engine.begin() as conn:
                await conn.execute(users.insert().values(email="a@example.com"))
        except UniqueViolation as exc:
            print(exc.constraint_name, exc.user_message("ja"))
        print(instr.stats.top(3, by="p95"))
    """
    chosen = options_with(options, changes, "instrument()")
    sync = sync_engine(engine)
    if chosen.sqlite is not None and sync.dialect.name != "sqlite":
        raise ValueError(
            f"sqlite= needs a SQLite engine; this engine's dialect is {sync.dialect.name!r}"
        )
    if chosen.explain_slow_queries and sync.dialect.name != "postgresql":
        raise ValueError(
            f"explain_slow_queries needs PostgreSQL; this engine's dialect is {sync.dialect.name!r}"
        )
    instr = Instrumentation(sync, chosen)
    instr._attach()
    return instr


def instrumentation_of(engine: Engine | AsyncEngine) -> Instrumentation | None:
    """The attached :class:`Instrumentation` of ``engine``, or None.

    Example::

        instrument(engine)
        instrumentation_of(engine).stats.top(3)
    """
    hooks = hooks_of(engine)
    owner = hooks.owner if hooks is not None else None
    return owner if isinstance(owner, Instrumentation) else None
