"""Masking a secret (the connection password) in text the package prints or records."""

from __future__ import annotations

import re

__all__ = ["mask_secret"]

# A secret this short is masked only where it stands alone: masking a
# one-letter password inside "port" would corrupt every message while
# hiding nothing of it.
_SHORT = 8


def mask_secret(text: str, secret: str | None, mask: str = "***") -> str:
    """``text`` with ``secret`` replaced by ``mask``.

    Every occurrence of a secret of 8 characters or more is masked; a shorter
    one only where it is not part of a longer run of letters and digits.

    Example::

        >>> mask_secret("auth failed for password hunter2x", "hunter2x")
        'auth failed for password ***'
        >>> mask_secret("port 1 failed for p", "p")
        'port 1 failed for ***'
    """
    if not secret:
        return text
    if len(secret) >= _SHORT:
        return text.replace(secret, mask)
    return re.sub(rf"(?<![0-9A-Za-z]){re.escape(secret)}(?![0-9A-Za-z])", mask, text)
