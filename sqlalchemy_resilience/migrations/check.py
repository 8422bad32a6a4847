"""``check_migrations``: pytest-alembic's four checks, plus every revision up, down and up again, compared.

The first four are pytest-alembic's default tests -- a single head, an
upgrade from base to head, the models matching the migrated DDL (Alembic's
``check`` command: autogenerate finds nothing), every downgrade running --
done here with Alembic's own commands rather than by importing
pytest-alembic: its 0.13 release registers a pytest plugin that fails
collection under pytest 9 (``TestCollector`` has no ``_nodeid``), so
depending on it would break the test suites of everyone who installs this
package's ``alembic`` extra. What pytest-alembic lacks is a check that a
downgrade *undoes* its upgrade on a real schema (its experimental version
compares autogenerate output inside rolled-back savepoints, which needs
transactional DDL and sees only what autogenerate sees). Here every revision is, in turn, upgraded,
downgraded and upgraded again, committed each time, and the reflected schema
(tables, columns with type, nullability and default, keys, indexes, unique
and check constraints, and on PostgreSQL enums, sequences and views) is
compared at each step: after the downgrade it must equal the schema before
the upgrade ("leaves no trace"), and after the second upgrade the schema after
the first.

It needs an empty database of its own: it migrates from base to head and back.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.engine import URL, Engine, create_engine, make_url

from sqlalchemy_resilience.schema import migration_checksums, migration_steps

__all__ = ["CheckFinding", "CheckReport", "check_migrations", "schema_snapshot"]

#: The checks, in the order they run.
CHECKS = ("single_head", "upgrade", "up_down", "round_trip", "model_ddl")


@dataclass(frozen=True)
class CheckFinding:
    """One failed check.

    Attributes:
        check: one of :data:`CHECKS`.
        revision: the revision at fault, when one is.
        message: what failed.
        detail: the evidence (the error, or the schema difference).

    Example::

        for finding in check_migrations(config).findings:
            print(finding.check, finding.revision, finding.message)
    """

    check: str
    revision: str | None
    message: str
    detail: str = ""

    def __str__(self) -> str:
        where = f" at {self.revision}" if self.revision else ""
        return f"{self.check}{where}: {self.message}" + (
            f"\n    {self.detail}" if self.detail else ""
        )


@dataclass(frozen=True)
class CheckReport:
    """What ``check_migrations`` found.

    Attributes:
        revisions: the revisions walked, base first.
        findings: every failed check (empty when all passed).

    Example::

        report = check_migrations(config)
        report.assert_ok()  # in a test
    """

    revisions: tuple[str, ...]
    findings: tuple[CheckFinding, ...] = field(default=())

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return not self.findings

    def assert_ok(self) -> None:
        """Raise ``AssertionError`` listing every finding (for a pytest test).

        Example::

            def test_migrations(tmp_database_url):
                check_migrations("alembic.ini", url=tmp_database_url).assert_ok()
        """
        if self.findings:
            raise AssertionError(
                "migration checks failed:\n" + "\n".join(f"  {f}" for f in self.findings)
            )


def schema_snapshot(engine: Engine, *, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The schema as plain data, for comparison: tables (columns, keys, indexes, constraints), enums, sequences, views.

    Example::

        before = schema_snapshot(engine)
    """
    inspector = inspect(engine)
    tables: dict[str, Any] = {}
    for name in sorted(inspector.get_table_names()):
        if name in exclude:
            continue
        columns = [
            (c["name"], str(c["type"]).upper(), bool(c["nullable"]), str(c.get("default")))
            for c in inspector.get_columns(name)
        ]
        pk = inspector.get_pk_constraint(name)
        fks = sorted(
            (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
            for f in inspector.get_foreign_keys(name)
        )
        indexes = sorted(
            (i["name"] or "", tuple(str(c) for c in i["column_names"]), bool(i["unique"]))
            for i in inspector.get_indexes(name)
        )
        uniques = sorted(tuple(u["column_names"]) for u in inspector.get_unique_constraints(name))
        checks: list[str] = []
        with contextlib.suppress(NotImplementedError):
            checks = sorted(
                " ".join(str(c["sqltext"]).split()) for c in inspector.get_check_constraints(name)
            )
        tables[name] = {
            "columns": columns,
            "primary_key": tuple(pk.get("constrained_columns") or ()),
            "foreign_keys": fks,
            "indexes": indexes,
            "unique": uniques,
            "checks": checks,
        }
    snapshot: dict[str, Any] = {"tables": tables}
    snapshot["views"] = sorted(inspector.get_view_names())
    if engine.dialect.name == "postgresql":
        snapshot["sequences"] = sorted(inspector.get_sequence_names())
        snapshot["enums"] = sorted(
            (e["name"], tuple(e["labels"]))
            for e in inspector.get_enums()  # type: ignore[attr-defined]
        )
    return snapshot


def _difference(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A short description of how two snapshots differ."""
    lines: list[str] = []
    old, new = before["tables"], after["tables"]
    for name in sorted(set(new) - set(old)):
        lines.append(f"table {name} is left behind")
    for name in sorted(set(old) - set(new)):
        lines.append(f"table {name} is gone")
    for name in sorted(set(old) & set(new)):
        for part in old[name]:
            if old[name][part] != new[name][part]:
                lines.append(f"{name}.{part}: {old[name][part]} -> {new[name][part]}")
    for part in ("views", "sequences", "enums"):
        if before.get(part) != after.get(part):
            lines.append(f"{part}: {before.get(part)} -> {after.get(part)}")
    return "; ".join(lines) or "the schemas differ"


def _sync_url(url: URL) -> URL:
    """pytest-alembic and reflection want a sync driver: asyncpg -> psycopg, aiosqlite -> sqlite."""
    if url.drivername == "sqlite+aiosqlite":
        return url.set(drivername="sqlite")
    if url.drivername == "postgresql+asyncpg":
        return url.set(drivername="postgresql+psycopg")
    return url


def _version_table(alembic_config: Any) -> str:
    return str(alembic_config.get_main_option("version_table") or "alembic_version")


@contextlib.contextmanager
def _engine(url: str | URL | None, engine: Engine | None, alembic_config: Any) -> Iterator[Engine]:
    if engine is not None:
        yield engine
        return
    raw = url or alembic_config.get_main_option("sqlalchemy.url")
    if not raw:
        raise ValueError("check_migrations needs url= or engine= (an empty database of its own)")
    created = create_engine(_sync_url(make_url(raw)))
    try:
        yield created
    finally:
        created.dispose()


class _Steps:
    """Alembic commands on one database, through ``config.attributes["connection"]``."""

    def __init__(self, alembic_config: Any, engine: Engine) -> None:
        self.config = alembic_config
        self.engine = engine

    def _run(self, name: str, *args: Any) -> None:
        from alembic import command

        saved = dict(self.config.attributes)
        self.config.attributes["connection"] = self.engine
        # The usual guard in env.py for in-process runs: leave the caller's logging alone.
        self.config.attributes.setdefault("configure_logger", False)
        stdout = getattr(self.config, "stdout", None)
        self.config.stdout = io.StringIO()
        try:
            getattr(command, name)(self.config, *args)
        finally:
            self.config.stdout = stdout
            self.config.attributes.clear()
            self.config.attributes.update(saved)

    def upgrade(self, target: str) -> None:
        self._run("upgrade", target)

    def downgrade(self, target: str) -> None:
        self._run("downgrade", target)

    def check(self) -> None:
        self._run("check")

    def current(self) -> tuple[str, ...]:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"version_table": _version_table(self.config)}
            )
            return tuple(context.get_current_heads())


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _walk(
    steps: _Steps,
    revisions: list[str],
    minimum: str | None,
    exclude: tuple[str, ...],
    progress: Callable[[str], None] | None = None,
) -> list[CheckFinding]:
    """Each revision from base: upgrade, downgrade, upgrade again, the schema compared at each step.

    The first fault ends the walk (the database is then in no known state):
    an upgrade that fails (``upgrade``), a downgrade that fails (``up_down``),
    a downgrade that does not restore the schema, or a second upgrade that
    builds another one (``round_trip``). Revisions up to ``minimum`` are only
    upgraded.
    """
    engine = steps.engine
    previous = "base"
    only_up = minimum is not None
    for revision in revisions:
        before = schema_snapshot(engine, exclude=exclude)
        try:
            steps.upgrade(revision)
        except Exception as exc:
            return [CheckFinding("upgrade", revision, "the upgrade failed", _first_line(exc))]
        after = schema_snapshot(engine, exclude=exclude)
        if only_up:
            only_up = revision != minimum
            previous = revision
            if progress is not None:
                progress(revision)
            continue
        try:
            steps.downgrade(previous)
        except Exception as exc:
            return [CheckFinding("up_down", revision, "the downgrade failed", _first_line(exc))]
        undone = schema_snapshot(engine, exclude=exclude)
        if undone != before:
            return [
                CheckFinding(
                    "round_trip",
                    revision,
                    "the downgrade leaves a trace",
                    _difference(before, undone),
                )
            ]
        try:
            steps.upgrade(revision)
        except Exception as exc:
            return [
                CheckFinding(
                    "round_trip", revision, "upgrade after downgrade failed", _first_line(exc)
                )
            ]
        again = schema_snapshot(engine, exclude=exclude)
        if again != after:
            return [
                CheckFinding(
                    "round_trip",
                    revision,
                    "upgrading again gives another schema",
                    _difference(after, again),
                )
            ]
        previous = revision
        if progress is not None:
            progress(revision)
    return []


def check_migrations(
    config: Any,
    *,
    url: str | URL | None = None,
    engine: Engine | None = None,
    minimum_downgrade_revision: str | None = None,
    model_check: bool = True,
    progress: Callable[[str], None] | None = None,
) -> CheckReport:
    """Run every migration check on an empty database; return what failed.

    Checks: a single head; then, from base, each revision upgraded,
    downgraded and upgraded again with the schema compared at each step
    (every upgrade runs, every downgrade runs and leaves no trace, a second
    upgrade builds the same schema); then, at head, the models match the
    migrated DDL (Alembic's ``check``: autogenerate through the env.py's
    ``target_metadata`` finds nothing). The walk stops at the first fault.
    The database is left at base. The env.py
    must migrate on ``config.attributes["connection"]`` when it is set
    (``run_migrations`` does; so does Alembic's connection-sharing recipe),
    and should skip ``fileConfig`` when ``config.attributes["configure_logger"]``
    is False, as the Alembic cookbook shows, or it reconfigures the caller's logging.

    Args:
        config: the ``alembic.config.Config``, or the path of an alembic.ini.
        url: an empty database of its own (async URLs are run through the sync
            driver: asyncpg -> psycopg, aiosqlite -> sqlite).
        engine: instead of ``url``, a sync engine on such a database.
        minimum_downgrade_revision: do not downgrade below this revision.
        model_check: compare the models with the migrated DDL.
        progress: called with each revision's id once its walk passed (the
            command line's progress bar); not called for a revision that failed.

    Raises:
        ValueError: the database is not empty (it is at some revision).

    Example::

        report = check_migrations("alembic.ini", url="postgresql+psycopg://ci@localhost/scratch")
        for finding in report.findings:
            print(finding)
    """
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    alembic_config = Config(config) if isinstance(config, str) else config
    exclude = (_version_table(alembic_config), migration_checksums.name, migration_steps.name)
    script = ScriptDirectory.from_config(alembic_config)
    heads = script.get_heads()
    revisions = [r.revision for r in reversed(list(script.walk_revisions("base", "heads")))]
    if len(heads) != 1:
        finding = CheckFinding(
            "single_head",
            None,
            f"Expected 1 head revision, found {len(heads)}",
            ", ".join(sorted(heads)),
        )
        return CheckReport(tuple(revisions), (finding,))
    if minimum_downgrade_revision is not None and minimum_downgrade_revision not in revisions:
        raise ValueError(
            f"minimum_downgrade_revision {minimum_downgrade_revision!r} is not a revision of these scripts"
        )
    with _engine(url, engine, alembic_config) as bound:
        steps = _Steps(alembic_config, bound)
        current = steps.current()
        if current:
            raise ValueError(
                f"check_migrations needs an empty database; this one is at {', '.join(current)}"
            )
        try:
            findings = _walk(steps, revisions, minimum_downgrade_revision, exclude, progress)
            if not findings and model_check:
                try:
                    steps.check()
                except Exception as exc:
                    detail = " ".join(str(exc).split())[:500]
                    message = "the models are out of sync with the migrated DDL"
                    if "does not provide a MetaData" in detail:
                        message = (
                            "env.py gives no target_metadata, so the models cannot be "
                            "compared (set it, or pass model_check=False; on the command "
                            "line --no-model-check)"
                        )
                    findings.append(CheckFinding("model_ddl", None, message, detail))
        finally:
            with contextlib.suppress(Exception):
                steps.downgrade("base")
    return CheckReport(tuple(revisions), tuple(findings))
