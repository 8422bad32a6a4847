"""The batch part of ``sqlalchemy-resilience demo``: a bulk insert with a progress bar, then keyset pages.

50,000 events stream from a generator into the demo database in chunks of
5,000 (one transaction each; COPY on PostgreSQL with asyncpg), with a rich
progress bar fed by ``bulk_insert``'s progress callback. Then the newest
events are read a page at a time with ``paginate``: forwards, back, and with
a cursor someone edited, which is refused before any SQL runs.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TextIO

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, create_engine, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine

from sqlalchemy_resilience.batch import bulk_insert, bulk_insert_sync
from sqlalchemy_resilience.cli.output import progress_bar
from sqlalchemy_resilience.errors import InvalidCursor
from sqlalchemy_resilience.instrumentation import instrument
from sqlalchemy_resilience.pagination import Page, paginate, paginate_sync

__all__ = ["ROWS", "batch_tour"]

ROWS = 50_000
CHUNK = 5_000
PAGE = 4
T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)

_metadata = MetaData()
_events = Table(
    "sr_demo_events",
    _metadata,
    Column("id", Integer, primary_key=True),
    Column("kind", String(20), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("note", String(40)),
)
# Newest first; four events share each second, the id orders them.
_NEWEST = select(_events.c.id, _events.c.kind, _events.c.at).order_by(
    _events.c.at.desc(), _events.c.id.desc()
)


def _events_stream(n: int) -> Iterator[dict[str, Any]]:
    for i in range(1, n + 1):
        yield {
            "id": i,
            "kind": ("click", "view", "buy")[i % 3],
            "at": T0 + timedelta(seconds=i // 4),
            "note": None if i % 5 else f"note {i}",
        }


def _show(page: Page[Any], label: str, out: TextIO) -> None:
    rows = ", ".join(f"#{r.id} {r.kind} {r.at:%H:%M:%S}" for r in page.items)
    print(f"  {label:<16} {rows}", file=out)


def _cursor_text(cursor: str | None) -> str:
    return "none" if cursor is None else f"{cursor[:24]}... ({len(cursor)} chars)"


async def batch_tour(url: URL, out: TextIO) -> bool:
    """Run the batch part against ``url``; True when every count and page came out right."""
    print(
        f"\nbatch writes and pages: {ROWS:,} events from a generator, then keyset pages",
        file=out,
    )
    is_async = url.get_dialect().is_async
    engine: Any = create_async_engine(url) if is_async else create_engine(url)
    instrument(engine)
    key = secrets.token_urlsafe(32)  # an application's cursor key; any instance must share it
    try:
        if is_async:
            async with engine.begin() as conn:
                await conn.run_sync(_metadata.drop_all)
                await conn.run_sync(_metadata.create_all)
        else:
            with engine.begin() as conn:
                _metadata.drop_all(conn)
                _metadata.create_all(conn)
        with progress_bar("bulk_insert", "rows", file=out, transient=False, rate=True) as bar:
            task = bar.add_task("insert", total=ROWS, rate="")

            def progress(done: int, rate: float) -> None:
                bar.update(task, completed=done, rate=f"{rate:,.0f}")

            options: dict[str, Any] = {"chunk_size": CHUNK, "progress": progress}
            if is_async:
                result = await bulk_insert(engine, _events, _events_stream(ROWS), **options)
            else:
                # The sync API blocks (and refuses to run on an event loop): in a thread.
                result = await asyncio.to_thread(
                    partial(bulk_insert_sync, engine, _events, _events_stream(ROWS), **options)
                )
        print(
            f"  {result.rows:,} rows in {result.chunks} transactions by the {result.path!r} path, "
            f"{result.rows_per_second:,.0f} rows/s",
            file=out,
        )

        async def page(**kwargs: Any) -> Page[Any]:
            if is_async:
                return await paginate(engine, _NEWEST, page_size=PAGE, secret=key, **kwargs)
            return paginate_sync(engine, _NEWEST, page_size=PAGE, secret=key, **kwargs)

        first = await page()
        _show(first, "page 1", out)
        second = await page(after=first.next_cursor)
        _show(second, "page 2 (after=)", out)
        third = await page(after=second.next_cursor)
        _show(third, "page 3 (after=)", out)
        back = await page(before=third.previous_cursor)
        _show(back, "back (before=)", out)
        cursor = third.next_cursor or ""
        print(f"  next_cursor      {_cursor_text(cursor)}", file=out)
        middle = len(cursor) // 2  # a character of the position's values, edited
        forged = cursor[:middle] + ("B" if cursor[middle] == "A" else "A") + cursor[middle + 1 :]
        refused = ""
        try:
            await page(after=forged)
        except InvalidCursor as exc:
            refused = exc.reason
            print(f"  edited cursor    InvalidCursor ({exc.reason}), no SQL run", file=out)
            print(f"    user (en)      {exc.user_message('en')}", file=out)
            print(f"    user (ja)      {exc.user_message('ja')}", file=out)
        ids = [r.id for p in (first, second, third) for r in p.items]
        expected = list(range(ROWS, ROWS - 3 * PAGE, -1))
        return (
            result.rows == ROWS
            and ids == expected
            and [r.id for r in back.items] == [r.id for r in second.items]
            and refused == "signature"
        )
    finally:
        if is_async:
            async with engine.begin() as conn:
                await conn.run_sync(_metadata.drop_all)
            await engine.dispose()
        else:
            with engine.begin() as conn:
                _metadata.drop_all(conn)
            engine.dispose()
