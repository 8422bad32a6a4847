"""What the throwaway servers share: a free port, and an account to run as when we are root."""

from __future__ import annotations

import pwd
import socket
from collections.abc import Sequence

__all__ = ["free_port", "unprivileged_account"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def unprivileged_account(names: Sequence[str]) -> pwd.struct_passwd | None:
    """The first of ``names`` that exists as an OS account, or None.

    Database servers refuse to run as root; as root the harness runs them as
    one of these.
    """
    for name in names:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None
