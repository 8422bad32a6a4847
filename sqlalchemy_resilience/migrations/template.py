"""``init_migrations``: a new Alembic environment whose ``env.py`` is ``run_migrations``.

Alembic's own ``init`` writes the folder, ``script.py.mako`` and alembic.ini
(its ``generic`` template); the ``env.py`` is then replaced by one that runs
``run_migrations`` -- the migration lock, ``lock_timeout`` with retries,
connect retries and revision checksums -- and leaves the caller's logging
alone when run in-process. (Alembic finds ``init -t`` templates only in its
own package, so a command is the way to offer one.)
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ENV_TEMPLATE", "init_migrations"]

#: The env.py written by :func:`init_migrations`.
ENV_TEMPLATE = '''"""Alembic environment: sqlalchemy-resilience's run_migrations.

Concurrent instances migrate one at a time (a PostgreSQL advisory lock, or a
file lock for SQLite), every migration runs with lock_timeout (retried with
backoff when it hits it), connecting is retried, and each applied revision's
checksum is recorded for `sqlalchemy-resilience verify-migrations`.
Options from the command line: alembic -x lock_timeout=2 -x lock_wait=600 upgrade head
"""

from logging.config import fileConfig

from alembic import context

from sqlalchemy_resilience.migrations import run_migrations

config = context.config

# In-process runs (tests, check_migrations) set configure_logger to False to
# keep the caller's logging as it is.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name)

# Your models' MetaData, for `alembic revision --autogenerate` and `alembic check`:
# from myapp.models import Base
# target_metadata = Base.metadata
target_metadata = None

# The database: DATABASE_URL, else sqlalchemy.url in alembic.ini (sync or async drivers).
run_migrations(target_metadata, lock_timeout=5, statement_timeout=None)
'''


def init_migrations(directory: str | Path, *, ini: str | Path = "alembic.ini") -> Path:
    """Create an Alembic environment in ``directory`` and its config at ``ini``; returns the ini path.

    Raises:
        FileExistsError: ``directory`` exists and is not empty, or ``ini`` exists.

    Example::

        init_migrations("migrations")          # then: alembic revision -m "first"
    """
    from alembic import command
    from alembic.config import Config

    folder = Path(directory)
    config_path = Path(ini)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} exists and is not empty; choose a new directory")
    if config_path.exists():
        raise FileExistsError(f"{config_path} exists; pass another --ini path")
    config = Config(str(config_path))
    config.print_stdout = lambda *args, **kwargs: None  # type: ignore[method-assign]
    command.init(config, str(folder), template="generic")
    (folder / "env.py").write_text(ENV_TEMPLATE)
    return config_path
