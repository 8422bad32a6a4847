"""Every numeric option of every public constructor and function, swept with bad values (S36).

NaN, infinities, negatives and values of the wrong type mean nothing for any
of them: each is refused with a ``TypeError`` or ``ValueError`` whose message
names the option, before anything runs. Zero and huge values are either
accepted or refused the same way -- never another exception.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import migrations, testing
from sqlalchemy_resilience.batch import bulk_update_sync
from sqlalchemy_resilience.database import PoolSettings
from sqlalchemy_resilience.deploy import Credential, ReplicaSet, use_password_provider
from sqlalchemy_resilience.instrumentation import InstrumentOptions
from sqlalchemy_resilience.observe import QueryStats
from sqlalchemy_resilience.pagination import paginate_offset_sync
from sqlalchemy_resilience.pool import (
    PoolAutosizer,
    PoolMaintainer,
    ResizableQueuePool,
    health_check_sync,
    ping_idle_connections,
    resize_pool_sync,
    warm_up_sync,
)
from sqlalchemy_resilience.retry import RetryBudget
from sqlalchemy_resilience.saga import recover_sagas_sync
from sqlalchemy_resilience.schema import create_saga_tables
from sqlalchemy_resilience.transactions import SQLiteSettings

_table = Table("sweep", MetaData(), Column("id", Integer, primary_key=True))


def _run(value: Any) -> Any:
    return asyncio.run(value) if inspect.iscoroutine(value) else value


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    path = tmp_path_factory.mktemp("sweep") / "sweep.sqlite"
    # A file and a resizable QueuePool: the pool tools refuse SQLite's memory pools.
    sync = create_engine(f"sqlite:///{path}", poolclass=ResizableQueuePool)
    async_engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    # A second, instrumented engine for the parts that need the pool monitor.
    watched = create_engine(f"sqlite:///{path}", poolclass=ResizableQueuePool)
    create_saga_tables(sync)
    handle = sr.instrument(watched)
    try:
        yield {"sync": sync, "async": async_engine, "watched": watched, "monitor": handle.pool}
    finally:
        handle.detach()
        watched.dispose()
        sync.dispose()
        asyncio.run(async_engine.dispose())


# name -> (call taking the options, the numeric options to sweep)
def _cases(e: dict[str, Any]) -> dict[str, tuple[Callable[..., Any], list[str]]]:
    sync, aeng, watched, monitor = e["sync"], e["async"], e["watched"], e["monitor"]
    return {
        "RetryPolicy": (sr.RetryPolicy, ["attempts", "initial_backoff", "max_backoff", "deadline"]),
        "RetryBudget": (RetryBudget, ["ratio", "min_per_second", "window"]),
        "CircuitBreaker": (
            sr.CircuitBreaker,
            [
                "failure_threshold",
                "failure_rate_threshold",
                "window_size",
                "window_duration",
                "minimum_calls",
                "recovery_timeout",
                "max_recovery_timeout",
                "failover_window",
                "half_open_max_calls",
            ],
        ),
        "CircuitBreaker(slow)": (
            lambda **kw: sr.CircuitBreaker(
                **{"slow_call_duration": 1.0, "slow_call_rate_threshold": 0.5, **kw}
            ),
            ["slow_call_duration", "slow_call_rate_threshold"],
        ),
        "Credential": (lambda **kw: Credential("pw", **kw), ["expires_at"]),
        "PoolSettings": (
            PoolSettings,
            [
                "size",
                "max_overflow",
                "timeout",
                "recycle",
                "min_size",
                "keepalive",
                "ping_after",
                "ping_timeout",
            ],
        ),
        "InstrumentOptions": (
            InstrumentOptions,
            [
                "slow_query_threshold",
                "long_running_threshold",
                "explain_interval",
                "max_statements",
                "leak_threshold",
                "max_waiting",
            ],
        ),
        "SQLiteSettings": (SQLiteSettings, ["busy_timeout"]),
        "QueryStats": (QueryStats, ["max_statements"]),
        "Saga": (lambda **kw: sr.Saga("sweep", **kw), ["lease"]),
        "MigrationSettings": (
            migrations.MigrationSettings,
            ["lock_wait", "lock_timeout", "statement_timeout", "lock_retries", "retry_backoff"],
        ),
        "instrument": (
            lambda **kw: sr.instrument(sync, **kw).detach(),
            [
                "slow_query_threshold",
                "long_running_threshold",
                "explain_interval",
                "max_statements",
                "leak_threshold",
                "max_waiting",
            ],
        ),
        "Database": (
            lambda **kw: sr.Database("sqlite+aiosqlite://", **kw),
            ["max_replica_lag"],
        ),
        "SyncDatabase": (
            lambda **kw: sr.SyncDatabase("sqlite://", **kw),
            ["max_replica_lag"],
        ),
        "ping_idle_connections": (
            lambda **kw: ping_idle_connections(sync, **kw).detach(),
            ["after", "timeout"],
        ),
        "use_password_provider": (
            lambda **kw: use_password_provider(sync, lambda: "pw", **kw).detach(),
            ["refresh_margin", "ttl", "auth_retries", "retry_pause"],
        ),
        "PoolAutosizer": (
            lambda **kw: PoolAutosizer(
                watched, monitor=monitor, **{"min_size": 1, "max_size": 4, **kw}
            ),
            [
                "min_size",
                "max_size",
                "budget",
                "reserve",
                "interval",
                "target_wait",
                "low_utilization",
                "high_utilization",
                "shrink_after",
                "grow_factor",
            ],
        ),
        "PoolMaintainer": (
            lambda **kw: PoolMaintainer(sync, **kw),
            ["keepalive", "recycle", "jitter", "min_size", "interval"],
        ),
        "ReplicaSet": (
            lambda **kw: ReplicaSet(sync, [sync], **kw),
            ["max_lag", "check_interval", "probe_timeout", "failure_threshold", "recovery_timeout"],
        ),
        "health_check": (
            lambda **kw: health_check_sync(sync, **kw),
            ["timeout", "slow_latency", "saturation", "slow_checkout", "slow_connect"],
        ),
        "warm_up": (
            lambda **kw: warm_up_sync(sync, **{"min_size": 1, **kw}),
            ["min_size", "timeout"],
        ),
        "resize_pool": (lambda **kw: resize_pool_sync(sync, **kw), ["size", "max_overflow"]),
        "transaction": (
            lambda **kw: sr.transaction_sync(sessionmaker(sync), **kw),
            ["statement_timeout", "lock_timeout", "idle_in_transaction_timeout"],
        ),
        "run_transaction": (
            lambda **kw: asyncio.run(sr.run_transaction(async_sessionmaker(aeng), _nothing, **kw)),
            ["attempt_timeout"],
        ),
        "bulk_insert": (
            lambda **kw: sr.bulk_insert_sync(sync, _table, [], **kw),
            ["chunk_size"],
        ),
        "bulk_update": (
            lambda **kw: bulk_update_sync(sync, _table, [], **kw),
            ["chunk_size"],
        ),
        "paginate": (
            lambda **kw: sr.paginate_sync(sync, select(_table).order_by(_table.c.id), **kw),
            ["page_size"],
        ),
        "paginate_offset": (
            lambda **kw: paginate_offset_sync(sync, select(_table).order_by(_table.c.id), **kw),
            ["page", "page_size"],
        ),
        "recover_sagas": (
            lambda **kw: recover_sagas_sync(sessionmaker(sync), [sr.Saga("sweep")], **kw),
            ["limit"],
        ),
        "inject_fault": (
            lambda **kw: testing.inject_fault(sync, "busy", **kw).detach(),
            ["nth", "times"],
        ),
        "set_testing": (lambda **kw: testing.set_testing(False, **kw), ["attempts"]),
    }


async def _nothing(session: Any) -> None:
    return None


BAD = [math.nan, math.inf, -math.inf, -1, "5", object()]
# SQLAlchemy's own meaning for -1: no limit on the overflow.
ALLOWED = {("resize_pool", "max_overflow", -1)}
ODD = [0, 10**18, 1e300]


def _sweep(engines: dict[str, Any]) -> Iterator[tuple[str, Callable[..., Any], str]]:
    for name, (call, options) in _cases(engines).items():
        for option in options:
            yield name, call, option


def _try(call: Callable[..., Any], option: str, value: Any) -> str | None:
    """None when the call was refused by an error naming the option (or accepted and
    ``value`` may be accepted); otherwise what went wrong."""
    try:
        result = call(**{option: value})
    except (TypeError, ValueError) as exc:
        return None if option in str(exc) else f"refused without naming it: {exc}"
    except Exception as exc:
        return f"raised {type(exc).__name__}: {exc}"
    _close(result)
    return "accepted"


def test_every_bad_numeric_value_is_refused_naming_the_option(engines: dict[str, Any]) -> None:
    """NaN, +-inf, -1, a string and an object, for every option: TypeError or ValueError naming it."""
    problems = [
        f"{name}({option}={value!r}): {problem}"
        for name, call, option in _sweep(engines)
        for value in BAD
        if (name, option, value) not in ALLOWED
        and (problem := _try(call, option, value)) is not None
    ]
    assert problems == [], "\n".join(problems)


def test_zero_and_huge_values_are_accepted_or_refused_by_name(engines: dict[str, Any]) -> None:
    """0, 10**18 and 1e300: accepted, or refused by a TypeError or ValueError naming the option."""
    problems = [
        f"{name}({option}={value!r}): {problem}"
        for name, call, option in _sweep(engines)
        for value in ODD
        if (problem := _try(call, option, value)) not in (None, "accepted")
    ]
    assert problems == [], "\n".join(problems)


def _close(result: Any) -> None:
    for method in ("close", "detach", "stop"):
        fn = getattr(result, method, None)
        if callable(fn):
            _run(fn())
            return


def test_paginate_secret_says_what_it_must_be(engines: dict[str, Any]) -> None:
    """paginate(secret=5): a TypeError naming secret and the types it takes."""
    with pytest.raises(TypeError, match=r"secret must be str or bytes .*list"):
        sr.paginate_sync(engines["sync"], select(_table).order_by(_table.c.id), secret=5)
