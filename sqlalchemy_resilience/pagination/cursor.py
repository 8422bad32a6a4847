"""Opaque, URL-safe, tamper-evident cursors: a keyset position signed with the application's key.

A cursor is ``base64url(payload || mac)`` without padding, where ``payload``
is a version byte, the 8-byte fingerprint of the query's ordering, a flags
byte (direction; whether a position follows) and the position's values as
sqlakeyset serialises them (typed: ints, text, dates, decimals, UUIDs...), and
``mac`` is the first 16 bytes of HMAC-SHA256 over a domain tag and the
payload. Nothing in a cursor is trusted before its MAC is checked, and
nothing in it ever becomes SQL text: the values become bound parameters.

Keys rotate: ``secret=[new, old]`` signs with ``new`` and accepts both.
"""

from __future__ import annotations

import base64
import binascii
import csv
import datetime
import hashlib
import hmac
import os
import re
from collections.abc import Sequence
from typing import Any

import dateutil.parser
from sqlakeyset import BadBookmark
from sqlakeyset import results as sqlakeyset_results
from sqlakeyset.serial import PageSerializationError, Serial, UnregisteredType

from sqlalchemy_resilience.errors import InvalidCursor

__all__ = ["MAX_CURSOR_LENGTH", "SECRET_ENV", "CursorCodec", "resolve_secret"]

#: Environment variable read when ``secret=`` is not given.
SECRET_ENV = "SQLALCHEMY_RESILIENCE_CURSOR_SECRET"  # noqa: S105 - a variable name, not a secret
#: Longer cursors are refused unread (a cursor is a few dozen to a few hundred characters).
MAX_CURSOR_LENGTH = 4096
MIN_SECRET_BYTES = 16

_VERSION = 1
_DOMAIN = b"sqlalchemy-resilience/cursor/v1\x00"
_MAC_BYTES = 16
_HEADER = 1 + 8 + 1
_BACKWARDS = 1
_HAS_PLACE = 2
_ALPHABET = re.compile(r"[A-Za-z0-9_-]*")

Secret = str | bytes | Sequence[str | bytes]


def _key_bytes(key: object, index: int) -> bytes:
    if isinstance(key, str):
        raw = key.encode()
    elif isinstance(key, bytes):
        raw = key
    else:
        raise TypeError(f"secret[{index}] must be str or bytes, got {type(key).__name__}")
    if len(raw) < MIN_SECRET_BYTES:
        raise ValueError(
            f"a cursor secret must be at least {MIN_SECRET_BYTES} bytes, got {len(raw)} "
            "(use secrets.token_urlsafe(32))"
        )
    return raw


def resolve_secret(secret: Secret | None) -> tuple[bytes, ...]:
    """The signing keys, newest first, from ``secret`` or the ``SQLALCHEMY_RESILIENCE_CURSOR_SECRET`` variable.

    Example::

        >>> len(resolve_secret("0123456789abcdef0123"))
        1
    """
    if secret is None:
        from_env = os.environ.get(SECRET_ENV, "")
        if not from_env:
            raise ValueError(
                f"paginate signs its cursors: pass secret= (an application key, at least "
                f"{MIN_SECRET_BYTES} bytes) or set {SECRET_ENV}"
            )
        secret = from_env
    if isinstance(secret, str | bytes):
        return (_key_bytes(secret, 0),)
    if not isinstance(secret, list | tuple):
        raise TypeError(
            "secret must be str or bytes of at least "
            f"{MIN_SECRET_BYTES} bytes, or a list of them (newest first), "
            f"got {type(secret).__name__}"
        )
    keys = tuple(_key_bytes(key, index) for index, key in enumerate(secret))
    if not keys:
        raise ValueError("secret must hold at least one key")
    return keys


def _parse_datetime(text: str) -> datetime.datetime:
    # The text is str(datetime): fromisoformat reads it exactly, in a
    # fraction of dateutil's time; dateutil stays the fallback.
    try:
        return datetime.datetime.fromisoformat(text)
    except ValueError:
        parsed: datetime.datetime = dateutil.parser.parse(text)
        return parsed


class _Values(Serial):
    """sqlakeyset's value encoding, reading datetimes faster; types registered
    with ``sqlakeyset.custom_bookmark_type`` are found in its registry."""

    def __init__(self) -> None:
        super().__init__(**sqlakeyset_results.SERIALIZER_SETTINGS)  # type: ignore[no-untyped-call]
        self.deserializers["dt"] = _parse_datetime

    def get_serializer(self, x: Any) -> Any:
        found = super().get_serializer(x)  # type: ignore[no-untyped-call]
        return found or sqlakeyset_results.s.get_serializer(x)  # type: ignore[no-untyped-call]

    def unserialize_value(self, x: str) -> Any:
        code = x.split(":", 1)[0]
        if (
            ":" in x
            and code not in self.deserializers
            and code in sqlakeyset_results.s.deserializers
        ):
            return sqlakeyset_results.s.unserialize_value(x)
        return super().unserialize_value(x)


_VALUES = _Values()


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, _DOMAIN + payload, hashlib.sha256).digest()[:_MAC_BYTES]


class CursorCodec:
    """Signs and verifies the cursors of one ordering under one set of keys."""

    __slots__ = ("_fingerprint", "_keys")

    def __init__(self, keys: tuple[bytes, ...], fingerprint: bytes) -> None:
        self._keys = keys
        self._fingerprint = fingerprint

    def encode(self, place: Sequence[Any] | None, *, backwards: bool) -> str:
        """The cursor for a position (None: the end) and a direction."""
        flags = (_BACKWARDS if backwards else 0) | (_HAS_PLACE if place is not None else 0)
        body = b""
        if place is not None:
            try:
                body = _VALUES.serialize_values(tuple(place)).encode()
            except (UnregisteredType, PageSerializationError) as exc:
                raise TypeError(
                    f"a value of this ordering cannot go into a cursor ({exc}); register its "
                    "type with sqlakeyset.custom_bookmark_type(...)"
                ) from exc
        payload = bytes([_VERSION]) + self._fingerprint + bytes([flags]) + body
        token = payload + _mac(self._keys[0], payload)
        return base64.urlsafe_b64encode(token).rstrip(b"=").decode("ascii")

    def decode(
        self, cursor: object, *, backwards: bool | None
    ) -> tuple[tuple[Any, ...] | None, bool]:
        """``(place, backwards)`` of a cursor this codec issued, else :class:`InvalidCursor`.

        Args:
            backwards: the direction the caller passed it for (``after=`` False,
                ``before=`` True), or None when the cursor's own direction is used.
        """
        if not isinstance(cursor, str):
            raise InvalidCursor("malformed", f"a cursor is a string, got {type(cursor).__name__}")
        if len(cursor) > MAX_CURSOR_LENGTH:
            raise InvalidCursor("too_long", f"longer than {MAX_CURSOR_LENGTH} characters")
        if not _ALPHABET.fullmatch(cursor):
            raise InvalidCursor("malformed", "not URL-safe base64")
        try:
            token = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError):
            raise InvalidCursor("malformed", "not URL-safe base64") from None
        if base64.urlsafe_b64encode(token).rstrip(b"=").decode("ascii") != cursor:
            # Another spelling of the same bytes (unused trailing bits set): one
            # cursor string per position, so a changed cursor never passes.
            raise InvalidCursor("malformed", "not in canonical form")
        if len(token) < _HEADER + _MAC_BYTES:
            raise InvalidCursor("malformed", "too short")
        payload, mac = token[:-_MAC_BYTES], token[-_MAC_BYTES:]
        if payload[0] != _VERSION:
            raise InvalidCursor("malformed", "unknown cursor version")
        if not any(hmac.compare_digest(mac, _mac(key, payload)) for key in self._keys):
            raise InvalidCursor("signature", "not signed by this application's key")
        if not hmac.compare_digest(payload[1:9], self._fingerprint):
            raise InvalidCursor("other_query", "issued for a query with another ordering")
        flags = payload[9]
        is_backwards = bool(flags & _BACKWARDS)
        if backwards is not None and backwards != is_backwards:
            expected = "before=" if is_backwards else "after="
            raise InvalidCursor(
                "direction", f"this cursor is for the other direction: pass it as {expected}"
            )
        if flags & ~(_BACKWARDS | _HAS_PLACE):
            raise InvalidCursor("malformed", "unknown flags")
        if not flags & _HAS_PLACE:
            if len(payload) != _HEADER:
                raise InvalidCursor("malformed", "trailing bytes")
            return None, is_backwards
        try:
            place = _VALUES.unserialize_values(payload[_HEADER:].decode())
        except (BadBookmark, UnicodeDecodeError, ValueError, TypeError, OverflowError, csv.Error):
            raise InvalidCursor("values", "its position cannot be read") from None
        if place is None:
            raise InvalidCursor("values", "its position is empty")
        return tuple(place), is_backwards
