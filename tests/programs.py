"""Where the suite finds the server programs Debian puts off a user's PATH."""

from __future__ import annotations

import os
import shutil

__all__ = ["find_program"]


def find_program(name: str) -> str | None:
    """``name`` on PATH, else in /usr/sbin or /usr/local/sbin (Debian's daemons), else None."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/local/sbin"):
        candidate = os.path.join(folder, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None
