"""The instrument() handle: ownership of listeners, detach, double instrumentation, bad input."""

from __future__ import annotations

import gc
import importlib
import pickle
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy.exc as sa_exc
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.ext.asyncio import create_async_engine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import instrument
from sqlalchemy_resilience.errors import translate_error
from sqlalchemy_resilience.instrumentation import instrumentation_of
from tests.pgharness import PgServer


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
    """The pool's connect/recreate and the dialect's do_* wrappers are instance attributes,
    gone after detach; hide_parameters is never touched."""
    engine = make(db)
    assert engine.hide_parameters is False
    instr = instrument(engine)
    assert engine.hide_parameters is False
    patched = ("do_commit", "do_execute", "do_executemany", "do_execute_no_params")
    assert {"connect", "recreate"} <= engine.pool.__dict__.keys()
    assert all(name in engine.dialect.__dict__ for name in patched)
    pool_listeners = len(engine.pool.dispatch.connect) + len(engine.pool.dispatch.close)
    instr.detach()
    assert engine.hide_parameters is False
    assert not {"connect", "recreate"} & engine.pool.__dict__.keys()
    assert not any(name in engine.dialect.__dict__ for name in patched)
    assert len(engine.pool.dispatch.connect) + len(engine.pool.dispatch.close) == pool_listeners - 2


def test_dispose_keeps_checkouts_observed_on_the_new_pool(db: str) -> None:
    """engine.dispose() replaces the pool: the new one is wrapped before its first checkout,
    the replaced ones are not kept alive, and detach() cleans the new one."""
    engine = make(db)
    instr = instrument(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    old = engine.pool
    for _ in range(3):
        engine.dispose()
    assert engine.pool is not old
    checkouts = instr.pool_stats()["checkouts"]
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    assert instr.pool_stats()["checkouts"] == checkouts + 1
    del old
    gc.collect()
    assert len([e for e in instr._hooks._pool_patches if e[0]() is not None]) == 2
    instr.detach()
    assert not {"connect", "recreate"} & engine.pool.__dict__.keys()


def test_detach_keeps_a_later_wrapper_of_someone_else(db: str) -> None:
    """A do_execute wrapper installed after instrument() survives detach (only ours is removed)."""
    engine = make(db)
    instr = instrument(engine)
    ours = engine.dialect.do_execute
    seen: list[str] = []

    def theirs(cursor: object, statement: str, parameters: object, context: object = None) -> None:
        seen.append(statement)
        ours(cursor, statement, parameters, context)

    engine.dialect.do_execute = theirs  # type: ignore[method-assign]
    instr.detach()
    assert engine.dialect.do_execute is theirs
    with engine.connect() as conn:
        conn.execute(text("SELECT 1 WHERE 1 = :x"), {"x": 1})
    assert seen == ["SELECT 1 WHERE 1 = ?"]


def test_reinstrument_after_detach_counts_afresh(db: str) -> None:
    """After detach, a new instrument() has its own statistics; the old handle counts nothing more."""
    engine = make(db)
    first = instrument(engine)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    first.detach()
    second = instrument(engine)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.execute(text("SELECT 1"))
    assert first.stats is not None and second.stats is not None
    assert first.stats.get("SELECT ?").calls == 1  # type: ignore[union-attr]
    assert second.stats.get("SELECT ?").calls == 2  # type: ignore[union-attr]


def test_observation_failures_never_reach_the_app(
    db: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing observation hook is logged once and the statement's result is unaffected."""
    module = importlib.import_module("sqlalchemy_resilience.observe.facts")

    def broken(statement: str) -> str:
        raise RuntimeError("normalizer bug")

    engine = make(db)
    instrument(engine)
    monkeypatch.setattr(module, "normalize_statement", broken)
    with engine.connect() as conn:
        for i in range(3):
            assert conn.execute(text(f"SELECT {i} + 1")).scalar_one() == i + 1
    failures = [r for r in caplog.records if "statement observation failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info is not None


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
        ((), {"slow_query_threshold": -0.5}, ValueError, "slow_query_threshold must be >= 0"),
        ((), {"slow_query_threshold": "1"}, TypeError, "slow_query_threshold must be seconds"),
        ((), {"long_running_threshold": 0}, ValueError, "long_running_threshold must be > 0"),
        ((), {"max_statements": 0}, ValueError, "max_statements must be >= 1, got 0"),
        ((), {"max_statements": 2.5}, TypeError, "max_statements must be an int"),
        ((), {"query_stats": None}, TypeError, "query_stats must be True or False"),
        ((), {"meter_provider": object()}, TypeError, "meter_provider must be an opentelemetry"),
        ((), {"pool_name": ""}, TypeError, "pool_name must be a non-empty str"),
        ((), {"call_site_skip": "myapp.db"}, TypeError, "call_site_skip must be a tuple"),
        ((), {"explain_interval": -1}, ValueError, "explain_interval must be >= 0"),
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


def _threads_named(name: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name == name)


def _select_one(engine: Engine) -> None:
    # In a function of its own, so no Connection is left in the test's frame.
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def test_a_dropped_engine_is_freed_and_its_background_parts_stop(tmp_path: Path) -> None:
    """S41: 10 engines with the watchdog and leak detection share one background thread;
    dropped, they are garbage-collected and the thread ends when none is left."""
    ticker = "sqlalchemy-resilience-ticker"
    engines = [create_engine(f"sqlite:///{tmp_path / f'drop{i}.sqlite'}") for i in range(10)]
    for engine in engines:
        instrument(engine, long_running_threshold=0.05, leak_threshold=0.05)  # handle not kept
        _select_one(engine)
        assert instrumentation_of(engine) is not None
    assert _threads_named(ticker) == 1  # was: two threads per engine
    (thread,) = [t for t in threading.enumerate() if t.name == ticker]
    refs = [weakref.ref(engine) for engine in engines]
    for engine in engines:
        engine.dispose()
    del engine, engines
    gc.collect()
    assert [ref() for ref in refs].count(None) == 10
    thread.join(timeout=10.0)  # it notices at its next tick that no scanner is left
    assert not thread.is_alive(), "the background thread outlived its engines"


def test_a_kept_engine_keeps_its_instrumentation_without_the_handle(db: str) -> None:
    """Dropping the handle does not uninstrument: the engine keeps its hooks alive."""
    engine = make(db)
    instrument(engine)
    gc.collect()
    instr = instrumentation_of(engine)
    assert instr is not None and instr.attached
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert instr.stats is not None and instr.stats.get("SELECT ?") is not None


class _RotatingPassword:
    """A password object as cloud IAM helpers pass it: str() is called for each use."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.reads = 0

    def __str__(self) -> str:
        self.reads += 1
        return self.secret


def test_the_password_object_is_not_read_at_instrument_time(
    pg_server: PgServer, pg_database: str
) -> None:
    """instrument() leaves a rotating password object alone; translation reads it when it runs."""
    password = _RotatingPassword(pg_server.app_password)
    url = pg_server.app_url(pg_database, driver="psycopg").set(password=password)  # type: ignore[arg-type]
    engine = create_engine(url)
    _engines.append(engine)
    reads = password.reads
    instrument(engine)
    assert password.reads == reads
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        connected = password.reads
        with pytest.raises(sr.InvalidStatement):
            conn.execute(text("SELECT * FROM no_such_table"))
    assert password.reads == connected + 1  # read once more, when the error was translated


_CLASSES_SCRIPT = r"""
import sqlalchemy
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import Pool, QueuePool
import sqlalchemy_resilience as sr
from sqlalchemy_resilience.pool import pool_stats

def class_state():
    return {
        cls: dict(vars(cls))
        for cls in (Engine, Pool, QueuePool, type(create_engine("sqlite://").dialect))
    }

calls = []
below = Engine.raw_connection

def theirs(self):  # another library's patch of the class
    calls.append(self)
    return below(self)

Engine.raw_connection = theirs
before = class_state()
a = create_engine("sqlite://")
instr = sr.instrument(a)
plain = create_engine("sqlite://")
assert class_state() == before, "instrument() changed a class"
assert not {"connect", "recreate"} & plain.pool.__dict__.keys()
assert not {"do_execute", "do_commit"} & plain.dialect.__dict__.keys()
for engine in (a, plain):
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
assert calls == [a, plain], calls
assert pool_stats(a)["checkouts"] == 1
instr.detach()
assert class_state() == before
print("ok")
"""


def test_instrument_changes_no_class() -> None:
    """instrument() changes no class (Engine, Pool, QueuePool, the dialect's): an engine never
    instrumented runs exactly SQLAlchemy's code, and another library's class patch of
    Engine.raw_connection keeps running for instrumented and plain engines alike."""
    proc = subprocess.run(
        [sys.executable, "-c", _CLASSES_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_a_scanner_collected_while_the_shared_thread_reads_its_schedule() -> None:
    """A scanner garbage-collected while the shared thread walks its schedule (the
    collection runs on that thread, inside its re-entrant lock) leaves the walk intact;
    CI once saw the thread die of "dictionary changed size during iteration"."""
    from sqlalchemy_resilience._util import background

    class Idle(background.Ticker):
        interval = 3600.0

        def scan(self) -> None:
            pass

    hub = background._TickerHub()
    kept, dropped = Idle(), Idle()
    try:
        hub.add(kept)
        hub.add(dropped)
        with hub._cond:  # as the thread's loop holds it while it picks the next due scanner
            seen = []
            for key in hub._due:
                seen.append(key)
                if len(seen) == 1:
                    del dropped
                    gc.collect()
        assert len(seen) == 2
        assert hub.has(kept)
    finally:
        thread = hub._thread
        hub.remove(kept)  # and the dead entry with it: the thread has nothing left
    assert thread is not None
    thread.join(timeout=10.0)
    assert not thread.is_alive()
