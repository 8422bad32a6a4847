"""Keyset pagination in FastAPI: cursors in query parameters, ``Link`` headers and a ``next`` field out.

Run it::

    pip install "sqlalchemy-resilience[aiosqlite]" fastapi uvicorn
    SQLALCHEMY_RESILIENCE_CURSOR_SECRET=$(python -c "import secrets; print(secrets.token_urlsafe(32))") \\
        uvicorn examples.fastapi_pagination:app

    curl -i 'http://127.0.0.1:8000/people?page_size=5&sort=-joined'   # 42 people, seeded at start

What it shows:

* ``after`` / ``before`` cursors taken from the query string and handed to
  :func:`~sqlalchemy_resilience.paginate` untouched: a forged or stale cursor
  is an :class:`~sqlalchemy_resilience.InvalidCursor`, answered with 400 and a
  message in the client's language -- never SQL, never a 500;
* the sort order chosen from an allow-list (names to columns, direction from
  the leading ``-``): a query parameter never becomes SQL text;
* the page returned as-is (FastAPI serialises a ``Page`` through its JSON
  form), with RFC 8288 ``Link`` headers for clients that follow them.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import DateTime, String, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqlalchemy_resilience import InvalidCursor, instrument, paginate
from sqlalchemy_resilience.pagination import Page
from sqlalchemy_resilience.pagination.cursor import resolve_secret


class Base(DeclarativeBase):
    pass


class Person(Base):
    __tablename__ = "example_people"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    team: Mapped[str | None] = mapped_column(String(20))
    joined: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


# The only sort orders a client may ask for: a name maps to a column, never to SQL.
SORTS = {"name": Person.name, "team": Person.team, "joined": Person.joined}
Sort = Literal["name", "-name", "team", "-team", "joined", "-joined"]


async def session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session per request (handlers' annotations are resolved at module level)."""
    async with request.app.state.sessions() as s:
        yield s


def create_app(url: str, *, secret: str | None = None, seed: int = 0) -> FastAPI:
    """The app on ``url``; ``seed`` people are inserted at start-up into an empty table."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Cursors are signed: without a key, fail here with the reason, not
        # with a 500 on the first page.
        resolve_secret(secret)
        engine = create_async_engine(url)
        instrument(engine)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
            empty = not await conn.scalar(select(func.count()).select_from(Person))
            if seed and empty:
                start = datetime(2026, 12, 2, tzinfo=UTC)
                await conn.execute(
                    Person.__table__.insert(),
                    [
                        {
                            "name": f"person {i:03d}",
                            "team": None if i % 5 == 0 else f"team {i % 3}",
                            "joined": start + timedelta(minutes=i % 17),
                        }
                        for i in range(1, seed + 1)
                    ],
                )
        app.state.sessions = async_sessionmaker(engine, expire_on_commit=False)
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    # [people]
    @app.exception_handler(InvalidCursor)
    async def invalid_cursor(request: Request, exc: InvalidCursor) -> JSONResponse:
        locale = request.headers.get("accept-language", "en")[:2]
        return JSONResponse(
            {"error": exc.user_message(locale), "error_id": exc.error_id}, status_code=400
        )

    @app.get("/people")
    async def list_people(
        request: Request,
        response: Response,
        db: Annotated[AsyncSession, Depends(session)],
        after: str | None = None,
        before: str | None = None,
        page_size: Annotated[int, Query(ge=1, le=100)] = 20,
        sort: Sort = "name",
    ) -> Page[Any]:
        column = SORTS[sort.lstrip("-")]
        stmt = select(Person).order_by(column.desc() if sort.startswith("-") else column.asc())
        page = await paginate(
            db, stmt, page_size=page_size, after=after, before=before, secret=secret
        )
        links = []
        if page.next_cursor:
            links.append(
                f'<{request.url.include_query_params(after=page.next_cursor).remove_query_params("before")}>; rel="next"'
            )
        if page.previous_cursor:
            links.append(
                f'<{request.url.include_query_params(before=page.previous_cursor).remove_query_params("after")}>; rel="prev"'
            )
        if links:
            response.headers["Link"] = ", ".join(links)
        return page

    # [/people]

    return app


# Run as the docstring says: 42 people to page through (once: a restart finds them there).
app = create_app(
    os.environ.get("DATABASE_URL", "sqlite+aiosqlite:///example_people.sqlite"), seed=42
)
