"""The FastAPI service example (examples/fastapi_app.py), driven over HTTP on a real database.

Runs on a SQLite file and on the suite's PostgreSQL: products, idempotent
orders, translated errors by language, keyset pages, health, and a scrape of
``/metrics`` through the OpenTelemetry Prometheus exporter.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("opentelemetry.exporter.prometheus")

from fastapi.testclient import TestClient

from examples.fastapi_app import create_app

KEY = "example-key-0123456789abcdef"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    if request.param == "sqlite":
        url: Any = f"sqlite+aiosqlite:///{tmp_path / 'shop.sqlite'}"
    else:
        server = request.getfixturevalue("pg_server")
        database = request.getfixturevalue("pg_database")
        server.execute("DROP TABLE IF EXISTS shop_orders, shop_products", database=database)
        server.execute("DROP TABLE IF EXISTS sqlalchemy_resilience_idempotency", database=database)
        url = server.app_url(database, driver="asyncpg").render_as_string(hide_password=False)
    with TestClient(create_app(url, cursor_secret=KEY)) as test_client:
        yield test_client


def test_products_orders_and_idempotency(client: TestClient) -> None:
    assert client.post("/products", json={"name": "tea", "stock": 3}).status_code == 201
    first = client.post(
        "/orders", json={"product": "tea", "quantity": 2}, headers={"Idempotency-Key": "o-1"}
    )
    assert first.status_code == 201 and first.json()["quantity"] == 2
    # The client retried (a timeout on its side): applied once, not twice.
    again = client.post(
        "/orders", json={"product": "tea", "quantity": 2}, headers={"Idempotency-Key": "o-1"}
    )
    assert again.status_code == 200 and again.json() == {"status": "already placed"}
    products = client.get("/products").json()["items"]
    assert products == [{"id": products[0]["id"], "name": "tea", "stock": 1}]
    out = client.post("/orders", json={"product": "tea", "quantity": 5})
    assert out.status_code == 409 and out.json()["error"] == "out of stock"
    assert client.post("/orders", json={"product": "coffee", "quantity": 1}).status_code == 404


def test_errors_speak_the_clients_language(client: TestClient) -> None:
    assert client.post("/products", json={"name": "tea", "stock": 1}).status_code == 201
    en = client.post("/products", json={"name": "tea", "stock": 1})
    ja = client.post(
        "/products", json={"name": "tea", "stock": 1}, headers={"Accept-Language": "ja,en;q=0.5"}
    )
    assert en.status_code == ja.status_code == 409
    assert en.json()["error"] == "This item already exists."
    assert ja.json()["error"] == "このデータは既に登録されています。"
    assert "shop_products" not in en.text and "INSERT" not in en.text  # no schema, no SQL
    bad = client.get("/products", params={"after": "forged-cursor"})
    assert bad.status_code == 400 and bad.json()["error_id"]


def test_pages_health_and_metrics(client: TestClient) -> None:
    for i in range(25):
        assert client.post("/products", json={"name": f"p{i:02d}", "stock": i}).status_code == 201
    names: list[str] = []
    cursor = None
    while True:
        params = {"page_size": 10, **({"after": cursor} if cursor else {})}
        body = client.get("/products", params=params).json()
        names += [p["name"] for p in body["items"]]
        cursor = body["next_cursor"]
        if not cursor:
            break
    assert names == [f"p{i:02d}" for i in range(25)]
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] in ("healthy", "degraded")
    scrape = client.get("/metrics")
    assert scrape.status_code == 200
    text = scrape.text
    # The OpenTelemetry database semantic conventions, in Prometheus' naming.
    assert "db_client_operation_duration_seconds_bucket" in text
    assert "db_client_connection_count" in text
    assert 'db_client_connection_count{db_client_connection_pool_name="shop"' in text
    assert "db_client_connection_wait_time_seconds_bucket" in text


def test_without_a_cursor_key_the_service_does_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No key for the signed cursors: start-up fails with the reason, not a 500 later."""
    monkeypatch.delenv("SQLALCHEMY_RESILIENCE_CURSOR_SECRET", raising=False)
    app = create_app(f"sqlite+aiosqlite:///{tmp_path / 'shop.sqlite'}")
    with pytest.raises(ValueError, match="SQLALCHEMY_RESILIENCE_CURSOR_SECRET"), TestClient(app):
        pass
    assert not (tmp_path / "shop.sqlite").exists()  # nothing was started


def test_the_default_database_is_announced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without DATABASE_URL the service says, at start, that it runs on a local SQLite file."""
    from examples.fastapi_app import DEFAULT_URL

    monkeypatch.chdir(tmp_path)
    with (
        caplog.at_level("WARNING", logger="examples.fastapi_app"),
        TestClient(create_app(DEFAULT_URL, cursor_secret=KEY)) as client,
    ):
        assert client.get("/healthz").status_code == 200
    assert any("DATABASE_URL is not set" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "example_shop.sqlite").exists()
