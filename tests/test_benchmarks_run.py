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


def test_the_mariadb_bulk_benchmark_runs(
    mariadb_server: MariaDBServer, mariadb_database: str
) -> None:
    """Every variant of the LOAD DATA table comes out, with its ratio to the raw load."""
    from benchmarks.bulk import throughput_mariadb

    out = throughput_mariadb(
        mariadb_server.app_url(mariadb_database, driver="pymysql"), n=50, rounds=1
    )
    for variant in (
        "raw PyMySQL LOAD DATA LOCAL INFILE",
        "raw PyMySQL executemany (multi-row INSERT)",
        "bulk_insert (LOAD DATA path)",
        "bulk_insert(use_copy=False) (insertmanyvalues)",
    ):
        assert f"| {variant} |" in out
