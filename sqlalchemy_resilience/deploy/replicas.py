"""Read replicas: reads to replicas, writes to the primary, no stale read after a write.

:class:`ReplicaSet` holds the primary engine, the replica engines and what is
known of each replica: its circuit breaker and its replication lag, both kept
current by a background probe (a task on the event loop for async engines, a
thread for sync ones), so choosing a replica for a request costs no I/O.

:func:`~sqlalchemy_resilience.deploy.routing.routing_sessionmaker` (in
:mod:`.routing`) makes sessions that route by statement in ``get_bind()`` (SQLAlchemy's documented hook for custom routing, the shape
advanced-alchemy's routing sessions use too), with these rules:

* a write goes to the primary: a flush, INSERT/UPDATE/DELETE, ``SELECT ...
  FOR UPDATE``/``FOR SHARE``, a ``text()`` statement that is not a plain
  SELECT, and any statement marked ``execution_options(routing="primary")``;
* after the first write, the session reads from the primary until it is
  closed (read-your-writes for the whole unit of work, whatever the lag);
* otherwise one replica is chosen per transaction (not per statement: two
  reads of one transaction see one snapshot), round-robin over the replicas
  whose breaker is closed and whose lag is within ``max_lag``; none left:
  the primary;
* a replica whose connections fail (refused, lost) has its breaker opened and
  leaves the rotation; the probe closes it again when the replica answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, event, func, literal, select
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from sqlalchemy_resilience._util.background import Background
from sqlalchemy_resilience._util.seconds import Seconds, to_seconds
from sqlalchemy_resilience.core.engines import safe_url, sync_engine
from sqlalchemy_resilience.errors import CircuitOpenError, translate_error
from sqlalchemy_resilience.retry import CircuitBreaker, is_infrastructure_failure
from sqlalchemy_resilience.retry.breaker_state import BreakerState

__all__ = [
    "ReplicaSet",
    "ReplicaStatus",
    "from_replica",
    "primary_failure",
]

_log = logging.getLogger("sqlalchemy_resilience.deploy")

PRIMARY = "primary"
_REPLICA_TAG = "_sqlalchemy_resilience_replica"


def _lag_query() -> Any:
    """Seconds the replica is behind: 0 when it has replayed all it received (or is a primary)."""
    return select(
        case(
            (~func.pg_is_in_recovery(), literal(0.0)),
            (func.pg_last_wal_receive_lsn() == func.pg_last_wal_replay_lsn(), literal(0.0)),
            else_=func.coalesce(
                func.extract("epoch", func.now() - func.pg_last_xact_replay_timestamp()),
                literal(0.0),
            ),
        )
    )


@dataclass(frozen=True)
class ReplicaStatus:
    """What the probe last saw of one replica.

    Attributes:
        name: ``host:port/database`` (never the password).
        state: its breaker's state (``closed`` is in rotation).
        lag: seconds behind the primary at the last probe, or None before the first.
        checked_at: ``time.monotonic()`` of the last probe, or None.
        eligible: in rotation now (breaker closed, lag within ``max_lag``).

    Example::

        for status in replica_set.status():
            print(status.name, status.state, status.lag)
    """

    name: str
    state: str
    lag: float | None
    checked_at: float | None
    eligible: bool


class _Replica:
    def __init__(self, engine: Engine | AsyncEngine, breaker: CircuitBreaker) -> None:
        self.engine = engine
        self.sync = sync_engine(engine)
        url = self.sync.url
        self.name = f"{url.host}:{url.port}/{url.database}"
        self.breaker = breaker
        self.lag: float | None = None
        self.checked_at: float | None = None
        self.connect_patch: Callable[..., Any] | None = None
        #: A sync probe still waiting on this replica past ``probe_timeout``.
        self.stuck: threading.Thread | None = None


class ReplicaSet(Background):
    """A primary, its read replicas, and the probe that keeps their health and lag current.

    Args:
        primary: the engine writes (and reads nothing else can take) go to.
        replicas: engines of the read replicas, all sync or all async like ``primary``.
        max_lag: a replica more than this many seconds behind the primary
            (``pg_last_xact_replay_timestamp()``, 0 when it has replayed all it
            received) takes no reads; None: no bound.
        check_interval: seconds between probes of each replica.
        probe_timeout: seconds a probe may take before it counts as a failure.
        failure_threshold: consecutive failures (probes, or connections lost
            or refused in requests) that take a replica out of rotation.
        recovery_timeout: seconds out of rotation before a probe may bring it back.

    Raises:
        TypeError, ValueError: an option of the wrong type or out of range, named.

    Example::

        replica_set = ReplicaSet(primary, [replica_a, replica_b], max_lag=2.0)
        Session = routing_sessionmaker(replica_set, expire_on_commit=False)
        async with replica_set:  # starts and stops the probe
            async with Session() as session:
                rows = await session.scalars(select(Item))  # a replica
    """

    thread_name = "sqlalchemy-resilience-replicas"

    def __init__(
        self,
        primary: Engine | AsyncEngine,
        replicas: Sequence[Engine | AsyncEngine],
        *,
        max_lag: Seconds | None = None,
        check_interval: Seconds = 1.0,
        probe_timeout: Seconds = 2.0,
        failure_threshold: int = 2,
        recovery_timeout: Seconds = 5.0,
    ) -> None:
        super().__init__()
        self.is_async = isinstance(primary, AsyncEngine)
        sync_engine(primary)  # a TypeError for anything but an engine
        given: object = replicas
        if isinstance(given, (str, bytes)) or not isinstance(given, Sequence):
            raise TypeError(f"replicas must be a sequence of engines, got {replicas!r}")
        for engine in replicas:
            sync_engine(engine)
            if isinstance(engine, AsyncEngine) != self.is_async:
                raise TypeError(
                    "the replicas must be AsyncEngines when the primary is one, and Engines "
                    "when it is an Engine"
                )
        if isinstance(failure_threshold, bool) or not isinstance(failure_threshold, int):
            raise TypeError(f"failure_threshold must be an int, got {failure_threshold!r}")
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be >= 1, got {failure_threshold!r}")
        self.primary = primary
        self.primary_sync = sync_engine(primary)
        self.max_lag = None if max_lag is None else to_seconds("max_lag", max_lag)
        self.check_interval = to_seconds("check_interval", check_interval, allow_zero=False)
        self.probe_timeout = to_seconds("probe_timeout", probe_timeout, allow_zero=False)
        recovery = to_seconds("recovery_timeout", recovery_timeout, allow_zero=False)
        self._replicas = [
            _Replica(
                engine,
                CircuitBreaker(
                    name=f"replica {sync_engine(engine).url.host}:{sync_engine(engine).url.port}",
                    failure_threshold=failure_threshold,
                    recovery_timeout=recovery,
                ),
            )
            for engine in replicas
        ]
        self._by_engine = {r.sync: r for r in self._replicas}
        self._turn = itertools.count()
        self._lock = threading.Lock()
        #: Transactions that ran statements, by replica name and ``"primary"``
        #: (one that read a replica and then wrote counts for both).
        self.routed: Counter[str] = Counter()
        for replica in self._replicas:
            event.listen(replica.sync, "handle_error", self._on_error)
            self._watch_connects(replica)

    def __repr__(self) -> str:
        return (
            f"<ReplicaSet primary={safe_url(self.primary_sync)} "
            f"replicas={[r.name for r in self._replicas]}>"
        )

    # -- routing ---------------------------------------------------------

    def choose(self) -> Engine | None:
        """A replica's sync engine for one transaction, or None (use the primary).

        Reads only what the probe recorded: no I/O. Starts the probe on first
        use when it is not running (on the running loop for async engines).
        """
        if not self.running:
            self._autostart()
        eligible = [r for r in self._replicas if self._eligible(r)]
        if not eligible:
            return None
        return eligible[next(self._turn) % len(eligible)].sync

    def count(self, engine: Engine) -> None:
        """Count a transaction that ran statements on ``engine`` (a replica or the primary)."""
        replica = self._by_engine.get(engine)
        with self._lock:
            self.routed[replica.name if replica is not None else PRIMARY] += 1

    def _eligible(self, replica: _Replica) -> bool:
        if replica.breaker.state is not BreakerState.CLOSED:
            return False
        if self.max_lag is None:
            return True
        return replica.lag is not None and replica.lag <= self.max_lag

    def status(self) -> list[ReplicaStatus]:
        """What is known of each replica now.

        Example::

            [s.eligible for s in replica_set.status()]
        """
        return [
            ReplicaStatus(
                name=r.name,
                state=r.breaker.state.name.lower(),
                lag=r.lag,
                checked_at=r.checked_at,
                eligible=self._eligible(r),
            )
            for r in self._replicas
        ]

    def _watch_connects(self, replica: _Replica) -> None:
        # A refused connect is not a DBAPI error on every driver (asyncpg raises
        # OSError), so SQLAlchemy's handle_error never sees it; the dialect's
        # connect() does. Patched on this engine's own dialect instance only.
        dialect = replica.sync.dialect
        original = dialect.connect

        def connect(*cargs: Any, **cparams: Any) -> Any:
            try:
                return original(*cargs, **cparams)
            except BaseException as exc:
                self._failed(replica, exc)
                raise

        connect.__wrapped__ = original  # type: ignore[attr-defined]
        dialect.connect = connect  # type: ignore[method-assign]
        replica.connect_patch = connect

    def _failed(self, replica: _Replica, exc: BaseException) -> None:
        with contextlib.suppress(Exception):
            setattr(exc, _REPLICA_TAG, replica.name)
        translated = translate_error(exc)
        with contextlib.suppress(Exception):
            setattr(translated, _REPLICA_TAG, replica.name)
        if not is_infrastructure_failure(translated):
            return
        try:
            permit = replica.breaker.acquire()
        except CircuitOpenError:
            return
        replica.breaker.record_failure(permit, translated)

    def _on_error(self, context: Any) -> None:
        replica = self._by_engine.get(context.engine)
        if replica is None:
            return
        # Marked, so the primary's breaker can tell a replica's failure from its own.
        for item in (context.original_exception, context.sqlalchemy_exception):
            with contextlib.suppress(Exception):
                setattr(item, _REPLICA_TAG, replica.name)
        error = context.sqlalchemy_exception or context.original_exception
        translated = translate_error(error)
        if not (context.is_disconnect or is_infrastructure_failure(translated)):
            return
        try:
            permit = replica.breaker.acquire()
        except CircuitOpenError:
            return  # already out of rotation
        replica.breaker.record_failure(permit, translated)

    # -- the probe -------------------------------------------------------

    def _autostart(self) -> None:
        try:
            self._start(in_loop=self.is_async)
        except RuntimeError:  # an async set used outside a running loop
            _log.debug("sqlalchemy_resilience: replica probe not started (no running loop)")

    async def start(self) -> None:
        """Start probing every ``check_interval`` in a task on the running loop (``AsyncEngine`` replicas).

        Example::

            await replica_set.start()   # replica_set.start_sync() for Engine replicas
        """
        if not self.is_async:
            raise TypeError("ReplicaSet.start takes AsyncEngines; for Engines call start_sync()")
        self._start(in_loop=True)

    def start_sync(self) -> None:
        """The blocking twin of :meth:`start`: probing runs in a daemon thread (``Engine`` replicas)."""
        if self.is_async:
            raise TypeError("ReplicaSet.start_sync takes Engines; for AsyncEngines await start()")
        self._start(in_loop=False)

    async def __aenter__(self) -> ReplicaSet:
        await self.start()
        await self.probe()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._halted()
        self.detach()

    def __enter__(self) -> ReplicaSet:
        self.start_sync()
        self.probe_sync()
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _measure_sync(self, replica: _Replica) -> float:
        with replica.sync.connect() as conn:
            if replica.sync.dialect.name != "postgresql":
                conn.execute(select(literal(1)))
                return 0.0
            timeout_ms = int(self.probe_timeout * 1000)
            conn.execute(select(func.set_config("statement_timeout", str(timeout_ms), True)))
            return float(conn.execute(_lag_query()).scalar_one())

    def _probe_one_sync(self, replica: _Replica) -> None:
        """Probe on a thread of its own and wait at most ``probe_timeout`` for it.

        A sync driver's connect has no bound of its own (libpq's
        ``connect_timeout`` is unset by default, and the engine's settings are
        the application's): a replica that went silent would otherwise hold
        the probe loop, and with it every other replica's state, for as long
        as TCP keeps trying. The waiting thread is left to finish; until it
        does, each round counts as one more failure.
        """
        try:
            permit = replica.breaker.acquire()
        except CircuitOpenError:
            return
        if replica.stuck is not None and replica.stuck.is_alive():
            self._probe_failed(replica, permit, TimeoutError("the previous probe still waits"))
            return
        outcome: list[float | BaseException] = []

        def run() -> None:
            try:
                outcome.append(self._measure_sync(replica))
            except BaseException as exc:  # handed to the waiting thread
                outcome.append(exc)

        worker = threading.Thread(target=run, name=f"{self.thread_name}-probe", daemon=True)
        worker.start()
        worker.join(self.probe_timeout)
        if worker.is_alive():
            replica.stuck = worker
            self._probe_failed(
                replica, permit, TimeoutError(f"no answer within {self.probe_timeout:g} s")
            )
            return
        replica.stuck = None
        result = outcome[0]
        if isinstance(result, BaseException):
            self._probe_failed(replica, permit, result)
            return
        replica.breaker.record_success(permit)
        replica.lag = result
        replica.checked_at = time.monotonic()

    def _probe_failed(self, replica: _Replica, permit: Any, exc: BaseException) -> None:
        replica.breaker.record_failure(permit, translate_error(exc))
        replica.checked_at = time.monotonic()

    async def _probe_one_async(self, replica: _Replica) -> None:
        try:
            permit = replica.breaker.acquire()
        except CircuitOpenError:
            return
        engine = replica.engine
        assert isinstance(engine, AsyncEngine)

        async def measure() -> float:
            async with engine.connect() as conn:
                if replica.sync.dialect.name != "postgresql":
                    await conn.execute(select(literal(1)))
                    return 0.0
                return float((await conn.execute(_lag_query())).scalar_one())

        try:
            lag = await asyncio.wait_for(measure(), self.probe_timeout)
        except Exception as exc:
            self._probe_failed(replica, permit, exc)
            return
        replica.breaker.record_success(permit)
        replica.lag = lag
        replica.checked_at = time.monotonic()

    def probe_sync(self) -> None:
        """The blocking twin of :meth:`probe`: every replica once now, concurrently (``Engine`` replicas).

        Returns within about ``probe_timeout`` even when a replica does not
        answer at all.
        """
        rounds = [
            threading.Thread(target=self._probe_one_sync, args=(r,), daemon=True)
            for r in self._replicas
        ]
        for thread in rounds:
            thread.start()
        for thread in rounds:
            thread.join()

    async def probe(self) -> None:
        """Probe every replica once now, concurrently (``AsyncEngine`` replicas)."""
        await asyncio.gather(*(self._probe_one_async(r) for r in self._replicas))

    async def _loop_async(self) -> None:
        while True:
            try:
                await self.probe()
            except Exception:
                _log.exception("sqlalchemy_resilience: replica probe failed")
            await asyncio.sleep(self.check_interval)

    def _loop_sync(self) -> None:
        while True:
            try:
                self.probe_sync()
            except Exception:
                _log.exception("sqlalchemy_resilience: replica probe failed")
            if self._stop.wait(self.check_interval):
                return

    def detach(self) -> None:
        """Stop probing and remove the error listeners from the replica engines (idempotent)."""
        self._halt()
        for replica in self._replicas:
            if event.contains(replica.sync, "handle_error", self._on_error):
                event.remove(replica.sync, "handle_error", self._on_error)
            dialect = replica.sync.dialect
            if replica.connect_patch is not None and dialect.__dict__.get("connect") is (
                replica.connect_patch
            ):
                del dialect.connect  # back to the class's method
            replica.connect_patch = None


def from_replica(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it wraps) failed on a replica of a :class:`ReplicaSet`.

    Example::

        CircuitBreaker(is_failure=lambda e: is_infrastructure_failure(e) and not from_replica(e))
    """
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if getattr(current, _REPLICA_TAG, None):
            return True
        for linked in (getattr(current, "orig", None), current.__cause__, current.__context__):
            if isinstance(linked, BaseException):
                pending.append(linked)
    return False


def primary_failure(exc: BaseException) -> bool:
    """A breaker's ``is_failure`` for a primary with replicas: replicas' failures do not count.

    Example::

        CircuitBreaker(name="primary", is_failure=primary_failure)
    """
    return is_infrastructure_failure(exc) and not from_replica(exc)
