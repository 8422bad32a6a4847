"""The benchmark scripts run end to end (one short round); their figures are the machine's, never asserted."""

from __future__ import annotations

import asyncio

from benchmarks.overhead import bench_mariadb
from tests.mysqlharness import MariaDBServer


def test_the_mariadb_overhead_benchmark_runs(
    mariadb_server: MariaDBServer, mariadb_database: str
) -> None:
    """Both MariaDB tables come out, with every variant and its ratio to plain SQLAlchemy."""
    url = mariadb_server.app_url(mariadb_database, driver="pymysql")
    out = asyncio.run(bench_mariadb(url, rounds=1, ops=8))
    for title in ("MariaDB (PyMySQL, loopback)", "MariaDB (aiomysql, loopback)"):
        assert title in out
    for variant in (
        "raw PyMySQL",
        "raw aiomysql",
        "plain SQLAlchemy",
        "instrument() defaults, no SDK",
    ):
        assert f"| {variant} |" in out
    assert out.count("| plain SQLAlchemy |") == 2
