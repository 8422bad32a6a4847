"""Rotating credentials against a real PostgreSQL role whose password changes while traffic runs.

A rotator thread plays the secret store (AWS Secrets Manager, Vault): every
second it sets a new password on the role and then publishes it. The provider
returns the published one with an expiry longer than the rotation period, so a
cached password is regularly refused by the server and must be fetched again.
Every request opens a new connection (``NullPool``), the worst case.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

import sqlalchemy_resilience as sr
from sqlalchemy_resilience.deploy import Credential, use_password_provider
from tests.pgharness import PgServer

ROLE = "rotating_app"


class SecretStore:
    """The current password of ROLE, rotated by a thread: ALTER ROLE first, then publish."""

    def __init__(self, server: PgServer, database: str) -> None:
        from psycopg import sql

        self.server = server
        self.current = "first-" + secrets.token_hex(8)
        self.history: list[str] = []
        self.rotations = 0
        self._stop = threading.Event()
        self._set(self.current)
        server.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(database), sql.Identifier(ROLE)
            )
        )
        self._thread: threading.Thread | None = None

    def _set(self, password: str) -> None:
        from psycopg import sql

        self.history.append(password)
        with self.server.admin() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(ROLE), sql.Literal(password)
                )
            )

    def rotate(self) -> None:
        """One rotation: the server has the new password before it is published."""
        new = f"rot{self.rotations}-" + secrets.token_hex(8)
        self._set(new)
        self.current = new
        self.rotations += 1

    def rotate_every(self, seconds: float) -> None:
        def run() -> None:
            while not self._stop.wait(seconds):
                self.rotate()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


@pytest.fixture
def store(pg_server: PgServer, pg_database: str) -> Iterator[SecretStore]:
    s = SecretStore(pg_server, pg_database)
    try:
        yield s
    finally:
        s.stop()


def _url(pg_server: PgServer, database: str, driver: str) -> URL:
    # No password in the URL: the provider supplies it.
    return pg_server.app_url(database, driver=driver, username=ROLE).set(password=None)


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_rotation_under_traffic_surfaces_no_failure(
    pg_server: PgServer, pg_database: str, store: SecretStore, driver: str, caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    engine = create_async_engine(_url(pg_server, pg_database, driver), poolclass=NullPool)
    sr.instrument(engine)

    async def provider() -> Credential:
        await asyncio.sleep(0)  # an IAM call would await here
        return Credential(store.current, expires_at=time.time() + 30)

    handle = use_password_provider(engine, provider, refresh_margin=1)
    Session = async_sessionmaker(engine)
    errors: dict[str, int] = {}
    done = 0

    async def client() -> None:
        nonlocal done
        stop_at = time.monotonic() + 5
        while time.monotonic() < stop_at:
            try:
                async with Session() as s:
                    assert await s.scalar(text("SELECT current_user")) == ROLE
                done += 1
            except Exception as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

    store.rotate_every(1.0)
    try:
        await asyncio.gather(*(client() for _ in range(8)))
    finally:
        store.stop()
        handle.detach()
        await engine.dispose()
    print(
        f"\n{driver}: {done} connections in 5 s over {store.rotations} rotations: errors {errors}, "
        f"provider asked {handle.calls} times, {handle.auth_retries_used} connects retried "
        "after a refused password"
    )
    assert errors == {}
    assert store.rotations >= 3
    assert handle.auth_retries_used >= 1  # a cached password was refused, and ridden out
    assert handle.calls < done  # cached between rotations
    # Never in the package's records, nor in repr.
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for password in store.history:
        assert password not in logged
        assert password not in repr(handle)


async def test_a_wrong_token_is_one_authentication_failure(
    pg_server: PgServer, pg_database: str, store: SecretStore
) -> None:
    engine = create_async_engine(_url(pg_server, pg_database, "asyncpg"), pool_size=2)
    sr.instrument(engine)
    calls = 0

    def wrong() -> str:
        nonlocal calls
        calls += 1
        return "not-the-password"

    use_password_provider(engine, wrong, auth_retries=2, retry_pause=0.01)
    Session = async_sessionmaker(engine)
    started = time.monotonic()
    try:
        with pytest.raises(sr.AuthenticationFailed) as caught:
            await sr.run_transaction(
                Session,
                lambda s: s.execute(text("SELECT 1")),
                retry=sr.RetryPolicy(attempts=5, initial_backoff=0.01),
            )
        asked = calls
        report = await sr.health_check(engine, timeout=5)
    finally:
        await engine.dispose()
    assert asked == 3  # the first ask and two retries; run_transaction did not retry it
    assert caught.value.retryable is False
    assert time.monotonic() - started < 30
    assert report.status == "unhealthy"
    assert "not-the-password" not in json.dumps(report.to_dict())
    assert "not-the-password" not in str(caught.value)


async def test_concurrent_connects_of_an_async_engine_ask_the_provider_once(
    pg_server: PgServer, pg_database: str, store: SecretStore
) -> None:
    """A pool filling up at once (8 connects) waits for one ask; a failed ask fails them all once."""
    engine = create_async_engine(_url(pg_server, pg_database, "asyncpg"), poolclass=NullPool)
    in_flight = 0
    most = 0
    asked = 0
    failing = False

    async def provider() -> str:
        nonlocal in_flight, most, asked
        asked += 1
        in_flight += 1
        most = max(most, in_flight)
        try:
            await asyncio.sleep(0.2)  # a slow IAM call: every connect starts meanwhile
            if failing:
                raise ConnectionError("the token service is down")
            return store.current
        finally:
            in_flight -= 1

    handle = use_password_provider(engine, provider)  # no expiry, no ttl: never cached

    async def connect() -> str:
        async with engine.connect() as conn:
            return str(await conn.scalar(text("SELECT current_user")))

    try:
        users = await asyncio.gather(*(connect() for _ in range(8)))
        assert users == [ROLE] * 8
        assert asked == 1 and most == 1
        failing = True
        outcomes = await asyncio.gather(*(connect() for _ in range(8)), return_exceptions=True)
        assert all("the token service is down" in str(o) for o in outcomes), outcomes
        assert asked == 2 and most == 1  # the failing ask was not repeated per connect
        failing = False
        assert await connect() == ROLE  # nothing stuck: the next connect asks again
        assert asked == 3
    finally:
        handle.detach()
        await engine.dispose()


def test_sync_engine_with_an_async_provider_and_a_ttl(
    pg_server: PgServer, pg_database: str, store: SecretStore
) -> None:
    engine = create_engine(_url(pg_server, pg_database, "psycopg"), poolclass=NullPool)

    async def provider() -> str:
        await asyncio.sleep(0)
        return store.current

    handle = use_password_provider(engine, provider, ttl=60)
    try:
        for _ in range(5):
            with engine.connect() as conn:
                assert conn.scalar(text("SELECT current_user")) == ROLE
        assert handle.calls == 1  # reused for the ttl
        # Rotated by hand: the cached one is refused, asked again, connected.
        store.rotate()
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT 1")) == 1
        assert handle.calls == 2 and handle.auth_retries_used == 1
    finally:
        handle.detach()
        engine.dispose()


def test_options_are_checked() -> None:
    engine = create_engine("sqlite://")
    with pytest.raises(TypeError, match="provider must be a callable"):
        use_password_provider(engine, "secret")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="auth_retries must be between 0 and 10, got 11"):
        use_password_provider(engine, lambda: "x", auth_retries=11)
    with pytest.raises(ValueError, match="refresh_margin"):
        use_password_provider(engine, lambda: "x", refresh_margin=-1)
    with pytest.raises(TypeError, match="non-empty str"):
        Credential("")
    naive = datetime(2030, 1, 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        Credential("x", expires_at=naive)
    assert "s3cr3t-token" not in repr(Credential("s3cr3t-token", expires_at=5.0))
