"""``python -m sqlalchemy_resilience.cli``: the same as the ``sqlalchemy-resilience`` command."""

from __future__ import annotations

import sys

from sqlalchemy_resilience.cli.main import main

sys.exit(main())
