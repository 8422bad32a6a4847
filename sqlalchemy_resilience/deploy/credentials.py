"""Rotating credentials: a password (or cloud IAM token) fetched for new connections.

AWS RDS/Aurora IAM authentication, Google Cloud SQL IAM, Azure Entra ID and
secret stores that rotate (Vault dynamic secrets, AWS Secrets Manager) all
hand out a password that changes. SQLAlchemy's answer is a ``do_connect``
recipe (sqlalchemy#7850); :func:`use_password_provider` is that recipe done
completely:

* the provider (sync or async callable) is asked when a new connection is
  opened and its answer is cached until ``refresh_margin`` seconds before it
  expires (a :class:`Credential` with ``expires_at``), or for ``ttl``
  seconds, so a pool opening ten connections asks once;
* when the server refuses a cached password (rotated early), the provider is
  asked again and the connect retried, ``auth_retries`` times with a short
  pause: a rotation in progress is ridden out, a wrong token still ends in one
  :class:`~sqlalchemy_resilience.AuthenticationFailed` instead of a loop;
* the password is never logged, never in ``repr`` or health output, and is
  redacted from the package's error records like a URL password.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

from sqlalchemy_resilience._util.seconds import Seconds, to_seconds
from sqlalchemy_resilience.core.engines import register_secrets, sync_engine
from sqlalchemy_resilience.errors.classify import extract_facts

__all__ = ["Credential", "PasswordProvider", "use_password_provider"]

_log = logging.getLogger("sqlalchemy_resilience.deploy")
_AUTH_STATES = ("28P01", "28000")


@dataclass(frozen=True)
class Credential:
    """A password and when it stops working.

    Args:
        password: the password or token.
        expires_at: a timezone-aware ``datetime`` or a POSIX timestamp; None
            when unknown (then ``ttl`` decides how long it is reused).

    Example::

        def rds_token() -> Credential:
            token = rds.generate_db_auth_token(DBHostname=host, Port=5432, DBUsername="app")
            return Credential(token, expires_at=time.time() + 900)
    """

    password: str = field(repr=False)
    expires_at: datetime | float | None = None

    def __post_init__(self) -> None:
        given: object = self.password
        if not isinstance(given, str) or not given:
            raise TypeError("Credential.password must be a non-empty str")
        when = self.expires_at
        if isinstance(when, datetime) and when.tzinfo is None:
            raise ValueError(
                "Credential.expires_at must be timezone-aware (datetime.now(timezone.utc) + ...)"
            )
        if when is not None and (
            isinstance(when, bool) or not isinstance(when, (datetime, int, float))
        ):
            raise TypeError(
                f"Credential.expires_at must be a datetime, a POSIX timestamp or None; got {when!r}"
            )
        if isinstance(when, (int, float)) and not (math.isfinite(when) and when >= 0):
            raise ValueError(
                "Credential.expires_at must be a finite POSIX timestamp >= 0 "
                f"(seconds since 1970), got {when!r}"
            )

    def expiry(self) -> float | None:
        """``expires_at`` as a POSIX timestamp."""
        when = self.expires_at
        if isinstance(when, datetime):
            return when.astimezone(UTC).timestamp()
        return None if when is None else float(when)


ProviderResult = str | Credential
Provider = Callable[[], ProviderResult | Awaitable[ProviderResult]]


def _run_awaitable(value: Awaitable[ProviderResult]) -> ProviderResult:
    """An async provider's answer on a sync engine: its own loop, on a helper thread."""
    box: list[Any] = []

    def run() -> None:
        async def wait() -> ProviderResult:
            return await value

        try:
            box.append(asyncio.run(wait()))
        except BaseException as exc:  # handed back to the caller's thread
            box.append(exc)

    thread = threading.Thread(target=run, name="sqlalchemy-resilience-password-provider")
    thread.start()
    thread.join()
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]  # type: ignore[no-any-return]


class PasswordProvider:
    """The attached provider of one engine; see :func:`use_password_provider`.

    Attributes:
        calls: times the provider was asked.
        auth_retries_used: connects retried after the server refused a password.

    Example::

        provider = use_password_provider(engine, fetch_token)
        ...
        provider.detach()
    """

    def __init__(
        self,
        engine: Engine,
        provider: Provider,
        *,
        refresh_margin: float,
        ttl: float | None,
        auth_retries: int,
        retry_pause: float,
    ) -> None:
        self.engine = engine
        self._provider = provider
        self.refresh_margin = refresh_margin
        self.ttl = ttl
        self.auth_retries = auth_retries
        self.retry_pause = retry_pause
        self.calls = 0
        self.auth_retries_used = 0
        self._cached: str | None = None
        self._valid_until = 0.0
        self._lock = threading.Lock()
        self._is_async = bool(engine.dialect.is_async)
        # AsyncEngine: the ask in flight, shared by connects that start meanwhile.
        self._in_flight: asyncio.Future[str] | None = None
        event.listen(engine, "do_connect", self._do_connect)
        register_secrets(engine, self._current)

    def __repr__(self) -> str:
        return f"<PasswordProvider engine={self.engine.url.render_as_string()} calls={self.calls}>"

    def _current(self) -> tuple[str, ...]:
        return (self._cached,) if self._cached else ()

    def _ask(self) -> str:
        value: Any = self._provider()
        if inspect.isawaitable(value):
            value = await_only(value) if self._is_async else _run_awaitable(value)
        self.calls += 1
        if not isinstance(value, (str, Credential)):
            raise TypeError(
                f"the password provider returned a {type(value).__name__}; "
                "return a str or a Credential"
            )
        credential = value if isinstance(value, Credential) else Credential(value)
        expiry = credential.expiry()
        now = time.time()
        if expiry is not None:
            until = expiry - self.refresh_margin
        elif self.ttl is not None:
            until = now + self.ttl
        else:
            until = now  # no expiry and no ttl: asked for every new connection
        self._cached = credential.password
        self._valid_until = until
        return credential.password

    def password(self, *, fresh: bool = False) -> tuple[str, bool]:
        """The password for a new connection and whether it was just fetched.

        Example::

            secret, fetched = provider.password()
        """
        if self._is_async:
            if not fresh and self._cached is not None and time.time() < self._valid_until:
                return self._cached, False
            return self._ask_once_async(fresh)
        with self._lock:
            if not fresh and self._cached is not None and time.time() < self._valid_until:
                return self._cached, False
            return self._ask(), True

    def _ask_once_async(self, fresh: bool) -> tuple[str, bool]:
        # Connects of an AsyncEngine run in greenlets of one thread: a thread
        # lock held across the provider's await would block the loop. Connects
        # that start while an ask is in flight on this loop await its answer
        # instead (a pool filling up asks once, not once per connection); one
        # whose shared answer is refused asks afresh (``fresh``).
        loop = asyncio.get_running_loop()
        shared = self._in_flight
        if not fresh and shared is not None and not shared.done() and shared.get_loop() is loop:
            # asyncio.wait: cancelling this connect leaves the shared ask alone.
            await_only(asyncio.wait({shared}))
            if not shared.cancelled():  # else the asker was cancelled: ask here
                return shared.result(), False  # the provider's error, if it failed
        future: asyncio.Future[str] = loop.create_future()
        self._in_flight = future
        try:
            secret = self._ask()
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here; the waiters raise it too
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            if self._in_flight is future:
                self._in_flight = None
        future.set_result(secret)
        return secret, True

    def _pause(self, seconds: float) -> None:
        if self._is_async:
            await_only(asyncio.sleep(seconds))
        else:
            time.sleep(seconds)

    def _do_connect(self, dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
        attempt = 0
        while True:
            secret, fresh = self.password(fresh=attempt > 0)
            cparams["password"] = secret
            try:
                return dialect.connect(*cargs, **cparams)
            except Exception as exc:
                if extract_facts(exc).sqlstate not in _AUTH_STATES or attempt >= self.auth_retries:
                    raise
                attempt += 1
                self.auth_retries_used += 1
                _log.info(
                    "sqlalchemy_resilience: the server refused the %s password; asking the "
                    "provider again (retry %d of %d)",
                    "fresh" if fresh else "cached",
                    attempt,
                    self.auth_retries,
                )
                if fresh:
                    # Just fetched and refused: a rotation may be half-way through.
                    self._pause(self.retry_pause * attempt)

    def detach(self) -> None:
        """Stop providing passwords (idempotent); connections open now stay open."""
        if event.contains(self.engine, "do_connect", self._do_connect):
            event.remove(self.engine, "do_connect", self._do_connect)
        register_secrets(self.engine, None)


def use_password_provider(
    engine: Engine | AsyncEngine,
    provider: Provider,
    *,
    refresh_margin: Seconds = 60.0,
    ttl: Seconds | None = None,
    auth_retries: int = 2,
    retry_pause: Seconds = 0.2,
) -> PasswordProvider:
    """Give every new connection of ``engine`` the password ``provider`` returns.

    Args:
        engine: an ``Engine`` or ``AsyncEngine``; the password in its URL, if
            any, is overridden for new connections.
        provider: a callable, sync or async, returning the password (``str``)
            or a :class:`Credential` with its expiry. On an ``AsyncEngine`` an
            async provider is awaited on the engine's loop; on a sync engine it
            runs on a helper thread's loop.
        refresh_margin: ask again this many seconds before a credential's ``expires_at``.
        ttl: reuse a password without ``expires_at`` for this many seconds
            (None: ask for every new connection).
        auth_retries: when the server refuses the password (28P01/28000), ask
            the provider again and reconnect up to this many times, pausing
            ``retry_pause`` x attempt after a refused fresh one; then the
            refusal surfaces as :class:`~sqlalchemy_resilience.AuthenticationFailed`
            on an instrumented engine.
        retry_pause: seconds; see ``auth_retries``.

    Returns:
        The :class:`PasswordProvider` (``detach()``, counters).

    Raises:
        TypeError: ``provider`` is not callable, or an option has the wrong type.
        ValueError: an option is out of range.

    Example::

        import boto3

        rds = boto3.client("rds")

        def token() -> Credential:
            value = rds.generate_db_auth_token(DBHostname=HOST, Port=5432, DBUsername="app")
            return Credential(value, expires_at=time.time() + 15 * 60)

        engine = create_async_engine(f"postgresql+asyncpg://app@{HOST}/app?ssl=require")
        use_password_provider(engine, token)
    """
    if not callable(provider):
        raise TypeError(f"provider must be a callable returning a password, got {provider!r}")
    margin = to_seconds("refresh_margin", refresh_margin)
    ttl_s = None if ttl is None else to_seconds("ttl", ttl)
    pause = to_seconds("retry_pause", retry_pause)
    if isinstance(auth_retries, bool) or not isinstance(auth_retries, int):
        raise TypeError(f"auth_retries must be an int, got {auth_retries!r}")
    if not 0 <= auth_retries <= 10:
        raise ValueError(f"auth_retries must be between 0 and 10, got {auth_retries!r}")
    return PasswordProvider(
        sync_engine(engine),
        provider,
        refresh_margin=margin,
        ttl=ttl_s,
        auth_retries=auth_retries,
        retry_pause=pause,
    )
