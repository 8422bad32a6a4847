"""The sync Flask example (examples/flask_app.py): the app's own engine, instrumented, on a real database."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("flask")

from flask import Flask
from flask.testing import FlaskClient

from examples.flask_app import create_app


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Flask]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'notes.sqlite'}"
    else:
        server = request.getfixturevalue("pg_server")
        database = request.getfixturevalue("pg_database")
        server.execute("DROP TABLE IF EXISTS flask_notes", database=database)
        url = server.app_url(database, driver="psycopg").render_as_string(hide_password=False)
    flask_app = create_app(url)
    try:
        yield flask_app
    finally:
        db = flask_app.extensions["db"]
        db.close()
        db.engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def test_the_existing_code_gets_typed_errors(client: FlaskClient) -> None:
    assert client.post("/notes", json={"title": "a"}).status_code == 201
    dup = client.post("/notes", json={"title": "a"})
    assert dup.status_code == 409
    assert dup.get_json()["error"] == "This item already exists."
    ja = client.post("/notes", json={"title": "a"}, headers={"Accept-Language": "ja"})
    assert ja.get_json()["error"] == "このデータは既に登録されています。"
    assert "flask_notes" not in dup.get_data(as_text=True)


def test_units_of_work_health_and_stats(client: FlaskClient) -> None:
    assert client.post("/notes", json={"title": "a"}).status_code == 201
    note_id = client.get("/notes").get_json()[0]["id"]
    renamed = client.post(f"/notes/{note_id}/rename", json={"title": "b"})
    assert renamed.get_json() == {"id": note_id, "title": "b"}
    assert client.post("/notes/999/rename", json={"title": "c"}).status_code == 404
    assert [n["title"] for n in client.get("/notes").get_json()] == ["b"]
    health = client.get("/health")
    assert health.status_code == 200 and health.get_json()["status"] == "healthy"
    stats = client.get("/stats").get_json()
    assert stats["database"] == "notes" and stats["statements"]


def test_the_engine_is_left_as_the_application_made_it(app: Flask) -> None:
    from sqlalchemy_resilience.instrumentation import instrumentation_of

    engine = app.extensions["db"].engine
    assert engine.pool.size() == 5
    # The application's own instrument() call, which the facade reused.
    instr = instrumentation_of(engine)
    assert instr is not None and instr.slow_query_threshold == 0.5
