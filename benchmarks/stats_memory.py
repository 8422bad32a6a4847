"""Memory of the per-statement statistics under a flood of distinct statements.

Runs N distinct statements (default one million: ``SELECT ? AS c<i>``, distinct
after normalization) through a SQLite engine, once plain and once with
``instrument()`` (defaults: ``max_statements=5000``), each in a fresh
subprocess, and reports how much each process grew (resident set size).
The difference is what the statistics cost; the cap keeps it flat no matter
how many distinct statements arrive.

    python -m benchmarks.stats_memory                  # 1,000,000 statements
    python -m benchmarks.stats_memory --statements 200000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: peak RSS is the best available
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _child(variant: str, statements: int) -> None:
    import gc

    from sqlalchemy import create_engine

    from sqlalchemy_resilience import instrument

    engine = create_engine("sqlite://")
    instr = instrument(engine) if variant == "instrumented" else None
    with engine.connect() as conn:
        for i in range(2000):  # warm every cache before the baseline
            conn.exec_driver_sql(f"SELECT 1 AS w{i}").all()
        gc.collect()
        before = _rss_bytes()
        start = time.perf_counter()
        for i in range(statements):
            # Distinct statements on purpose (the worst case for the cap);
            # the text is built from a loop counter, never from input.
            conn.exec_driver_sql(f"SELECT 1 AS c{i}").all()
        elapsed = time.perf_counter() - start
        gc.collect()
        after = _rss_bytes()
    result = {
        "variant": variant,
        "statements": statements,
        "grew_mb": (after - before) / 2**20,
        "seconds": elapsed,
        "entries": len(instr.stats) if instr is not None and instr.stats is not None else 0,
        "evicted": instr.stats.evicted if instr is not None and instr.stats is not None else 0,
    }
    print(json.dumps(result))
    engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--statements", type=int, default=1_000_000)
    parser.add_argument("--child", choices=["plain", "instrumented"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.statements < 1:
        parser.error("--statements must be at least 1")
    if args.child:
        _child(args.child, args.statements)
        return
    rows = []
    for variant in ("plain", "instrumented"):
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.stats_memory",
                "--child",
                variant,
                "--statements",
                str(args.statements),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{args.statements:,} distinct statements through one SQLite engine")
    print("| variant | RSS growth MB | statistics entries | evicted | seconds |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['variant']} | {row['grew_mb']:.1f} | {row['entries']} | "
            f"{row['evicted']} | {row['seconds']:.1f} |"
        )
    print(f"statistics cost: {rows[1]['grew_mb'] - rows[0]['grew_mb']:.1f} MB")


if __name__ == "__main__":
    main()
