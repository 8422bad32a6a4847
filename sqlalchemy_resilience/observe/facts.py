"""Facts about one statement, computed once per compiled statement and cached on it.

The hot path needs, for each statement, its normalized text (the statistics
key), operation, table and the metric attributes. Working them out costs a
regular-expression pass; it is done the first time a compiled statement runs
and the result is stored on the compiled object, so a cached statement pays
one attribute read. Textual statements without a compiled form are cached by
their text, in a bounded dict.
"""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.sql.expression import Select, TableClause

from .stats import StatementKey, normalize_statement
from .summary import summarize_statement

__all__ = [
    "INFO_ATTR",
    "StatementFacts",
    "StatementInfo",
    "batch_attributes",
    "operation_base_attributes",
]

_log = logging.getLogger("sqlalchemy_resilience")

# OpenTelemetry's db.system.name values for SQLAlchemy's dialect names.
_SYSTEM_NAMES = {
    "postgresql": "postgresql",
    "sqlite": "sqlite",
    "mysql": "mysql",
    "mariadb": "mariadb",
    "mssql": "microsoft.sql_server",
    "oracle": "oracle.db",
}
_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306, "mssql": 1433, "oracle": 1521}

INFO_ATTR = "_sqlalchemy_resilience_info"
_FIRST_WORD = re.compile(r"\s*(?:/\*.*?\*/\s*)*\(?\s*([A-Za-z]+)", re.DOTALL)
_MAX_TEXT_INFOS = 10_000


def operation_base_attributes(engine: Engine) -> dict[str, Any]:
    """The attributes every ``db.client.operation.duration`` point of ``engine`` carries."""
    url = engine.url
    name = engine.dialect.name
    if name == "mysql" and getattr(engine.dialect, "is_mariadb", False) is True:
        # A mysql:// URL whose server has said it is MariaDB (known once connected).
        name = "mariadb"
    attrs: dict[str, Any] = {"db.system.name": _SYSTEM_NAMES.get(name, name)}
    if url.database:
        attrs["db.namespace"] = url.database
    if url.host:
        attrs["server.address"] = url.host
        attrs["server.port"] = url.port or _DEFAULT_PORTS.get(name, 0)
    return attrs


class StatementInfo(StatementKey):
    """What the hot path needs of one statement: key, operation, table, metric attributes.

    Attributes:
        attrs: the ``db.client.operation.duration`` attributes of one execution.
        batch_attrs: the same for an ``executemany`` (``BATCH <op>``, as the
            conventions name batch operations).
    """

    __slots__ = ("attrs", "batch_attrs", "owner")

    def __init__(
        self,
        owner: object,
        key: str,
        operation: str,
        collection: str | None,
        attrs: dict[str, Any],
    ) -> None:
        super().__init__(key, operation, collection)
        self.owner = owner
        self.attrs = attrs
        self.batch_attrs = batch_attributes(attrs)


def batch_attributes(attrs: dict[str, Any]) -> dict[str, Any]:
    """``attrs`` for the batch form of the operation: ``BATCH INSERT``, ``BATCH INSERT t``."""
    batch = dict(attrs)
    for name in ("db.operation.name", "db.query.summary"):
        value = batch.get(name)
        batch[name] = f"BATCH {value}" if value else "BATCH"
    return batch


def _collection_of(context: Any) -> str | None:
    compiled = getattr(context, "compiled", None)
    statement = getattr(compiled, "statement", None)
    if statement is None:
        return None
    try:
        table = getattr(statement, "table", None)
        if isinstance(table, TableClause):
            return table.name
        if isinstance(statement, Select):
            froms = statement.get_final_froms()
            if len(froms) == 1 and isinstance(froms[0], TableClause):
                return froms[0].name
    except Exception:  # pragma: no cover - best effort on exotic constructs
        _log.debug("collection name lookup failed", exc_info=True)
    return None


def _operation_of(context: Any, normalized: str) -> str:
    if context is not None:
        if context.isinsert:
            return "INSERT"
        if context.isupdate:
            return "UPDATE"
        if getattr(context, "isdelete", False):
            return "DELETE"
    match = _FIRST_WORD.match(normalized)
    return match.group(1).upper() if match else ""


class StatementFacts:
    """The per-engine cache of :class:`StatementInfo`.

    ``token`` marks the infos this engine's instrumentation made, so a
    compiled statement shared with another engine (or a previous
    instrumentation) is worked out again rather than trusted.

    Example::

        facts = StatementFacts(engine)
        info = facts.info(context, "SELECT * FROM users WHERE id = ?")
        info.key, info.operation, info.collection   # ("SELECT * FROM users WHERE id = ?", "SELECT", "users")
    """

    def __init__(self, engine: Engine) -> None:
        self.token = object()
        # A mysql:// engine learns whether its server is MariaDB on the first
        # connect: until then db.system.name waits (see _settle_system_name).
        self._dialect: Any = engine.dialect if engine.dialect.name == "mysql" else None
        self._text_infos: dict[str, StatementInfo] = {}
        self._set_base_attrs(operation_base_attributes(engine))

    def _set_base_attrs(self, attrs: dict[str, Any]) -> None:
        self._base_attrs = attrs
        self._transaction_attrs = {
            op: {**attrs, "db.operation.name": op, "db.query.summary": op}
            for op in ("COMMIT", "ROLLBACK")
        }

    def _settle_system_name(self) -> None:
        dialect = self._dialect
        if getattr(dialect, "server_version_info", None) is None:
            return  # not connected yet
        self._dialect = None
        if getattr(dialect, "is_mariadb", False) is True:
            self._set_base_attrs({**self._base_attrs, "db.system.name": "mariadb"})

    def transaction_attributes(self, operation: str) -> dict[str, Any]:
        """The metric attributes of a ``COMMIT`` or ``ROLLBACK`` (shared: do not modify)."""
        return self._transaction_attrs[operation]

    def info(self, context: Any, statement: str) -> StatementInfo:
        """The facts of ``statement`` as run with execution ``context`` (None for a raw cursor)."""
        compiled = getattr(context, "compiled", None) if context is not None else None
        if compiled is not None:
            info = getattr(compiled, INFO_ATTR, None)
            if info is not None and info.owner is self.token:
                return info  # type: ignore[no-any-return]
        else:
            found = self._text_infos.get(statement)
            if found is not None:
                return found
        if self._dialect is not None:
            self._settle_system_name()
        key = normalize_statement(statement)
        operation = _operation_of(context, key)
        collection = _collection_of(context)
        attrs = dict(self._base_attrs)
        if operation:
            attrs["db.operation.name"] = operation
        if collection:
            attrs["db.collection.name"] = collection
        summary = summarize_statement(key)
        if summary:
            attrs["db.query.summary"] = summary
        info = StatementInfo(self.token, key, operation, collection, attrs)
        if compiled is not None:
            with contextlib.suppress(AttributeError):
                setattr(compiled, INFO_ATTR, info)
        else:
            if len(self._text_infos) >= _MAX_TEXT_INFOS:
                self._text_infos.clear()
            self._text_infos[statement] = info
        return info
