"""In-process query statistics per normalized statement (``Instrumentation.stats``).

Statements are folded the way pg_stat_statements folds them: literals and
bind markers become ``?``, an IN-list of any length becomes ``IN (...)`` and a
multi-row VALUES list keeps one row, so the same query from different call
sites, with different values or list lengths, is one entry.

Durations go into a log-bucketed histogram per entry (buckets 2% wide), so
p50/p95/p99 cost one dict update per call and a few dozen integers of memory,
whatever the number of calls. The number of entries is capped
(``max_statements``, least recently used evicted first), so a workload that
generates a million distinct statements stays within a fixed memory budget.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["QueryStats", "StatementKey", "StatementStats", "normalize_statement"]

SortKey = Literal["total", "mean", "max", "p95", "calls", "errors", "rows"]
_SORT_KEYS: tuple[str, ...] = ("total", "mean", "max", "p95", "calls", "errors", "rows")

# One lexer pass: quoted identifiers and comments are kept as they are, every
# literal and bind marker becomes "?". Order matters: strings before numbers
# (a digit inside a string literal is part of the literal).
_TOKENS = re.compile(
    r"""
      (?P<ident>"(?:[^"]|"")*")                     # "quoted identifier"
    | (?P<comment>/\*.*?\*/|--[^\n]*)               # comments
    | (?P<string>[EeBbXxNn]?'(?:[^'\\]|''|\\.)*')   # 'literal', E'..', X'..'
    | (?P<dollar>\$(?P<tag>[A-Za-z_]\w*)?\$.*?\$(?P=tag)?\$)  # $$dollar$$
    | (?P<bind>\$\d+|%\(\w+\)s|%s|\?\d*|(?<![:\w]):[A-Za-z_]\w*
        |__\[POSTCOMPILE_\w+\])                     # $1 %(x)s %s ? :name
    | (?P<number>(?<![\w.])-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.]))
    """,
    re.VERBOSE | re.DOTALL,
)
# An element is a marker, optionally cast (asyncpg renders "$1::INTEGER").
_IN_LIST = re.compile(
    r"\b(IN)\s*\(\s*\?(?:::[\w ]+(?:\[\])?)?(?:\s*,\s*\?(?:::[\w ]+(?:\[\])?)?)*\s*\)",
    re.IGNORECASE,
)
_REPEATED_ROWS = re.compile(r"(\((?:[^()]|\([^()]*\))*\))(?:\s*,\s*\1)+")
_SPACE = re.compile(r"\s+")
MAX_CALL_SITES = 8
# Executions buffered before they are folded into the entries.
PENDING_LIMIT = 256


def _rows_of(context: Any) -> int:
    """The row count SQLAlchemy read for a statement, or -1 where it read none.

    SQLAlchemy reads ``cursor.rowcount`` only where it needs it (UPDATE,
    DELETE, statements that return no rows, ``preserve_rowcount``) and counts
    RETURNING rows itself, because on some drivers the read costs a round
    trip; the statistics take what it found and never read the cursor.
    """
    rows = getattr(context, "_rowcount", None)
    return rows if isinstance(rows, int) else -1


def normalize_statement(statement: str) -> str:
    """Fold literals, bind markers, IN-lists and repeated VALUES rows of a SQL statement.

    Args:
        statement: the SQL as sent to the driver.

    Example::

        >>> normalize_statement("SELECT * FROM t WHERE id IN ($1, $2, $3) AND name = 'x'")
        'SELECT * FROM t WHERE id IN (...) AND name = ?'
    """

    def fold(match: re.Match[str]) -> str:
        if match.group("ident") is not None:
            return match.group(0)
        comment = match.group("comment")
        if comment is not None:
            # Whitespace is folded next: a "--" comment would swallow the rest.
            return comment if comment.startswith("/*") else f"/* {comment[2:].strip()} */"
        return "?"

    text = _TOKENS.sub(fold, statement)
    text = _SPACE.sub(" ", text).strip()
    text = _IN_LIST.sub(r"\1 (...)", text)
    return _REPEATED_ROWS.sub(r"\1, ...", text)


# Log-bucketed histogram: bucket i holds durations in [B**i, B**(i+1)).
_BASE = 1.02
INV_LOG_BASE = 1.0 / math.log(_BASE)
ZERO_BUCKET = -(2**31)


def percentiles_of(
    buckets: dict[int, int], count: int, lo: float, hi: float, quantiles: tuple[float, ...]
) -> list[float]:
    """Quantiles (0..1) from a bucket histogram, clamped to the observed min/max.

    A bucket is reported by its geometric midpoint, so the relative error is
    at most 1% of the value.
    """
    if count <= 0:
        return [0.0 for _ in quantiles]
    ordered = sorted(buckets.items())
    results: list[float] = []
    for q in quantiles:
        rank = max(1, math.ceil(q * count))
        seen = 0
        value = hi
        for index, n in ordered:
            seen += n
            if seen >= rank:
                value = 0.0 if index == ZERO_BUCKET else _BASE ** (index + 0.5)
                break
        results.append(min(max(value, lo), hi))
    return results


@dataclass(frozen=True, slots=True)
class StatementStats:
    """The figures of one normalized statement (durations in seconds).

    Attributes:
        statement: the normalized statement text.
        operation: ``SELECT``, ``INSERT``, ... (first keyword; DML from SQLAlchemy's own flags).
        collection: the table, where the statement names exactly one.
        calls: executions, failed ones included.
        errors: failed executions by error class name (the translated class).
        rows: rows affected or returned, where SQLAlchemy read a count (UPDATE,
            DELETE, RETURNING, statements without result rows, and any
            statement run with ``preserve_rowcount=True``; the cursor is never
            read for the statistics alone).
        total, mean, min, max, p50, p95, p99: durations of all calls.
        call_sites: sampled call sites and their counts (``stats_call_sites=True`` only).

    Example::

        worst = instr.stats.top(1, by="p99")[0]
        print(worst.statement, worst.calls, worst.p99, worst.errors)
    """

    statement: str
    operation: str
    collection: str | None
    calls: int
    errors: dict[str, int]
    rows: int
    total: float
    mean: float
    min: float
    max: float
    p50: float
    p95: float
    p99: float
    call_sites: dict[str, int] = field(default_factory=dict)

    @property
    def error_count(self) -> int:
        """Failed executions, all classes together."""
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return {
            "statement": self.statement,
            "operation": self.operation,
            "collection": self.collection,
            "calls": self.calls,
            "errors": dict(self.errors),
            "rows": self.rows,
            "total": self.total,
            "mean": self.mean,
            "min": self.min,
            "max": self.max,
            "p50": self.p50,
            "p95": self.p95,
            "p99": self.p99,
            "call_sites": dict(self.call_sites),
        }


class StatementKey:
    """A normalized statement with its operation and table (what an entry is keyed by)."""

    __slots__ = ("collection", "key", "operation")

    def __init__(self, key: str, operation: str, collection: str | None) -> None:
        self.key = key
        self.operation = operation
        self.collection = collection


class _Entry:
    __slots__ = (
        "buckets",
        "call_sites",
        "calls",
        "collection",
        "errors",
        "max",
        "min",
        "operation",
        "rows",
        "statement",
        "total",
    )

    def __init__(self, statement: str, operation: str, collection: str | None) -> None:
        self.statement = statement
        self.operation = operation
        self.collection = collection
        self.calls = 0
        self.errors: dict[str, int] | None = None
        self.rows = 0
        self.total = 0.0
        self.max = 0.0
        self.min = math.inf
        self.buckets: dict[int, int] = {}
        self.call_sites: dict[str, int] | None = None

    def freeze(self) -> StatementStats:
        p50, p95, p99 = percentiles_of(
            self.buckets, self.calls, self.min, self.max, (0.50, 0.95, 0.99)
        )
        return StatementStats(
            statement=self.statement,
            operation=self.operation,
            collection=self.collection,
            calls=self.calls,
            errors=dict(self.errors or {}),
            rows=self.rows,
            total=self.total,
            mean=self.total / self.calls if self.calls else 0.0,
            min=self.min if self.calls else 0.0,
            max=self.max,
            p50=p50,
            p95=p95,
            p99=p99,
            call_sites=dict(self.call_sites or {}),
        )


@dataclass(slots=True)
class _Counters:
    evicted: int = 0
    since: float = field(default_factory=time.time)


class QueryStats:
    """Per-statement statistics of one instrumented engine; thread- and task-safe.

    Reached through ``instrument(engine).stats``; ``max_statements`` caps the
    number of distinct statements kept (the least recently executed one is
    dropped first and counted in :attr:`evicted`).

    Example::

        instr = instrument(engine)
        ...
        for s in instr.stats.top(5, by="p95"):
            print(f"{s.p95 * 1000:8.1f} ms  {s.calls:6d}  {s.statement}")
        print(json.dumps(instr.stats.snapshot()))
    """

    def __init__(self, *, max_statements: int = 5000) -> None:
        if isinstance(max_statements, bool) or not isinstance(max_statements, int):
            raise TypeError(f"max_statements must be an int, got {max_statements!r}")
        if max_statements < 1:
            raise ValueError(f"max_statements must be >= 1, got {max_statements!r}")
        self.max_statements = max_statements
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        # (key, duration, rows); duration None: a row count arriving after the call.
        self._pending: deque[tuple[StatementKey, float | None, int]] = deque()
        # The latest statement's (key, execution context): SQLAlchemy fills in
        # the row count (where it reads one) only after the statement
        # returns, so it is picked up when the next statement (or a reader)
        # comes. One context at most is held, so no statement's values
        # outlive the next statement. pop/append on a deque are atomic: under
        # threads a count may be missed, never counted twice.
        self._rows_slot: deque[tuple[StatementKey, Any]] = deque(maxlen=1)
        self._lock = threading.Lock()
        self._counters = _Counters()

    # -- recording (hot path) ---------------------------------------------

    def record(
        self,
        statement: str,
        operation: str,
        collection: str | None,
        duration: float,
        rows: int,
        error: str | None = None,
    ) -> None:
        """Add one execution. Called by the instrumentation; public for custom drivers.

        Args:
            statement: the normalized statement (see :func:`normalize_statement`).
            operation: ``SELECT``, ``INSERT``, ...
            collection: the table, or None.
            duration: seconds.
            rows: rows affected or returned (negative: unknown).
            error: the error class name when the execution failed.
        """
        self._pending.append((StatementKey(statement, operation, collection), duration, rows))
        if error is None:
            if len(self._pending) >= PENDING_LIMIT:
                self.flush()
            return
        with self._lock:
            self._flush_locked()
            entry = self._entries.get(statement)
            if entry is None:  # evicted by executions folded in after this one
                return
            errors = entry.errors
            if errors is None:
                errors = entry.errors = {}
            errors[error] = errors.get(error, 0) + 1

    def flush(self) -> None:
        """Fold the buffered executions into the entries (readers call it for you)."""
        with self._lock:
            self._flush_locked()

    def _take_rows_slot(self) -> None:
        try:
            key, context = self._rows_slot.pop()
        except IndexError:
            return
        rows = _rows_of(context)
        if rows > 0:
            self._pending.append((key, None, rows))

    def _flush_locked(self) -> None:
        # Executions are appended to a deque without a lock on the hot path
        # (deque.append is atomic) and folded in here in batches: the
        # per-statement cost is one tuple and one append. Only the items
        # present when the flush starts are taken; concurrent appends wait
        # for the next flush.
        self._take_rows_slot()
        pending = self._pending
        popleft = pending.popleft
        entries = self._entries
        move_to_end = entries.move_to_end
        new_entry = self._new_entry
        log, floor = math.log, math.floor
        for _ in range(len(pending)):
            key, duration, rows = popleft()
            name = key.key
            if duration is None:
                counted = entries.get(name)
                if counted is not None:
                    counted.rows += rows
                continue
            entry = entries.get(name)
            if entry is None:
                entry = new_entry(name, key.operation, key.collection)
            else:
                move_to_end(name)
            entry.calls += 1
            entry.total += duration
            if duration > entry.max:
                entry.max = duration
            if duration < entry.min:
                entry.min = duration
            if rows > 0:
                entry.rows += rows
            bucket = floor(log(duration) * INV_LOG_BASE) if duration > 0.0 else ZERO_BUCKET
            buckets = entry.buckets
            buckets[bucket] = buckets.get(bucket, 0) + 1

    def add_call_site(self, statement: str, call_site: str) -> None:
        """Count one sampled call site of a statement (at most 8 distinct sites kept)."""
        with self._lock:
            self._flush_locked()
            entry = self._entries.get(statement)
            if entry is None:
                return
            sites = entry.call_sites
            if sites is None:
                sites = entry.call_sites = {}
            if call_site in sites or len(sites) < MAX_CALL_SITES:
                sites[call_site] = sites.get(call_site, 0) + 1

    def _new_entry(self, statement: str, operation: str, collection: str | None) -> _Entry:
        # Called with the lock held.
        entry = _Entry(statement, operation, collection)
        entries = self._entries
        entries[statement] = entry
        if len(entries) > self.max_statements:
            entries.popitem(last=False)
            self._counters.evicted += 1
        return entry

    # -- reading ------------------------------------------------------------

    def __len__(self) -> int:
        self.flush()
        return len(self._entries)

    def __iter__(self) -> Iterator[StatementStats]:
        return iter(self.all())

    @property
    def evicted(self) -> int:
        """Entries dropped by the ``max_statements`` cap since the last reset."""
        return self._counters.evicted

    def get(self, statement: str) -> StatementStats | None:
        """The figures of one statement: pass raw SQL or an already normalized text."""
        with self._lock:
            self._flush_locked()
            entry = self._entries.get(statement)
            if entry is None:
                entry = self._entries.get(normalize_statement(statement))
            return entry.freeze() if entry is not None else None

    def all(self) -> list[StatementStats]:
        """Every entry, least recently executed first."""
        with self._lock:
            self._flush_locked()
            return [entry.freeze() for entry in self._entries.values()]

    def top(self, n: int = 10, *, by: SortKey = "total") -> list[StatementStats]:
        """The ``n`` statements with the largest ``by`` figure.

        Args:
            n: how many (>= 1).
            by: ``total``, ``mean``, ``max``, ``p95``, ``calls``, ``errors`` or ``rows``.

        Example::

            slowest = instr.stats.top(3, by="p95")
        """
        count: object = n
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        if by not in _SORT_KEYS:
            raise ValueError(f"by must be one of {', '.join(_SORT_KEYS)}; got {by!r}")

        def key(s: StatementStats) -> float:
            return float(s.error_count) if by == "errors" else float(getattr(s, by))

        return sorted(self.all(), key=key, reverse=True)[:n]

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready dict: every entry plus the cap, evictions and the start time.

        Example::

            json.dumps(instr.stats.snapshot())
        """
        entries = self.all()
        return {
            "since": self._counters.since,
            "max_statements": self.max_statements,
            "evicted": self._counters.evicted,
            "statements": [s.to_dict() for s in reversed(entries)],
        }

    def reset(self) -> None:
        """Forget every entry and restart the counters."""
        with self._lock:
            self._pending.clear()
            self._rows_slot.clear()
            self._entries.clear()
            self._counters = _Counters()

    def __repr__(self) -> str:
        return f"<QueryStats {len(self._entries)} statements (max {self.max_statements})>"
