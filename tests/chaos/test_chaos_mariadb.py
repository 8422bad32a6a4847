"""The chaos tier's bank workload on MariaDB (aiomysql): server crashes, clean restarts and
a stopped server, killed sessions, deadlocks and lock wait timeouts. 0 lost, 0 phantom,
the ledger exact. (The fault proxy's legs are in ``test_chaos_mariadb_proxy``.)

MySQL's own rules make two of these sharper than on PostgreSQL: a lock wait
timeout (1205) rolls back only the *statement*, leaving the transaction open,
so a transfer that committed after it would have moved money one way only
(the ledger check catches that); and a deadlock (1213) rolls back the whole
transaction, which the unit of work re-runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.mysqlharness import MariaDBServer
from tests.waiting import until

from .mariadb_bank import DB, POLICY, audit, check, committed_more, figure, transfer
from .workload import TOTAL, count_retries, run_bank

pytestmark = pytest.mark.chaos


@pytest.mark.parametrize(
    ("mode", "what"), [("kill", "SIGKILLed (crash recovery)"), ("fast", "shut down cleanly")]
)
async def test_m1_server_restarted_twice(
    maria_bank: AsyncEngine,
    maria: MariaDBServer,
    caplog: pytest.LogCaptureFixture,
    mode: str,
    what: str,
) -> None:
    """mariadbd SIGKILLed, or shut down cleanly (SIGTERM), and restarted twice under 8
    clients: every acknowledged transfer is there, no refused one is, no outcome is left
    unknown."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience.retry")
    embedded = maria.embedded
    assert embedded is not None

    async def restart_twice() -> None:
        for _ in range(2):
            await until(committed_more(maria, 200), what="200 transfers before the restart")
            await asyncio.to_thread(embedded.restart, mode=mode)

    history, audits = await run_bank(
        maria_bank,
        seconds=4.0,
        retry=POLICY,
        chaos=restart_twice,
        audit=audit(maria),
        after_chaos=1.5,
        transfer_fn=transfer,
    )
    verdict = check(maria, history, audits)
    retried = count_retries(caplog)
    figure(
        f"M1 server {what} twice",
        f"{verdict.line()}; retried {retried}; errors {history.errors}",
    )
    assert verdict.lost == 0 and verdict.phantom == 0 and verdict.unknown == 0
    assert verdict.total_balance == TOTAL and verdict.ledger_consistent
    assert verdict.ok > 0 and set(history.errors) <= {"CheckViolation"}
    assert sum(retried.values()) > 0  # the restarts really hit the transfers


async def test_m5_server_stopped(
    maria_bank: AsyncEngine, maria: MariaDBServer, caplog: pytest.LogCaptureFixture
) -> None:
    """mariadbd SIGSTOPped under 8 clients until every one of them has hit its 1 s
    attempt_timeout, then SIGCONT: the cut attempts (some of them during COMMIT) are
    re-run or resolved by their key; 0 lost, 0 phantom, the ledger exact."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience.retry")
    embedded = maria.embedded
    assert embedded is not None

    async def stop_once() -> None:
        await until(committed_more(maria, 200), what="200 transfers before the stop")
        with embedded.paused():
            # Stopped until the clients have given up on it (attempt_timeout), twice over.
            await until(
                lambda: sum(count_retries(caplog).values()) >= 16,
                what="the clients' attempts cut by attempt_timeout",
                timeout=60,
            )
        await until(committed_more(maria, 50), what="transfers through again")

    history, audits = await run_bank(
        maria_bank,
        seconds=3.0,
        retry=POLICY,
        chaos=stop_once,
        audit=audit(maria),
        after_chaos=1.0,
        transfer_fn=functools.partial(transfer, attempt_timeout=1.0),
    )
    verdict = check(maria, history, audits)
    retried = count_retries(caplog)
    figure(
        "M5 server SIGSTOPped",
        f"{verdict.line()}; retried {retried}; errors {history.errors}",
    )
    assert verdict.lost == 0 and verdict.phantom == 0 and verdict.unknown == 0
    assert verdict.total_balance == TOTAL and verdict.ledger_consistent
    assert verdict.ok > 0 and set(history.errors) <= {"CheckViolation"}


async def test_m2_sessions_killed(
    maria_bank: AsyncEngine, maria: MariaDBServer, caplog: pytest.LogCaptureFixture
) -> None:
    """KILL CONNECTION of two random app sessions every 200 ms: each transfer caught in one
    is re-run (lost before COMMIT) or resolved by its key (lost during COMMIT)."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience.retry")
    kills = 0

    async def kill_sessions() -> None:
        nonlocal kills
        rng = random.Random(3)
        for _ in range(15):
            await until(committed_more(maria, 20), what="20 transfers between rounds of kills")
            ids = await asyncio.to_thread(maria.connection_ids, DB)
            for victim in rng.sample(ids, min(2, len(ids))):
                # 1094 unknown thread: the session ended on its own first.
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(maria.execute, "KILL CONNECTION %s", (victim,))
                    kills += 1

    history, audits = await run_bank(
        maria_bank,
        seconds=3.5,
        retry=POLICY,
        chaos=kill_sessions,
        audit=audit(maria),
        after_chaos=0.5,
        transfer_fn=transfer,
    )
    verdict = check(maria, history, audits)
    retried = count_retries(caplog)
    figure(
        "M2 KILL CONNECTION",
        f"{kills} sessions killed: {verdict.line()}; retried {retried}; errors {history.errors}",
    )
    assert kills > 0
    assert verdict.lost == 0 and verdict.phantom == 0
    assert verdict.total_balance == TOTAL and verdict.ledger_consistent
    assert set(history.errors) <= {"CheckViolation"}


async def test_m3_deadlocks(
    maria_bank: AsyncEngine, maria: MariaDBServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Transfers among 4 accounts, rows locked in random order: InnoDB picks deadlock
    victims (1213, the whole transaction rolled back); each victim's unit is re-run."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience.retry")
    history, audits = await run_bank(
        maria_bank,
        seconds=4.0,
        retry=POLICY,
        random_order=True,
        hot=4,
        audit=audit(maria),
        transfer_fn=transfer,
    )
    verdict = check(maria, history, audits)
    retried = count_retries(caplog)
    figure("M3 deadlocks", f"{verdict.line()}; retried {retried}; errors {history.errors}")
    assert verdict.lost == 0 and verdict.phantom == 0 and verdict.unknown == 0
    assert verdict.total_balance == TOTAL and verdict.ledger_consistent
    assert set(history.errors) <= {"CheckViolation"}
    assert retried.get("DeadlockDetected", 0) > 0  # the deadlocks really happened


async def test_m4_lock_wait_timeouts(
    maria_bank: AsyncEngine, maria: MariaDBServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A holder keeps account 1 locked 1.5 s at a time with innodb_lock_wait_timeout=1: the
    transfers that wait get 1205, which rolls back the statement only; the package rolls the
    transaction back and re-runs it, so no transfer commits half-applied (the ledger)."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy_resilience.retry")
    maria.execute("SET GLOBAL innodb_lock_wait_timeout = 1")
    await maria_bank.dispose()  # new sessions take the new global value
    try:

        async def hold_account_one() -> None:
            async with maria_bank.connect() as conn:
                for round_ in range(1, 4):
                    await conn.execute(text("SELECT id FROM accounts WHERE id = 1 FOR UPDATE"))
                    # Held until a waiting transfer has given up on it (1205).
                    await until(
                        lambda round_=round_: (
                            count_retries(caplog).get("LockNotAvailable", 0) >= round_
                        ),
                        what="a lock wait timeout",
                    )
                    await conn.rollback()
                    await until(committed_more(maria, 20), what="transfers through again")

        history, audits = await run_bank(
            maria_bank,
            seconds=4.0,
            retry=POLICY,
            hot=3,
            chaos=hold_account_one,
            audit=audit(maria),
            after_chaos=0.5,
            transfer_fn=transfer,
        )
    finally:
        maria.execute("SET GLOBAL innodb_lock_wait_timeout = 50")
    verdict = check(maria, history, audits)
    retried = count_retries(caplog)
    figure("M4 lock wait timeouts", f"{verdict.line()}; retried {retried}; errors {history.errors}")
    assert verdict.lost == 0 and verdict.phantom == 0 and verdict.unknown == 0
    assert verdict.total_balance == TOTAL and verdict.ledger_consistent
    assert set(history.errors) <= {"CheckViolation"}
    assert retried.get("LockNotAvailable", 0) > 0  # the 1205s really happened
