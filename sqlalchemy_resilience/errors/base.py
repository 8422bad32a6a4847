"""The base classes: :class:`ResilienceError`, the errors that are not the driver's, and
:class:`DatabaseFailure`, the base of every translated driver error.

The whole tree, with the subclasses of :class:`DatabaseFailure`, is drawn in
:mod:`~sqlalchemy_resilience.errors.hierarchy`.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from sqlalchemy import exc as sa_exc

from .messages import user_message as _catalogue_message

__all__ = [
    "AlreadyApplied",
    "CircuitOpenError",
    "DatabaseFailure",
    "DurableTransactionError",
    "InvalidCursor",
    "NotAtomic",
    "NotSupported",
    "PoolExhausted",
    "ResilienceError",
    "RetryExhausted",
    "combined_class",
    "new_error_id",
]


def new_error_id() -> str:
    """A short random id for a new error (``error_id``).

    Example::

        >>> len(new_error_id())
        8
    """
    return secrets.token_hex(4)


class ResilienceError(sa_exc.SQLAlchemyError):
    """Base of every error this package raises.

    Attributes:
        retryable: whether re-running the whole unit of work is safe and may succeed.
        sqlstate: the PostgreSQL SQLSTATE when the server reported one, else None.
        error_id: a short random id, also in ``str()``; show it to the user and
            grep the logs for it.

    Example::

        try:
            await session.commit()
        except ResilienceError as exc:
            return JSONResponse({"error": exc.user_message("ja"), "id": exc.error_id}, 503)
    """

    message_key: ClassVar[str] = "database_error"
    default_retryable: ClassVar[bool] = False

    retryable: bool
    sqlstate: str | None
    error_id: str

    def __init__(self, message: str = "", *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.retryable = self.default_retryable if retryable is None else retryable
        self.sqlstate = None
        self.error_id = new_error_id()

    def user_message(self, locale: str = "en") -> str:
        """A message safe to show an end user, in ``locale`` (English fallback).

        Example::

            >>> UniqueViolation("dup").user_message("en")
            'This item already exists.'
        """
        return _catalogue_message(self.message_key, locale)

    def __str__(self) -> str:
        text = str(self.args[0]) if self.args else ""
        return f"{text} (error id {self.error_id})" if text else f"(error id {self.error_id})"


class CircuitOpenError(ResilienceError):
    """The circuit breaker is open: the call was refused before touching the pool.

    Args:
        retry_after: seconds until the breaker lets a probe through.
        breaker: the breaker's name, for logs.

    Example::

        try:
            await run_transaction(Session, work, breaker=breaker)
        except CircuitOpenError as exc:
            return Response(status_code=503, headers={"Retry-After": str(round(exc.retry_after))})
    """

    message_key = "circuit_open"

    def __init__(self, retry_after: float, *, breaker: str = "default") -> None:
        if retry_after < 0:
            raise ValueError(f"retry_after must be >= 0 seconds, got {retry_after!r}")
        super().__init__(
            f"circuit breaker {breaker!r} is open; next probe in {retry_after:.3f}s",
            retryable=False,
        )
        self.retry_after = float(retry_after)
        self.breaker = breaker

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            functools.partial(type(self), breaker=self.breaker),
            (self.retry_after,),
            {"error_id": self.error_id},
        )


class RetryExhausted(ResilienceError):
    """Every attempt of a unit of work failed with a retryable error.

    Args:
        errors: the error of each attempt, first to last; the last is also ``__cause__``.

    Example::

        try:
            await run_transaction(Session, work, retry=RetryPolicy(attempts=3))
        except RetryExhausted as exc:
            log.error("gave up after %d attempts: %s", exc.attempts, exc.errors[-1])
    """

    message_key = "retry_exhausted"

    def __init__(self, errors: Sequence[BaseException]) -> None:
        if not errors:
            raise ValueError("errors must hold the error of at least one attempt")
        last = errors[-1]
        super().__init__(
            f"gave up after {len(errors)} attempt(s); last error: {type(last).__name__}",
            retryable=False,
        )
        self.errors: tuple[BaseException, ...] = tuple(errors)
        self.attempts = len(self.errors)
        self.sqlstate = getattr(last, "sqlstate", None)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.errors,), {"error_id": self.error_id})


class AlreadyApplied(ResilienceError):
    """The unit of work's ``idempotency_key`` was committed before: nothing was done again.

    Attributes:
        idempotency_key: the key.

    Example::

        try:
            await run_transaction(Session, pay, idempotency_key=request_id)
        except AlreadyApplied:
            return {"status": "already paid"}
    """

    message_key = "already_applied"

    def __init__(self, idempotency_key: str) -> None:
        super().__init__(
            f"a unit of work with idempotency key {idempotency_key!r} was already committed",
            retryable=False,
        )
        self.idempotency_key = idempotency_key

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.idempotency_key,), {"error_id": self.error_id})


class NotSupported(ResilienceError, NotImplementedError):
    """An option this database cannot honour, named, before anything ran.

    Raised, for instance, by ``transaction(sqlite_session, statement_timeout=5)``:
    SQLite has no per-statement timeout, and silently ignoring a timeout would be
    worse than saying so.

    Attributes:
        option: the option's name.
        dialect: the database it is not supported on.

    Example::

        try:
            async with transaction(session, statement_timeout=5):
                ...
        except NotSupported as exc:
            print(exc.option, exc.dialect)   # statement_timeout sqlite
    """

    def __init__(self, option: str, dialect: str, hint: str = "") -> None:
        text = f"{option} is not supported on {dialect}"
        super().__init__(f"{text}; {hint}" if hint else text, retryable=False)
        self.option = option
        self.dialect = dialect
        self.hint = hint

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.option, self.dialect, self.hint), {"error_id": self.error_id})


class DurableTransactionError(ResilienceError, RuntimeError):
    """``transaction(..., durable=True)`` was opened inside another transaction.

    A durable transaction promises that its work is committed when the block
    ends; inside another transaction it would only be a savepoint, committed
    (or not) by someone else later -- so it refuses to start (Django's
    ``atomic(durable=True)``).

    Example::

        async with transaction(session):
            async with transaction(session, durable=True):   # raises
                ...
    """


class NotAtomic(ResilienceError, sa_exc.InvalidRequestError):
    """A unit of work refused before it ran, because its statements would commit one by one.

    ``run_transaction``, ``transaction()`` and the batch writers promise that
    the work commits whole or not at all; on a connection in autocommit
    (``isolation_level="AUTOCOMMIT"`` on the engine, the connection, the
    session's bind, or the driver connection itself) each statement commits
    on its own, so a failure half-way would leave half the work applied and
    a re-run would apply the first half twice. Nothing was executed.

    Attributes:
        source: where the autocommit came from.

    Example::

        try:
            await run_transaction(Session, transfer)
        except NotAtomic as exc:
            print(exc.source)   # create_engine(isolation_level='AUTOCOMMIT')
    """

    def __init__(self, what: str, source: str) -> None:
        super().__init__(
            f"{what} needs a transaction, but the connection commits every statement on its "
            f"own ({source}); use an engine or connection without AUTOCOMMIT for units of work",
            retryable=False,
        )
        self.what = what
        self.source = source

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.what, self.source), {"error_id": self.error_id})


class InvalidCursor(ResilienceError, ValueError):
    """A pagination cursor that this application did not issue for this query.

    Raised by :func:`~sqlalchemy_resilience.paginate` before any SQL runs, for
    a cursor that is malformed, truncated, too long, signed with another key,
    issued for a query with another ordering, or passed in the wrong direction.
    The message says which, and never repeats the cursor (it is user input).
    A web app answers it with HTTP 400 and :meth:`user_message`.

    Attributes:
        reason: one of ``"malformed"``, ``"too_long"``, ``"signature"``,
            ``"other_query"``, ``"direction"``, ``"values"``.

    Example::

        try:
            page = await paginate(session, stmt, after=request.query_params["after"], secret=KEY)
        except InvalidCursor as exc:
            return JSONResponse({"error": exc.user_message("en")}, status_code=400)
    """

    message_key = "invalid_cursor"

    #: Every value :attr:`reason` can take.
    REASONS: ClassVar[frozenset[str]] = frozenset(
        {"malformed", "too_long", "signature", "other_query", "direction", "values"}
    )

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in self.REASONS:
            raise ValueError(f"reason must be one of {sorted(self.REASONS)}, got {reason!r}")
        text = f"invalid pagination cursor ({reason})"
        super().__init__(f"{text}: {detail}" if detail else text, retryable=False)
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, self.detail), {"error_id": self.error_id})


class PoolExhausted(ResilienceError, sa_exc.TimeoutError):
    """No pooled connection became free within the pool timeout.

    Subclasses :class:`sqlalchemy.exc.TimeoutError`, which SQLAlchemy raises
    for the same condition. The message carries the pool's numbers.

    Example::

        try:
            async with engine.connect() as conn:
                ...
        except PoolExhausted:
            return Response(status_code=503)
    """

    message_key = "pool_exhausted"
    default_retryable = True

    def __init__(self, message: str, *, pool_status: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.pool_status: dict[str, Any] = dict(pool_status or {})

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            type(self),
            (self.args[0],),
            {"pool_status": self.pool_status, "error_id": self.error_id},
        )


class DatabaseFailure(ResilienceError, sa_exc.DBAPIError):
    """A database or driver error, translated. Also the class of errors no rule matched.

    Args:
        summary: the developer-facing description (already free of values).
        sqlstate: SQLSTATE from the server or the driver.
        driver_code: the driver's own code when there is no SQLSTATE (``SQLITE_BUSY``).
        constraint_name, table_name, column_name, schema_name: as the server reported them.
        retryable: overrides the class default.
        statement, params, orig, hide_parameters, connection_invalidated: as for
            :class:`sqlalchemy.exc.DBAPIError`; ``orig`` is the driver's exception.

    Example::

        >>> err = UniqueViolation("duplicate key", sqlstate="23505", constraint_name="users_email_key")
        >>> isinstance(err, sqlalchemy.exc.IntegrityError), err.retryable
        (True, False)
    """

    sqlalchemy_base: ClassVar[type[sa_exc.DBAPIError]] = sa_exc.DBAPIError
    #: What a developer should change, for failures that are a setting, not a bug
    #: or a transient fault; shown in the facts line, never in ``user_message``.
    advice: ClassVar[str] = ""

    def __init__(
        self,
        summary: str = "",
        *,
        sqlstate: str | None = None,
        driver_code: str | None = None,
        constraint_name: str | None = None,
        table_name: str | None = None,
        column_name: str | None = None,
        schema_name: str | None = None,
        retryable: bool | None = None,
        statement: str | None = None,
        params: Any = None,
        orig: BaseException | None = None,
        hide_parameters: bool = True,
        connection_invalidated: bool = False,
        ismulti: bool | None = None,
        code: str | None = None,
    ) -> None:
        # SQLAlchemy's own constructor, so the head ("(sqlite3.IntegrityError) ..."),
        # [SQL: ...], [parameters: ...] and the background link read exactly as
        # SQLAlchemy would have written them.
        sa_exc.DBAPIError.__init__(
            self,
            statement,
            params,
            orig if orig is not None else Exception(summary),
            hide_parameters=hide_parameters,
            connection_invalidated=connection_invalidated,
            code=code,
            ismulti=ismulti,
        )
        if orig is None:
            self.orig = None
            self.args = (summary,)
        self.retryable = self.default_retryable if retryable is None else retryable
        self.error_id = new_error_id()
        self.summary = summary
        self.sqlstate = sqlstate
        self.driver_code = driver_code
        self.constraint_name = constraint_name
        self.table_name = table_name
        self.column_name = column_name
        self.schema_name = schema_name

    # SQLAlchemy decides whether the connection was invalidated only after every
    # handle_error hook ran (a later hook may change ``is_disconnect``), and writes
    # the verdict onto its own exception; a translation made by an earlier hook
    # reads it from there instead of freezing the value it saw.
    @property
    def connection_invalidated(self) -> bool:
        """Whether the connection was invalidated (SQLAlchemy's final verdict)."""
        source = self.__dict__.get("_invalidated_by")
        if source is not None:
            return bool(source.connection_invalidated)
        return bool(self.__dict__.get("_connection_invalidated", False))

    @connection_invalidated.setter
    def connection_invalidated(self, value: bool) -> None:
        self.__dict__.pop("_invalidated_by", None)
        self.__dict__["_connection_invalidated"] = bool(value)

    def follow_invalidation_of(self, source: sa_exc.DBAPIError) -> None:
        """Report ``source.connection_invalidated`` from now on (see the property)."""
        self.__dict__["_invalidated_by"] = source

    @property
    def code_label(self) -> str | None:
        """The SQLSTATE, else the driver's code (``SQLITE_BUSY``), else None."""
        return self.sqlstate or self.driver_code

    def _facts(self) -> str:
        parts = [
            f"{name}={value}"
            for name, value in (
                ("constraint", self.constraint_name),
                ("schema", self.schema_name),
                ("table", self.table_name),
                ("column", self.column_name),
            )
            if value
        ]
        return f" ({', '.join(parts)})" if parts else ""

    def facts_line(self) -> str:
        """The package's facts as one bracketed line, free of values and SQL.

        It is the last line of ``str()``, after SQLAlchemy's own text.

        Example::

            >>> err = UniqueViolation("dup", sqlstate="23505", constraint_name="users_email_key")
            >>> err.facts_line()  # doctest: +ELLIPSIS
            '[sqlalchemy-resilience: UniqueViolation 23505 (constraint=users_email_key); not retryable; error id ...]'
        """
        code = f" {self.code_label}" if self.code_label else ""
        retry = "retryable" if self.retryable else "not retryable"
        advice = f"; {self.advice}" if self.advice else ""
        return (
            f"[sqlalchemy-resilience: {type(self).__name__}{code}{self._facts()}; "
            f"{retry}{advice}; error id {self.error_id}]"
        )

    def safe_text(self) -> str:
        """A one-line description without SQL, bound parameters or the driver's full text.

        What the package's own log records use; the server's primary message
        has its values redacted unless the instrumentation has ``log_parameters=True``.

        Example::

            >>> UniqueViolation("duplicate key", sqlstate="23505").safe_text()  # doctest: +ELLIPSIS
            'UniqueViolation 23505: duplicate key [error id ...]'
        """
        code = f" {self.code_label}" if self.code_label else ""
        summary = f": {self.summary}" if self.summary else ""
        return f"{type(self).__name__}{code}{summary}{self._facts()} [error id {self.error_id}]"

    def __str__(self) -> str:
        return f"{sa_exc.DBAPIError.__str__(self)}\n{self.facts_line()}"

    def __repr__(self) -> str:
        code = f" {self.code_label}" if self.code_label else ""
        return f"<{type(self).__name__}{code} error_id={self.error_id}{self._facts()}>"

    def __reduce__(self) -> tuple[Any, ...]:
        static = type(self)
        extra: type[sa_exc.DBAPIError] | None = None
        if getattr(static, "_combined_with", None) is not None:
            extra = static._combined_with  # type: ignore[attr-defined]
            static = static.__bases__[0]
        state = dict(self.__dict__)
        state.pop("_invalidated_by", None)
        state["_connection_invalidated"] = self.connection_invalidated
        # ``args`` is not in __dict__: without it a copy or an unpickled error
        # would lose SQLAlchemy's head line ("(sqlite3.IntegrityError) ...").
        return (_rebuild, (static, extra, state, self.args))


def _rebuild(
    static: type[DatabaseFailure],
    extra: type[sa_exc.DBAPIError] | None,
    state: dict[str, Any],
    args: tuple[Any, ...] = (),
) -> DatabaseFailure:
    cls = combined_class(static, extra) if extra is not None else static
    obj = cls.__new__(cls)
    obj.args = args
    obj.__dict__.update(state)
    return obj


_combined_cache: dict[
    tuple[type[DatabaseFailure], type[sa_exc.DBAPIError]], type[DatabaseFailure]
] = {}


def combined_class(
    static: type[DatabaseFailure], sqlalchemy_class: type[sa_exc.DBAPIError] | None
) -> type[DatabaseFailure]:
    """``static`` itself when it already subclasses ``sqlalchemy_class``, else a
    subclass of both (cached), so an ``except`` written for the class SQLAlchemy
    raised still matches the translated error."""
    if sqlalchemy_class is None or issubclass(static, sqlalchemy_class):
        return static
    key = (static, sqlalchemy_class)
    cls = _combined_cache.get(key)
    if cls is None:
        cls = type(
            static.__name__,
            (static, sqlalchemy_class),
            {
                "__module__": static.__module__,
                "__qualname__": static.__qualname__,
                "__doc__": static.__doc__,
                "_combined_with": sqlalchemy_class,
            },
        )
        _combined_cache[key] = cls
    return cls
