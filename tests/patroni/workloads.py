"""The workloads that run side by side through each Patroni event, and their figures.

Four banks (FAULTS.md's bank, one database each) move money through the same
event:

* ``Database(url)`` with its defaults, through HAProxy (asyncpg);
* ``Database(url)`` on a multi-host URL (asyncpg, ``target_session_attrs=read-write``);
* ``SyncDatabase(url)`` on a multi-host URL (psycopg, threads);
* plain SQLAlchemy with a naive loop (three tries, a fixed pause, no
  translation, no breaker), through HAProxy: what the package is measured against.

The figures say how many connects a workload had in flight at once per host
while the database was unreachable. Through HAProxy they are counted at a
:class:`FaultProxy` (no toxics) in front of it. A multi-host URL lists the
nodes themselves, so there they are counted at the engine's connect, per
engine (at most one per engine is at most one per host): a proxy in front of
each node would accept a connect the node refuses and then reset it, which
asyncpg, unlike a refused connect, does not take as a reason to try the next host.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    create_async_engine,
)
from sqlalchemy.orm import Session

import sqlalchemy_resilience as sr
from sqlalchemy_resilience.retry import BreakerState, BreakerTransition
from tests.chaos.workload import (
    ACCOUNTS,
    NAIVE_TRIES,
    History,
    Verdict,
    audit_sum,
    check,
    connects_while_not_closed,
    naive_unit,
    not_closed,
    run_bank,
    setup_bank,
    transfer,
)
from tests.faultproxy import FaultProxy, most_in_flight

from .conftest import Patroni

WORKERS = 5


@dataclass
class Workload:
    """One bank, how it connects, and what it saw."""

    name: str
    database: str
    proxies: list[FaultProxy]  # HAProxy's address; none on a multi-host URL
    connects: list[list[float]] = field(default_factory=list)  # [started, ended] at the engine
    history: History = field(default_factory=History)
    audits: list[int | None] = field(default_factory=list)
    # The breaker's transitions: (when, the state it went to).
    transitions: list[tuple[float, BreakerState]] = field(default_factory=list)
    verdict: Verdict | None = None

    def longest_gap(self, since: float = 0.0) -> float:
        """The longest time between two commits (from ``since``, the event)."""
        times = sorted(t for t in self.history.successes_at if t >= since)
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def first_commit_after(self, moment: float) -> float:
        return min((t for t in self.history.successes_at if t > moment), default=float("inf"))

    def attempts_in_flight(self, since: float, until: float, *, started: bool = False) -> int:
        """The most connects in flight at once to one host between ``since`` and ``until``
        (with ``started``: of those that began then)."""
        logs = [p.attempts for p in self.proxies] or [self.connects]
        return max(most_in_flight(log, since, until, started=started) for log in logs)

    def errors(self) -> int:
        """Errors the application saw, the legal refusal (insufficient funds) aside."""
        return sum(n for name, n in self.history.errors.items() if name != "CheckViolation")

    def on_transition(self, transition: BreakerTransition) -> None:
        self.transitions.append((time.monotonic(), transition.current))

    def not_closed(self) -> list[tuple[float, float]]:
        """The intervals the breaker spent open or half-open."""
        return not_closed(self.transitions)

    def attempts_while_not_closed(self) -> int:
        """See :func:`~tests.chaos.workload.connects_while_not_closed`."""
        logs = [p.attempts for p in self.proxies] or [self.connects]
        return connects_while_not_closed(logs, self.transitions)


def _count_connects(engine: Engine, log: list[list[float]]) -> None:
    """Record each connect the engine makes as ``[started, ended]`` in ``log``."""
    dialect = engine.dialect
    connect = dialect.connect

    def counted(*args: Any, **kwargs: Any) -> Any:
        attempt = [time.monotonic(), math.inf]
        log.append(attempt)
        try:
            return connect(*args, **kwargs)
        finally:
            attempt[1] = time.monotonic()

    dialect.connect = counted  # type: ignore[method-assign]


def _proxies(ports: list[int]) -> list[FaultProxy]:
    return [FaultProxy("127.0.0.1", port) for port in ports]


@contextmanager
def workloads(patroni: Patroni) -> Iterator[dict[str, Workload]]:
    """The four workloads' proxies and fresh banks; the proxies closed after."""
    made = {
        "haproxy": Workload(
            "Database, HAProxy, asyncpg", "p_haproxy", _proxies([patroni.proxy.port])
        ),
        "multihost": Workload("Database, multi-host URL, asyncpg", "p_multihost", []),
        "sync": Workload("SyncDatabase, multi-host URL, psycopg", "p_sync", []),
        "naive": Workload(
            f"plain SQLAlchemy, {NAIVE_TRIES}-try loop, HAProxy, asyncpg",
            "p_naive",
            _proxies([patroni.proxy.port]),
        ),
    }
    try:
        for workload in made.values():
            setup_bank(patroni.admin, workload.database)
        yield made
    finally:
        for workload in made.values():
            for proxy in workload.proxies:
                proxy.close()


async def naive_transfer(
    Session: Callable[[], AsyncSession], history: History, *, rng: random.Random, **_: Any
) -> None:
    """The bank's transfer through :func:`~tests.chaos.workload.naive_unit`."""
    request_id = uuid.uuid4()
    src, dst = rng.sample(range(1, ACCOUNTS + 1), 2)
    amount = rng.randint(1, 20)

    async def work(session: AsyncSession) -> bool:
        inserted = await session.execute(
            text(
                "INSERT INTO transfers (request_id, src, dst, amount) VALUES (:r, :s, :d, :a)"
                " ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
            ),
            {"r": request_id, "s": src, "d": dst, "a": amount},
        )
        if inserted.first() is None:
            return False
        for account, delta in sorted([(src, -amount), (dst, amount)]):
            await session.execute(
                text("UPDATE accounts SET balance = balance + :d WHERE id = :i"),
                {"d": delta, "i": account},
            )
        return True

    await naive_unit(Session, history, request_id, work)


def _sync_transfer(db: sr.SyncDatabase, history: History, rng: random.Random) -> None:
    """:func:`tests.chaos.workload.transfer`'s unit of work, through ``SyncDatabase``."""
    request_id = uuid.uuid4()
    src, dst = rng.sample(range(1, ACCOUNTS + 1), 2)
    amount = rng.randint(1, 20)

    def work(session: Session) -> bool:
        inserted = session.execute(
            text(
                "INSERT INTO transfers (request_id, src, dst, amount) VALUES (:r, :s, :d, :a)"
                " ON CONFLICT (request_id) DO NOTHING RETURNING request_id"
            ),
            {"r": request_id, "s": src, "d": dst, "a": amount},
        )
        if inserted.first() is None:
            return False
        for account, delta in sorted([(src, -amount), (dst, amount)]):
            session.execute(
                text("UPDATE accounts SET balance = balance + :d WHERE id = :i"),
                {"d": delta, "i": account},
            )
        return True

    started = time.monotonic()
    try:
        applied_now = db.run_transaction(work, idempotent=True)
    except sr.CheckViolation as exc:
        history.record(request_id, "fail", exc, started)
    except sr.ResilienceError as exc:
        unknown = isinstance(exc, sr.CommitOutcomeUnknown)
        history.record(request_id, "unknown" if unknown else "fail", exc, started)
    else:
        history.record(request_id, "ok" if applied_now else "already", None, started)
        if not applied_now:
            history.ok.add(request_id)


async def run_event(
    patroni: Patroni,
    made: dict[str, Workload],
    event: Callable[[], Awaitable[None]],
    *,
    seconds: float,
    after_event: float,
) -> None:
    """Run the four workloads, ``event`` alongside; each goes on ``after_event`` s after it."""
    haproxy, multihost, sync, naive = (made[k] for k in ("haproxy", "multihost", "sync", "naive"))
    db_h = sr.Database(patroni.app_url(haproxy.database, port=haproxy.proxies[0].port))
    nodes = [node.port for node in patroni.cluster.nodes]
    db_m = sr.Database(patroni.multi_host_url(multihost.database, ports=nodes, driver="asyncpg"))
    db_s = sr.SyncDatabase(patroni.multi_host_url(sync.database, ports=nodes, driver="psycopg"))
    _count_connects(db_m.engine.sync_engine, multihost.connects)
    _count_connects(db_s.engine, sync.connects)
    plain: AsyncEngine = create_async_engine(
        patroni.app_url(naive.database, port=naive.proxies[0].port)
    )
    await db_h.start()
    await db_m.start()
    await asyncio.to_thread(db_s.start)
    for db, workload in ((db_h, haproxy), (db_m, multihost), (db_s, sync)):
        assert db.breaker is not None
        db.breaker.add_listener(workload.on_transition)
    finished = asyncio.Event()
    stop_sync = threading.Event()

    async def the_event() -> None:
        try:
            await event()
        finally:
            finished.set()

    def sync_worker(n: int) -> None:
        rng = random.Random(9000 + n)
        while not stop_sync.is_set():
            _sync_transfer(db_s, sync.history, rng)

    async def bank(engine: AsyncEngine, workload: Workload, **options: Any) -> None:
        workload.history, workload.audits = await run_bank(
            engine,
            seconds=seconds,
            workers=WORKERS,
            audit=audit_sum(patroni.admin, workload.database),
            after_chaos=after_event,
            **options,
        )

    threads = [threading.Thread(target=sync_worker, args=(n,)) for n in range(WORKERS)]
    for thread in threads:
        thread.start()
    try:
        await asyncio.gather(
            bank(db_h.engine, haproxy, retry=db_h.retry, breaker=db_h.breaker, chaos=the_event),
            bank(
                db_m.engine, multihost, retry=db_m.retry, breaker=db_m.breaker, chaos=finished.wait
            ),
            bank(plain, naive, chaos=finished.wait, transfer_fn=naive_transfer),
        )
    finally:
        stop_sync.set()
        for thread in threads:
            await asyncio.to_thread(thread.join)
        await db_h.close()
        await db_m.close()
        db_s.close()
        await plain.dispose()
    for workload in made.values():
        workload.verdict = check(
            patroni.admin, workload.database, workload.history, workload.audits
        )


__all__ = ["Workload", "naive_transfer", "run_event", "transfer", "workloads"]
