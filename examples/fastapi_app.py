"""A FastAPI service on ``Database``: the way a new application would use the package.

Run it::

    pip install "sqlalchemy-resilience[asyncpg]" fastapi uvicorn opentelemetry-sdk \\
        opentelemetry-exporter-prometheus
    DATABASE_URL=postgresql+asyncpg://app:pw@localhost/app \\
    SQLALCHEMY_RESILIENCE_CURSOR_SECRET=$(python -c "import secrets; print(secrets.token_urlsafe(32))") \\
        uvicorn examples.fastapi_app:app

    curl -X POST localhost:8000/products -H 'content-type: application/json' \\
        -d '{"name": "tea", "stock": 3}'
    curl -X POST localhost:8000/orders -H 'Idempotency-Key: 8f1c' \\
        -H 'content-type: application/json' -d '{"product": "tea", "quantity": 2}'
    curl localhost:8000/products?page_size=10
    curl -H 'Accept-Language: ja' -X POST localhost:8000/products -d '{"name": "tea", "stock": 1}' \\
        -H 'content-type: application/json'          # 409, in Japanese
    curl localhost:8000/readyz; curl localhost:8000/metrics

What it shows:

* the lifespan owns one :class:`~sqlalchemy_resilience.Database` (``from_env``):
  start-up fails fast when the database is unreachable, shutdown closes it all;
* a dependency gives a handler a session in a transaction committed after the
  handler returns; a unit of work that must survive a failover or a deadlock
  runs under ``db.run_transaction`` with the client's ``Idempotency-Key``, so a
  retried request is applied once;
* ``/healthz`` (the process is up; no database round trip) and ``/readyz``
  (``db.health()``: 200 healthy or degraded, 503 unhealthy, the report as JSON);
* typed errors mapped to HTTP statuses, with ``user_message`` in the client's
  ``Accept-Language`` and the error id to quote to support -- never SQL or values;
* a keyset-paginated list with signed cursors;
* ``/metrics``: the package's OpenTelemetry metrics (``db.client.*`` per the
  semantic conventions) through the OpenTelemetry Prometheus exporter.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import CheckConstraint, ForeignKey, String, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sqlalchemy_resilience import (
    AlreadyApplied,
    CheckViolation,
    CircuitOpenError,
    ConstraintViolation,
    Database,
    DatabaseUnavailable,
    InvalidCursor,
    PoolExhausted,
    QueryTimeout,
    ResilienceError,
)
from sqlalchemy_resilience.database import settings_from_env
from sqlalchemy_resilience.instrumentation import InstrumentOptions
from sqlalchemy_resilience.pagination import Page
from sqlalchemy_resilience.pagination.cursor import resolve_secret
from sqlalchemy_resilience.schema import metadata as package_tables


class Base(DeclarativeBase):
    pass


class Product(Base):
    __tablename__ = "shop_products"
    __table_args__ = (CheckConstraint("stock >= 0", name="shop_products_stock_check"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    stock: Mapped[int]


class Order(Base):
    __tablename__ = "shop_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    product_id: Mapped[int] = mapped_column(ForeignKey("shop_products.id"))
    quantity: Mapped[int]


class NewProduct(BaseModel):
    name: str = Field(min_length=1, max_length=50)
    stock: int = Field(ge=0)


class NewOrder(BaseModel):
    product: str
    quantity: int = Field(ge=1)


LANGUAGES = ("en", "ja")


def language(request: Request) -> str:
    """The first language of ``Accept-Language`` the messages exist in (English by default)."""
    for part in request.headers.get("accept-language", "").split(","):
        tag = part.split(";")[0].strip().lower()[:2]
        if tag in LANGUAGES:
            return tag
    return "en"


def status_of(exc: ResilienceError) -> int:
    """The HTTP status for a translated error: the client's fault, a conflict, or ours."""
    if isinstance(exc, InvalidCursor):
        return 400
    if isinstance(exc, ConstraintViolation):
        return 409
    if isinstance(exc, (CircuitOpenError, DatabaseUnavailable, PoolExhausted)):
        return 503
    if isinstance(exc, QueryTimeout):
        return 504
    return 500


def database(request: Request) -> Database:
    """The app's ``Database`` (a dependency)."""
    db: Database = request.app.state.db
    return db


async def transaction(request: Request) -> AsyncIterator[AsyncSession]:
    """A session in a transaction, committed after the handler returns (rolled back if it raises)."""
    async with database(request).transaction() as session:
        yield session


# Module level: FastAPI resolves the handlers' annotations in this module's namespace.
Db = Annotated[Database, Depends(database)]
Tx = Annotated[AsyncSession, Depends(transaction)]


# The package records metrics through the OpenTelemetry API; this process's
# SDK exports them in Prometheus' format (prometheus_client's default registry).
METER_PROVIDER = MeterProvider(metric_readers=[PrometheusMetricReader()])


#: Where the service runs without DATABASE_URL (it says so at start).
DEFAULT_URL = "sqlite+aiosqlite:///example_shop.sqlite"
_log = logging.getLogger("examples.fastapi_app")


def create_app(url: str | None = None, *, cursor_secret: str | None = None) -> FastAPI:
    """The service on ``url`` (default: ``DATABASE_URL`` and the ``SQLALCHEMY_RESILIENCE_*`` settings)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # /products pages sign their cursors: without a key, fail here, with
        # the reason, rather than answer the first page with a 500.
        resolve_secret(cursor_secret)
        if url == DEFAULT_URL:
            _log.warning(
                "DATABASE_URL is not set: using SQLite in ./example_shop.sqlite "
                "(set DATABASE_URL=postgresql+asyncpg://... for PostgreSQL)"
            )
        # The environment's settings (SQLALCHEMY_RESILIENCE_*), with this
        # process's MeterProvider added to what instrument() attaches.
        settings = {"url_or_engine": url} if url else settings_from_env()
        instrumentation = settings.get("instrumentation", InstrumentOptions())
        settings["instrumentation"] = replace(instrumentation, meter_provider=METER_PROVIDER)
        db = Database(**settings, cursor_secret=cursor_secret, name="shop")
        async with db:
            async with db.engine.begin() as conn:
                # For the example only: a real service runs its migrations
                # (sqlalchemy_resilience.migrations) before it starts.
                await conn.run_sync(Base.metadata.create_all)
                await conn.run_sync(package_tables.create_all)
            app.state.db = db
            yield

    app = FastAPI(lifespan=lifespan)

    @app.exception_handler(ResilienceError)
    async def translated(request: Request, exc: ResilienceError) -> JSONResponse:
        status = status_of(exc)
        headers = {}
        if isinstance(exc, CircuitOpenError):
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        body = {"error": exc.user_message(language(request)), "error_id": exc.error_id}
        return JSONResponse(body, status_code=status, headers=headers)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz(db: Db) -> JSONResponse:
        report = await db.health(timeout=1.0)
        return JSONResponse(report.to_dict(), status_code=200 if report.ok else 503)

    @app.post("/products", status_code=201)
    async def add_product(new: NewProduct, session: Tx) -> dict[str, Any]:
        product = Product(name=new.name, stock=new.stock)
        session.add(product)
        await session.flush()  # a duplicate name fails here: UniqueViolation -> 409
        return {"id": product.id, "name": product.name, "stock": product.stock}

    @app.get("/products")
    async def list_products(
        db: Db,
        after: str | None = None,
        page_size: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> Page[Any]:
        stmt = select(Product.id, Product.name, Product.stock).order_by(Product.name)
        return await db.paginate(stmt, page_size=page_size, after=after)

    @app.post("/orders", status_code=201)
    async def place_order(
        new: NewOrder,
        db: Db,
        idempotency_key: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        async def unit(session: AsyncSession) -> dict[str, Any]:
            product_id = await session.scalar(
                update(Product)
                .where(Product.name == new.product)
                .values(stock=Product.stock - new.quantity)  # CheckViolation if it goes below 0
                .returning(Product.id)
            )
            if product_id is None:
                raise LookupError(new.product)
            order = Order(product_id=product_id, quantity=new.quantity)
            session.add(order)
            await session.flush()
            return {"order": order.id, "product": new.product, "quantity": new.quantity}

        try:
            # Re-run on a deadlock, a failover or a restart; applied once per key.
            result: dict[str, Any] = await db.run_transaction(unit, idempotency_key=idempotency_key)
        except LookupError:
            return JSONResponse({"error": "no such product"}, status_code=404)
        except CheckViolation as exc:
            body = {"error": "out of stock", "error_id": exc.error_id}
            return JSONResponse(body, status_code=409)
        except AlreadyApplied:  # the same Idempotency-Key again: placed before, not twice
            return JSONResponse({"status": "already placed"}, status_code=200)
        return JSONResponse(result, status_code=201)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app


app = create_app(os.environ.get("DATABASE_URL") or DEFAULT_URL)
