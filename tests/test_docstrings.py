"""Every public name has a docstring with an example (DESIGN: docstrings on every public name)."""

from __future__ import annotations

import importlib
import inspect

import pytest

MODULES = [
    "sqlalchemy_resilience",
    "sqlalchemy_resilience.database",
    "sqlalchemy_resilience.deploy",
    "sqlalchemy_resilience.migrations",
    "sqlalchemy_resilience.testing",
    "sqlalchemy_resilience.pool",
    "sqlalchemy_resilience.retry",
    "sqlalchemy_resilience.saga",
    "sqlalchemy_resilience.transactions",
    "sqlalchemy_resilience.pagination",
    "sqlalchemy_resilience.batch",
    "sqlalchemy_resilience.observe",
    "sqlalchemy_resilience.instrumentation",
]


def _public() -> list[tuple[str, object]]:
    found: dict[str, object] = {}
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # an optional extra (alembic) not installed
            pytest.skip(f"{name}: {exc}")
        for attr in getattr(module, "__all__", ()):
            obj = getattr(module, attr)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                found[f"{name}.{attr}"] = obj
    return sorted(found.items())


def test_every_public_class_and_function_has_an_example() -> None:
    missing = [
        name
        for name, obj in _public()
        if not (doc := inspect.getdoc(obj) or "") or ("Example" not in doc and ">>>" not in doc)
    ]
    assert missing == []
