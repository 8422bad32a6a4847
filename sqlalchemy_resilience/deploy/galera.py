"""Galera: read your own writes on whichever node a connection reaches.

Galera applies the other nodes' write-sets asynchronously: behind a proxy
that spreads connections over the nodes, a read right after a commit can
reach a node that has not applied it yet (measured on a three-node cluster:
stale reads on another node with ``wsrep_sync_wait`` 0, none with 1).
:func:`read_your_writes` sets ``wsrep_sync_wait`` on every new connection of
an engine, so each read first waits for the node to catch up with the
cluster (one cluster round trip per read).

Example::

    engine = create_engine("mysql+pymysql://app:secret@haproxy:3306/app")
    read_your_writes(engine)          # wsrep_sync_wait = 1: reads
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from sqlalchemy_resilience.core.engines import sync_engine
from sqlalchemy_resilience.errors import NotSupported

__all__ = ["SyncWait", "read_your_writes"]

# wsrep_sync_wait is a bitmask: 1 reads (SELECT, SHOW, BEGIN/START
# TRANSACTION), 2 UPDATE and DELETE, 4 INSERT and REPLACE, 8 SHOW on its own.
_MAX_LEVEL = 15


class SyncWait:
    """What :func:`read_your_writes` attached to an engine; ``detach()`` removes it.

    Attributes:
        level: the ``wsrep_sync_wait`` every new connection gets.
        connections: how many connections got it so far.

    Example::

        waits = read_your_writes(engine)
        ...
        waits.detach()   # connections opened from now on keep the server's default
    """

    def __init__(self, engine: Engine, level: int) -> None:
        self.engine = engine
        self.level = level
        self.connections = 0
        event.listen(engine, "connect", self._on_connect)

    def _on_connect(self, dbapi_connection: Any, record: Any) -> None:
        dialect = self.engine.dialect
        # The dialect has met the server by now (first_connect runs first).
        if not getattr(dialect, "is_mariadb", False):
            raise NotSupported(
                "read_your_writes",
                "MySQL",
                "wsrep_sync_wait is MariaDB Galera's (MySQL Group Replication has "
                "group_replication_consistency)",
            )
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SET SESSION wsrep_sync_wait = %s", (self.level,))
        finally:
            cursor.close()
        self.connections += 1

    def detach(self) -> None:
        """Stop setting it on new connections (idempotent; open ones keep theirs)."""
        if event.contains(self.engine, "connect", self._on_connect):
            event.remove(self.engine, "connect", self._on_connect)


def read_your_writes(engine: Engine | AsyncEngine, *, level: int = 1) -> SyncWait:
    """Give every new connection of ``engine`` ``SET SESSION wsrep_sync_wait = level``.

    Args:
        engine: an ``Engine`` or ``AsyncEngine`` on MariaDB (Galera); any
            MySQL driver SQLAlchemy supports.
        level: Galera's bitmask (1 reads, 2 updates and deletes, 4 inserts
            and replaces, 8 ``SHOW``): 1, the default, is reading your writes;
            0 turns it off for connections that do not need it.

    Returns:
        A :class:`SyncWait` (``detach()``, ``connections``).

    Raises:
        NotSupported: the engine is not MySQL/MariaDB (at once), or its server
            turns out to be MySQL, not MariaDB (at the first connection).
        ValueError, TypeError: ``level`` is not an int from 0 to 15.

    Example::

        read_your_writes(engine)            # every read waits for the node to catch up
        read_your_writes(engine, level=3)   # reads, updates and deletes
    """
    given: object = level
    if isinstance(given, bool) or not isinstance(given, int):
        raise TypeError(f"level must be an int from 0 to {_MAX_LEVEL}, got {level!r}")
    if not 0 <= level <= _MAX_LEVEL:
        raise ValueError(f"level must be an int from 0 to {_MAX_LEVEL}, got {level!r}")
    sync = sync_engine(engine)
    if sync.dialect.name != "mysql":
        raise NotSupported(
            "read_your_writes", sync.dialect.name, "wsrep_sync_wait is MariaDB Galera's"
        )
    return SyncWait(sync, level)
