"""``lint_migrations``: unsafe operations in each revision, by squawk and by the models.

Each revision's SQL is produced the way a DBA would see it (``alembic upgrade
--sql``, offline, PostgreSQL) and handed to squawk, the PostgreSQL migration
linter (``pip install squawk-cli``), whose findings are reported per revision
with the rule and the offending statement. While the SQL is produced, each
Alembic operation is tied to the line of the revision file that called it,
so a finding can be silenced on that line with a marker comment::

    op.create_index("ix_small", "lookup", ["code"])  # lint: ignore[require-concurrent-index-creation]

Added here, because squawk sees SQL but not the models: dropping a column or
table that the models still map (deploy the code that stops using it first),
and -- given a database to look at -- adding a NOT NULL column without a
default to a table that has rows (the ALTER fails on the first row).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, create_engine, exists, inspect, select, table
from sqlalchemy.engine import URL, make_url

from sqlalchemy_resilience.errors import NotSupported

__all__ = ["DEFAULT_EXCLUDE", "LintFinding", "LintReport", "SquawkMissing", "lint_migrations"]

#: squawk rules left out by default: the timeout and robustness rules (an
#: Alembic revision runs in its own transaction under run_migrations'
#: timeouts, which squawk does not see), and the column-type preferences for
#: new tables (design advice, not locking hazards). ``exclude=()`` keeps all.
DEFAULT_EXCLUDE = (
    "prefer-robust-stmts",
    "require-statement-timeout",
    "require-lock-timeout",
    "prefer-text-field",
    "prefer-bigint-over-int",
    "prefer-bigint-over-smallint",
    "prefer-identity",
)

_MARKER = re.compile(r"#\s*lint:\s*ignore\[([A-Za-z0-9_,\s-]+)\]")
_LINT_URL = "postgresql://lint@localhost/lint"


class SquawkMissing(FileNotFoundError):
    """squawk is not installed (or not at the path given).

    Example::

        try:
            lint_migrations("alembic.ini")
        except SquawkMissing as exc:
            print(exc)   # squawk is not installed: pip install squawk-cli ...
    """


@dataclass(frozen=True)
class LintFinding:
    """One unsafe operation.

    Attributes:
        revision: the revision it is in.
        rule: squawk's rule name, or ``drop-mapped-column``, ``drop-mapped-table``,
            ``not-null-without-default-on-rows``.
        message: what is unsafe and why.
        statement: the offending SQL statement (or the operation).
        line: the line of the revision file that issued it, when known.
        source: ``"squawk"``, ``"models"`` or ``"data"``.
    """

    revision: str
    rule: str
    message: str
    statement: str
    line: int | None = None
    source: str = "squawk"

    def __str__(self) -> str:
        where = f"{self.revision}" + (f" line {self.line}" if self.line else "")
        return f"{where}: {self.rule}: {self.message}\n    {self.statement}"


@dataclass(frozen=True)
class LintReport:
    """What ``lint_migrations`` found.

    Attributes:
        revisions: the revisions linted, base first.
        findings: every unsafe operation not silenced by a marker.
        silenced: the findings a marker comment silenced.
    """

    revisions: tuple[str, ...]
    findings: tuple[LintFinding, ...] = field(default=())
    silenced: tuple[LintFinding, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when nothing unsafe was found."""
        return not self.findings


@dataclass
class _Span:
    start: int
    end: int
    line: int | None
    marker: frozenset[str]


def _markers(path: str, line: int) -> frozenset[str]:
    """Rules silenced on ``line`` of ``path`` (or on the comment line just above it)."""
    lines = Path(path).read_text().splitlines()
    found: set[str] = set()
    for number in (line, line - 1):
        if 1 <= number <= len(lines):
            text = lines[number - 1]
            if number == line - 1 and not text.strip().startswith("#"):
                continue
            for match in _MARKER.finditer(text):
                found.update(rule.strip() for rule in match.group(1).split(",") if rule.strip())
    return frozenset(found)


@contextlib.contextmanager
def _recording(
    buffer: io.StringIO, path: str, spans: list[_Span], model_checks: list[Any]
) -> Iterator[None]:
    """Tie each Alembic operation to the revision-file line that called it, and to its SQL."""
    import sys

    from alembic.operations import Operations

    original = Operations.invoke

    def invoke(self: Any, operation: Any) -> Any:
        frame = sys._getframe(1)
        line = None
        while frame is not None:
            if frame.f_code.co_filename == path:
                line = frame.f_lineno
                break
            frame = frame.f_back  # type: ignore[assignment]
        start = buffer.tell()
        result = original(self, operation)
        marker = _markers(path, line) if line else frozenset()
        spans.append(_Span(start, buffer.tell(), line, marker))
        model_checks.append(
            (operation, line, marker, self.migration_context.opts.get("target_metadata"))
        )
        return result

    Operations.invoke = invoke  # type: ignore[method-assign]
    try:
        yield
    finally:
        Operations.invoke = original  # type: ignore[method-assign]


def _squawk(
    binary: str, sql: str, name: str, exclude: Sequence[str], pg_version: str | None
) -> list[dict[str, Any]]:
    command = [binary, "--reporter", "json", "--stdin-filepath", name]
    if exclude:
        command.append("--exclude=" + ",".join(exclude))
    if pg_version:
        command.append(f"--pg-version={pg_version}")
    done = subprocess.run(command, input=sql, capture_output=True, text=True, check=False)  # noqa: S603
    try:
        found = json.loads(done.stdout or "[]")
    except json.JSONDecodeError:
        problem = (done.stderr or done.stdout).strip().splitlines()
        raise RuntimeError(
            f"squawk failed on {name}: {problem[0] if problem else done.returncode}"
        ) from None
    return list(found) if isinstance(found, list) else []


def _metadata_tables(metadata: Any) -> dict[str, Any]:
    tables: dict[str, Any] = {}
    for item in metadata if isinstance(metadata, list | tuple) else [metadata]:
        if isinstance(item, MetaData):
            tables.update({t.name: t for t in item.tables.values()})
    return tables


def _model_findings(
    revision: str, checks: list[Any], url: URL | None
) -> tuple[list[LintFinding], list[LintFinding]]:
    from alembic.operations import ops

    found: list[LintFinding] = []
    silenced: list[LintFinding] = []
    for operation, line, marker, metadata in checks:
        tables = _metadata_tables(metadata)
        finding = None
        if isinstance(operation, ops.DropColumnOp):
            mapped = tables.get(operation.table_name)
            if mapped is not None and operation.column_name in mapped.c:
                finding = LintFinding(
                    revision,
                    "drop-mapped-column",
                    f"{operation.table_name}.{operation.column_name} is dropped but the models still map it: "
                    "deploy code that no longer uses it first",
                    f"op.drop_column({operation.table_name!r}, {operation.column_name!r})",
                    line,
                    "models",
                )
        elif isinstance(operation, ops.DropTableOp):
            if operation.table_name in tables:
                finding = LintFinding(
                    revision,
                    "drop-mapped-table",
                    f"{operation.table_name} is dropped but the models still map it",
                    f"op.drop_table({operation.table_name!r})",
                    line,
                    "models",
                )
        elif isinstance(operation, ops.AddColumnOp) and url is not None:
            column = operation.column
            if (
                not column.nullable
                and column.server_default is None
                and _has_rows(url, operation.table_name)
            ):
                finding = LintFinding(
                    revision,
                    "not-null-without-default-on-rows",
                    f"{operation.table_name}.{column.name} is NOT NULL without a server default, "
                    f"and {operation.table_name} has rows: the ALTER fails",
                    f"op.add_column({operation.table_name!r}, Column({column.name!r}, nullable=False))",
                    line,
                    "data",
                )
        if finding is not None:
            (silenced if finding.rule in marker or "all" in marker else found).append(finding)
    return found, silenced


def _has_rows(url: URL, name: str) -> bool:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(name):
                return False
            return bool(conn.execute(select(exists().select_from(table(name)))).scalar())
    finally:
        engine.dispose()


def _refuse_mysql(url: str | URL | None, config: Any) -> None:
    """Say so when the project's database is one whose DDL squawk cannot judge."""
    target = url or os.environ.get("DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not target:
        return
    try:
        backend = make_url(target).get_backend_name()
    except Exception:
        return  # not a URL this check can read: the lint itself does not need it
    if backend in ("mysql", "mariadb"):
        raise NotSupported(
            "lint_migrations",
            backend,
            "it lints PostgreSQL DDL (squawk), whose locking rules are not MySQL's; "
            "check_migrations and verify_migrations work on MySQL and MariaDB",
        )


def lint_migrations(
    config: Any,
    *,
    url: str | URL | None = None,
    squawk: str | None = None,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    pg_version: str | None = None,
) -> LintReport:
    """Lint every revision's SQL with squawk, and its operations against the models.

    Args:
        config: the ``alembic.config.Config``, or the path of an alembic.ini.
            Its env.py is run offline (as for ``alembic upgrade --sql``).
        url: a database to look at (sync driver) for the data checks (a NOT
            NULL column without a default on a table with rows); optional.
        squawk: the squawk executable (default: ``squawk`` on PATH).
        exclude: squawk rules to leave out (default :data:`DEFAULT_EXCLUDE`).
        pg_version: the PostgreSQL version squawk assumes (``"15"``).

    Raises:
        SquawkMissing: squawk is not installed (``pip install squawk-cli``).
        NotSupported: the project's database (``url``, ``DATABASE_URL`` or
            the config's ``sqlalchemy.url``) is MySQL or MariaDB: squawk reads
            PostgreSQL's DDL only, and no MySQL linter of the kind is worth
            wrapping (``check_migrations`` and ``verify_migrations`` work there).

    Example::

        report = lint_migrations("alembic.ini")
        for finding in report.findings:
            print(finding)
    """
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    alembic_config = Config(config) if isinstance(config, str) else config
    _refuse_mysql(url, alembic_config)
    binary = squawk or shutil.which("squawk")
    if binary is None or (not Path(binary).exists() and shutil.which(binary) is None):
        raise SquawkMissing(
            "squawk is not installed: pip install squawk-cli (or pass the path of the squawk binary)"
        )
    script = ScriptDirectory.from_config(alembic_config)
    revisions = list(reversed(list(script.walk_revisions("base", "heads"))))
    database = make_url(url) if url is not None else None
    findings: list[LintFinding] = []
    silenced: list[LintFinding] = []
    saved_url = alembic_config.get_main_option("sqlalchemy.url")
    saved_buffer = alembic_config.output_buffer
    saved_env = os.environ.pop("DATABASE_URL", None)
    try:
        # Offline SQL needs a dialect, not a server: PostgreSQL's, for squawk
        # (DATABASE_URL would take precedence in run_migrations: set aside).
        alembic_config.set_main_option("sqlalchemy.url", _LINT_URL)
        for revision in revisions:
            buffer = io.StringIO()
            alembic_config.output_buffer = buffer
            spans: list[_Span] = []
            model_checks: list[Any] = []
            down = revision.down_revision
            target = f"{down}:{revision.revision}" if isinstance(down, str) else revision.revision
            with _recording(buffer, str(revision.path), spans, model_checks):
                command.upgrade(alembic_config, target, sql=True)
            sql = buffer.getvalue()
            line_starts = [0] + [i + 1 for i, ch in enumerate(sql) if ch == "\n"]
            lines = sql.splitlines()
            for violation in _squawk(binary, sql, f"{revision.revision}.sql", exclude, pg_version):
                first, last = int(violation.get("line", 0)), int(violation.get("line_end", 0))
                offset = line_starts[first] if first < len(line_starts) else len(sql)
                span = next((s for s in spans if s.start <= offset < max(s.end, s.start + 1)), None)
                statement = " ".join(" ".join(lines[first : last + 1]).split())[:300]
                finding = LintFinding(
                    revision.revision,
                    str(violation.get("rule_name")),
                    str(violation.get("message")),
                    statement,
                    span.line if span else None,
                )
                if span is not None and (finding.rule in span.marker or "all" in span.marker):
                    silenced.append(finding)
                else:
                    findings.append(finding)
            found, quiet = _model_findings(revision.revision, model_checks, database)
            findings.extend(found)
            silenced.extend(quiet)
    finally:
        if saved_env is not None:
            os.environ["DATABASE_URL"] = saved_env
        alembic_config.output_buffer = saved_buffer
        if saved_url is None:
            alembic_config.remove_main_option("sqlalchemy.url")
        else:
            alembic_config.set_main_option("sqlalchemy.url", saved_url)
    return LintReport(tuple(r.revision for r in revisions), tuple(findings), tuple(silenced))
