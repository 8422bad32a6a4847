"""The ``Database`` facade's pool settings, and its settings read from the environment.

:class:`PoolSettings` is frozen and validated: a wrong value fails when it is
built, naming the setting and what is allowed. :func:`settings_from_env`
reads ``DATABASE_URL`` and the documented ``SQLALCHEMY_RESILIENCE_*``
variables into keyword arguments for ``Database``/``SyncDatabase``; a bad value
names the variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy_resilience._util.seconds import Seconds, to_seconds
from sqlalchemy_resilience.instrumentation import InstrumentOptions
from sqlalchemy_resilience.retry import CircuitBreaker, RetryPolicy

__all__ = ["ENV_PREFIX", "ENV_VARIABLES", "PoolSettings", "settings_from_env"]

ENV_PREFIX = "SQLALCHEMY_RESILIENCE_"
_POOLER_MODES = ("session", "transaction", "statement")


def _count(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def _seconds_or_none(name: str, value: Seconds | None, *, allow_zero: bool = False) -> float | None:
    return None if value is None else to_seconds(name, value, allow_zero=allow_zero)


@dataclass(frozen=True)
class PoolSettings:
    """How the ``Database`` facade sizes and looks after its connection pool.

    Args:
        size: connections kept open (``pool_size``).
        max_overflow: connections opened beyond ``size`` under load.
        timeout: seconds a request waits for a connection (then ``PoolExhausted``).
        recycle: replace connections older than this (seconds; None: never).
        min_size: connections opened at start-up and kept open (the maintainer).
        keepalive: ping idle connections this often in the background (seconds;
            None: no keepalive).
        ping_after: ping a connection at checkout when idle this long (seconds;
            None: never; see :func:`~sqlalchemy_resilience.pool.ping_idle_connections`).
        ping_timeout: seconds a ping may take.
        require_writer: refuse connections to a read-only server at checkout
            (the failover writer check); None: on for PostgreSQL.
        autosize: resize the pool between ``min_size`` and ``size`` from demand.

    Raises:
        TypeError, ValueError: a setting of the wrong type or out of range, named.

    Example::

        Database(url, pool=PoolSettings(size=20, min_size=5, ping_after=30))
    """

    size: int = 10
    max_overflow: int = 10
    timeout: Seconds = 30.0
    recycle: Seconds | None = 1800.0
    min_size: int = 0
    keepalive: Seconds | None = None
    ping_after: Seconds | None = 30.0
    ping_timeout: Seconds = 5.0
    require_writer: bool | None = None
    autosize: bool = False
    _checked: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        checked = self._checked
        checked["size"] = _count("size", self.size, minimum=1)
        checked["max_overflow"] = _count("max_overflow", self.max_overflow, minimum=0)
        checked["timeout"] = to_seconds("timeout", self.timeout, allow_zero=False)
        checked["recycle"] = _seconds_or_none("recycle", self.recycle)
        checked["min_size"] = _count("min_size", self.min_size, minimum=0)
        if self.min_size > self.size:
            raise ValueError(f"min_size must be <= size ({self.size}), got {self.min_size!r}")
        checked["keepalive"] = _seconds_or_none("keepalive", self.keepalive)
        checked["ping_after"] = _seconds_or_none("ping_after", self.ping_after)
        checked["ping_timeout"] = to_seconds("ping_timeout", self.ping_timeout, allow_zero=False)
        if self.require_writer is not None and not isinstance(self.require_writer, bool):
            raise TypeError(
                f"require_writer must be True, False or None, got {self.require_writer!r}"
            )
        if not isinstance(self.autosize, bool):
            raise TypeError(f"autosize must be True or False, got {self.autosize!r}")

    def seconds(self, name: str) -> Any:
        """A time setting as float seconds (None where off).

        Example::

            PoolSettings(timeout=timedelta(seconds=5)).seconds("timeout")  # 5.0
        """
        return self._checked[name]


# -- the environment ------------------------------------------------------

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _env_int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None


def _env_seconds(name: str, raw: str) -> float | None:
    if raw.strip().lower() in ("none", "off", ""):
        return None
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds or 'off', got {raw!r}") from None


def _env_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{name} must be one of {', '.join(_TRUE + _FALSE)}, got {raw!r}")


_POOL_VARIABLES: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "POOL_SIZE": ("size", _env_int),
    "POOL_MAX_OVERFLOW": ("max_overflow", _env_int),
    "POOL_TIMEOUT": ("timeout", _env_seconds),
    "POOL_RECYCLE": ("recycle", _env_seconds),
    "POOL_MIN_SIZE": ("min_size", _env_int),
    "POOL_KEEPALIVE": ("keepalive", _env_seconds),
    "POOL_PING_AFTER": ("ping_after", _env_seconds),
    "POOL_REQUIRE_WRITER": ("require_writer", _env_bool),
    "POOL_AUTOSIZE": ("autosize", _env_bool),
}

# What instrument() attaches; the pool's leak and queue limits keep their POOL_ names.
_INSTRUMENT_VARIABLES: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "SLOW_QUERY_THRESHOLD": ("slow_query_threshold", _env_seconds),
    "POOL_LEAK_THRESHOLD": ("leak_threshold", _env_seconds),
    "POOL_MAX_WAITING": ("max_waiting", _env_int),
}

#: Every variable :func:`settings_from_env` reads, after ``DATABASE_URL``, with its meaning.
ENV_VARIABLES: dict[str, str] = {
    **{f"{ENV_PREFIX}{key}": f"PoolSettings.{attr}" for key, (attr, _) in _POOL_VARIABLES.items()},
    f"{ENV_PREFIX}RETRY_ATTEMPTS": "RetryPolicy.attempts",
    f"{ENV_PREFIX}RETRY_DEADLINE": "RetryPolicy.deadline (seconds)",
    f"{ENV_PREFIX}BREAKER": "on/off: a circuit breaker",
    f"{ENV_PREFIX}BREAKER_FAILURE_THRESHOLD": "CircuitBreaker.failure_threshold",
    f"{ENV_PREFIX}BREAKER_RECOVERY_TIMEOUT": "CircuitBreaker.recovery_timeout (seconds)",
    **{
        f"{ENV_PREFIX}{key}": f"InstrumentOptions.{attr}"
        for key, (attr, _) in _INSTRUMENT_VARIABLES.items()
    },
    f"{ENV_PREFIX}LOCALE": "locale of user messages (en, ja)",
    f"{ENV_PREFIX}REPLICA_URLS": "read replica URLs, comma-separated",
    f"{ENV_PREFIX}MAX_REPLICA_LAG": "max_replica_lag (seconds)",
    f"{ENV_PREFIX}POOLER": "session, transaction or statement (a pooler in front)",
}


def settings_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``Database(**settings_from_env())``: the URL and settings the environment gives.

    Reads ``DATABASE_URL`` (required) and the ``SQLALCHEMY_RESILIENCE_*``
    variables listed in :data:`ENV_VARIABLES`; an unknown
    ``SQLALCHEMY_RESILIENCE_POOL_*``, ``RETRY_*`` or ``BREAKER_*`` variable is
    refused (a typo would otherwise be silently ignored).

    Raises:
        ValueError: ``DATABASE_URL`` is missing, or a variable has a bad value
            (the message names the variable and what it accepts).

    Example::

        db = Database(**settings_from_env({"DATABASE_URL": "sqlite+aiosqlite:///app.db"}))
    """
    env = os.environ if environ is None else environ
    url = env.get("DATABASE_URL", "").strip()
    if not url:
        raise ValueError("DATABASE_URL is not set; it names the database (a SQLAlchemy URL)")
    groups = tuple(f"{ENV_PREFIX}{group}" for group in ("POOL_", "RETRY_", "BREAKER_"))
    for name in env:
        if name.startswith(groups) and name not in ENV_VARIABLES:
            raise ValueError(
                f"{name} is not a setting; the settings are: {', '.join(sorted(ENV_VARIABLES))}"
            )
    pool: dict[str, Any] = {}
    for key, (attr, parse) in _POOL_VARIABLES.items():
        raw = env.get(ENV_PREFIX + key)
        if raw is not None:
            pool[attr] = parse(ENV_PREFIX + key, raw)
    settings: dict[str, Any] = {"url_or_engine": url}
    if pool:
        try:
            settings["pool"] = PoolSettings(**pool)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{ENV_PREFIX}POOL_*: {exc}") from None
    retry: dict[str, Any] = {}
    if (raw := env.get(f"{ENV_PREFIX}RETRY_ATTEMPTS")) is not None:
        retry["attempts"] = _env_int(f"{ENV_PREFIX}RETRY_ATTEMPTS", raw)
    if (raw := env.get(f"{ENV_PREFIX}RETRY_DEADLINE")) is not None:
        retry["deadline"] = _env_seconds(f"{ENV_PREFIX}RETRY_DEADLINE", raw)
    if retry:
        try:
            settings["retry"] = RetryPolicy(**retry)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{ENV_PREFIX}RETRY_*: {exc}") from None
    breaker_on = env.get(f"{ENV_PREFIX}BREAKER")
    breaker: dict[str, Any] = {}
    if (raw := env.get(f"{ENV_PREFIX}BREAKER_FAILURE_THRESHOLD")) is not None:
        breaker["failure_threshold"] = _env_int(f"{ENV_PREFIX}BREAKER_FAILURE_THRESHOLD", raw)
    if (raw := env.get(f"{ENV_PREFIX}BREAKER_RECOVERY_TIMEOUT")) is not None:
        breaker["recovery_timeout"] = _env_seconds(f"{ENV_PREFIX}BREAKER_RECOVERY_TIMEOUT", raw)
    if breaker_on is not None and not _env_bool(f"{ENV_PREFIX}BREAKER", breaker_on):
        settings["breaker"] = None
    elif breaker:
        try:
            settings["breaker"] = CircuitBreaker(name="database", **breaker)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{ENV_PREFIX}BREAKER_*: {exc}") from None
    instrumentation: dict[str, Any] = {}
    for key, (attr, parse) in _INSTRUMENT_VARIABLES.items():
        raw = env.get(ENV_PREFIX + key)
        if raw is not None:
            instrumentation[attr] = parse(ENV_PREFIX + key, raw)
    if instrumentation:
        try:
            settings["instrumentation"] = InstrumentOptions(**instrumentation)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{ENV_PREFIX}{{SLOW_QUERY_THRESHOLD,POOL_LEAK_THRESHOLD,POOL_MAX_WAITING}}: {exc}"
            ) from None
    if (raw := env.get(f"{ENV_PREFIX}LOCALE")) is not None:
        settings["locale"] = raw.strip()
    if (raw := env.get(f"{ENV_PREFIX}REPLICA_URLS")) is not None:
        settings["replicas"] = [u.strip() for u in raw.split(",") if u.strip()]
    if (raw := env.get(f"{ENV_PREFIX}MAX_REPLICA_LAG")) is not None:
        settings["max_replica_lag"] = _env_seconds(f"{ENV_PREFIX}MAX_REPLICA_LAG", raw)
    if (raw := env.get(f"{ENV_PREFIX}POOLER")) is not None:
        mode = raw.strip().lower()
        if mode not in _POOLER_MODES:
            raise ValueError(
                f"{ENV_PREFIX}POOLER must be one of {', '.join(_POOLER_MODES)}, got {raw!r}"
            )
        settings["pooler"] = mode
    return settings
