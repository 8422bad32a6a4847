"""Compare the applied revisions and their checksums with the files (docs/migrations.md).

Run it from this directory::

    DATABASE_URL=sqlite:///shop.db python verify.py
"""

from __future__ import annotations

import os
import sys

# [verify]
from alembic.config import Config

from sqlalchemy_resilience.migrations import verify_migrations

report = verify_migrations(Config("alembic.ini"), url=os.environ["DATABASE_URL"])
for finding in report.problems:
    print(finding.kind, finding.revision, finding.detail)
# [/verify]
sys.exit(1 if report.problems else 0)
