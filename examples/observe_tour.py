"""docs/observability.md's examples as one program you can run (aiosqlite; or DATABASE_URL).

Run it::

    python examples/observe_tour.py
    DATABASE_URL=postgresql+asyncpg://app:pw@localhost/app python examples/observe_tour.py
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from sqlalchemy_resilience import Database


async def main(url: str) -> None:
    # [instrument]
    from sqlalchemy_resilience import instrument

    engine = create_async_engine(url)
    instr = instrument(
        engine,
        slow_query_threshold=0.25,  # seconds or timedelta; None turns the log off
        long_running_threshold=5.0,  # report statements still running (off by default)
    )
    # [/instrument]
    assert instr.stats is not None  # statistics are on by default
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS tour_users (id INTEGER, email TEXT)"))
        for n in range(5):
            await conn.execute(
                text("INSERT INTO tour_users VALUES (:n, :e)"), {"n": n, "e": f"u{n}@x"}
            )
            await conn.execute(text("SELECT id FROM tour_users WHERE email = :e"), {"e": f"u{n}@x"})

    # [admin]
    # later, e.g. from an admin endpoint
    for s in instr.stats.top(5, by="p95"):
        print(f"{s.p95 * 1000:7.1f} ms p95  {s.calls:7d} calls  {s.statement}")
    print(instr.pool_stats()["wait_time_p99"])
    # [/admin]

    # [stats]
    instr.stats.top(10, by="total")  # also "mean", "max", "p95", "calls", "errors", "rows"
    instr.stats.get("SELECT id FROM tour_users WHERE email = ?")
    json.dumps(instr.stats.snapshot())  # JSON-ready, e.g. for an admin endpoint
    instr.stats.reset()
    # [/stats]

    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE tour_users"))
    instr.detach()
    await engine.dispose()

    reports_engine = create_async_engine(url)
    # [options]
    from sqlalchemy_resilience.instrumentation import InstrumentOptions

    options = InstrumentOptions(slow_query_threshold=0.25, leak_threshold=30)
    instrument(engine, options)
    instrument(reports_engine, options, pool_name="reports")
    db = Database(url, instrumentation=options)  # the facade passes it through
    # [/options]
    async with db:
        print("database:", (await db.health()).status)
    await reports_engine.dispose()
    await engine.dispose()


if __name__ == "__main__":
    default = f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp()) / 'observe.db'}"
    asyncio.run(main(os.environ.get("DATABASE_URL", default)))
