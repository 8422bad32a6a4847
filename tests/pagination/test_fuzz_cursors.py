"""Hostile cursors and ORDER BY strings (FAULTS.md section 5.2 and 5.4): refused before any SQL runs.

Cursors tried: random text, random bytes in URL-safe base64, a valid cursor
with one character changed, truncated or extended, one re-signed with another
key, one issued for another ordering, and payloads of random bytes signed with
the right key (what a leaked key would allow). Every tampered cursor gives
``InvalidCursor`` with a ``before_cursor_execute`` counter at 0; a correctly
signed random payload gives ``InvalidCursor`` or, if it happens to decode to a
well-typed position, a page read with bound parameters -- never another error.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    insert,
    select,
)

from sqlalchemy_resilience import InvalidCursor, paginate_sync
from sqlalchemy_resilience.pagination import Page
from sqlalchemy_resilience.pagination.cursor import CursorCodec, resolve_secret
from sqlalchemy_resilience.pagination.ordering import ordering_of

KEY = "fuzz-key-0123456789abcdef"
OTHER_KEY = "someone-else-0123456789"

metadata = MetaData()
events = Table(
    "fuzz_events",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String(20)),
    Column("at", DateTime, nullable=False),
)
STMT = select(events).order_by(events.c.kind.desc(), events.c.at)
SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, list[str], str]]:
    """A SQLite engine with 30 events, a statement counter, and a valid cursor."""
    path: Path = tmp_path_factory.mktemp("fuzz") / "cursors.sqlite"
    engine = create_engine(f"sqlite:///{path}")
    import datetime

    with engine.begin() as conn:
        metadata.create_all(conn)
        base = datetime.datetime(2026, 12, 2)
        conn.execute(
            insert(events),
            [
                {
                    "id": i,
                    "kind": None if i % 4 == 0 else f"k{i % 3}",
                    "at": base + datetime.timedelta(hours=i),
                }
                for i in range(1, 31)
            ],
        )
    cursor = paginate_sync(engine, STMT, page_size=7, secret=KEY).next_cursor
    assert cursor is not None
    ran: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda c, cur, s, *r: ran.append(s))
    yield engine, ran, cursor
    engine.dispose()


def _refused(engine: Any, ran: list[str], value: Any, *, key: str = KEY) -> InvalidCursor:
    ran.clear()
    with pytest.raises(InvalidCursor) as info:
        paginate_sync(engine, STMT, page_size=7, secret=key, after=value)
    assert ran == [], f"SQL ran for cursor {value!r}: {ran}"
    assert repr(value) not in str(info.value)
    return info.value


@SETTINGS
@given(value=st.one_of(st.text(max_size=300), st.binary(max_size=200)))
def test_random_text_and_bytes(setup: Any, value: Any) -> None:
    """Random strings, and random bytes as URL-safe base64: refused, 0 SQL."""
    engine, ran, _ = setup
    if isinstance(value, bytes):
        value = base64.urlsafe_b64encode(value).rstrip(b"=").decode()
    if value == "":
        return  # an empty cursor means "no cursor" (an empty query parameter)
    _refused(engine, ran, value)


@SETTINGS
@given(data=st.data())
def test_mutated_valid_cursors(setup: Any, data: st.DataObject) -> None:
    """A valid cursor with one character changed, truncated, or extended: refused, 0 SQL."""
    engine, ran, cursor = setup
    how = data.draw(st.sampled_from(["change", "truncate", "extend"]))
    if how == "change":
        at = data.draw(st.integers(0, len(cursor) - 1))
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/.%"
        new = data.draw(st.sampled_from(alphabet).filter(lambda c: c != cursor[at]))
        value = cursor[:at] + new + cursor[at + 1 :]
    elif how == "truncate":
        value = cursor[: data.draw(st.integers(1, len(cursor) - 1))]
    else:
        value = cursor + data.draw(st.text(min_size=1, max_size=40))
    _refused(engine, ran, value)


@SETTINGS
@given(
    place=st.lists(
        st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=30), st.datetimes()),
        min_size=1,
        max_size=6,
    ),
    backwards=st.booleans(),
)
def test_resigned_with_another_key_or_for_another_query(
    setup: Any, place: list[Any], backwards: bool
) -> None:
    """Well-formed cursors signed with another key, or for another ordering: refused, 0 SQL."""
    engine, ran, _ = setup
    ordering = ordering_of(STMT, engine.dialect)
    foreign = CursorCodec(resolve_secret(OTHER_KEY), ordering.fingerprint).encode(
        place, backwards=False
    )
    assert _refused(engine, ran, foreign).reason == "signature"
    other = ordering_of(select(events).order_by(events.c.at), engine.dialect)
    elsewhere = CursorCodec(resolve_secret(KEY), other.fingerprint).encode(
        place, backwards=backwards
    )
    assert _refused(engine, ran, elsewhere).reason == "other_query"


@SETTINGS
@given(body=st.binary(max_size=120), flags=st.integers(0, 255))
def test_random_payloads_signed_with_the_right_key(setup: Any, body: bytes, flags: int) -> None:
    """What a leaked key allows: InvalidCursor before SQL, or a page read with bound values."""
    engine, ran, _ = setup
    fingerprint = ordering_of(STMT, engine.dialect).fingerprint
    payload = bytes([1]) + fingerprint + bytes([flags]) + body
    mac = hmac.new(KEY.encode(), b"sqlalchemy-resilience/cursor/v1\x00" + payload, hashlib.sha256)
    value = base64.urlsafe_b64encode(payload + mac.digest()[:16]).rstrip(b"=").decode()
    ran.clear()
    try:
        page = paginate_sync(engine, STMT, page_size=7, secret=KEY, cursor=value)
    except InvalidCursor:
        assert ran == []
    else:
        assert isinstance(page, Page) and len(ran) == 1


HOSTILE_ORDER = [
    "id; DROP TABLE fuzz_events",
    "kind'--",
    'kind"',
    "kind/* */",
    "ki\x00nd",
    "kind\r\nDROP",
    "k\u0456nd",
    "id ASC; DROP TABLE fuzz_events",
    "kind DESC",
    "id",
]


@SETTINGS
@given(name=st.one_of(st.sampled_from(HOSTILE_ORDER), st.text(min_size=1, max_size=80)))
def test_order_by_strings_are_refused(setup: Any, name: str) -> None:
    """An ORDER BY given as a string (a sort query parameter pasted in): ValueError, 0 SQL."""
    engine, ran, _ = setup
    ran.clear()
    with pytest.raises(ValueError, match="not SQL text"):
        paginate_sync(engine, select(events).order_by(name), secret=KEY)
    assert ran == []
