"""An instrumented engine behaves like SQLAlchemy's own where applications can tell.

Each test runs the same thing on a plain and an instrumented engine and
compares what SQLAlchemy users rely on: error text, the engine's settings,
``connection_invalidated`` after the application's own ``handle_error`` hooks,
copies of the engine, and when ``cursor.rowcount`` is read.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc as sa_exc
from sqlalchemy import Column, Engine, Integer, String, create_engine, event, text
from sqlalchemy.orm import DeclarativeBase, Session

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import instrument
from sqlalchemy_resilience.instrumentation import instrumentation_of


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "item"
    id = Column(Integer, primary_key=True)
    name = Column(String, unique=True, nullable=False)


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    """A plain engine and an instrumented one, each on its own SQLite file with the table."""
    plain = create_engine(f"sqlite:///{tmp_path / 'plain.sqlite'}")
    other = create_engine(f"sqlite:///{tmp_path / 'instrumented.sqlite'}")
    for engine in (plain, other):
        Base.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(Item.__table__.insert(), {"id": 1, "name": "taken"})
    instr = instrument(other)
    try:
        yield plain, other
    finally:
        instr.detach()
        plain.dispose()
        other.dispose()


def _error_of(engine: Engine, **engine_options: Any) -> sa_exc.DBAPIError:
    with pytest.raises(sa_exc.IntegrityError) as info, engine.begin() as conn:
        conn.execute(text("INSERT INTO item (id, name) VALUES (:i, :n)"), {"i": 2, "n": "taken"})
    return info.value


def _without_ids(text_: str) -> str:
    return re.sub(r"error id [0-9a-f]+", "error id X", text_)


def test_error_text_is_sqlalchemys_plus_one_facts_line(engines: tuple[Engine, Engine]) -> None:
    """str() of a translated error is SQLAlchemy's text, byte for byte, then the package's facts."""
    plain, instrumented = engines
    expected = str(_error_of(plain))
    err = _error_of(instrumented)
    assert isinstance(err, sr.UniqueViolation)
    head, facts = str(err).rsplit("\n", 1)
    assert head == expected
    assert "[parameters: (2, 'taken')]" in head  # the engine's default: shown
    assert "(Background on this error at: https://sqlalche.me/e/" in head
    assert _without_ids(facts) == (
        "[sqlalchemy-resilience: UniqueViolation SQLITE_CONSTRAINT_UNIQUE (table=item, column=name);"
        " not retryable; error id X]"
    )
    assert "taken" not in err.safe_text()


def test_hide_parameters_engine_keeps_sqlalchemys_wording(tmp_path: Path) -> None:
    """An engine created with hide_parameters=True: SQLAlchemy's hidden-parameters line, unchanged."""
    engine = create_engine(f"sqlite:///{tmp_path / 'h.sqlite'}", hide_parameters=True)
    Base.metadata.create_all(engine)
    instr = instrument(engine)
    try:
        with engine.begin() as conn:
            conn.execute(Item.__table__.insert(), {"id": 1, "name": "taken"})
        err = _error_of(engine)
        assert "[SQL parameters hidden due to hide_parameters=True]" in str(err)
        assert engine.hide_parameters is True
    finally:
        instr.detach()
        engine.dispose()


def test_instrument_leaves_hide_parameters_alone(engines: tuple[Engine, Engine]) -> None:
    """instrument() never changes the engine's settings; SQLAlchemy's echo shows what it would."""
    _, instrumented = engines
    assert instrumented.hide_parameters is False


def test_orm_autoflush_detail_is_kept(engines: tuple[Engine, Engine]) -> None:
    """The detail the ORM adds with add_detail() (autoflush) reaches str() as in SQLAlchemy."""
    texts = []
    for engine in engines:
        with Session(engine) as session:
            session.add(Item(id=3, name="taken"))
            with pytest.raises(sa_exc.IntegrityError) as info:
                session.query(Item).all()
            texts.append(str(info.value))
    assert "raised as a result of Query-invoked autoflush" in texts[0]
    assert texts[1].startswith(texts[0])


@pytest.mark.parametrize("verdict", [True, False])
def test_a_later_hook_decides_connection_invalidated(
    engines: tuple[Engine, Engine], verdict: bool
) -> None:
    """An application hook after the package's that sets is_disconnect is what the error says."""
    _, instrumented = engines

    @event.listens_for(instrumented, "handle_error")
    def decide(context: Any) -> None:
        context.is_disconnect = verdict

    try:
        with pytest.raises(sa_exc.DBAPIError) as info, instrumented.connect() as conn:
            conn.exec_driver_sql("SELECT * FROM no_such_table")
        assert isinstance(info.value, sr.ResilienceError)
        assert info.value.connection_invalidated is verdict
    finally:
        event.remove(instrumented, "handle_error", decide)


def test_a_copied_engine_draws_from_its_own_pool(engines: tuple[Engine, Engine]) -> None:
    """copy.copy(engine) then dispose(): the copy checks out from its new pool, not the original's."""
    _, instrumented = engines
    with instrumented.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    twin = copy.copy(instrumented)
    twin.dispose(close=False)
    assert twin.pool is not instrumented.pool
    before = instrumented.pool.checkedout()
    try:
        with twin.connect() as conn:
            assert conn.connection.dbapi_connection is not None
            assert twin.pool.checkedout() == 1
            assert instrumented.pool.checkedout() == before
    finally:
        twin.dispose()  # its own pool: closed here, or its sqlite3 connection is never closed
    opts = instrumented.execution_options(isolation_level="SERIALIZABLE")
    stats = instrumentation_of(instrumented)
    assert stats is not None
    checkouts = stats.pool_stats()["checkouts"]
    with opts.connect() as conn:  # shares the parent's pool, so the parent counts it
        conn.exec_driver_sql("SELECT 1")
    assert stats.pool_stats()["checkouts"] == checkouts + 1


@pytest.mark.parametrize("instrumented", [False, True])
def test_an_unread_result_does_not_keep_its_cursor_open(
    instrumented: bool, sync_engines: list[Engine]
) -> None:
    """A SELECT whose result the application drops unread frees its cursor at once, as
    without the package: the statistics never hold it (on SQLite an open cursor locks
    its table, and DROP TABLE would fail with "database table is locked")."""
    engine = create_engine("sqlite://")
    sync_engines.append(engine)
    instr = instrument(engine) if instrumented else None
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE data (id INTEGER PRIMARY KEY)"))
        conn.execute(text("INSERT INTO data VALUES (1), (2), (3)"))
    with engine.connect() as conn:
        conn.execute(text("UPDATE data SET id = id + 10 WHERE id = 1"))
        conn.execute(text("SELECT id FROM data"))  # dropped unread
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE data"))
    if instr is not None:
        assert instr.stats is not None
        update = instr.stats.get("UPDATE data SET id = id + ? WHERE id = ?")
        assert update is not None and update.rows == 1
