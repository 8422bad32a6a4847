"""pytest plugin: every engine SQLAlchemy's own test suite creates goes through ``instrument()``.

Loaded with ``-p instrument_every_engine`` when ``SQLALCHEMY_RESILIENCE_CONFORMANCE``
is ``instrumented``; with ``plain`` it only counts, so the two runs of
``conformance/run.py`` differ in nothing but the instrumentation.

``create_engine`` is wrapped where SQLAlchemy binds it (the package, the
``engine`` package, ``engine.create`` for ``engine_from_config`` and
``create_pool_from_url``, and the asyncio module, for ``create_async_engine``)
before any test module is imported, so both the suite's ``testing_engine()``
and the tests' own ``create_engine()`` calls are covered.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import pytest
import sqlalchemy
import sqlalchemy.engine
import sqlalchemy.engine.create
import sqlalchemy.ext.asyncio.engine
from sqlalchemy.engine import Engine

from sqlalchemy_resilience import instrument

MODE = os.environ.get("SQLALCHEMY_RESILIENCE_CONFORMANCE", "plain")
if MODE not in ("plain", "instrumented"):
    raise pytest.UsageError(
        f"SQLALCHEMY_RESILIENCE_CONFORMANCE={MODE!r}: expected 'plain' or 'instrumented'"
    )

_created = 0
_instrumented = 0
_original = sqlalchemy.engine.create.create_engine


@functools.wraps(_original)
def create_engine(*args: Any, **kwargs: Any) -> sqlalchemy.engine.Engine:
    global _created, _instrumented
    engine = _original(*args, **kwargs)
    _created += 1
    # _initialize=False is create_pool_from_url's throwaway engine: only its pool is kept.
    if MODE == "instrumented" and isinstance(engine, Engine) and kwargs.get("_initialize", True):
        instrument(engine)
        _instrumented += 1
    return engine


for module, name in (
    (sqlalchemy, "create_engine"),
    (sqlalchemy.engine, "create_engine"),
    (sqlalchemy.engine.create, "create_engine"),
    (sqlalchemy.ext.asyncio.engine, "_create_engine"),
):
    setattr(module, name, create_engine)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    terminalreporter.write_line(
        f"sqlalchemy-resilience conformance ({MODE}): {_created} engines created, "
        f"{_instrumented} instrumented"
    )
