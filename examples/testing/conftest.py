"""docs/testing.md's fixtures, as a project's top-level conftest.py would hold them.

Run the example suite::

    pytest examples/testing                  # SQLite only
    EXAMPLE_POSTGRES=1 pytest examples/testing   # also starts a throwaway PostgreSQL
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from shop import Account, Author, Base, Book
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import sessionmaker

# [plugin]
pytest_plugins = ["sqlalchemy_resilience.testing.pytest_plugin"]
# [/plugin]

# [test-mode]
from sqlalchemy_resilience.testing import in_test_mode  # noqa: E402


@pytest.fixture(autouse=True)
def _resilience_test_mode() -> Iterator[None]:
    with in_test_mode(attempts=2):
        yield


# [/test-mode]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    Base.metadata.create_all(engine)
    with sessionmaker(engine).begin() as session:
        session.add_all([Account(id=1, balance=100), Account(id=2, balance=0)])
        for a in range(3):
            session.add(Author(id=a, name=f"author {a}", books=[Book(title=f"book {a}")]))
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[object]:
    with sessionmaker(engine)() as session:
        yield session


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    if not os.environ.get("EXAMPLE_POSTGRES"):
        pytest.skip("set EXAMPLE_POSTGRES=1 to start a throwaway PostgreSQL")
    # [embedded]
    from sqlalchemy_resilience.testing.embedded import EmbeddedPostgres

    with EmbeddedPostgres() as pg:  # initdb + pg_ctl start, free port
        url = pg.url(driver="psycopg")  # postgresql+psycopg://postgres:…@127.0.0.1:PORT/postgres
        yield url.render_as_string(hide_password=False)
    # stopped and removed
    # [/embedded]
