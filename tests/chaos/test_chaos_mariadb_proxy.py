"""The chaos tier's MariaDB legs behind the fault proxy (MySQL framing).

M6: the proxy forwards ``COMMIT`` and drops the server's reply; the test
``KILL``s the session while it waits for that reply. The client sees its
connection lost *during* COMMIT: the outcome is unknown, and the transfer's
key resolves it (0 duplicates), where a blind retry duplicates every entry.

M7: an Aurora-style failover in place: the server behind the proxy turns
``read_only=ON`` under load (what a demoted writer is) and back. Writes get
1290; each such connection is discarded with every pooled connection opened
before it (sqlalchemy#7839), and no connection that saw the read-only server
serves a transfer again.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import RetryPolicy, instrument
from tests.faultproxy import FaultProxy
from tests.mysqlharness import MariaDBServer
from tests.waiting import until

from .mariadb_bank import DB, POLICY, audit, check, committed_more, figure, setup_bank, transfer
from .workload import TOTAL, count_retries, run_bank

pytestmark = pytest.mark.chaos

INJECTED = 8
SHORT = RetryPolicy(attempts=5, initial_backoff=0.01, max_backoff=0.05)


@pytest.fixture
def proxy(maria: MariaDBServer) -> Iterator[FaultProxy]:
    """A fresh bank, a ledger without a key, and the proxy in front of the server."""
    setup_bank(maria)
    maria.execute(f"DROP TABLE IF EXISTS `{DB}`.ledger_entries")
    maria.execute(
        f"CREATE TABLE `{DB}`.ledger_entries (request_id char(36) NOT NULL,"
        " amount int NOT NULL) ENGINE=InnoDB"
    )
    port = maria.admin_url.port
    assert port is not None
    fault = FaultProxy("127.0.0.1", port, protocol="mysql")
    try:
        yield fault
    finally:
        fault.close()


def _rows(maria: MariaDBServer, table: str, request_id: uuid.UUID) -> int:
    found = maria.execute(
        f"SELECT count(*) FROM `{DB}`.{table} WHERE request_id = %s", (str(request_id),)
    )
    return int(found[0][0])


Work = Callable[[uuid.UUID], Callable[[Any], Any]]


def _units(asynchronous: bool) -> tuple[Work, Work]:
    """The keyed transfer (``INSERT IGNORE`` on its request id) and the blind ledger
    entry, as units of work for the driver's session (async or sync)."""
    keyed_sql = text(
        "INSERT IGNORE INTO transfers (request_id, src, dst, amount) VALUES (:r, 1, 2, 1)"
    )
    blind_sql = text("INSERT INTO ledger_entries (request_id, amount) VALUES (:r, 1)")

    def keyed(request_id: uuid.UUID) -> Callable[[Any], Any]:
        if asynchronous:

            async def unit(session: Any) -> bool:
                result = await session.execute(keyed_sql, {"r": str(request_id)})
                return bool(result.rowcount)

            return unit

        def sync_unit(session: Session) -> bool:
            result = session.execute(keyed_sql, {"r": str(request_id)})
            return bool(result.rowcount)  # type: ignore[attr-defined]

        return sync_unit

    def blind(request_id: uuid.UUID) -> Callable[[Any], Any]:
        if asynchronous:

            async def unit(session: Any) -> None:
                await session.execute(blind_sql, {"r": str(request_id)})

            return unit

        def sync_unit(session: Session) -> None:
            session.execute(blind_sql, {"r": str(request_id)})

        return sync_unit

    return keyed, blind


@pytest.mark.parametrize("driver", ["aiomysql", "pymysql"])
async def test_m6_session_killed_waiting_for_its_commit_reply(
    maria: MariaDBServer,
    proxy: FaultProxy,
    driver: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The COMMIT reached the server and was applied; the session is KILLed before its
    reply gets through: CommitOutcomeUnknown every time, resolved by the key with 0
    duplicates. Control: the same fault with a blind retry duplicates every entry."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience.retry")
    url = maria.app_url(DB, driver=driver).set(port=proxy.port)
    asynchronous = driver == "aiomysql"
    if asynchronous:
        async_engine = create_async_engine(url, pool_size=2)
        instrument(async_engine)
        AsyncSession = async_sessionmaker(async_engine)

        async def call(unit: Callable[[Any], Any]) -> Any:
            return await sr.run_transaction(AsyncSession, unit, retry=SHORT, idempotent=True)

        dispose: Callable[[], Awaitable[None]] = async_engine.dispose
    else:
        engine = create_engine(url, pool_size=2)
        instrument(engine)
        SyncSession = sessionmaker(engine)

        async def call(unit: Callable[[Any], Any]) -> Any:
            return await asyncio.to_thread(
                sr.run_transaction_sync, SyncSession, unit, retry=SHORT, idempotent=True
            )

        async def dispose() -> None:
            engine.dispose()

    keyed, blind = _units(asynchronous)

    def arm(applied: Callable[[], bool]) -> asyncio.Future[None]:
        # Armed before the unit of work starts: on a loaded machine its COMMIT
        # could otherwise go out before the killer task first runs.
        proxy.hold_commit_reply = True
        return asyncio.ensure_future(held_then_killed(len(proxy.held), applied))

    async def held_then_killed(held: int, applied: Callable[[], bool]) -> None:
        await until(lambda: len(proxy.held) > held, what="a COMMIT whose reply is held")
        # The COMMIT is applied before the session dies: the outcome really is "committed".
        await until(lambda: asyncio.to_thread(applied), what="the held COMMIT applied")
        await asyncio.to_thread(maria.execute, "KILL CONNECTION %s", (proxy.held[-1],))

    try:
        assert await call(keyed(uuid.uuid4())) is True  # warm: the dialect's first connect
        applied_by_retry = []
        for _ in range(INJECTED):
            request_id = uuid.uuid4()
            killer = arm(lambda r=request_id: _rows(maria, "transfers", r) == 1)
            applied_by_retry.append(await call(keyed(request_id)))
            await killer
            assert _rows(maria, "transfers", request_id) == 1
        unknown = count_retries(caplog).get("CommitOutcomeUnknown", 0)
        duplicated = 0
        for _ in range(INJECTED):
            request_id = uuid.uuid4()
            killer = arm(lambda r=request_id: _rows(maria, "ledger_entries", r) == 1)
            await call(blind(request_id))
            await killer
            duplicated += _rows(maria, "ledger_entries", request_id) > 1
    finally:
        await dispose()
    figure(
        f"M6 KILL while waiting for the COMMIT reply ({driver})",
        f"{INJECTED} sessions killed: {unknown} classified unknown, "
        f"{applied_by_retry.count(False)} resolved as already committed by the key, "
        f"0 duplicates; control (no key, blind retry): {duplicated}/{INJECTED} duplicated",
    )
    assert unknown == INJECTED
    assert applied_by_retry == [False] * INJECTED
    assert duplicated == INJECTED


async def test_m7_read_only_failover_and_back(
    maria: MariaDBServer, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """The server turns read_only=ON under 8 clients until 30 writes got 1290, then back:
    writes resume, 0 lost, 0 phantom, the ledger exact; no connection that got a 1290
    sent another command (bar COM_QUIT), and no connection opened before the last 1290
    was checked out after the server came back (once the client had learned of it)."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience.retry")
    proxy.watch_errors = frozenset({1290})
    engine = create_async_engine(
        maria.app_url(DB).set(port=proxy.port), pool_size=10, max_overflow=0
    )
    instrument(engine)
    writable_again: list[float] = []
    checkouts_after = stale_checkouts = 0
    # When the client learned of a 1290 (the proxy sees it first, and a checkout in
    # between cannot know yet): the pool discards what is older at that moment.
    refused_at: list[float] = [0.0]

    @event.listens_for(engine.sync_engine, "handle_error")
    def refused(context: Any) -> None:
        if getattr(context.original_exception, "args", (None,))[0] == 1290:
            refused_at.append(time.monotonic())

    @event.listens_for(engine.sync_engine, "connect")
    def born(dbapi_connection: Any, record: Any) -> None:
        record.info["born"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        nonlocal checkouts_after, stale_checkouts
        if writable_again:
            checkouts_after += 1
            stale_checkouts += record.info["born"] < refused_at[-1]

    async def fail_over_and_back() -> None:
        await until(committed_more(maria, 100), what="100 transfers before the failover")
        await asyncio.to_thread(maria.execute, "SET GLOBAL read_only = ON")
        try:
            await until(
                lambda: proxy.errors_seen.get(1290, 0) >= 30, what="30 writes refused (1290)"
            )
        finally:
            await asyncio.to_thread(maria.execute, "SET GLOBAL read_only = OFF")
        writable_again.append(time.monotonic())
        await until(committed_more(maria, 100), what="100 transfers after the failover")

    try:
        history, audits = await run_bank(
            engine,
            seconds=2.0,
            retry=POLICY,
            chaos=fail_over_and_back,
            audit=audit(maria),
            after_chaos=0.5,
            transfer_fn=transfer,
        )
    finally:
        await engine.dispose()
    verdict = check(maria, history, audits)
    retried = count_retries(caplog)
    figure(
        "M7 read_only=ON and back",
        f"{proxy.errors_seen.get(1290, 0)} writes refused (1290), {proxy.accepted} connections "
        f"opened; {verdict.line()}; retried {retried}; commands on a connection after its "
        f"1290: {proxy.used_after_error}; checkouts after: {checkouts_after}, "
        f"of a connection older than the last 1290: {stale_checkouts}",
    )
    assert verdict.lost == 0 and verdict.phantom == 0 and verdict.unknown == 0
    assert verdict.total_balance == TOTAL and verdict.ledger_consistent
    assert set(history.errors) <= {"CheckViolation"}
    assert retried.get("ReadOnlyServer", 0) > 0
    assert proxy.used_after_error == 0
    assert len(refused_at) > 1  # the client did learn of the refusals
    assert checkouts_after > 0 and stale_checkouts == 0
