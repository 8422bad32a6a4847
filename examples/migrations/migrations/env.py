# [env]
# migrations/env.py
from logging.config import fileConfig

from alembic import context
from myapp.models import Base

from sqlalchemy_resilience.migrations import run_migrations

config = context.config
# In-process runs (tests, check_migrations) set configure_logger to False.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name)
run_migrations(Base.metadata, lock_timeout=3, statement_timeout=120)
# [/env]
