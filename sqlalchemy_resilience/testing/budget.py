"""A query budget for tests: count what an engine runs, fail with the list when it is too much.

Django's ``assertNumQueries`` and nplusone for SQLAlchemy: a block may run at
most ``n`` statements, and one statement repeated from one call site (the
N+1 shape: a lazy load in a loop) can be refused on its own. The failure lists
every statement, normalized like ``pg_stat_statements`` (literals folded, no
parameter values), with the application line that ran it, repeats grouped.

Counting uses the engine's ``before_cursor_execute`` event, so it sees what
the driver is asked to run: ORM lazy loads, flushes, ``executemany`` (one
statement, however many rows) and the statements of every task and thread
using the engine during the block. Transaction control (``SAVEPOINT``,
``RELEASE``, ``ROLLBACK TO``) is left out unless asked for; ``BEGIN``, ``COMMIT``
and ``ROLLBACK`` are driver calls, not statements, and never counted.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
)
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_resilience.core.callsites import CallSites
from sqlalchemy_resilience.observe import normalize_statement

__all__ = [
    "QueryBudgetExceeded",
    "QueryCounter",
    "RecordedStatement",
    "assert_max_queries",
    "count_queries",
]

_TRANSACTION_CONTROL = re.compile(r"^\s*(SAVEPOINT|RELEASE|ROLLBACK\s+TO)\b", re.IGNORECASE)

Countable = (
    Engine
    | AsyncEngine
    | Connection
    | AsyncConnection
    | Session
    | AsyncSession
    | sessionmaker[Any]
    | async_sessionmaker[Any]
)


class QueryBudgetExceeded(AssertionError):
    """A block ran more statements than its budget, or repeated one too often.

    An ``AssertionError``, so pytest reports it as a test failure with the list.

    Attributes:
        counter: the :class:`QueryCounter` with every statement the block ran.

    Example::

        try:
            with assert_max_queries(engine, 2):
                ...
        except QueryBudgetExceeded as exc:
            print(len(exc.counter))
    """

    def __init__(self, message: str, counter: QueryCounter) -> None:
        super().__init__(message)
        self.counter = counter


@dataclass(frozen=True)
class RecordedStatement:
    """One statement the engine ran: normalized text (no values), call site, and whether batched.

    Example::

        RecordedStatement("SELECT users.id FROM users WHERE users.id = ?", "app.py:12 in load", False)
    """

    statement: str
    call_site: str | None
    executemany: bool


def _engine_of(target: object) -> Engine:
    """The sync engine whose statements count for ``target``."""
    if isinstance(target, AsyncEngine):
        return target.sync_engine
    if isinstance(target, Engine):
        return target
    if isinstance(target, (Connection, AsyncConnection)):
        return _engine_of(target.engine)
    if isinstance(target, AsyncSession):
        return _engine_of(target.sync_session)
    if isinstance(target, Session):
        bind = target.get_bind()
        return _engine_of(bind)
    if isinstance(target, (sessionmaker, async_sessionmaker)):
        factory_bind: object = target.kw.get("bind")
        if factory_bind is None:
            raise ValueError("the sessionmaker has no bind= engine to count statements on")
        return _engine_of(factory_bind)
    raise TypeError(
        "count statements of an Engine, AsyncEngine, Connection, AsyncConnection, Session, "
        f"AsyncSession or sessionmaker; got {type(target).__name__}"
    )


def _check_count(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


class QueryCounter:
    """Counts the statements one engine runs while it is open; see :func:`count_queries`.

    ``len(counter)`` is the number of statements; ``counter.statements`` the
    list in the order they ran.

    Example::

        with count_queries(engine) as counter:
            session.scalars(select(User)).all()
        assert len(counter) == 1
        print(counter.report())
    """

    def __init__(
        self,
        target: Countable,
        *,
        include_transaction_control: bool = False,
        call_site_skip: tuple[str, ...] = (),
    ) -> None:
        if not isinstance(include_transaction_control, bool):
            raise TypeError(
                f"include_transaction_control must be True or False, "
                f"got {include_transaction_control!r}"
            )
        skip: object = call_site_skip
        if not isinstance(skip, tuple) or not all(isinstance(p, str) and p for p in skip):
            raise TypeError(
                f"call_site_skip must be a tuple of module name prefixes, got {call_site_skip!r}"
            )
        self.engine = _engine_of(target)
        self.statements: list[RecordedStatement] = []
        self._include_control = include_transaction_control
        self._sites = CallSites(call_site_skip)
        self._lock = threading.Lock()
        self._attached = False

    def _on_execute(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        if not self._include_control and _TRANSACTION_CONTROL.match(statement):
            return
        recorded = RecordedStatement(
            normalize_statement(statement), self._sites.here(), bool(executemany)
        )
        with self._lock:
            self.statements.append(recorded)

    def start(self) -> QueryCounter:
        """Begin counting (the context manager calls it)."""
        if not self._attached:
            event.listen(self.engine, "before_cursor_execute", self._on_execute)
            self._attached = True
        return self

    def stop(self) -> None:
        """Stop counting (idempotent); the statements so far stay readable."""
        if self._attached:
            event.remove(self.engine, "before_cursor_execute", self._on_execute)
            self._attached = False

    def __len__(self) -> int:
        return len(self.statements)

    def __enter__(self) -> QueryCounter:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def repeated(self, at_least: int = 2) -> list[tuple[RecordedStatement, int]]:
        """Statements run ``at_least`` times from one call site, most repeated first.

        Example::

            for recorded, times in counter.repeated(5):
                print(times, recorded.statement, recorded.call_site)
        """
        _check_count("at_least", at_least, minimum=1)
        counts = Counter((s.statement, s.call_site) for s in self.statements)
        first: dict[tuple[str, str | None], RecordedStatement] = {}
        for s in self.statements:
            first.setdefault((s.statement, s.call_site), s)
        found = [(first[key], n) for key, n in counts.items() if n >= at_least]
        found.sort(key=lambda item: -item[1])
        return found

    def report(self) -> str:
        """The statements as a numbered list; runs of one statement from one site folded.

        Example::

            print(counter.report())
            #   1. SELECT users.id, users.name FROM users  (tests/test_app.py:20 in test_list)
            #   2-11. 10x SELECT posts.id ... WHERE ? = posts.user_id  (app/views.py:41 in user_posts)
        """
        lines: list[str] = []
        index = 0
        statements = self.statements
        while index < len(statements):
            current = statements[index]
            end = index + 1
            while end < len(statements) and statements[end] == current:
                end += 1
            run = end - index
            where = f"  ({current.call_site})" if current.call_site else ""
            many = " [executemany]" if current.executemany else ""
            if run == 1:
                lines.append(f"  {index + 1}. {current.statement}{many}{where}")
            else:
                lines.append(f"  {index + 1}-{end}. {run}x {current.statement}{many}{where}")
            index = end
        return "\n".join(lines)


def count_queries(
    target: Countable,
    *,
    include_transaction_control: bool = False,
    call_site_skip: tuple[str, ...] = (),
) -> QueryCounter:
    """Count the statements ``target``'s engine runs inside a ``with`` block, without a limit.

    Args:
        target: an ``Engine``/``AsyncEngine``, a connection, a session or a
            sessionmaker with ``bind=``; the statements of its engine count.
        include_transaction_control: also count ``SAVEPOINT``, ``RELEASE``
            and ``ROLLBACK TO``.
        call_site_skip: module prefixes (your own data layer) the call-site
            lookup skips like SQLAlchemy's.

    Example::

        with count_queries(session) as counter:
            session.get(User, 1)
        assert [s.statement for s in counter.statements] == [
            "SELECT users.id, users.name FROM users WHERE users.id = ?"
        ]
    """
    return QueryCounter(
        target,
        include_transaction_control=include_transaction_control,
        call_site_skip=call_site_skip,
    )


@contextmanager
def assert_max_queries(
    target: Countable,
    n: int,
    *,
    max_repeats: int | None = None,
    include_transaction_control: bool = False,
    call_site_skip: tuple[str, ...] = (),
) -> Iterator[QueryCounter]:
    """Fail when the block runs more than ``n`` statements (or one too often from one line).

    On leaving the block, raises :class:`QueryBudgetExceeded` (an
    ``AssertionError``) listing every statement, normalized, with the
    application line that ran it and repeats folded, when

    * more than ``n`` statements ran, or
    * with ``max_repeats``, one statement ran more than ``max_repeats``
      times from one call site: the N+1 shape, caught even inside the budget.

    An exception raised in the block propagates as it is; the budget is not checked then.

    Args:
        target: an ``Engine``/``AsyncEngine``, a connection, a session or a
            sessionmaker with ``bind=``.
        n: the most statements the block may run (0: none at all).
        max_repeats: the most times one statement may run from one call
            site; None (default) leaves repeats to the total budget.
        include_transaction_control: also count ``SAVEPOINT``, ``RELEASE``
            and ``ROLLBACK TO``.
        call_site_skip: module prefixes (your own data layer) the call-site
            lookup skips, so the line reported is the caller of that layer.

    Example::

        def test_list_users_is_two_queries(session):
            with assert_max_queries(session, 2, max_repeats=1):
                users = session.scalars(select(User).options(selectinload(User.posts))).all()
                [len(u.posts) for u in users]
    """
    _check_count("n", n, minimum=0)
    if max_repeats is not None:
        _check_count("max_repeats", max_repeats, minimum=1)
    counter = QueryCounter(
        target,
        include_transaction_control=include_transaction_control,
        call_site_skip=call_site_skip,
    )
    with counter:
        yield counter
    problems: list[str] = []
    if len(counter) > n:
        problems.append(f"{len(counter)} statements ran, the budget is {n}")
    if max_repeats is not None:
        for recorded, times in counter.repeated(max_repeats + 1):
            where = recorded.call_site or "an unknown call site"
            problems.append(
                f"{times}x the same statement from {where} (at most {max_repeats}; "
                f"an N+1 pattern? load it with the first query): {recorded.statement}"
            )
    if problems:
        raise QueryBudgetExceeded(
            "\n".join(problems) + "\nstatements:\n" + counter.report(), counter
        )
