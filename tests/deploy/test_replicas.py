"""Read replicas for real: a primary and two streaming replicas started by the test.

The write-then-read workload: every unit of work inserts a row and reads it
back (a stale read would be a replica that has not replayed it yet), and
read-only units count rows. Mid-run one replica is killed (immediate stop)
and started again.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience.deploy import ReplicaSet, routing_sessionmaker
from sqlalchemy_resilience.retry import RetryBudget
from tests.pgharness import PgServer
from tests.waiting import until

# These tests start servers of their own.
pytestmark = pytest.mark.postgresql

DB = "replicas"


class Cluster:
    def __init__(self) -> None:
        self.primary = PgServer.start_embedded(fsync="on")
        self.primary.setup_roles()
        self.primary.create_database(DB)
        self.primary.execute(
            "CREATE TABLE notes (id uuid PRIMARY KEY, body text NOT NULL)", database=DB
        )
        self.primary.execute("GRANT ALL ON notes TO app", database=DB)
        self.replicas: list[PgServer] = []
        for _ in range(2):
            standby = self.primary.require_owned().start_standby()
            server = PgServer(standby.url(driver="psycopg"), standby)
            server.app_password = self.primary.app_password
            self.replicas.append(server)

    def engine(self, server: PgServer) -> AsyncEngine:
        engine = create_async_engine(server.app_url(DB, driver="asyncpg"), pool_size=10)
        sr.instrument(engine)
        return engine

    def close(self) -> None:
        for server in (*self.replicas, self.primary):
            server.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    c = Cluster()
    try:
        yield c
    finally:
        c.close()


POLICY = sr.RetryPolicy(
    attempts=20,
    initial_backoff=0.01,
    max_backoff=0.2,
    deadline=20,
    budget=RetryBudget(min_per_second=100),
)


async def test_write_then_read_with_a_replica_killed_and_restored(cluster: Cluster) -> None:
    primary = cluster.engine(cluster.primary)
    replicas = [cluster.engine(r) for r in cluster.replicas]
    replica_set = ReplicaSet(
        primary, replicas, check_interval=0.2, failure_threshold=1, recovery_timeout=0.5
    )
    Session = routing_sessionmaker(replica_set, expire_on_commit=False)
    errors: dict[str, int] = {}
    stale = 0
    units = 0
    names = [r.name for r in replica_set._replicas]
    phases: dict[str, dict[str, int]] = {}

    async def write_then_read(session: AsyncSession) -> bool:
        key = uuid.uuid4()
        await session.execute(text("INSERT INTO notes (id, body) VALUES (:k, 'x')"), {"k": key})
        found = await session.scalar(text("SELECT count(*) FROM notes WHERE id = :k"), {"k": key})
        return bool(found)

    async def read_only(session: AsyncSession) -> bool:
        await session.scalar(text("SELECT count(*) FROM notes"))
        return True

    stop = asyncio.Event()

    async def client(n: int) -> None:
        nonlocal stale, units
        i = 0
        while not stop.is_set():
            i += 1
            work = write_then_read if i % 3 == 0 else read_only
            try:
                ok = await sr.run_transaction(Session, work, retry=POLICY)
            except Exception as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            units += 1
            stale += 0 if ok else 1

    def snapshot(label: str) -> None:
        phases[label] = {name: replica_set.routed[name] for name in [*names, "primary"]}

    async def units_done(n: int) -> None:
        # Phases are measured in work done, not in seconds: the same on a busy machine.
        target = units + n
        await until(lambda: units >= target, timeout=60, what=f"{n} more units of work")

    async def chaos() -> None:
        victim = cluster.replicas[0].require_owned()
        await units_done(1500)
        snapshot("before kill")
        await asyncio.to_thread(victim.stop, mode="immediate")
        await units_done(1500)
        snapshot("killed")
        await asyncio.to_thread(victim.start)
        # Back in rotation once a probe gets an answer.
        await until(
            lambda: next(s for s in replica_set.status() if s.name == names[0]).eligible,
            timeout=60,
            what="the restarted replica back in rotation",
        )
        snapshot("restored")
        await units_done(1500)
        stop.set()

    try:
        async with replica_set:
            await asyncio.gather(*(client(n) for n in range(12)), chaos())
            snapshot("end")
    finally:
        replica_set.detach()
        for engine in (primary, *replicas):
            await engine.dispose()
    killed = {k: phases["killed"][k] - phases["before kill"][k] for k in phases["end"]}
    restored = {k: phases["end"][k] - phases["restored"][k] for k in phases["end"]}
    print(
        f"\nreplicas: {units} units of work, errors {errors}, stale reads {stale}; "
        f"routed before the kill {phases['before kill']}, while killed {killed}, "
        f"after the restore {restored}"
    )
    assert errors == {}
    assert stale == 0
    assert all(phases["before kill"][name] > 0 for name in names)  # spread
    # Out of rotation once its breaker opened (a few sessions had chosen it already).
    assert killed[names[0]] * 50 < killed[names[1]]
    assert restored[names[0]] > 0  # back in rotation


async def test_lag_bound_sends_reads_to_the_primary(cluster: Cluster) -> None:
    primary = cluster.engine(cluster.primary)
    replicas = [cluster.engine(r) for r in cluster.replicas]
    replica_set = ReplicaSet(primary, replicas, max_lag=0.5, check_interval=0.1)
    Session = routing_sessionmaker(replica_set)
    try:
        async with replica_set:
            assert all(s.eligible for s in replica_set.status())
            for replica in cluster.replicas:
                replica.execute("SELECT pg_wal_replay_pause()")
            key = uuid.uuid4()

            async def behind() -> bool:
                # Writes go on while the replicas do not replay them, until the
                # measured lag takes both out of rotation.
                async with primary.begin() as conn:
                    await conn.execute(
                        text("INSERT INTO notes (id, body) VALUES (:k, 'lag')"),
                        {"k": uuid.uuid4()},
                    )
                return not any(s.eligible for s in replica_set.status())

            await until(behind, what="both replicas out of rotation for lag")
            async with primary.begin() as conn:
                await conn.execute(
                    text("INSERT INTO notes (id, body) VALUES (:k, 'latest')"), {"k": key}
                )
            before = replica_set.routed["primary"]
            async with Session() as session:
                found = await session.scalar(
                    text("SELECT count(*) FROM notes WHERE id = :k"), {"k": key}
                )
            lags = [s.lag for s in replica_set.status()]
            assert found == 1  # read from the primary: the replicas are behind
            assert replica_set.routed["primary"] == before + 1
            for replica in cluster.replicas:
                replica.execute("SELECT pg_wal_replay_resume()")
            await until(
                lambda: all(s.eligible for s in replica_set.status()), what="caught up again"
            )
    finally:
        for replica in cluster.replicas:
            replica.execute("SELECT pg_wal_replay_resume()")
        replica_set.detach()
        for engine in (primary, *replicas):
            await engine.dispose()
    print(f"\nlag bound 0.5 s: replicas paused at lag {lags}; the read went to the primary")
    assert all(lag is not None and lag > 0.5 for lag in lags)


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_a_commit_lost_on_a_hot_standby_is_safe_to_retry(
    cluster: Cluster, driver: str
) -> None:
    """A standby cannot write: a COMMIT whose reply is lost there has a known outcome."""
    from tests.faultproxy import FaultProxy

    replica = cluster.replicas[1]
    proxy = FaultProxy("127.0.0.1", replica.port)
    engine = create_async_engine(
        replica.app_url(DB, driver=driver).set(port=proxy.port), pool_size=1
    )
    sr.instrument(engine)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT count(*) FROM notes"))
            proxy.swallow_commit_reply = True
            proxy.swallow_commits = 1
            with pytest.raises(sr.ConnectionLost) as caught:
                await conn.commit()
        assert caught.value.retryable
        assert not isinstance(caught.value, sr.CommitOutcomeUnknown)
    finally:
        await engine.dispose()
        proxy.close()


async def test_a_refused_replica_leaves_the_rotation_and_spares_the_primary_breaker(
    cluster: Cluster,
) -> None:
    """asyncpg raises OSError for a refused connect (no handle_error): still counted, and marked."""
    from sqlalchemy_resilience.deploy.replicas import from_replica, primary_failure

    primary = cluster.engine(cluster.primary)
    dead = create_async_engine(cluster.primary.app_url(DB, driver="asyncpg").set(port=1))
    sr.instrument(dead)
    replica_set = ReplicaSet(primary, [dead], failure_threshold=2, recovery_timeout=30)
    Session = routing_sessionmaker(replica_set)
    errors: list[BaseException] = []
    try:
        for _ in range(3):
            try:
                async with Session() as session:
                    await session.scalar(text("SELECT 1"))
            except Exception as exc:
                errors.append(exc)
        assert replica_set.status()[0].state == "open"
        async with Session() as session:  # out of rotation: the primary answers
            assert await session.scalar(text("SELECT 1")) == 1
    finally:
        replica_set.detach()
        await primary.dispose()
        await dead.dispose()
    # Two failures open it: the background probe may be one of them.
    assert 1 <= len(errors) <= 2
    assert all(isinstance(e, sr.DatabaseUnavailable) for e in errors)
    assert all(from_replica(e) and not primary_failure(e) for e in errors)
    assert "connect" not in dead.sync_engine.dialect.__dict__  # detach() restored it


def test_a_silent_replica_cannot_hold_the_sync_probe(cluster: Cluster) -> None:
    """psycopg's connect has no bound of its own: a replica that never answers (a blackholed
    proxy) still costs the probe loop at most probe_timeout, counts as a failure each round
    until it leaves the rotation, and the other replica's lag keeps being measured."""
    from sqlalchemy import create_engine

    from tests.faultproxy import FaultProxy

    good, silent_server = cluster.replicas
    proxy = FaultProxy("127.0.0.1", silent_server.port)
    proxy.blackhole = True
    primary = create_engine(cluster.primary.app_url(DB, driver="psycopg"))
    healthy = create_engine(good.app_url(DB, driver="psycopg"))
    silent = create_engine(silent_server.app_url(DB, driver="psycopg").set(port=proxy.port))
    replica_set = ReplicaSet(
        primary, [healthy, silent], probe_timeout=1.0, failure_threshold=2, recovery_timeout=30
    )
    took: list[float] = []
    try:
        for _ in range(3):
            started = time.monotonic()
            replica_set.probe_sync()
            took.append(time.monotonic() - started)
        by_name = {s.name: s for s in replica_set.status()}
        silent_status = by_name[f"127.0.0.1:{proxy.port}/{DB}"]
        healthy_status = next(s for s in by_name.values() if s is not silent_status)
        assert silent_status.state == "open" and not silent_status.eligible
        assert healthy_status.state == "closed" and healthy_status.lag is not None
        assert all(replica_set.choose() is healthy for _ in range(4))
    finally:
        proxy.close()  # the waiting probe thread gets its connection reset and ends
        replica_set.detach()  # choose() started the background probe
        for engine in (primary, healthy, silent):
            engine.dispose()
    print(f"\nsilent replica, sync probe rounds: {', '.join(f'{t:.3f} s' for t in took)}")
    # probe_timeout (1 s) per round when nothing is wrong with the machine; 10x slack.
    assert max(took) < 10.0, took
