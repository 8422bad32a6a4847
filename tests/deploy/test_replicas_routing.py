"""Routing rules, on three SQLite files that say who they are (no replication needed).

Each database has a ``whoami`` table naming it, so a read shows which engine
served it; the "replicas" are separate files, so a write routed to one would
be visible there and not on the primary.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from sqlalchemy_resilience.deploy import ReplicaSet, routing_sessionmaker, use_primary

metadata = MetaData()
whoami = Table("whoami", metadata, Column("name", String, primary_key=True))
items = Table("items", metadata, Column("id", Integer, primary_key=True), Column("note", String))


def _database(path: Path, name: str) -> Engine:
    engine = create_engine(f"sqlite:///{path}")
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(whoami).values(name=name))
    return engine


@pytest.fixture
def replica_set(tmp_path: Path) -> Iterator[ReplicaSet]:
    primary = _database(tmp_path / "primary.sqlite", "primary")
    replicas = [_database(tmp_path / f"r{i}.sqlite", f"r{i}") for i in (1, 2)]
    rs = ReplicaSet(primary, replicas, check_interval=0.05)
    with rs:
        yield rs
    rs.detach()
    for engine in (primary, *replicas):
        engine.dispose()


def _who(session: Session) -> str:
    return str(session.scalar(select(whoami.c.name)))


def test_reads_spread_one_replica_per_transaction(replica_set: ReplicaSet) -> None:
    Session = routing_sessionmaker(replica_set)
    seen = []
    for _ in range(6):
        with Session() as session:
            first = _who(session)
            assert _who(session) == first  # one transaction, one replica
            seen.append(first)
    assert sorted(set(seen)) == ["r1", "r2"]
    assert replica_set.routed["primary"] == 0


def test_a_write_sends_the_rest_of_the_session_to_the_primary(replica_set: ReplicaSet) -> None:
    Session = routing_sessionmaker(replica_set)
    with Session() as session:
        assert _who(session) in ("r1", "r2")
        session.execute(insert(items).values(id=1, note="x"))
        assert _who(session) == "primary"
        session.commit()
        # A new transaction of the same session still reads the primary: it wrote.
        assert _who(session) == "primary"
        assert session.scalar(select(items.c.note).where(items.c.id == 1)) == "x"
    with Session() as session:
        assert _who(session) in ("r1", "r2")  # a new session starts on a replica


@pytest.mark.parametrize(
    ("statement", "where"),
    [
        (select(whoami.c.name).with_for_update(), "primary"),
        (select(whoami.c.name).execution_options(routing="primary"), "primary"),
        (text("SELECT name FROM whoami"), "replica"),
        (text("/* report */ select name from whoami"), "replica"),
        (text("-- x\nSELECT name FROM whoami FOR UPDATE"), "primary"),
        (text("SELECT nextval('s')"), "primary"),
        (text("SELECT 1; DELETE FROM items"), "primary"),
        (text("WITH d AS (DELETE FROM items RETURNING *) SELECT * FROM d"), "primary"),
        (text("UPDATE items SET note = 'y'"), "primary"),
    ],
)
def test_what_counts_as_a_write(replica_set: ReplicaSet, statement: object, where: str) -> None:
    Session = routing_sessionmaker(replica_set)
    with Session() as session:
        bind = session.get_bind(clause=statement)
        name = "primary" if bind is replica_set.primary_sync else "replica"
        assert name == where


def test_use_primary_and_a_down_replica(replica_set: ReplicaSet, tmp_path: Path) -> None:
    Session = routing_sessionmaker(replica_set)
    with Session() as session:
        use_primary(session)
        assert _who(session) == "primary"
    assert [s.eligible for s in replica_set.status()] == [True, True]
    # Both replicas' breakers open: every read goes to the primary.
    for status, replica in zip(replica_set.status(), replica_set._replicas, strict=True):
        assert status.state == "closed"
        replica.breaker.force_open()
    with Session() as session:
        assert _who(session) == "primary"
    assert replica_set.routed["primary"] >= 1


def test_options_are_checked(tmp_path: Path) -> None:
    engine = create_engine("sqlite://")
    with pytest.raises(TypeError, match="replicas must be a sequence of engines"):
        ReplicaSet(engine, engine)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="failure_threshold must be >= 1, got 0"):
        ReplicaSet(engine, [engine], failure_threshold=0)
    with pytest.raises(ValueError, match="max_lag"):
        ReplicaSet(engine, [engine], max_lag=-1)
    with pytest.raises(TypeError, match="replica_set must be a ReplicaSet"):
        routing_sessionmaker(engine)  # type: ignore[arg-type]
    from sqlalchemy.ext.asyncio import create_async_engine

    with pytest.raises(TypeError, match="must be AsyncEngines when the primary is one"):
        ReplicaSet(create_async_engine("sqlite+aiosqlite://"), [engine])


@pytest.mark.postgresql  # needs the psycopg driver, not a server
def test_the_repr_hides_the_password() -> None:
    assert "password" not in repr(
        ReplicaSet(create_engine("postgresql+psycopg://u:password@h/db"), [])
    )
