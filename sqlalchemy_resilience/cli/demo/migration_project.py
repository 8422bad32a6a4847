"""A throwaway Alembic project whose env.py is ``run_migrations``: the demo's, and the tests'.

Three revisions: ``r1`` creates ``mig_items`` and ``mig_log``, ``r2`` adds a
column to ``mig_items`` (an ACCESS EXCLUSIVE lock on PostgreSQL), ``r3``
creates ``mig_extra``. Each revision appends (revision, pid) to ``mig_log``,
so a test can see who applied what, and sleeps ``-x sleep_<rev>=SECONDS``
first (to overlap processes or to be killed mid-way). ``-x lock_timeout=...``,
``lock_retries``, ``lock_wait``, ``retry_backoff`` are read by ``run_migrations``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

__all__ = ["REVISIONS", "alembic", "write_project"]

ENV_PY = """
from logging.config import fileConfig

from alembic import context
from sqlalchemy_resilience.migrations import run_migrations

fileConfig(context.config.config_file_name)
run_migrations(None)  # -x lock_timeout=... etc. are read by run_migrations
"""

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
    seconds = float(context.get_x_argument(as_dictionary=True).get("sleep_{rev}", "0"))
    if not seconds:
        return
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.select(sa.func.pg_sleep(seconds)))
    else:
        import time
        time.sleep(seconds)


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


def write_project(root: Path) -> Path:
    """Write the project under ``root``; returns the alembic.ini path."""
    scripts = root / "migrations"
    (scripts / "versions").mkdir(parents=True)
    (scripts / "env.py").write_text(textwrap.dedent(ENV_PY))
    (scripts / "script.py.mako").write_text("")
    for rev, down, upgrade, downgrade in REVISIONS:
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
