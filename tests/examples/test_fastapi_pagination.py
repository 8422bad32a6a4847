"""The FastAPI pagination recipe (examples/fastapi_pagination.py), driven over HTTP on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient

from examples.fastapi_pagination import create_app

KEY = "example-key-0123456789abcdef"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """The app with 42 people, on a SQLite file (aiosqlite) or the module's PostgreSQL (asyncpg)."""
    if request.param == "sqlite":
        url: Any = f"sqlite+aiosqlite:///{tmp_path / 'example.sqlite'}"
    else:
        server = request.getfixturevalue("pg_server")
        url = server.app_url(request.getfixturevalue("pg_database"), driver="asyncpg")
        server.execute(
            "DROP TABLE IF EXISTS example_people", database=request.getfixturevalue("pg_database")
        )
    with TestClient(create_app(url, secret=KEY, seed=42)) as test_client:
        yield test_client


def test_follows_next_links_through_every_page(client: TestClient) -> None:
    """The Link header's rel=next walks 42 people in pages of 10, each once, in name order."""
    names: list[str] = []
    url: str | None = "/people?page_size=10"
    pages = 0
    while url:
        response = client.get(url)
        assert response.status_code == 200
        body = response.json()
        names += [p["name"] for p in body["items"]]
        assert set(body) == {
            "items",
            "next_cursor",
            "previous_cursor",
            "has_next",
            "has_previous",
            "page_size",
        }
        links = response.headers.get("link", "")
        url = next(
            (part.split(">")[0].lstrip("<") for part in links.split(", ") if 'rel="next"' in part),
            None,
        )
        assert (url is not None) == body["has_next"]
        pages += 1
    assert pages == 5 and names == sorted(names) and len(set(names)) == 42


def test_sort_allow_list_and_previous_pages(client: TestClient) -> None:
    """sort=-joined pages back and forth consistently; an unknown sort is a 422, never SQL."""
    first = client.get("/people", params={"page_size": 7, "sort": "-joined"}).json()
    second = client.get(
        "/people", params={"page_size": 7, "sort": "-joined", "after": first["next_cursor"]}
    ).json()
    back = client.get(
        "/people", params={"page_size": 7, "sort": "-joined", "before": second["previous_cursor"]}
    ).json()
    assert back["items"] == first["items"]
    joined = [p["joined"] for p in first["items"] + second["items"]]
    assert joined == sorted(joined, reverse=True)
    assert (
        client.get("/people", params={"sort": "name; DROP TABLE example_people"}).status_code == 422
    )
    assert client.get("/people", params={"page_size": 1000}).status_code == 422


def test_bad_cursors_are_400_in_the_clients_language(client: TestClient) -> None:
    """A forged, truncated or other-sort cursor: 400 with a translated message, no SQL text, no 500."""
    first = client.get("/people", params={"page_size": 5}).json()
    cursor = first["next_cursor"]
    for params in (
        {"after": cursor[:-4]},
        {"after": "' OR 1=1 --"},
        {"after": cursor, "sort": "-joined"},
        {"before": cursor},
    ):
        response = client.get("/people", params=params, headers={"Accept-Language": "ja"})
        assert response.status_code == 400, params
        body = response.json()
        assert body["error"] == "このページのリンクは無効です。最初のページからやり直してください。"
        assert "SELECT" not in response.text and "example_people" not in response.text


def test_run_as_its_docstring_says_there_are_people_to_page_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The module's own ``app`` seeds 42 people into an empty table (once: a restart keeps
    them), and refuses to start without a cursor key."""
    import importlib

    import examples.fastapi_pagination as module

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("SQLALCHEMY_RESILIENCE_CURSOR_SECRET", KEY)
    fresh = importlib.reload(module)
    for _ in range(2):  # a restart finds them and adds none
        with TestClient(fresh.app) as client:
            people = client.get("/people", params={"page_size": 100}).json()["items"]
        assert len(people) == 42
    monkeypatch.delenv("SQLALCHEMY_RESILIENCE_CURSOR_SECRET")
    with (
        pytest.raises(ValueError, match="SQLALCHEMY_RESILIENCE_CURSOR_SECRET"),
        TestClient(fresh.app),
    ):
        pass
