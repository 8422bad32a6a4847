"""SQLAlchemy's own tests, run plain and with every engine instrumented: 0 regressions.

Usage::

    python conformance/run.py [--backend sqlite|postgresql|aiosqlite|asyncpg|pymysql|aiomysql ...]
                              [--workdir DIR]

For each backend (pysqlite, psycopg, aiosqlite, asyncpg; PyMySQL and aiomysql
on MariaDB) the selection below runs in this environment, from the sdist of
the SQLAlchemy version installed here, with ``instrument()`` (defaults)
applied to every engine the suite creates (see ``instrument_every_engine.py``),
and the tests that did not pass are run again plain (see :func:`verdict`). A
test that passes plain and fails instrumented is a regression; the run fails
on any regression that is not in
:data:`INHERENT`, the short list of differences that raising a translated
subclass implies (each with its reason, also in ``docs/conformance.md``).
PostgreSQL and MariaDB run on throwaway servers started here (the package's
embedded servers: PostgreSQL's system binaries or the ``pgserver`` wheel;
Debian's ``mariadb-server-core``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy

HERE = Path(__file__).resolve().parent

SELECTION = (
    "test/engine",
    "test/ext/asyncio",
    "test/orm/test_transaction.py",
    "test/orm/test_session.py",
    "test/sql/test_resultset.py",
)

# Test id (without the backend suffix of the class name) -> why it differs.
INHERENT: dict[str, str] = {
    "test/engine/test_execute.py::HandleErrorTest::test_handle_error": (
        "asserts that the raised error *is* context.sqlalchemy_exception; the package's "
        "handle_error hook returns a translated subclass instead (it is still an instance "
        "of that exception's class, with the same text, statement, parameters and orig)"
    ),
}


_ENGINES = re.compile(r"conformance \(\w+\): (\d+) engines created, (\d+) instrumented")
_BACKEND_SUFFIX = re.compile(r"_[a-z0-9]+\+[A-Za-z0-9_]+$")


def _normalize(test_id: str) -> str:
    # "HandleErrorTest_sqlite+pysqlite_3_40_1" -> "HandleErrorTest": the
    # suite names test classes per backend and driver version.
    return "::".join(_BACKEND_SUFFIX.sub("", part) for part in test_id.split("::"))


def fetch_suite(workdir: Path) -> Path:
    """The test tree of the installed SQLAlchemy's sdist, under ``workdir``."""
    version = sqlalchemy.__version__
    root = workdir / f"sqlalchemy-{version}-tests"
    if (root / "test" / "conftest.py").exists():
        return root
    downloads = workdir / "sdist"
    downloads.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"sqlalchemy=={version}",
            "-d",
            str(downloads),
        ],
        check=True,
    )
    (archive,) = downloads.glob(f"sqlalchemy-{version}.tar.gz")
    prefix = f"sqlalchemy-{version}/"
    wanted = ("test/", "setup.cfg", "pyproject.toml", "lib/sqlalchemy/testing/plugin/")
    tmp = Path(tempfile.mkdtemp(dir=workdir))
    with tarfile.open(archive) as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.name.startswith(prefix) and m.name[len(prefix) :].startswith(wanted)
        ]
        tar.extractall(tmp, members=members, filter="data")
    # Only the plugin bootstrap comes from lib/: the conftest puts lib/ first on
    # sys.path, and without lib/sqlalchemy/__init__.py the installed package
    # (the one under test) is what imports.
    shutil.move(str(tmp / f"sqlalchemy-{version}"), root)
    shutil.rmtree(tmp, ignore_errors=True)
    return root


def run_once(
    root: Path, dburi: str, mode: str, report: Path, tests: Sequence[str] = SELECTION
) -> dict[str, str]:
    """Outcome per test id ('passed', 'failed', 'skipped') of one run of ``tests``."""
    whole = tuple(tests) == SELECTION
    env = dict(os.environ)
    env["SQLALCHEMY_RESILIENCE_CONFORMANCE"] = mode
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env.pop("PYTHONDEVMODE", None)  # SQLAlchemy's suite sets its own warning filters
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:asyncio",
        "-p",
        "instrument_every_engine",
        "--tb=short",
        f"--dburi={dburi}",
        f"--junitxml={report}",
        *tests,
    ]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    lines = proc.stdout.splitlines()
    tail = lines[-1] if lines else f"no output (exit {proc.returncode})"
    label = mode if whole else f"{mode} ({len(tests)} tests)"
    print(f"  {label:12s} {tail}", flush=True)
    counted = _ENGINES.search(proc.stdout)
    if counted is None:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
        raise SystemExit(f"the {mode} run did not load the instrumenting plugin")
    print(f"  {label:12s} {counted.group(0)}", flush=True)
    created, instrumented = int(counted.group(1)), int(counted.group(2))
    if whole and mode == "instrumented" and (created == 0 or instrumented < created // 2):
        # Without this guard a plugin that silently stopped instrumenting
        # would compare two plain runs and report 0 regressions.
        raise SystemExit(
            f"the instrumented run instrumented {instrumented} of {created} engines: "
            "the comparison would prove nothing"
        )
    if not report.exists():
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
        raise SystemExit(f"the {mode} run produced no report (exit {proc.returncode})")
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).iter("testcase"):
        *module, cls = (case.get("classname") or "").split(".")
        test_id = f"{'/'.join(module)}.py::{cls}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            outcomes[test_id] = "failed"
        elif case.find("skipped") is not None:
            outcomes[test_id] = "skipped"
        else:
            outcomes[test_id] = "passed"
    return outcomes


def _node_ids(test_ids: Sequence[str]) -> list[str]:
    # The suite generates a class per backend at collection ("Test_sqlite+pysqlite_3_40_1");
    # pytest selects by the class the module defines.
    return sorted({_normalize(t) for t in test_ids})


def verdict(root: Path, dburi: str, backend: str, workdir: Path) -> list[str]:
    """Run the selection instrumented, then plain what did not pass; return the unexpected regressions.

    A regression is a test that passes plain and does not pass instrumented.
    A test that passes instrumented cannot be one, so only the others (a
    handful failed, a few hundred skipped for the backend's sake) are run
    plain: the same verdict as two whole runs at about half the cost. A test
    that passes plain on its own is run instrumented on its own too; if it
    passes there as well, it failed only in the whole run's order, and only
    then is the whole selection run plain, to judge it as two whole runs would.
    The differences listed in :data:`INHERENT` are not run alone again.
    """
    report = workdir / f"{backend}-instrumented.xml"
    instrumented = run_once(root, dburi, "instrumented", report)
    suspects = sorted(t for t, o in instrumented.items() if o != "passed")
    plain = (
        run_once(root, dburi, "plain", workdir / f"{backend}-plain.xml", _node_ids(suspects))
        if suspects
        else {}
    )
    # An inherent difference fails instrumented for its stated reason in any
    # order: running it alone again would only cost another pytest start.
    candidates = [t for t in suspects if plain.get(t) == "passed" and _normalize(t) not in INHERENT]
    alone = (
        run_once(
            root, dburi, "instrumented", workdir / f"{backend}-again.xml", _node_ids(candidates)
        )
        if candidates
        else {}
    )
    if any(t not in plain for t in suspects) or any(alone.get(t) == "passed" for t in candidates):
        # A test the partial run did not reach, or one that failed only in
        # the whole run's order: judge as two whole runs would.
        plain = run_once(root, dburi, "plain", workdir / f"{backend}-plain-whole.xml")
    regressed = sorted(t for t in suspects if plain.get(t) == "passed")
    inherent = [t for t in regressed if _normalize(t) in INHERENT]
    unexpected = [t for t in regressed if _normalize(t) not in INHERENT]
    print(
        f"{backend}: {sum(o == 'passed' for o in instrumented.values())} pass instrumented, "
        f"{len(suspects)} do not (failed or skipped), of which {len(regressed)} pass plain "
        f"({len(inherent)} inherent, {len(unexpected)} unexpected)"
    )
    for test_id in inherent:
        print(f"  inherent: {test_id}: {INHERENT[_normalize(test_id)]}")
    for test_id in unexpected:
        print(f"  REGRESSION: {test_id}")
    return unexpected


def _postgres(workdir: Path) -> tuple[str, object]:
    from sqlalchemy_resilience.testing.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(settings={"max_prepared_transactions": "10"})
    pg.start()
    admin = pg.url(driver="psycopg")
    engine = sqlalchemy.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE DATABASE test")
    engine.dispose()
    test_url = admin.set(database="test")
    engine = sqlalchemy.create_engine(test_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        for schema in ("test_schema", "test_schema_2"):
            conn.execute(sqlalchemy.schema.CreateSchema(schema))
    engine.dispose()
    return test_url.render_as_string(hide_password=False), pg


def _mariadb(workdir: Path) -> tuple[str, object]:
    from sqlalchemy_resilience.testing.embedded_mariadb import EmbeddedMariaDB

    server = EmbeddedMariaDB(settings={"max-connections": "300"})
    server.start()
    # The suite's MySQL tests expect these databases ("schemas" on MySQL);
    # "test" comes with the server.
    for name in ("test", "test_schema", "test_schema_2"):
        server.execute_as_admin(f"CREATE DATABASE IF NOT EXISTS {name}")  # fixed names
    url = server.url(driver="pymysql", database="test")
    return url.render_as_string(hide_password=False), server


_ALL = ("sqlite", "postgresql", "aiosqlite", "asyncpg", "pymysql", "aiomysql")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend",
        action="append",
        choices=_ALL,
        help="default: all six; aiosqlite, asyncpg and aiomysql run the same selection "
        "through SQLAlchemy's asyncio adapters",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "sqlalchemy-resilience-conformance",
    )
    args = parser.parse_args(argv)
    backends = args.backend or list(_ALL)
    args.workdir.mkdir(parents=True, exist_ok=True)
    root = fetch_suite(args.workdir)
    print(f"SQLAlchemy {sqlalchemy.__version__}'s own tests: {', '.join(SELECTION)}")
    unexpected: list[str] = []
    for backend in backends:
        server = None
        if backend == "sqlite":
            dburi = "sqlite:///:memory:"
        elif backend == "aiosqlite":
            dburi = "sqlite+aiosqlite:///:memory:"
        elif backend in ("pymysql", "aiomysql"):
            dburi, server = _mariadb(args.workdir)
            dburi = (
                sqlalchemy.make_url(dburi)
                .set(drivername=f"mysql+{backend}")
                .render_as_string(hide_password=False)
            )
        else:
            dburi, server = _postgres(args.workdir)
            if backend == "asyncpg":
                dburi = (
                    sqlalchemy.make_url(dburi)
                    .set(drivername="postgresql+asyncpg")
                    .render_as_string(hide_password=False)
                )
        try:
            unexpected += verdict(root, dburi, backend, args.workdir)
        finally:
            if server is not None:
                server.stop(cleanup=True)  # type: ignore[attr-defined]
    return 1 if unexpected else 0


if __name__ == "__main__":
    raise SystemExit(main())
