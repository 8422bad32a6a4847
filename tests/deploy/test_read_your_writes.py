"""read_your_writes(engine): its arguments, and the engines it refuses before anything ran
(the stale reads it prevents are measured on the Galera cluster, tests/galera)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, event
from sqlalchemy.ext.asyncio import create_async_engine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience.deploy import read_your_writes

# MySQL engines need the MySQL drivers, which the mariadb env installs (no server is used).
on_mysql_drivers = pytest.mark.mariadb


@on_mysql_drivers
@pytest.mark.parametrize(
    ("level", "error", "message"),
    [
        (16, ValueError, "level must be an int from 0 to 15, got 16"),
        (-1, ValueError, "level must be an int from 0 to 15, got -1"),
        (True, TypeError, "level must be an int from 0 to 15, got True"),
        ("1", TypeError, "level must be an int from 0 to 15, got '1'"),
    ],
)
def test_the_level_is_galeras_bitmask(level: object, error: type, message: str) -> None:
    engine = create_engine("mysql+pymysql://app@127.0.0.1:1/app")
    with pytest.raises(error, match=message):
        read_your_writes(engine, level=level)  # type: ignore[arg-type]


def test_an_engine_on_another_database_is_refused_at_once(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'r.sqlite'}")
    with pytest.raises(sr.NotSupported, match="read_your_writes is not supported on sqlite"):
        read_your_writes(engine)


@on_mysql_drivers
def test_attach_and_detach_on_sync_and_async_engines() -> None:
    for engine in (
        create_engine("mysql+pymysql://app@127.0.0.1:1/app"),
        create_async_engine("mysql+aiomysql://app@127.0.0.1:1/app").sync_engine,
    ):
        waits = read_your_writes(engine, level=3)
        assert (waits.level, waits.connections) == (3, 0)
        assert event.contains(engine, "connect", waits._on_connect)
        waits.detach()
        waits.detach()  # idempotent
        assert not event.contains(engine, "connect", waits._on_connect)
