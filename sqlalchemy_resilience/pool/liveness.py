"""Ping only what may be dead: a pre-ping for connections idle longer than a threshold.

SQLAlchemy's ``pool_pre_ping=True`` pays a round trip at every checkout. A
connection returned a moment ago is as alive as one can know; the ones at
risk are those that sat idle long enough for a NAT, a firewall, a pooler's
``server_idle_timeout`` or a failover to drop them. :class:`IdlePing` pings a
connection at checkout only when it has been idle (since its last checkin, or
the last keepalive ping of a :class:`~sqlalchemy_resilience.pool.PoolMaintainer`)
for ``after`` seconds, with a ``timeout``: a silently dropped flow (no RST,
no reply) would otherwise hang the request until TCP gives up, minutes later.

A failed ping raises :class:`sqlalchemy.exc.DisconnectionError` from the pool's
``checkout`` event, which is SQLAlchemy's own way to say "this one is dead":
the pool discards it and hands out a fresh connection, and the request never
sees an error. The ping itself is the cheapest statement each driver has:
asyncpg's simple-query ``execute`` (no prepared statement, safe behind a
transaction pooler), psycopg's ``execute(..., prepare=False)`` in autocommit,
and SQLAlchemy's ``do_ping`` for other drivers. The timeout holds on asyncpg
and psycopg (async: ``asyncio.wait_for``; sync: the socket is shut down when it
expires); other drivers ping without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

from sqlalchemy_resilience._util.cut import shutdown
from sqlalchemy_resilience._util.seconds import Seconds, to_seconds
from sqlalchemy_resilience.core.engines import sync_engine
from sqlalchemy_resilience.errors import ReadOnlyServer
from sqlalchemy_resilience.errors.translate import reported_read_only

from .maintainer import ALIVE_AT_KEY

__all__ = ["IdlePing", "ping_idle_connections"]

_FRESH_KEY = "sqlalchemy_resilience.fresh"
_READ_ONLY_QUERY = (
    "SELECT pg_catalog.pg_is_in_recovery() "
    "OR pg_catalog.current_setting('transaction_read_only') = 'on'"
)
# MySQL/MariaDB: read_only (set on a demoted writer; super_read_only implies
# it), innodb_read_only (an Aurora MySQL reader).
_MYSQL_READ_ONLY_QUERY = "SELECT @@global.read_only OR @@global.innodb_read_only"
# MariaDB, and a Galera node among them: a node that is not ready, not in the
# primary component or not synced (a donor, a desynced node) takes no writes
# it should be given either.
_MARIADB_READ_ONLY_QUERY = (
    "SELECT @@global.read_only OR @@global.innodb_read_only OR (@@global.wsrep_on AND ("
    "SELECT COUNT(*) FROM information_schema.GLOBAL_STATUS WHERE "
    "(VARIABLE_NAME = 'WSREP_READY' AND VARIABLE_VALUE = 'ON') OR "
    "(VARIABLE_NAME = 'WSREP_CLUSTER_STATUS' AND VARIABLE_VALUE = 'Primary') OR "
    "(VARIABLE_NAME = 'WSREP_LOCAL_STATE_COMMENT' AND VARIABLE_VALUE = 'Synced')) < 3)"
)

_log = logging.getLogger("sqlalchemy_resilience.pool")


async def _bounded(ping: Coroutine[Any, Any, Any], timeout: float, kill: Callable[[], Any]) -> None:
    """Await ``ping`` for at most ``timeout`` seconds; then kill the connection and raise.

    Killing the transport first makes the ping fail at once; cancelling it
    instead would wait for the driver's cancel protocol on a silent socket.
    """
    task = asyncio.ensure_future(ping)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if done:
        task.result()
        return
    kill()
    with contextlib.suppress(Exception):  # the killed ping's own error
        await asyncio.wait_for(task, timeout)
    raise TimeoutError(f"no reply to the liveness ping within {timeout}s")


class IdlePing:
    """Pings a connection at checkout when it has been idle for ``after`` seconds.

    Created by :func:`ping_idle_connections`; ``detach()`` removes its listeners.

    Attributes:
        checkouts: checkouts seen.
        pinged: pings sent (connections idle long enough).
        dead: pings that failed or timed out (each connection discarded and
            replaced before the request got it).
        read_only: with ``require_writer``, checkouts that found the server
            read-only (the pool's connections discarded each time).

    Example::

        liveness = ping_idle_connections(engine, after=30, timeout=2)
        ...
        print(liveness.pinged, liveness.dead)
        liveness.detach()
    """

    def __init__(
        self,
        engine: Engine | AsyncEngine,
        *,
        after: float,
        timeout: float,
        require_writer: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = sync_engine(engine)
        self._clock = clock
        self.after = after
        self.timeout = timeout
        self.require_writer = require_writer
        self.checkouts = 0
        self.pinged = 0
        self.dead = 0
        self.read_only = 0
        self._ping = self._pinger()
        mysql = self.engine.dialect.name in ("mysql", "mariadb")
        self._mysql = mysql
        self._read_only_query = _MYSQL_READ_ONLY_QUERY if mysql else _READ_ONLY_QUERY
        # The refusal carries the code a write would have got there.
        self._read_only_code: tuple[str | None, str | None] = (
            (None, "1290") if mysql else ("25006", None)
        )
        self._hooks: tuple[tuple[str, Callable[..., None]], ...] = (
            ("connect", self._on_connect),
            ("checkin", self._on_checkin),
            ("checkout", self._on_checkout),
        )
        for name, fn in self._hooks:
            event.listen(self.engine, name, fn)

    def _pinger(self) -> Callable[[Any], None]:
        dialect = self.engine.dialect
        driver = dialect.driver
        timeout = self.timeout
        if driver == "asyncpg":

            def ping_asyncpg(dbapi_connection: Any) -> None:
                raw = dbapi_connection.driver_connection
                await_only(_bounded(raw.execute("SELECT 1"), timeout, raw.terminate))

            return ping_asyncpg
        if driver == "psycopg" and dialect.is_async:

            def ping_psycopg_async(dbapi_connection: Any) -> None:
                raw = dbapi_connection.driver_connection

                async def ping() -> None:
                    was = raw.autocommit
                    if not was:
                        await raw.set_autocommit(True)
                    await raw.execute("SELECT 1", prepare=False)
                    if not was:
                        await raw.set_autocommit(False)

                await_only(_bounded(ping(), timeout, lambda: shutdown(raw.pgconn.socket)))

            return ping_psycopg_async
        if driver == "psycopg":

            def ping_psycopg(dbapi_connection: Any) -> None:
                raw = dbapi_connection  # a sync driver's connection is the DBAPI one
                timer = threading.Timer(timeout, shutdown, (raw.pgconn.socket,))
                timer.daemon = True
                was = raw.autocommit
                timer.start()
                try:
                    if not was:
                        raw.autocommit = True
                    raw.execute("SELECT 1", prepare=False)
                    if not was:
                        raw.autocommit = False
                finally:
                    timer.cancel()

            return ping_psycopg

        def ping_any(dbapi_connection: Any) -> None:
            if not dialect.do_ping(dbapi_connection):
                raise sa_exc.DisconnectionError("ping returned False")

        return ping_any

    # -- pool events -----------------------------------------------------

    def _on_connect(self, dbapi_connection: Any, record: Any) -> None:
        record.info[ALIVE_AT_KEY] = self._clock()
        record.info[_FRESH_KEY] = True

    def _on_checkin(self, dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None:
            record.info[ALIVE_AT_KEY] = self._clock()

    def _on_checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        self.checkouts += 1
        now = self._clock()
        idle = now - record.info.get(ALIVE_AT_KEY, record.starttime)
        if idle >= self.after:
            self.pinged += 1
            try:
                self._ping(dbapi_connection)
            except Exception as exc:
                self.dead += 1
                _log.info(
                    "sqlalchemy_resilience: a connection idle %.0fs failed its ping (%s); replaced",
                    idle,
                    type(exc).__name__,
                )
                # The pool's own signal: invalidate this connection, check out another.
                raise sa_exc.DisconnectionError(
                    f"idle connection failed its liveness ping: {type(exc).__name__}"
                ) from exc
            record.info[ALIVE_AT_KEY] = self._clock()
        fresh = record.info.pop(_FRESH_KEY, False)
        # A new connection is asked too: where the server does not report its
        # state (MySQL, PostgreSQL before 14), that is the one moment it is free.
        if self.require_writer and self._read_only(
            dbapi_connection, pinged=idle >= self.after or fresh
        ):
            self.read_only += 1
            if fresh:
                # A connection opened just now reaches a read-only server too:
                # no writer behind this URL yet (a failover under way). Typed and
                # retryable, so run_transaction backs off instead of failing.
                raise ReadOnlyServer(
                    "every new connection reaches a read-only server: no writer behind this "
                    "URL yet (a failover in progress?)",
                    sqlstate=self._read_only_code[0],
                    driver_code=self._read_only_code[1],
                    retryable=True,
                    connection_invalidated=True,
                )
            _log.warning(
                "sqlalchemy_resilience: the server of a pooled connection is read-only "
                "(a standby, or a primary demoted in a failover); the pool's connections "
                "opened before now are discarded"
            )
            # Every connection opened before now leads to the same server: the
            # pool recycles them at their next checkout, as SQLAlchemy does for a
            # disconnect (Pool._invalidate, the mechanism behind is_disconnect).
            self.engine.pool._invalidate(proxy, None, _checkin=False)
            raise sa_exc.DisconnectionError("the server no longer accepts writes")

    def _read_only(self, dbapi_connection: Any, *, pinged: bool) -> bool:
        # PostgreSQL 14+ reports in_hot_standby and default_transaction_read_only
        # with every ReadyForQuery: free to read, and fresh after a ping.
        # asyncio adapters hold the driver's connection; sync drivers are it.
        driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
        reported = reported_read_only(driver)
        if reported is not None:
            return reported
        if not pinged:
            return False  # older servers: asked only when the connection was idle
        cursor = dbapi_connection.cursor()
        try:
            query = self._read_only_query
            if self._mysql and getattr(self.engine.dialect, "is_mariadb", False):
                query = _MARIADB_READ_ONLY_QUERY  # known once the dialect has connected
            cursor.execute(query)
            row = cursor.fetchone()
        finally:
            cursor.close()
            dbapi_connection.rollback()
        return bool(row and row[0])

    def detach(self) -> None:
        """Remove the listeners (idempotent)."""
        for name, fn in self._hooks:
            if event.contains(self.engine, name, fn):
                event.remove(self.engine, name, fn)


def ping_idle_connections(
    engine: Engine | AsyncEngine,
    *,
    after: Seconds = 30.0,
    timeout: Seconds = 5.0,
    require_writer: bool = False,
    clock: Callable[[], float] = time.time,
) -> IdlePing:
    """Ping a connection at checkout only when it has been idle ``after`` seconds or more.

    The cheap alternative to ``pool_pre_ping=True`` (a round trip at every
    checkout): a connection used within the last ``after`` seconds is handed
    out as is; an older one is pinged first, with ``timeout``, and replaced by
    a fresh connection when the ping fails, before the request gets it. A
    :class:`~sqlalchemy_resilience.pool.PoolMaintainer` keepalive ping counts as use.

    Args:
        engine: an ``Engine`` or ``AsyncEngine`` (its own settings are left alone).
        after: seconds of idleness after which a connection is pinged; set it
            below the shortest idle timeout on the path (NAT, load balancer,
            ``server_idle_timeout`` of a pooler).
        timeout: seconds a ping may take before the connection counts as dead
            (asyncpg and psycopg; other drivers ping without a timeout).
        require_writer: for an engine that writes: at every
            checkout, refuse a connection whose server reports itself read-only
            (``in_hot_standby`` or ``default_transaction_read_only``, reported by
            PostgreSQL 14+ with every reply, so free to read; a ping refreshes
            it) and discard every pooled connection opened before it, so the
            first write after a failover goes to the new primary instead of
            failing with 25006. When a connection opened just now is read-only
            as well (the failover is still under way), the checkout fails with
            a retryable :class:`~sqlalchemy_resilience.ReadOnlyServer`, which
            ``run_transaction`` backs off and retries. Before PostgreSQL 14 a
            new or idle connection asks ``pg_is_in_recovery()`` instead; on
            MySQL and MariaDB it asks ``@@read_only OR @@innodb_read_only``
            (a demoted writer, an Aurora MySQL reader) and, on a Galera node,
            whether it is ready, in the primary component and synced (not a
            donor, not desynced); the refusal carries 1290.
        clock: wall-clock seconds (``time.time``'s scale, which SQLAlchemy's
            connection records use too); injectable, so that a test makes a
            connection idle by moving the clock instead of sleeping.

    Returns:
        The :class:`IdlePing` (counters, ``detach()``).

    Raises:
        ValueError: ``after`` or ``timeout`` not positive.

    Example::

        engine = create_async_engine(url, pool_size=10)
        ping_idle_connections(engine, after=30, timeout=2)
        # An engine that writes: never hand out a connection to a read-only server.
        ping_idle_connections(primary, after=5, timeout=2, require_writer=True)
    """
    after_s = to_seconds("after", after, allow_zero=False)
    timeout_s = to_seconds("timeout", timeout, allow_zero=False)
    if not isinstance(require_writer, bool):
        raise TypeError(f"require_writer must be True or False, got {require_writer!r}")
    if require_writer and sync_engine(engine).dialect.name not in (
        "postgresql",
        "mysql",
        "mariadb",
    ):
        raise ValueError(
            "require_writer needs PostgreSQL, MySQL or MariaDB; this engine's dialect is "
            f"{sync_engine(engine).dialect.name!r}"
        )
    return IdlePing(
        engine, after=after_s, timeout=timeout_s, require_writer=require_writer, clock=clock
    )
