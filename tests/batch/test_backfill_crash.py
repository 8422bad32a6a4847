"""A resumable backfill SIGKILLed mid-way, three times, then resumed: exact row count, no duplicates."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from sqlalchemy_resilience.schema import create_batch_tables
from tests.batch.backfill_worker import metadata, target
from tests.pgharness import PgServer

ROWS = 20_000
CHUNK = 500
ROOT = Path(__file__).resolve().parents[2]


def _crash_and_resume(url: str, sync_url: str) -> None:
    engine = create_engine(sync_url)
    with engine.begin() as conn:
        metadata.drop_all(conn)
        metadata.create_all(conn)
        conn.exec_driver_sql("DROP TABLE IF EXISTS sqlalchemy_resilience_batch_job")
        create_batch_tables(conn)
    rng = random.Random(1202)
    killed_at: list[int] = []
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.batch.backfill_worker", url, str(ROWS), str(CHUNK)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        wait_for = rng.randint(3, 10)  # committed chunks to see before the kill
        last = "0"
        for _ in range(wait_for):
            last = proc.stdout.readline().strip() or last
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        killed_at.append(int(last))
    final = subprocess.run(
        [sys.executable, "-m", "tests.batch.backfill_worker", url, str(ROWS), str(CHUNK)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert final.returncode == 0, final.stderr[-2000:]
    with engine.connect() as conn:
        total = conn.execute(select(func.count()).select_from(target)).scalar_one()
        distinct = conn.execute(select(func.count(func.distinct(target.c.n)))).scalar_one()
        low, high = conn.execute(select(func.min(target.c.n), func.max(target.c.n))).one()
    engine.dispose()
    print(
        f"\n{sync_url.split(':')[0]}: {ROWS} rows in chunks of {CHUNK}, SIGKILLed after "
        f"{killed_at} rows reported, then resumed: {total} rows, {distinct} distinct, "
        f"{total - distinct} duplicated, {ROWS - distinct} missing; last run: {final.stdout.splitlines()[-1]}"
    )
    assert (total, distinct, low, high) == (ROWS, ROWS, 0, ROWS - 1)


def test_backfill_crash_sqlite(tmp_path: Path) -> None:
    """SQLite (aiosqlite)."""
    db = tmp_path / "backfill.sqlite"
    _crash_and_resume(f"sqlite+aiosqlite:///{db}", f"sqlite:///{db}")


def test_backfill_crash_postgresql(pg_server: PgServer, pg_database: str) -> None:
    """PostgreSQL (asyncpg: the COPY path)."""
    url = pg_server.app_url(pg_database, driver="asyncpg").render_as_string(hide_password=False)
    sync_url = pg_server.app_url(pg_database, driver="psycopg").render_as_string(
        hide_password=False
    )
    _crash_and_resume(url, sync_url)


pytestmark = pytest.mark.timeout(600)
