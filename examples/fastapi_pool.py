"""docs/pool.md's set-up as a FastAPI app that CI drives (SQLite by default).

Run it::

    pip install ".[aiosqlite]" fastapi uvicorn
    uvicorn examples.fastapi_pool:app
    curl localhost:8000/healthz

At start-up it opens and verifies connections (failing fast when the database
is unreachable), starts the background maintainer, the idle-connection ping
and the autosizer; ``/healthz`` reports the pool with the counted figures.
Everything is created in the lifespan and removed at shutdown: importing the
module starts nothing.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from sqlalchemy_resilience import health_check
from sqlalchemy_resilience.pool import PoolAutosizer, ping_idle_connections


def create_app(url: str) -> FastAPI:
    """The app on ``url``."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # [set-up]
        from sqlalchemy.ext.asyncio import create_async_engine

        from sqlalchemy_resilience import instrument
        from sqlalchemy_resilience.pool import AsyncResizableQueuePool, PoolMaintainer, warm_up

        # The package's pool class: the maintainer, resize_pool and the autosizer need it.
        engine = create_async_engine(
            url, poolclass=AsyncResizableQueuePool, pool_size=10, max_overflow=5, pool_timeout=5
        )
        instr = instrument(engine, leak_threshold=30, max_waiting=50)
        # Fail fast if the database is unreachable; the monitor reports the idle minimum.
        await warm_up(engine, 5, timeout=10, monitor=instr.pool)
        # [/set-up]
        parts: list[Any] = []
        # [maintainer]
        maintainer = PoolMaintainer(
            engine, keepalive=60, recycle=1800, jitter=0.2, min_size=5, interval=5
        )
        await (
            maintainer.start()
        )  # a task on the running loop; maintainer.start_sync() for an Engine
        maintainer.detach()  # stops it (idempotent)
        # [/maintainer]
        maintainer = PoolMaintainer(engine, keepalive=60, recycle=1800, jitter=0.2, min_size=5)
        await maintainer.start()
        # [liveness]
        liveness = ping_idle_connections(engine, after=30, timeout=2)
        # [/liveness]
        # [autosizer]
        sizer = PoolAutosizer(engine, monitor=instr.pool, min_size=2, max_size=40, reserve=10)
        await sizer.start()  # sizer.start_sync() for an Engine
        # [/autosizer]
        parts.extend([maintainer, liveness, sizer])
        app.state.engine, app.state.instr = engine, instr
        try:
            yield
        finally:
            for part in parts:
                part.detach()
            instr.detach()
            await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    # [healthz]
    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        engine, instr = request.app.state.engine, request.app.state.instr
        report = await health_check(engine, timeout=1.0, monitor=instr.pool)
        return JSONResponse(report.to_dict(), status_code=200 if report.ok else 503)

    # [/healthz]

    @app.get("/one")
    async def one(request: Request) -> dict[str, int]:
        async with request.app.state.engine.connect() as conn:
            return {"value": int((await conn.execute(text("SELECT 1"))).scalar_one())}

    return app


app = create_app(os.environ.get("DATABASE_URL", "sqlite+aiosqlite:///example_pool.sqlite"))
