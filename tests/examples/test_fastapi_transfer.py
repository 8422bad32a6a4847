"""examples/fastapi_transfer.py (included by docs/retry.md), driven over HTTP on SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from examples.fastapi_transfer import create_app


def test_the_handlers_of_the_retry_page(tmp_path: Path) -> None:
    with TestClient(create_app(f"sqlite+aiosqlite:///{tmp_path / 't.sqlite'}")) as client:
        move = {"src": 1, "dst": 2, "amount": 10}
        assert client.post("/transfer/naive", json=move).json() == {"status": "ok"}
        assert client.post("/transfer", json=move).json() == {"status": "ok"}
        assert client.get("/accounts/1").json() == {"balance": 80}
        assert client.get("/accounts/2").json() == {"balance": 120}
        assert client.post("/accounts/1/owner", params={"owner": "cy"}).json() == {"owner": "cy"}
        assert client.post("/accounts/9/owner", params={"owner": "x"}).status_code == 404
