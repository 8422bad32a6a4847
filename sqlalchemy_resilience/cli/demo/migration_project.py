"""A throwaway Alembic project whose env.py is ``run_migrations``: the demo's, and the tests'.

Three revisions: ``r1`` creates ``mig_items`` and ``mig_log``, ``r2`` adds a
column to ``mig_items`` (an ACCESS EXCLUSIVE lock on PostgreSQL), ``r3``
creates ``mig_extra``. Each revision appends (revision, pid) to ``mig_log``,
so a test can see who applied what, and sleeps ``-x sleep_<rev>=SECONDS``
after its DDL (to overlap processes or to be killed mid-way; with ``-x
announce=1`` it first prints ``<rev> sleeping`` on standard output, a line a
test can wait for), then fails if ``-x fail_<rev>=1`` (a revision failing
half-way). ``-x lock_timeout=...``,
``lock_retries``, ``lock_wait``, ``retry_backoff`` are read by ``run_migrations``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

__all__ = ["REVISIONS", "VARIANTS", "alembic", "write_project"]

ENV_PY = """
from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context
from sqlalchemy_resilience.migrations import run_migrations

# In-process runs (check_migrations, the migrate command's tests) share the
# caller's logging: configure it without disabling the loggers that exist.
fileConfig(context.config.config_file_name, disable_existing_loggers=False)

# The models: what the three revisions build.
metadata = sa.MetaData()
sa.Table("mig_items", metadata, sa.Column("id", sa.Integer, primary_key=True),
         sa.Column("name", sa.String(50)), sa.Column("note", sa.String(50)){drift})
sa.Table("mig_log", metadata, sa.Column("revision", sa.String(10)), sa.Column("pid", sa.Integer))
sa.Table("mig_extra", metadata, sa.Column("id", sa.Integer, primary_key=True))

run_migrations(metadata)  # -x lock_timeout=... etc. are read by run_migrations
"""

#: Faults a project can be written with, for the checks' tests: a downgrade
#: that fails, one that leaves its table behind, a second head, and a model
#: the migrations do not build.
VARIANTS = ("broken_downgrade", "trace", "two_heads", "drift", "unsafe", "concurrently")

REVISION = '''
"""{rev}"""
import os
import sqlalchemy as sa
from alembic import context, op

revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None


def _pause():
    x = context.get_x_argument(as_dictionary=True)
    seconds = float(x.get("sleep_{rev}", "0"))
    if seconds:
        if x.get("announce"):
            print("{rev} sleeping", flush=True)
        if op.get_bind().dialect.name == "postgresql":
            op.execute(sa.select(sa.func.pg_sleep(seconds)))
        else:
            import time
            time.sleep(seconds)
    if x.get("fail_{rev}"):
        raise RuntimeError("{rev} failed half-way (injected by -x fail_{rev})")


def _log():
    log = sa.table("mig_log", sa.column("revision", sa.String), sa.column("pid", sa.Integer))
    op.execute(log.insert().values(revision="{rev}", pid=os.getpid()))


def upgrade():
{upgrade}
    _pause()
    _log()


def downgrade():
{downgrade}
'''

REVISIONS: list[tuple[str, str | None, str, str]] = [
    (
        "r1",
        None,
        """    op.create_table("mig_items", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(50)))
    op.create_table("mig_log", sa.Column("revision", sa.String(10)), sa.Column("pid", sa.Integer))""",
        """    op.drop_table("mig_log")
    op.drop_table("mig_items")""",
    ),
    (
        "r2",
        "r1",
        """    op.add_column("mig_items", sa.Column("note", sa.String(50)))""",
        """    op.drop_column("mig_items", "note")""",
    ),
    (
        "r3",
        "r2",
        """    op.create_table("mig_extra", sa.Column("id", sa.Integer, primary_key=True))""",
        """    op.drop_table("mig_extra")""",
    ),
]


#: The "unsafe" variant's r4, for the linter: an index built without
#: CONCURRENTLY on an existing table, a type change that rewrites it, an index
#: the marker comment allows, a dropped column the models still map, and a NOT
#: NULL column without a default.
UNSAFE_UPGRADE = """    op.create_index("ix_items_name", "mig_items", ["name"])
    op.alter_column("mig_items", "name", type_=sa.Text())
    op.create_index("ix_items_note", "mig_items", ["note"])  # lint: ignore[require-concurrent-index-creation]
    op.drop_column("mig_items", "note")
    op.add_column("mig_items", sa.Column("code", sa.String(5), nullable=False))"""


#: The "concurrently" variant's r4: an index built the safe way on PostgreSQL,
#: outside the migration's transaction (Alembic's autocommit_block).
CONCURRENT_UPGRADE = """    with op.get_context().autocommit_block():
        op.create_index("ix_items_name", "mig_items", ["name"], postgresql_concurrently=True)"""
CONCURRENT_DOWNGRADE = """    with op.get_context().autocommit_block():
        op.drop_index("ix_items_name", table_name="mig_items", postgresql_concurrently=True)"""


def write_project(root: Path, *, variant: str | None = None) -> Path:
    """Write the project under ``root`` (with one of :data:`VARIANTS`' faults); returns alembic.ini."""
    if variant is not None and variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    scripts = root / "migrations"
    (scripts / "versions").mkdir(parents=True)
    drift = ', sa.Column("extra", sa.Integer)' if variant == "drift" else ""
    (scripts / "env.py").write_text(ENV_PY.replace("{drift}", drift))
    (scripts / "script.py.mako").write_text("")
    revisions = list(REVISIONS)
    if variant == "broken_downgrade":
        revisions[1] = ("r2", "r1", revisions[1][2], '    op.drop_column("mig_items", "nope")')
    elif variant == "trace":
        revisions[2] = ("r3", "r2", revisions[2][2], "    pass  # forgets to drop mig_extra")
    elif variant == "two_heads":
        revisions.append(
            (
                "r4",
                "r2",
                '    op.create_table("mig_other", sa.Column("id", sa.Integer, primary_key=True))',
                '    op.drop_table("mig_other")',
            )
        )
    elif variant == "unsafe":
        revisions.append(("r4", "r3", UNSAFE_UPGRADE, "    pass"))
    elif variant == "concurrently":
        revisions.append(("r4", "r3", CONCURRENT_UPGRADE, CONCURRENT_DOWNGRADE))
    for rev, down, upgrade, downgrade in revisions:
        (scripts / "versions" / f"{rev}.py").write_text(
            REVISION.format(rev=rev, down=down, upgrade=upgrade, downgrade=downgrade)
        )
    ini = root / "alembic.ini"
    ini.write_text(
        textwrap.dedent(
            f"""
            [alembic]
            script_location = {scripts}

            [loggers]
            keys = root,alembic,resilience

            [handlers]
            keys = console

            [formatters]
            keys = generic

            [logger_root]
            level = WARNING
            handlers = console

            [logger_alembic]
            level = INFO
            handlers =
            qualname = alembic

            [logger_resilience]
            level = INFO
            handlers =
            qualname = sqlalchemy_resilience

            [handler_console]
            class = StreamHandler
            args = (sys.stderr,)
            formatter = generic

            [formatter_generic]
            format = %(levelname)s [%(name)s] %(message)s
            """
        )
    )
    return ini


def alembic(ini: Path, url: Any, *args: str, **x: Any) -> subprocess.Popen[str]:
    """Start ``alembic -c ini [-x k=v ...] args...`` against ``url`` (passed in DATABASE_URL, not argv)."""
    command = [sys.executable, "-m", "alembic", "-c", str(ini)]
    for key, value in x.items():
        command += ["-x", f"{key}={value}"]
    env = {
        **os.environ,
        "DATABASE_URL": url.render_as_string(hide_password=False)
        if hasattr(url, "render_as_string")
        else str(url),
    }
    # This interpreter running Alembic; arguments are the caller's, never a shell.
    return subprocess.Popen(  # noqa: S603
        command + list(args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
