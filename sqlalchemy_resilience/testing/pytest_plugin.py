"""The package's pytest plugin: query-budget fixtures. Opt-in, never loaded by itself.

Turn it on in a ``conftest.py``::

    pytest_plugins = ["sqlalchemy_resilience.testing.pytest_plugin"]

or for one run with ``pytest -p sqlalchemy_resilience.testing.pytest_plugin``.
Only fixtures are defined here; nothing is imported from SQLAlchemy until a
fixture is used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

__all__ = ["assert_max_queries", "count_queries"]


@pytest.fixture
def assert_max_queries() -> Iterator[Callable[..., Any]]:
    """:func:`sqlalchemy_resilience.testing.assert_max_queries`, without the import.

    Every budget opened through the fixture is closed at teardown, even one
    entered by hand and never exited.

    Example::

        def test_user_page(session, assert_max_queries):
            with assert_max_queries(session, 2, max_repeats=1):
                render_user_page(session, user_id=1)
    """
    from sqlalchemy_resilience.testing.budget import assert_max_queries as budget

    opened: list[Any] = []

    def open_budget(*args: Any, **kwargs: Any) -> Any:
        manager = budget(*args, **kwargs)
        opened.append(manager)
        return manager

    yield open_budget
    for manager in opened:
        # A generator context manager left open: close() detaches the listener.
        manager.gen.close()


@pytest.fixture
def count_queries() -> Iterator[Callable[..., Any]]:
    """:func:`sqlalchemy_resilience.testing.count_queries`, without the import; stopped at teardown.

    Example::

        def test_counts(engine, count_queries):
            with count_queries(engine) as counter:
                load_dashboard(engine)
            assert len(counter) <= 5, counter.report()
    """
    from sqlalchemy_resilience.testing.budget import count_queries as counter_of

    opened: list[Any] = []

    def open_counter(*args: Any, **kwargs: Any) -> Any:
        counter = counter_of(*args, **kwargs)
        opened.append(counter)
        return counter

    yield open_counter
    for counter in opened:
        counter.stop()
