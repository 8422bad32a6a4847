"""The saga crash test (FAULTS.md S25): an app instance SIGKILLed at random moments, again and again.

A subprocess runs 200 durable sagas of 3-4 steps (database writes and a
simulated payment API recording its idempotency keys) and is killed with
SIGKILL at random moments, several times; each restart recovers
(``recover_sagas``) and carries on. Finally two instances start at once,
both recovering. Then, on PostgreSQL and on SQLite:

* every saga is ``completed`` or ``compensated``;
* no step's effect is present twice (rows per saga and step, payment keys);
* no compensation ran for a step that never ran;
* no saga was recovered by both final instances.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from sqlalchemy_resilience.schema import create_saga_tables
from tests.pgharness import PgServer

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]

SAGAS = 200
KILLS = 6
LEASE_OUT = 1.3  # the workers' saga lease is 1 s
ROOT = Path(__file__).resolve().parents[2]


def _prepare(sync_url: str, external: Path) -> None:
    engine = create_engine(sync_url)
    with engine.begin() as conn:
        for table in ("shop_step_log", "shop_orders", "shop_shipments"):
            conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
        conn.execute(text("DROP TABLE IF EXISTS sqlalchemy_resilience_saga_step"))
        conn.execute(text("DROP TABLE IF EXISTS sqlalchemy_resilience_saga"))
        create_saga_tables(conn)
        # No unique constraints: a step applied twice must show up as two rows, not as an error.
        conn.execute(text("CREATE TABLE shop_orders (saga_id varchar(200) NOT NULL)"))
        conn.execute(text("CREATE TABLE shop_shipments (saga_id varchar(200) NOT NULL)"))
        conn.execute(
            text(
                "CREATE TABLE shop_step_log (saga_id varchar(200), step varchar(50), kind varchar(10))"
            )
        )
    engine.dispose()
    with contextlib.closing(sqlite3.connect(external)) as db, db:
        db.execute("CREATE TABLE calls (key TEXT NOT NULL)")
        db.execute("CREATE TABLE effects (key TEXT PRIMARY KEY)")


def _worker(url: str, external: Path, wait_first: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.saga.crash_worker",
            url,
            str(external),
            str(SAGAS),
            str(wait_first),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def _lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _crash_and_recover(url: str, sync_url: str, tmp_path: Path) -> None:
    external = tmp_path / "payments.sqlite"
    _prepare(sync_url, external)
    rng = random.Random(20261202)
    killed_mid_run = 0
    for _ in range(KILLS):
        # Each restart waits for the victim's leases to run out, then recovers.
        proc = _worker(url, external, wait_first=LEASE_OUT)
        assert proc.stdout is not None
        proc.stdout.readline()  # it has recovered and is running sagas now
        time.sleep(rng.uniform(0.05, 0.6))  # when the kill lands: random, by design
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_mid_run += 1
        proc.communicate(timeout=120)
    # Two instances at once, after the last victim's leases ran out.
    final = [_worker(url, external, wait_first=LEASE_OUT) for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in final]
    for proc, (_out, err) in zip(final, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    reports = [_lines(out) for out, _ in outputs]
    recovered = [set(r[0]["recovered"]) for r in reports]  # type: ignore[arg-type]
    assert all(not r[0]["errors"] for r in reports)
    assert all(r[-1]["done"] == SAGAS for r in reports)
    lease_lost = sum(int(r[-1]["lease_lost"]) for r in reports)  # type: ignore[call-overload]

    engine = create_engine(sync_url)
    with engine.connect() as conn:
        statuses = dict(
            conn.execute(text("SELECT id, status FROM sqlalchemy_resilience_saga")).all()
        )
        recoveries = conn.execute(
            text("SELECT coalesce(sum(recoveries), 0) FROM sqlalchemy_resilience_saga")
        ).scalar_one()
        log = Counter(
            (s, t, k)
            for s, t, k in conn.execute(text("SELECT saga_id, step, kind FROM shop_step_log"))
        )
        orders = Counter(conn.execute(text("SELECT saga_id FROM shop_orders")).scalars())
        shipments = Counter(conn.execute(text("SELECT saga_id FROM shop_shipments")).scalars())
    engine.dispose()
    with contextlib.closing(sqlite3.connect(external)) as db:
        calls = Counter(k for (k,) in db.execute("SELECT key FROM calls"))
        effects = {k for (k,) in db.execute("SELECT key FROM effects")}

    ids = [f"s{i:03d}" for i in range(SAGAS)]
    assert sorted(statuses) == ids
    expected = {i: ("compensated" if i % 4 == 0 else "completed") for i in range(SAGAS)}
    wrong = {
        f"s{i:03d}": statuses[f"s{i:03d}"]
        for i in range(SAGAS)
        if statuses[f"s{i:03d}"] != expected[i]
    }
    assert wrong == {}
    twice = {key: n for key, n in log.items() if n > 1}
    assert twice == {}, "a step applied (or compensated) twice"
    orphans = [(s, t) for (s, t, k) in log if k == "undo" and (s, t, "do") not in log]
    orphans += [
        k
        for k in effects
        if k.endswith(":compensate") and k.removesuffix(":compensate") not in effects
    ]
    assert orphans == [], "a compensation ran for a step that never ran"
    for i, saga_id in enumerate(ids):
        if expected[i] == "completed":
            assert orders[saga_id] == 1 and shipments[saga_id] == 1
            assert f"{saga_id}:charge" in effects and f"{saga_id}:charge:compensate" not in effects
            assert (saga_id, "confirm", "do") in log or i % 2 == 1
        else:
            assert orders[saga_id] == 0 and shipments[saga_id] == 0
            assert {f"{saga_id}:charge", f"{saga_id}:charge:compensate"} <= effects
            assert (saga_id, "confirm", "do") not in log
    both = recovered[0] & recovered[1]
    assert both == set(), "a saga was driven by both instances"
    repeated_calls = sum(n - 1 for n in calls.values())
    print(
        f"\n{sync_url.split(':')[0]}: {SAGAS} sagas, {killed_mid_run} SIGKILLs mid-run + 2 instances "
        f"recovering at once: {sum(1 for s in statuses.values() if s == 'completed')} completed, "
        f"{sum(1 for s in statuses.values() if s == 'compensated')} compensated, 0 other; "
        f"{recoveries} recoveries ({len(recovered[0])} + {len(recovered[1])} by the final two, "
        f"0 by both); steps applied twice: 0; compensations of steps that never ran: 0; "
        f"payment calls repeated with the same key: {repeated_calls} (applied once each); "
        f"drivers overtaken after their lease ran out: {lease_lost}"
    )


def test_saga_crash_postgresql(pg_server: PgServer, pg_database: str, tmp_path: Path) -> None:
    """S25 on PostgreSQL (asyncpg)."""
    url = pg_server.app_url(pg_database, driver="asyncpg").render_as_string(hide_password=False)
    sync_url = pg_server.app_url(pg_database, driver="psycopg").render_as_string(
        hide_password=False
    )
    _crash_and_recover(url, sync_url, tmp_path)


def test_saga_crash_sqlite(tmp_path: Path) -> None:
    """S25 on SQLite (aiosqlite, one file, several processes)."""
    db = tmp_path / "shop.sqlite"
    _crash_and_recover(f"sqlite+aiosqlite:///{db}", f"sqlite:///{db}", tmp_path)
