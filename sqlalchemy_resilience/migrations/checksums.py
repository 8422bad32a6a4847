"""Checksums of applied revisions, and ``verify_migrations``: Flyway's ``validate`` for Alembic.

``run_migrations`` records the SHA-256 of each revision's file in the
migration's own transaction (``on_version_apply``), so the record and the
schema change commit together, and deletes it when the revision is
downgraded. ``verify_migrations`` then compares the database with the
scripts: a revision edited after it was applied, an applied revision whose
file is gone (or that the scripts never had), a recorded revision that is no
longer applied.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, inspect, select
from sqlalchemy.engine import Connection

from sqlalchemy_resilience.schema import migration_checksums

from .progress import in_flight, interrupted_message, is_interrupted

__all__ = ["Finding", "VerifyReport", "file_checksum", "recorder", "verify_connection"]


def file_checksum(path: str | Path) -> str:
    """SHA-256 (hex) of a revision file, line endings normalised (a Windows checkout is not an edit).

    Example::

        >>> len(file_checksum(__file__))
        64
    """
    data = Path(path).read_bytes().replace(b"\r\n", b"\n")
    return hashlib.sha256(data).hexdigest()


def recorder(version_table: str) -> Any:
    """The ``on_version_apply`` callback that keeps the checksum table in step with the version table."""

    def record(*, ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
        connection: Connection | None = ctx.connection
        if connection is None or ctx.as_sql:
            return
        table = migration_checksums
        if step.is_upgrade:
            for revision in step.up_revisions:
                path = getattr(revision, "path", None)
                if revision is None or path is None:
                    continue
                connection.execute(
                    delete(table).where(
                        table.c.version_table == version_table,
                        table.c.revision == revision.revision,
                    )
                )
                connection.execute(
                    insert(table).values(
                        version_table=version_table,
                        revision=revision.revision,
                        checksum=file_checksum(path),
                        filename=Path(path).name,
                    )
                )
        elif inspect(connection).has_table(table.name):
            # (Downgrading the revision that created the table drops it first.)
            connection.execute(
                delete(table).where(
                    table.c.version_table == version_table,
                    table.c.revision.in_(step.up_revision_ids),
                )
            )

    return record


@dataclass(frozen=True)
class Finding:
    """One difference between the database and the scripts.

    Attributes:
        kind: ``"edited"`` (the file changed after it was applied),
            ``"missing"`` (applied, but the scripts no longer have it),
            ``"unknown"`` (the version table names a revision the scripts never had),
            ``"unrecorded"`` (applied before checksums were kept: information only),
            ``"stale"`` (a checksum of a revision no longer applied),
            ``"interrupted"`` (where DDL is not transactional: a revision an
            earlier run started and did not finish; part of it may be applied).
        revision: the revision id.
        detail: what differs.

    Example::

        for finding in verify_migrations(url).findings:
            print(finding.kind, finding.revision)
    """

    kind: str
    revision: str
    detail: str

    @property
    def is_problem(self) -> bool:
        """Whether the finding should fail a deployment (``unrecorded`` does not)."""
        return self.kind != "unrecorded"


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify_migrations`` found.

    Attributes:
        version_table: the version table checked.
        applied: the applied revisions, base first.
        findings: every difference.

    Example::

        report = verify_migrations(url)
        if not report.ok:
            sys.exit(1)
    """

    version_table: str
    applied: tuple[str, ...]
    findings: tuple[Finding, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when no finding is a problem."""
        return not any(f.is_problem for f in self.findings)

    @property
    def problems(self) -> list[Finding]:
        """The findings that are problems."""
        return [f for f in self.findings if f.is_problem]


def _applied(script: Any, heads: Iterable[str]) -> tuple[list[str], list[Finding]]:
    """Every revision at or below the version table's heads, and the heads the scripts lack."""
    known: list[str] = []
    findings: list[Finding] = []
    present = []
    for head in heads:
        try:
            script.get_revision(head)
        except Exception:  # alembic.util.CommandError / ResolutionError: not in the scripts
            findings.append(Finding("unknown", head, "in the version table, not in the scripts"))
        else:
            present.append(head)
    if present:
        for revision in script.revision_map.iterate_revisions(tuple(present), "base"):
            known.append(revision.revision)
    known.reverse()
    return known, findings


def verify_connection(connection: Connection, script: Any, version_table: str) -> VerifyReport:
    """Compare ``connection``'s version and checksum tables with ``script`` (an Alembic ScriptDirectory)."""
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table": version_table})
    heads = context.get_current_heads()
    recorded: dict[str, tuple[str, str]] = {}
    if inspect(connection).has_table(migration_checksums.name):
        table = migration_checksums
        rows = connection.execute(
            select(table.c.revision, table.c.checksum, table.c.filename).where(
                table.c.version_table == version_table
            )
        )
        recorded = {row.revision: (row.checksum, row.filename) for row in rows}
    applied, unknown = _applied(script, heads)
    # A head the scripts lack: its file was deleted if we recorded applying it.
    findings = [
        Finding("missing", f.revision, f"{recorded[f.revision][1]} is gone from the scripts")
        if f.revision in recorded
        else f
        for f in unknown
    ]
    for revision_id in applied:
        revision = script.get_revision(revision_id)
        path = getattr(revision, "path", None)
        if revision_id not in recorded:
            findings.append(
                Finding("unrecorded", revision_id, "applied before checksums were recorded")
            )
            continue
        checksum, filename = recorded[revision_id]
        if path is None or not Path(path).exists():
            findings.append(Finding("missing", revision_id, f"{filename} is gone from the scripts"))
        elif file_checksum(path) != checksum:
            findings.append(
                Finding("edited", revision_id, f"{Path(path).name} changed after it was applied")
            )
    reported = {f.revision for f in findings}
    for revision_id, (_, filename) in recorded.items():
        if revision_id in applied or revision_id in reported:
            continue
        try:
            script.get_revision(revision_id)
        except Exception:
            findings.append(Finding("missing", revision_id, f"{filename} is gone from the scripts"))
        else:
            # With a head the scripts lack, what lies below it cannot be known.
            if not unknown:
                findings.append(Finding("stale", revision_id, "recorded but not applied"))
    step = in_flight(connection, version_table)
    if step is not None and not unknown and is_interrupted(step, applied):
        findings.append(
            Finding("interrupted", step.revision, interrupted_message(step, version_table, script))
        )
    return VerifyReport(version_table, tuple(applied), tuple(findings))
