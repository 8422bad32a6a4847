"""``db.query.summary``: a low-cardinality summary of a SQL statement.

The OpenTelemetry database conventions ("Generating a summary of the query")
ask for the statement's operations and their targets, in the order written:
``SELECT wuser_table``, ``INSERT shipping_details SELECT orders``,
``SELECT songs artists``, ``SELECT SELECT orders customers`` for a subquery in
FROM. Names are kept as written (quotes included); literals never appear,
since the summary is made from the normalized statement (literals already
folded), and it is truncated to 255 characters between words.

Computed once per compiled statement, with the other statement facts.
"""

from __future__ import annotations

import re

__all__ = ["MAX_SUMMARY", "summarize_statement"]

MAX_SUMMARY = 255

_TOKEN = re.compile(
    r"""
      "(?:[^"]|"")*"             # "quoted identifier"
    | `[^`]*`                    # `quoted identifier`
    | \[[^\]]*\]                 # [quoted identifier]
    | '(?:[^']|'')*'             # 'string' (normally folded to ? already)
    | [A-Za-z_][\w$]*(?:\.(?:"(?:[^"]|"")*"|[A-Za-z_][\w$]*))*   # word or schema.name
    | [(),;]
    """,
    re.VERBOSE,
)

# Words that start an operation the summary names.
_OPERATIONS = frozenset(
    {
        "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "UPSERT", "REPLACE",
        "CREATE", "ALTER", "DROP", "TRUNCATE", "CALL", "EXECUTE", "EXPLAIN",
        "COPY", "VACUUM", "ANALYZE", "GRANT", "REVOKE", "LOCK", "SET", "SHOW",
        "BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "PRAGMA", "VALUES",
        "LISTEN", "NOTIFY", "REFRESH", "REINDEX", "CLUSTER", "DECLARE", "FETCH",
    }
)  # fmt: skip
# Words after which the next name is a target (a table or similar).
_TARGET_BEFORE = frozenset({"FROM", "JOIN", "INTO", "UPDATE", "TABLE", "USING", "TRUNCATE"})
# Words that end a FROM list (anything else after a target is an alias).
_CLAUSE = frozenset(
    {
        "WHERE", "GROUP", "ORDER", "HAVING", "LIMIT", "OFFSET", "FETCH", "FOR", "ON",
        "USING", "SET", "VALUES", "RETURNING", "UNION", "EXCEPT", "INTERSECT", "WINDOW",
        "JOIN", "INNER", "LEFT", "RIGHT", "FULL", "CROSS", "NATURAL", "OUTER", "LATERAL",
        "DEFAULT", "SELECT", "AS", "WITH", "ONLY", "IF", "EXISTS", "NOT", "CONFLICT",
        "DO", "NOTHING", "FROM", "INTO", "TABLE", "TABLESAMPLE",
    }
)  # fmt: skip
_TABLE_PREFIXES = frozenset({"ONLY", "IF", "NOT", "EXISTS", "LATERAL", "TEMP", "TEMPORARY"})
# UPDATE / DELETE after these are a clause, not an operation: FOR UPDATE,
# FOR NO KEY UPDATE, ON CONFLICT DO UPDATE, ON DELETE CASCADE.
_NOT_AN_OPERATION_AFTER = frozenset({"FOR", "KEY", "DO", "ON"})


def summarize_statement(statement: str) -> str:
    """The ``db.query.summary`` of a (normalized) SQL statement.

    Example::

        >>> summarize_statement("INSERT INTO shipping_details (order_id) SELECT order_id FROM orders")
        'INSERT shipping_details SELECT orders'
        >>> summarize_statement('SELECT * FROM (SELECT * FROM orders o JOIN customers c ON o.id = c.id)')
        'SELECT SELECT orders customers'
    """
    words: list[str] = []
    tokens = _TOKEN.findall(statement)
    expect_target = False  # the next name is a target
    in_list = False  # after a target of FROM: ", name" is another target
    depth = 0
    list_depth = -1
    prev = ""
    for word in tokens:
        upper, before, prev = word.upper(), prev, word.upper()
        if word == "(":
            depth += 1
            expect_target = False
            continue
        if word == ")":
            depth -= 1
            if depth < list_depth:
                in_list = False
            continue
        if word == ",":
            expect_target = in_list and depth == list_depth
            continue
        if word == ";" or word.startswith("'"):
            expect_target = False
            continue
        if expect_target:
            if upper in _TABLE_PREFIXES:
                continue
            if upper in _OPERATIONS and upper != "SET":
                words.append(word)
                expect_target = in_list = False
                continue
            if upper not in _CLAUSE:
                words.append(word)
                expect_target = False
                in_list, list_depth = True, depth
                continue
            expect_target = False
        if upper in _OPERATIONS and not (upper == "SET" and words):
            if (upper == "VALUES" and words) or before in _NOT_AN_OPERATION_AFTER:
                continue  # INSERT ... VALUES: part of the INSERT
            words.append(word)
            in_list = False
            if upper in ("UPDATE", "TRUNCATE"):
                expect_target = True
            continue
        if upper in _TARGET_BEFORE:
            expect_target = True
            in_list = False
            continue
        if upper in _CLAUSE:
            in_list = False
    return _truncate(" ".join(words))


def _truncate(summary: str) -> str:
    if len(summary) <= MAX_SUMMARY:
        return summary
    cut = summary[: MAX_SUMMARY + 1].rsplit(" ", 1)[0]
    return cut[:MAX_SUMMARY]
