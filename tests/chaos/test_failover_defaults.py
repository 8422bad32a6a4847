"""S45: a failover-length outage with the package's defaults (#31 section 1).

Ten workers move money with ``RetryPolicy()`` and ``CircuitBreaker()`` as they
come; the database becomes unreachable for three seconds (the proxy in front
refuses connections and cuts the open ones, as HAProxy does when its check of
the old primary fails) and comes back. With the defaults the application sees
no error: the breaker opens, callers wait at it instead of failing, one probe
at a time looks for the database, and the work resumes when it answers. The
same outage with the old defaults' behaviour — fail fast at an open breaker —
is measured beside it.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from sqlalchemy_resilience import CircuitBreaker, RetryPolicy, instrument
from sqlalchemy_resilience.retry import BreakerState, BreakerTransition
from tests.chaos.workload import check, run_bank, setup_bank
from tests.faultproxy import FaultProxy
from tests.pgharness import PgServer

pytestmark = pytest.mark.chaos

DB = "faults"
OUTAGE = 3.0


@pytest.fixture
def proxy(fault_server: PgServer) -> Iterator[FaultProxy]:
    p = FaultProxy("127.0.0.1", fault_server.port)
    try:
        yield p
    finally:
        p.close()


class _Attempts:
    """Connection attempts, how many at once, and how many while the breaker was not closed."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker
        self.lock = threading.Lock()
        self.total = 0
        self.while_open = 0
        self.in_flight = 0
        self.most_in_flight_while_open = 0

    def started(self) -> bool:
        with self.lock:
            self.total += 1
            self.in_flight += 1
            if self.breaker.state is not BreakerState.CLOSED:
                self.while_open += 1
                self.most_in_flight_while_open = max(self.most_in_flight_while_open, self.in_flight)
        return True

    def ended(self) -> None:
        with self.lock:
            self.in_flight -= 1


async def _outage(
    fault_server: PgServer, proxy: FaultProxy, policy: RetryPolicy
) -> dict[str, object]:
    setup_bank(fault_server, DB)
    transitions: list[BreakerTransition] = []
    breaker = CircuitBreaker(name="bank", listeners=[transitions.append])
    engine = create_async_engine(
        fault_server.app_url(DB, driver="asyncpg").set(port=proxy.port),
        pool_size=10,
        max_overflow=0,
        pool_timeout=30,
    )
    instrument(engine)
    attempts = _Attempts(breaker)
    dialect = engine.sync_engine.dialect
    connect = dialect.connect

    def counted_connect(*args: object, **kwargs: object) -> object:
        attempts.started()
        try:
            return connect(*args, **kwargs)
        finally:
            attempts.ended()

    dialect.connect = counted_connect  # type: ignore[method-assign]
    window: list[float] = []

    def committed() -> int:
        return int(fault_server.execute("SELECT count(*) FROM transfers", database=DB)[0][0])

    async def chaos() -> None:
        # The outage comes once the workload is under way: 200 transfers committed.
        await asyncio.to_thread(fault_server.wait_for, lambda: committed() >= 200, timeout=30)
        window.append(time.monotonic())
        await asyncio.to_thread(proxy.down)
        await asyncio.sleep(OUTAGE)  # the outage itself lasts OUTAGE seconds
        await asyncio.to_thread(proxy.up)
        window.append(time.monotonic())

    try:
        history, _ = await run_bank(
            engine,
            seconds=4.0,
            workers=10,
            retry=policy,
            breaker=breaker,
            chaos=chaos,
            after_chaos=3.0,
        )
    finally:
        await engine.dispose()
    verdict = check(fault_server, DB, history, [])
    _, up_at = window
    commits = sorted(history.successes_at)
    gap = max((b - a for a, b in itertools.pairwise(commits)), default=float("inf"))
    after = [t for t in commits if t >= up_at]
    return {
        "verdict": verdict,
        "errors": dict(history.errors),
        "gap": gap,
        "resumed_after_up": (after[0] - up_at) if after else float("inf"),
        "attempts_while_open": attempts.while_open,
        "most_in_flight_while_open": attempts.most_in_flight_while_open,
        "transitions": [f"{t.previous.name}->{t.current.name}" for t in transitions],
    }


async def test_an_outage_with_the_defaults_surfaces_no_error(
    fault_server: PgServer, proxy: FaultProxy
) -> None:
    """S45: 3 s unreachable under 10 workers, RetryPolicy() and CircuitBreaker() defaults:
    0 errors, 0 lost, 0 phantom; while the breaker was not closed, connection attempts came
    one at a time (its probes), not from every worker."""
    waiting = await _outage(fault_server, proxy, RetryPolicy())
    fail_fast = await _outage(fault_server, proxy, RetryPolicy(wait_at_breaker=False))
    for name, run in (("defaults", waiting), ("wait_at_breaker=False", fail_fast)):
        verdict = run["verdict"]
        print(
            f"\nS45 {name}: {verdict.line()}; errors {run['errors']}; longest gap between "
            f"commits {run['gap']:.2f} s (outage {OUTAGE:g} s), the first commit "
            f"{run['resumed_after_up']:.2f} s after the database came back; "
            f"{run['attempts_while_open']} connection attempts while the breaker was not "
            f"closed, at most {run['most_in_flight_while_open']} at once; {run['transitions']}"
        )
        assert verdict.lost == 0 and verdict.phantom == 0  # type: ignore[attr-defined]
        assert verdict.ledger_consistent  # type: ignore[attr-defined]
    assert "CLOSED->OPEN" in waiting["transitions"]  # the outage did open it
    assert waiting["errors"] == {}
    assert waiting["most_in_flight_while_open"] <= 1
    assert fail_fast["errors"] != {}  # what waiting at the breaker spares the application
