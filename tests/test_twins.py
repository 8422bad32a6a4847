"""The blocking twins: one naming convention, the same parameters, no drift.

The convention: the async function or method has the plain name and its
blocking twin the same name with ``_sync``; a class whose methods all block
is ``Sync`` + the async class's name and has the same method names. This
test walks every public module and checks each pair, so a parameter added to
one side and not the other fails here.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

import sqlalchemy_resilience as sr
from sqlalchemy_resilience.retry import ResilientAsyncSession

# Public subpackages whose __init__ is an API (the command line is not one).
_PRIVATE = {"cli", "alembic", "_util", "core"}


def _public_modules() -> Iterator[ModuleType]:
    yield sr
    for info in pkgutil.iter_modules(sr.__path__):
        if info.ispkg and info.name not in _PRIVATE:
            yield importlib.import_module(f"sqlalchemy_resilience.{info.name}")


def _shape(fn: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    """Names, kinds and defaults: what a caller can pass (the types differ by design)."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def _public(namespace: dict[str, Any]) -> dict[str, Any]:
    return {n: v for n, v in namespace.items() if not n.startswith("_")}


def test_every_async_function_has_a_twin_with_the_same_parameters() -> None:
    checked = 0
    for module in _public_modules():
        for name in module.__all__:
            fn = getattr(module, name)
            if not inspect.iscoroutinefunction(fn):
                continue
            twin = getattr(module, f"{name}_sync", None)
            assert twin is not None, f"{module.__name__}.{name} has no {name}_sync"
            assert _shape(fn) == _shape(twin), f"{module.__name__}.{name} and {name}_sync differ"
            checked += 1
    assert checked >= 15  # run_transaction, bulk_insert, paginate, health_check, ...


def _classes() -> Iterator[tuple[str, type]]:
    seen: set[type] = set()
    for module in _public_modules():
        for name in module.__all__:
            cls = getattr(module, name)
            if inspect.isclass(cls) and cls not in seen and not issubclass(cls, BaseException):
                seen.add(cls)
                yield f"{module.__name__}.{name}", cls


def test_every_async_method_has_a_twin_with_the_same_parameters() -> None:
    """Methods: ``m`` / ``m_sync`` on one class, or the same name on the ``Sync`` class."""
    checked = 0
    classes = dict(_classes())
    for where, cls in classes.items():
        if cls is ResilientAsyncSession:
            continue  # its twin is SQLAlchemy's own: checked below
        sync_class = classes.get(where.rsplit(".", 1)[0] + ".Sync" + cls.__name__)
        for name, method in _public(vars(cls)).items():
            if not inspect.iscoroutinefunction(method):
                continue
            twin = (
                getattr(sync_class, name, None)
                if sync_class is not None
                else vars(cls).get(f"{name}_sync")
            )
            assert twin is not None, f"{where}.{name} has no blocking twin"
            assert not inspect.iscoroutinefunction(twin), f"the twin of {where}.{name} is async"
            assert _shape(method) == _shape(twin), f"{where}.{name} and its twin differ"
            checked += 1
        if sync_class is not None:
            missing = set(_public(vars(cls))) - set(dir(sync_class))
            assert not missing, f"{where} has no blocking twin for {sorted(missing)}"
    assert checked >= 20


def test_no_a_prefixed_twins_and_no_run_sync() -> None:
    """``atick``/``aprobe``-style names are gone; ``run_sync`` keeps SQLAlchemy's meaning."""
    for where, cls in _classes():
        names = set(_public(vars(cls)))
        for name in names:
            assert not (name.startswith("a") and name[1:] in names), f"{where}.{name}"
        assert "run_sync" not in names or issubclass(cls, AsyncSession), where


def test_the_resilient_session_keeps_async_sessions_signatures() -> None:
    """ResilientAsyncSession overrides AsyncSession's methods without changing what they take."""
    overridden = [
        n for n, v in _public(vars(ResilientAsyncSession)).items() if inspect.iscoroutinefunction(v)
    ]
    assert overridden
    for name in overridden:
        ours = inspect.signature(getattr(ResilientAsyncSession, name)).parameters
        theirs = inspect.signature(getattr(AsyncSession, name)).parameters
        assert list(ours) == list(theirs), name
