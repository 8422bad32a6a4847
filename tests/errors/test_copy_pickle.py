"""Translated errors survive copy and pickle as SQLAlchemy's own do (S37).

Task queues pickle exceptions (Celery's result backends, multiprocessing),
logging handlers and test tools copy them: the copy must keep its message,
its class, its facts and its error id.
"""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import instrument


def _same(err: sr.DatabaseFailure, other: Any) -> None:
    assert type(other) is type(err)
    assert other.args == err.args and other.args
    assert str(other) == str(err)
    assert str(other).startswith(("(sqlite3", "(psycopg", "(sqlalchemy.dialects"))
    assert (other.error_id, other.sqlstate, other.constraint_name) == (
        err.error_id,
        err.sqlstate,
        err.constraint_name,
    )
    assert isinstance(other, sa_exc.IntegrityError)


def _duplicate_sqlite(engine: Engine) -> sr.UniqueViolation:
    with engine.connect() as conn:
        conn.execute(text("CREATE TABLE t (id integer PRIMARY KEY)"))
        conn.execute(text("INSERT INTO t VALUES (1)"))
        with pytest.raises(sr.UniqueViolation) as info:
            conn.execute(text("INSERT INTO t VALUES (1)"))
    return info.value


def test_sqlite_error_survives_copy_and_pickle(sync_engines: list[Engine]) -> None:
    """copy.copy, copy.deepcopy and a pickle round trip keep message, class, facts and id."""
    engine = create_engine("sqlite://")
    sync_engines.append(engine)
    instrument(engine)
    err = _duplicate_sqlite(engine)
    _same(err, copy.copy(err))
    _same(err, copy.deepcopy(err))
    _same(err, pickle.loads(pickle.dumps(err)))


async def test_postgresql_error_survives_copy_and_pickle(pg_engine: AsyncEngine) -> None:
    """The same with asyncpg's and psycopg's exceptions inside."""
    instrument(pg_engine)
    async with pg_engine.connect() as conn:
        await conn.execute(text("CREATE TEMP TABLE t (id integer PRIMARY KEY)"))
        await conn.execute(text("INSERT INTO t VALUES (1)"))
        with pytest.raises(sr.UniqueViolation) as info:
            await conn.execute(text("INSERT INTO t VALUES (1)"))
    err = info.value
    assert err.constraint_name == "t_pkey"
    _same(err, copy.copy(err))
    _same(err, pickle.loads(pickle.dumps(err)))
