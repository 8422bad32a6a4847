"""One error tree: every ResilienceError lives in errors/ and is drawn, documented and exported."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import sqlalchemy_resilience as sr
from sqlalchemy_resilience import errors
from sqlalchemy_resilience.errors import hierarchy

DOCS = Path(__file__).resolve().parents[2] / "docs" / "errors.md"


def _every_resilience_error() -> set[type]:
    for module in pkgutil.walk_packages(sr.__path__, "sqlalchemy_resilience."):
        if ".cli" in module.name or module.name.endswith("pytest_plugin"):
            continue
        importlib.import_module(module.name)
    found: set[type] = set()
    stack: list[type] = [sr.ResilienceError]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            if sub not in found:
                found.add(sub)
                stack.append(sub)
    # combined_class() makes subclasses on the fly that share their name and module.
    return {c for c in found if getattr(c, "_combined_with", None) is None}


def test_every_resilience_error_lives_in_errors_and_is_in_the_tree() -> None:
    """Defined under errors/, drawn in the hierarchy docstring and docs/errors.md, exported."""
    doc_tree = DOCS.read_text()
    for cls in _every_resilience_error() | {sr.ResilienceError}:
        name = cls.__name__
        assert cls.__module__.startswith("sqlalchemy_resilience.errors."), cls
        assert f" {name} " in (hierarchy.__doc__ or ""), f"{name} not drawn in the tree"
        assert f" {name} " in doc_tree, f"{name} not in docs/errors.md"
        assert getattr(errors, name) is cls and name in errors.__all__
        assert getattr(sr, name) is cls and name in sr.__all__


def test_saga_compensation_failed_is_both_a_group_and_a_resilience_error() -> None:
    """except ResilienceError and except* both see it; it keeps its facts through pickle."""
    import pickle

    err = sr.SagaCompensationFailed("s1", "charge", [ValueError("card")], {"reserve": "timeout"})
    assert isinstance(err, sr.ResilienceError) and isinstance(err, ExceptionGroup)
    assert err.retryable is False and err.user_message("en")
    again = pickle.loads(pickle.dumps(err))
    assert (again.saga_id, again.failed_step, again.compensation_failures, again.error_id) == (
        "s1",
        "charge",
        {"reserve": "timeout"},
        err.error_id,
    )
    seen = []
    try:
        raise err
    except* ValueError as group:
        seen.extend(group.exceptions)
    assert [str(e) for e in seen] == ["card"]
