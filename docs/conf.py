"""Sphinx configuration (MyST Markdown, furo, autodoc with Google-style docstrings)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy_resilience import __version__

project = "sqlalchemy-resilience"
author = "sqlalchemy-resilience developers"
copyright = "2026, sqlalchemy-resilience developers"
release = __version__
version = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
html_theme = "furo"
html_title = "sqlalchemy-resilience"
html_static_path = ["_static"]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# Type hints name SQLAlchemy and driver types this build has no inventory for
# (no network during the build); leave them as plain text.
nitpicky = False
suppress_warnings = ["myst.header"]
