"""The instrument() handle: ownership of listeners, detach, double instrumentation, bad input."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy.exc as sa_exc
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.ext.asyncio import create_async_engine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import instrument, instrumentation_of, translate_error


def _dup(engine: object) -> BaseException:
    with pytest.raises(sa_exc.IntegrityError) as info, engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(text("INSERT INTO t VALUES (1)"))
    return info.value


_engines: list[Engine] = []


def make(url: str) -> Engine:
    """A sync engine that the autouse fixture disposes (no unclosed sqlite3 connections)."""
    engine = create_engine(url)
    _engines.append(engine)
    return engine


@pytest.fixture(autouse=True)
def _dispose_engines() -> Iterator[None]:
    yield
    while _engines:
        _engines.pop().dispose()


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'i.sqlite'}"
    eng = make(url)
    with eng.begin() as conn:
        conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
    return url


def test_instrumenting_twice_is_an_error(db: str) -> None:
    """A second instrument() on the same engine raises instead of double counting."""
    engine = make(db)
    instr = instrument(engine)
    with pytest.raises(RuntimeError, match="already instrumented"):
        instrument(engine)
    instr.detach()
    again = instrument(engine)
    assert again.attached
    again.detach()


def test_detach_removes_only_its_own_listeners(db: str) -> None:
    """Detaching one engine leaves another engine's instrumentation and the app's listeners in place."""
    a, b = make(db), make(db)
    calls: list[str] = []
    event.listen(a, "before_cursor_execute", lambda *args: calls.append("app"))
    ia, ib = instrument(a), instrument(b)
    ia.detach()
    assert not isinstance(_dup(a), sr.ResilienceError)
    assert isinstance(_dup(b), sr.UniqueViolation)
    assert "app" in calls
    assert instrumentation_of(a) is None
    assert instrumentation_of(b) is ib
    ib.detach()
    ib.detach()  # idempotent
    assert not isinstance(_dup(b), sr.ResilienceError)


def test_detach_restores_engine_state(db: str) -> None:
    """hide_parameters, raw_connection and do_commit are back to what they were after detach."""
    engine = make(db)
    assert engine.hide_parameters is False
    instr = instrument(engine)
    assert engine.hide_parameters is True
    assert "raw_connection" in engine.__dict__
    assert "do_commit" in engine.dialect.__dict__
    instr.detach()
    assert engine.hide_parameters is False
    assert "raw_connection" not in engine.__dict__
    assert "do_commit" not in engine.dialect.__dict__


def test_statements_stay_on_the_listener_free_path(db: str) -> None:
    """Error translation adds no Connection-level listeners, so SQLAlchemy keeps its fast path."""
    engine = make(db)
    instrument(engine)
    assert engine._has_events is False
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
        assert conn._has_events is False


def test_log_parameters_opt_in_shows_values(db: str) -> None:
    """With log_parameters=True the developer message carries the bound values."""
    engine = make(db)
    instrument(engine, log_parameters=True)
    with pytest.raises(sr.UniqueViolation) as info, engine.begin() as conn:
        conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": 1})
    assert "[parameters:" in str(info.value)


async def test_async_engine_is_accepted(db: str) -> None:
    """An AsyncEngine is instrumented through its sync_engine."""
    pytest.importorskip("aiosqlite")
    engine = create_async_engine(db.replace("sqlite:", "sqlite+aiosqlite:"))
    instr = instrument(engine)
    assert instr.engine is engine.sync_engine
    assert instrumentation_of(engine) is instr
    with pytest.raises(RuntimeError):
        instrument(engine.sync_engine)
    instr.detach()
    await engine.dispose()


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (("not an engine",), {}, TypeError, "Engine or AsyncEngine, got str"),
        ((None,), {}, TypeError, "got NoneType"),
        ((), {"log_parameters": "yes"}, TypeError, "log_parameters must be True or False"),
        ((), {"translate_errors": 1}, TypeError, "translate_errors must be True or False"),
    ],
)
def test_bad_input_is_rejected(
    db: str, args: tuple[object, ...], kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    """Bad arguments fail with an error that names the option and what is allowed."""
    if not args:
        args = (make(db),)
    with pytest.raises(error, match=match):
        instrument(*args, **kwargs)  # type: ignore[arg-type]


def test_translate_error_by_hand(db: str) -> None:
    """translate_error() gives the same class as the hook and leaves other exceptions alone."""
    engine = make(db)
    raw = _dup(engine)
    assert type(raw) is sa_exc.IntegrityError
    translated = translate_error(raw)
    assert isinstance(translated, sr.UniqueViolation)
    assert translated.__cause__ is raw
    assert translate_error(translated) is translated
    other = ValueError("x")
    assert translate_error(other) is other
    refused = translate_error(ConnectionRefusedError(111, "refused"))
    assert isinstance(refused, sr.DatabaseUnavailable) and refused.retryable


def test_translated_errors_pickle(db: str) -> None:
    """Translated errors survive pickling (multiprocessing, task queues), combined classes included."""
    engine = make(db)
    instrument(engine)
    err = _dup(engine)
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is type(err)
    assert (clone.sqlstate, clone.table_name, clone.error_id) == (
        err.sqlstate,  # type: ignore[attr-defined]
        err.table_name,  # type: ignore[attr-defined]
        err.error_id,  # type: ignore[attr-defined]
    )
    with pytest.raises(sa_exc.OperationalError) as info, engine.connect() as conn:
        conn.execute(text("SELECT * FROM nope"))
    combined = pickle.loads(pickle.dumps(info.value))
    assert isinstance(combined, sa_exc.OperationalError)
    assert isinstance(combined, sr.InvalidStatement)
    for cls_err in (sr.CircuitOpenError(1.5, breaker="db"), sr.RetryExhausted([ValueError("a")])):
        assert (
            str(pickle.loads(pickle.dumps(cls_err))).split(" (error id")[0]
            == str(cls_err).split(" (error id")[0]
        )


def test_error_classes_validate_input() -> None:
    """Hand-built errors reject impossible values."""
    with pytest.raises(ValueError, match="retry_after must be >= 0"):
        sr.CircuitOpenError(-1)
    with pytest.raises(ValueError, match="at least one attempt"):
        sr.RetryExhausted([])
    err = sr.CircuitOpenError(2.0)
    assert err.retry_after == 2.0
    assert err.user_message("ja").startswith("サービスは一時的に")
