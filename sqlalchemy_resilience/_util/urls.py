"""Database URLs that SQLAlchemy parses into something else than was meant.

A password holding an unescaped ``@`` splits where SQLAlchemy's parser looks
for the host: ``postgresql://app:p@ss@db/app`` becomes the password ``p`` and
the host ``ss@db``, and every message that names the host (``could not
translate host name "ss@db"``) then shows the rest of the password. Such a
URL is refused up front with a message that names no part of it.
"""

from __future__ import annotations

from sqlalchemy.engine import URL

__all__ = ["MALFORMED_URL_HINT", "malformed_url_reason"]

MALFORMED_URL_HINT = (
    "percent-encode special characters in the password: '@' as %40, ':' as %3A, "
    "'/' as %2F (urllib.parse.quote_plus(password)), or build it with sqlalchemy.URL.create()"
)


def malformed_url_reason(url: URL) -> str | None:
    """Why ``url`` cannot be what was meant, naming no part of it; None when it looks right.

    Example::

        >>> from sqlalchemy.engine import make_url
        >>> malformed_url_reason(make_url("postgresql://app:p@ss@db/app")) is not None
        True
        >>> malformed_url_reason(make_url("postgresql://app:p%40ss@db/app")) is None
        True
    """
    if url.host and "@" in url.host:
        return f"the URL looks malformed: its host part holds an '@'; {MALFORMED_URL_HINT}"
    return None
