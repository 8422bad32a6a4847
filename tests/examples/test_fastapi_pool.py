"""examples/fastapi_pool.py (included by docs/pool.md), driven over HTTP on SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from examples.fastapi_pool import create_app


def test_the_pool_page_set_up(tmp_path: Path) -> None:
    with TestClient(create_app(f"sqlite+aiosqlite:///{tmp_path / 'p.sqlite'}")) as client:
        assert client.get("/one").json() == {"value": 1}
        health = client.get("/healthz")
        assert health.status_code == 200, health.json()
        report = health.json()
        assert report["status"] in ("healthy", "degraded")
        assert report["pool"]["connections_created"] >= 5  # warm_up opened and verified them
        assert report["pool"]["checkouts"] >= 6
