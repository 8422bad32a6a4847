"""This tree's ``instrument()`` against another commit's, in one process and one run.

For a change that must not cost anything per query (a refactor, a new hook
point): the package as of ``--rev`` is exported with ``git archive`` into a
temporary directory under the name ``sqlalchemy_resilience_rev`` (its own
imports renamed to match), and three engines run the same point query --
plain SQLAlchemy, the other commit's ``instrument()`` defaults and this
tree's -- in short rounds interleaved in a shuffled order. Each ratio is the
median over rounds of paired times, so a shared machine's drift cancels out.
A third workload times a bare checkout + checkin with leak detection and
``max_waiting`` on, where the checkout path is all there is.

    python -m benchmarks.against --rev HEAD~1                     # SQLite
    python -m benchmarks.against --rev HEAD~1 --embedded-postgres # + PostgreSQL via asyncpg
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import create_async_engine

import sqlalchemy_resilience as this

_ALIAS = "sqlalchemy_resilience_rev"


def load_revision(rev: str, workdir: Path) -> ModuleType:
    """The package as of ``rev``, importable as ``sqlalchemy_resilience_rev``."""
    root = Path(__file__).resolve().parent.parent
    archive = workdir / "rev.tar"
    with archive.open("wb") as out:
        subprocess.run(
            ["git", "-C", str(root), "archive", rev, "sqlalchemy_resilience"],
            stdout=out,
            check=True,
        )
    with tarfile.open(archive) as tar:
        tar.extractall(workdir, filter="data")
    package = workdir / _ALIAS
    shutil.move(str(workdir / "sqlalchemy_resilience"), package)
    for path in package.rglob("*.py"):
        path.write_text(path.read_text().replace("sqlalchemy_resilience", _ALIAS))
    sys.path.insert(0, str(workdir))
    return importlib.import_module(_ALIAS)


def _report(title: str, times: dict[str, list[float]], per_round: int) -> str:
    lines = [title, "| variant | median µs/query | vs plain SQLAlchemy |", "|---|---:|---:|"]
    plain = times["plain SQLAlchemy"]
    for name, values in times.items():
        ratio = statistics.median(v / p for v, p in zip(values, plain, strict=True))
        lines.append(
            f"| {name} | {statistics.median(values) * 1e6 / per_round:.1f} | {ratio:.4f} |"
        )
    paired = statistics.median(
        t / r for t, r in zip(times["this tree"], times["instrument() at --rev"], strict=True)
    )
    lines.append(f"this tree / --rev, paired median over rounds: {paired:.4f}")
    return "\n".join(lines)


def _variants(other: ModuleType, make: Callable[[int], Any], **options: Any) -> dict[str, Any]:
    """Three engines made by ``make(i)``: plain, instrumented at --rev, instrumented here."""
    engines: dict[str, Any] = {}
    for i, (name, attach) in enumerate(
        (
            ("plain SQLAlchemy", None),
            ("instrument() at --rev", other.instrument),
            ("this tree", this.instrument),
        )
    ):
        engine = make(i)
        if attach is not None:
            attach(engine, **options)
            _both_dispatchers()
        engines[name] = engine
    return engines


def _both_dispatchers() -> None:
    """Keep both copies' checkout dispatchers on ``Engine.raw_connection``, this tree's on top.

    Each copy routes checkouts of its own instrumented engines through a
    class-level dispatcher. Since this tree's dispatcher chains to whatever
    was installed before it, it goes on top of the other copy's; a revision
    older than that replaces whatever is there each time it instruments an
    engine, so this tree's is put back (still chained to the other's).
    """
    hooks = importlib.import_module("sqlalchemy_resilience.core.hooks")
    from sqlalchemy import Engine

    ours = hooks._dispatching_raw_connection
    if hooks._installed[0] and Engine.__dict__.get("raw_connection") is not ours:
        Engine.raw_connection = ours  # type: ignore[method-assign]


def bench_sqlite(other: ModuleType, rounds: int, queries: int, workdir: Path) -> str:
    """Sync sqlite3 point queries, a checkout each."""

    def make(i: int) -> Any:
        engine = create_engine(f"sqlite:///{workdir / f'{i}.sqlite'}")
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
            conn.execute(text("INSERT INTO t VALUES (1, 'x')"))
        return engine

    engines = _variants(other, make)
    stmt = text("SELECT v FROM t WHERE id = :i")

    def one(engine: Any) -> None:
        for _ in range(queries):
            with engine.connect() as conn:
                conn.execute(stmt, {"i": 1}).scalar()

    times = _rounds(engines, rounds, one)
    for engine in engines.values():
        engine.dispose()
    return _report(f"SQLite (sqlite3) point queries, {rounds} rounds x {queries}", times, queries)


def bench_checkout(other: ModuleType, rounds: int, queries: int, workdir: Path) -> str:
    """Bare sqlite3 checkout + checkin with the pool features on (leak detection, max_waiting).

    The most sensitive measure of the checkout path: nothing else happens.
    """
    engines = _variants(
        other,
        lambda i: create_engine(f"sqlite:///{workdir / f'c{i}.sqlite'}"),
        leak_threshold=60.0,
        max_waiting=100,
    )

    def one(engine: Any) -> None:
        for _ in range(queries):
            engine.raw_connection().close()

    times = _rounds(engines, rounds, one)
    for engine in engines.values():
        engine.dispose()
    return _report(
        f"SQLite checkout + checkin, leak_threshold and max_waiting on, {rounds} rounds x {queries}",
        times,
        queries,
    )


def _rounds(
    engines: dict[str, Any], rounds: int, one: Callable[[Any], None]
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        order = list(engines)
        random.shuffle(order)
        for name in order:
            start = time.perf_counter()
            one(engines[name])
            times[name].append(time.perf_counter() - start)
    return times


async def bench_postgres(other: ModuleType, url: URL, rounds: int, queries: int) -> str:
    """asyncpg point queries, a checkout each."""
    engines = _variants(other, lambda i: create_async_engine(url, pool_size=2))
    async with engines["plain SQLAlchemy"].begin() as conn:
        await conn.execute(text("DROP TABLE IF EXISTS sr_bench_against"))
        await conn.execute(text("CREATE TABLE sr_bench_against (id int PRIMARY KEY, v text)"))
        await conn.execute(text("INSERT INTO sr_bench_against VALUES (1, 'x')"))
    stmt = text("SELECT v FROM sr_bench_against WHERE id = :i")
    times: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(rounds):
        order = list(engines)
        random.shuffle(order)
        for name in order:
            start = time.perf_counter()
            for _ in range(queries):
                async with engines[name].connect() as conn:
                    (await conn.execute(stmt, {"i": 1})).scalar()
            times[name].append(time.perf_counter() - start)
    async with engines["plain SQLAlchemy"].begin() as conn:
        await conn.execute(text("DROP TABLE sr_bench_against"))
    for engine in engines.values():
        await engine.dispose()
    return _report(
        f"PostgreSQL (asyncpg) point queries, {rounds} rounds x {queries}", times, queries
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rev", default="HEAD~1", help="the commit to compare with (default HEAD~1)"
    )
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--queries", type=int, default=100)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--postgres-url", help="postgresql+asyncpg:// URL")
    group.add_argument("--embedded-postgres", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sr-against-") as tmp:
        workdir = Path(tmp)
        other = load_revision(args.rev, workdir)
        print(f"this tree against {args.rev}")
        print(bench_sqlite(other, args.rounds, args.queries, workdir))
        print(bench_checkout(other, args.rounds, args.queries, workdir))
        if args.postgres_url:
            url = make_url(args.postgres_url)
            print(asyncio.run(bench_postgres(other, url, args.rounds, args.queries)))
        elif args.embedded_postgres:
            from sqlalchemy_resilience.testing.embedded import EmbeddedPostgres

            with EmbeddedPostgres() as pg:
                url = pg.url(driver="asyncpg")
                print(asyncio.run(bench_postgres(other, url, args.rounds, args.queries)))


if __name__ == "__main__":
    main()
