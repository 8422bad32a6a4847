"""SQLAlchemy's own tests, run plain and with every engine instrumented: 0 regressions.

Usage::

    python conformance/run.py [--backend sqlite|postgresql|aiosqlite|asyncpg ...] [--workdir DIR]

For each backend (pysqlite, psycopg, aiosqlite, asyncpg) the selection below
runs twice in this environment, from the
sdist of the SQLAlchemy version installed here: once plain, once with
``instrument()`` (defaults) applied to every engine the suite creates (see
``instrument_every_engine.py``). A test that passes plain and fails
instrumented is a regression; the run fails on any regression that is not in
:data:`INHERENT`, the short list of differences that raising a translated
subclass implies (each with its reason, also in ``docs/conformance.md``).
PostgreSQL runs on a throwaway server started here (the package's embedded
server: system binaries or the ``pgserver`` wheel).
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


def run_once(root: Path, dburi: str, mode: str, report: Path) -> dict[str, str]:
    """Outcome per test id ('passed', 'failed', 'skipped') of one run."""
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
        *SELECTION,
    ]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    lines = proc.stdout.splitlines()
    tail = lines[-1] if lines else f"no output (exit {proc.returncode})"
    print(f"  {mode:12s} {tail}", flush=True)
    counted = _ENGINES.search(proc.stdout)
    if counted is None:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
        raise SystemExit(f"the {mode} run did not load the instrumenting plugin")
    print(f"  {mode:12s} {counted.group(0)}", flush=True)
    created, instrumented = int(counted.group(1)), int(counted.group(2))
    if mode == "instrumented" and (created == 0 or instrumented < created // 2):
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


def compare(backend: str, plain: dict[str, str], instrumented: dict[str, str]) -> list[str]:
    """Print the figures; return the unexpected regressions."""
    regressed = sorted(
        t for t, o in plain.items() if o == "passed" and instrumented.get(t) != "passed"
    )
    inherent = [t for t in regressed if _normalize(t) in INHERENT]
    unexpected = [t for t in regressed if _normalize(t) not in INHERENT]
    passed = sum(o == "passed" for o in plain.values())
    print(
        f"{backend}: {passed} pass plain, "
        f"{sum(o == 'passed' for o in instrumented.values())} pass instrumented; "
        f"{len(regressed)} differ ({len(inherent)} inherent, {len(unexpected)} unexpected)"
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend",
        action="append",
        choices=("sqlite", "postgresql", "aiosqlite", "asyncpg"),
        help="default: all four; aiosqlite and asyncpg run the same selection "
        "through SQLAlchemy's asyncio adapters",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "sqlalchemy-resilience-conformance",
    )
    args = parser.parse_args(argv)
    backends = args.backend or ["sqlite", "postgresql", "aiosqlite", "asyncpg"]
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
        else:
            dburi, server = _postgres(args.workdir)
            if backend == "asyncpg":
                dburi = (
                    sqlalchemy.make_url(dburi)
                    .set(drivername="postgresql+asyncpg")
                    .render_as_string(hide_password=False)
                )
        try:
            runs = {
                mode: run_once(root, dburi, mode, args.workdir / f"{backend}-{mode}.xml")
                for mode in ("plain", "instrumented")
            }
        finally:
            if server is not None:
                server.stop(cleanup=True)  # type: ignore[attr-defined]
        unexpected += compare(backend, runs["plain"], runs["instrumented"])
    return 1 if unexpected else 0


if __name__ == "__main__":
    raise SystemExit(main())
