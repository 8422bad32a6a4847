"""docs/testing.md's tests: fault injection, query budgets, the plugin's fixtures."""

from __future__ import annotations

from typing import Any

import pytest
from shop import Account, load_dashboard, render_author_list, transfer
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_resilience import run_transaction_sync


def test_transfer_rides_a_serialization_failure(engine: Engine) -> None:
    Session = sessionmaker(engine)
    # [fault]
    from sqlalchemy_resilience.testing import inject_fault

    with inject_fault(engine, "serialization_failure", nth=1, match="UPDATE accounts") as fault:
        run_transaction_sync(Session, transfer)  # attempt 1 fails, attempt 2 commits
    # [/fault]
    assert fault.fired == 1
    with Session() as session:
        assert session.scalars(select(Account.balance).order_by(Account.id)).all() == [90, 10]


# [budget]
from sqlalchemy_resilience.testing import assert_max_queries  # noqa: E402


def test_author_list_is_two_queries(session: Session) -> None:
    with assert_max_queries(session, 2, max_repeats=1):
        render_author_list(session)


# [/budget]


def test_a_lazy_load_in_a_loop_fails_inside_the_budget(session: Session) -> None:
    with (
        pytest.raises(AssertionError, match="3x the same statement") as failure,
        assert_max_queries(session, 10, max_repeats=1),
    ):
        render_author_list(session, eager=False)
    assert "an N+1 pattern?" in str(failure.value)
    assert "shop.py" in str(failure.value)  # the application's line, not SQLAlchemy's


# [fixture]
def test_dashboard(engine: Engine, assert_max_queries: Any) -> None:
    with assert_max_queries(engine, 5):
        load_dashboard(engine)


# [/fixture]


def test_on_a_real_postgresql(postgres_url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.execute(text("SHOW server_version_num")).scalar_one() >= "150000"
    engine.dispose()
