"""Throughput through a server restart: transfers committed per 100 ms, and when they resume.

Eight workers move money between accounts with ``run_transaction`` (idempotent
by request id) while the embedded PostgreSQL is restarted (``pg_ctl restart
-m fast``) at 3 s. The script prints when the server was back, when the first
transfer after it committed, the totals and the books' check (nothing lost or
doubled), and with ``--plot`` draws committed transfers per 100 ms over time.

    python -m benchmarks.recovery --embedded-postgres [--plot docs/_static/recovery.svg]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from sqlalchemy_resilience import RetryPolicy, instrument, run_transaction
from sqlalchemy_resilience.testing.embedded import EmbeddedPostgres

ACCOUNTS = 20
SECONDS = 8.0
RESTART_AT = 3.0
BIN = 0.1


def _transfer(key: uuid.UUID, a: int, b: int) -> Callable[[AsyncSession], Awaitable[None]]:
    async def move(session: AsyncSession) -> None:
        done = await session.execute(
            text("INSERT INTO rec_transfers VALUES (:k, 1) ON CONFLICT DO NOTHING RETURNING id"),
            {"k": key},
        )
        if done.first() is None:
            return  # an earlier attempt committed it
        for account, delta in ((a, -1), (b, 1)):
            await session.execute(
                text("UPDATE rec_accounts SET balance = balance + :d WHERE id = :i"),
                {"d": delta, "i": account},
            )

    return move


async def run(pg: EmbeddedPostgres, plot: Path | None) -> None:
    url = pg.url(driver="asyncpg")
    engine = create_async_engine(url, pool_size=8, max_overflow=0)
    instrument(engine)
    async with engine.begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS rec_transfers, rec_accounts"))
        await conn.execute(text("CREATE TABLE rec_accounts (id int PRIMARY KEY, balance int)"))
        await conn.execute(
            text("INSERT INTO rec_accounts SELECT g, 1000 FROM generate_series(1, :n) g"),
            {"n": ACCOUNTS},
        )
        await conn.execute(text("CREATE TABLE rec_transfers (id uuid PRIMARY KEY, amount int)"))
    Session = async_sessionmaker(engine)
    policy = RetryPolicy(attempts=60, initial_backoff=0.02, max_backoff=0.25, deadline=30)
    start = time.monotonic()
    committed: list[float] = []
    restart: dict[str, float] = {}

    async def worker(n: int) -> None:
        rng = random.Random(n)
        while time.monotonic() - start < SECONDS:
            key = uuid.uuid4()
            a, b = sorted(rng.sample(range(1, ACCOUNTS + 1), 2))

            await run_transaction(Session, _transfer(key, a, b), retry=policy, idempotent=True)
            committed.append(time.monotonic() - start)

    async def chaos() -> None:
        await asyncio.sleep(RESTART_AT)
        restart["begin"] = time.monotonic() - start
        await asyncio.to_thread(pg.restart, mode="fast")
        restart["back"] = time.monotonic() - start

    await asyncio.gather(*(worker(n) for n in range(8)), chaos())
    async with engine.connect() as conn:
        total = await conn.scalar(text("SELECT sum(balance) FROM rec_accounts"))
        moved = await conn.scalar(text("SELECT count(*) FROM rec_transfers"))
    await engine.dispose()
    first_after = min(t for t in committed if t > restart["back"])
    print(
        f"restart began at {restart['begin']:.2f} s, the server was back at {restart['back']:.2f} s; "
        f"first transfer committed after it at {first_after:.2f} s "
        f"(+{(first_after - restart['back']) * 1000:.0f} ms); {len(committed)} transfers acknowledged, "
        f"{moved} in the table, total balance {total} (expected {ACCOUNTS * 1000})"
    )
    if plot is not None:
        draw(committed, restart, plot)


def draw(committed: list[float], restart: dict[str, float], path: Path) -> None:
    try:
        import matplotlib  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        raise SystemExit("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("agg")
    matplotlib.rcParams["svg.fonttype"] = "none"
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    bins = int(SECONDS / BIN) + 1
    counts = [0] * bins
    for t in committed:
        counts[min(bins - 1, int(t / BIN))] += 1
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(
        [i * BIN for i in range(bins)], counts, width=BIN, align="edge", label="transfers committed"
    )
    ax.axvspan(
        restart["begin"], restart["back"], color="tab:red", alpha=0.2, label="server restarting"
    )
    ax.set_xlabel("seconds")
    ax.set_ylabel(f"committed per {BIN * 1000:.0f} ms")
    ax.set_title("run_transaction through a server restart (8 workers)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, **({"metadata": {"Date": None}} if path.suffix == ".svg" else {"dpi": 110}))
    print(f"plot written to {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--embedded-postgres", action="store_true", required=True)
    parser.add_argument("--plot", help="write an SVG of transfers committed over time (matplotlib)")
    args = parser.parse_args(argv)
    with EmbeddedPostgres(settings={"fsync": "on"}) as pg:
        asyncio.run(run(pg, Path(args.plot) if args.plot else None))


if __name__ == "__main__":
    main()
