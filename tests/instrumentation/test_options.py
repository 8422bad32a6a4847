"""InstrumentOptions: validated once, accepted by instrument(), passed through by Database."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from sqlalchemy import create_engine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience.instrumentation import (
    InstrumentChanges,
    InstrumentOptions,
    instrumentation_of,
)


def test_the_keywords_are_the_fields() -> None:
    """instrument()'s keywords and the options object's fields cannot drift apart."""
    fields = [f.name for f in dataclasses.fields(InstrumentOptions) if f.init]
    assert list(InstrumentChanges.__annotations__) == fields


def test_changes_apply_on_top_of_an_options_object(tmp_path: Path) -> None:
    """instrument(engine, options, **changes): the changes win; the shared object is unchanged."""
    options = InstrumentOptions(slow_query_threshold=0.25, leak_threshold=30, pool_name="a")
    first = create_engine(f"sqlite:///{tmp_path / 'a.sqlite'}")
    second = create_engine(f"sqlite:///{tmp_path / 'b.sqlite'}")
    try:
        a = sr.instrument(first, options)
        b = sr.instrument(second, options, pool_name="b", slow_query_threshold=None)
        assert a.options is options
        assert (a.slow_query_threshold, a.pool.name) == (0.25, "a")
        assert (b.slow_query_threshold, b.pool.name) == (None, "b")
        assert b.options.seconds("leak_threshold") == 30.0
        assert options.pool_name == "a"
    finally:
        first.dispose()
        second.dispose()


def test_bad_options_are_refused_before_anything_is_attached(tmp_path: Path) -> None:
    """An unknown keyword names itself and the options; a bad value names the option; the
    engine is left uninstrumented."""
    engine = create_engine(f"sqlite:///{tmp_path / 'c.sqlite'}")
    try:
        with pytest.raises(
            TypeError, match=r"unknown option\(s\) slow_query_treshold; the options"
        ):
            sr.instrument(engine, slow_query_treshold=1)  # type: ignore[call-arg]
        with pytest.raises(ValueError, match="max_statements must be >= 1, got 0"):
            sr.instrument(engine, InstrumentOptions(), max_statements=0)
        with pytest.raises(TypeError, match="options must be an InstrumentOptions"):
            sr.instrument(engine, {"slow_query_threshold": 1})  # type: ignore[arg-type]
        assert instrumentation_of(engine) is None
    finally:
        engine.dispose()


async def test_database_passes_its_options_through(tmp_path: Path) -> None:
    """Database(instrumentation=...) instruments its engine with exactly those options, and
    names the pool after the database when the options do not."""
    options = InstrumentOptions(slow_query_threshold=0.125, max_waiting=7)
    async with sr.Database(
        f"sqlite+aiosqlite:///{tmp_path / 'd.sqlite'}", instrumentation=options, name="shop"
    ) as db:
        instr = instrumentation_of(db.engine)
        assert instr is not None
        assert instr.slow_query_threshold == 0.125
        assert instr.max_waiting == 7
        assert instr.pool.name == "shop"
    with pytest.raises(TypeError, match="instrumentation must be an InstrumentOptions or None"):
        sr.Database("sqlite+aiosqlite://", instrumentation={"slow_query_threshold": 1})  # type: ignore[arg-type]
