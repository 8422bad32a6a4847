"""The typed error hierarchy.

Every error is a :class:`ResilienceError`, itself a
:class:`sqlalchemy.exc.SQLAlchemyError`. Errors translated from the database
driver also subclass the SQLAlchemy class the application already catches, so
``except sqlalchemy.exc.IntegrityError:`` keeps catching a
:class:`UniqueViolation`. Where a driver raised a SQLAlchemy class other than
the one listed below (psycopg reports ``25P03`` as ``InternalError``, SQLite
reports "no such table" as ``OperationalError``), the translated error
subclasses both, so no existing ``except`` clause stops matching::

    sqlalchemy.exc.SQLAlchemyError
    └── ResilienceError                   .retryable .sqlstate .user_message() .error_id
        ├── AlreadyApplied                    idempotency key committed before; .idempotency_key
        ├── CircuitOpenError                  breaker open; .retry_after
        ├── RetryExhausted                    every attempt failed; .attempts
        ├── PoolExhausted                     (sqlalchemy.exc.TimeoutError) pool checkout timed out
        ├── NotSupported                      (NotImplementedError) an option this database lacks; .option
        ├── DurableTransactionError           (RuntimeError) transaction(durable=True) inside another
        ├── NotAtomic                         (InvalidRequestError) a unit of work on an autocommit connection
        ├── InvalidCursor                     (ValueError) a pagination cursor not issued here; .reason
        ├── SagaCompensated                   a saga step failed, every completed step compensated
        ├── SagaCompensationFailed            (ExceptionGroup) and a compensation failed too
        ├── SagaInProgress                    the saga is being driven elsewhere; .retry_after
        ├── SagaLeaseLost                     another instance took the saga over
        ├── BatchChunkFailed                  a chunk failed for good; .chunk .bad_row .rows_committed
        ├── JobConflict                       another run of the same job committed the chunk
        ├── JobInputMismatch                  (ValueError) a resumed job's input is not its own
        ├── MigrationThroughPooler            (RuntimeError) migrating through a transaction pooler
        ├── MigrationLockTimeout              (TimeoutError) another instance kept migrating
        └── DatabaseFailure                   (sqlalchemy.exc.DBAPIError) any translated driver error
            ├── DatabaseUnavailable           (OperationalError) 08001 08004 57P03 refused/timeout at connect
            │   ├── TooManyConnections        53300
            │   ├── AuthenticationFailed      28000 28P01
            │   └── DatabaseNotFound          3D000 57P04, SQLITE_CANTOPEN
            ├── ConnectionLost                (OperationalError) 08000 08003 08006 08P01 57P01 57P02 57P05 25P03 08S02
            ├── ReadOnlyServer                (OperationalError) 25006 from a standby or read-only server
            ├── CommitOutcomeUnknown          (OperationalError) disconnect while COMMIT was in flight, 08007
            ├── QueryTimeout                  (OperationalError) 57014 25P04, SQLITE_INTERRUPT
            ├── LockNotAvailable              (OperationalError) 55P03, SQLITE_BUSY, SQLITE_LOCKED
            ├── TransactionConflict           (OperationalError) class 40
            │   ├── SerializationFailure      40001, SQLITE_BUSY_SNAPSHOT
            │   ├── DeadlockDetected          40P01
            │   └── SnapshotTooOld            72000
            ├── ConstraintViolation           (IntegrityError) class 23, 40002
            │   ├── UniqueViolation           23505
            │   ├── ForeignKeyViolation       23503
            │   ├── NotNullViolation          23502
            │   ├── CheckViolation            23514
            │   └── ExclusionViolation        23P01
            ├── InvalidData                   (DataError) class 22
            ├── InvalidStatement              (ProgrammingError) class 42
            │   ├── PermissionDenied          42501, SQLITE_READONLY
            │   ├── ReadOnlyTransaction       25006 in a transaction the application made READ ONLY
            │   └── PoolerIncompatible        26000 42P05 on a driver-named prepared statement
            ├── InsufficientResources         (OperationalError) class 53 but 53300, SQLITE_FULL
            │   └── WriteSetTooLarge          Galera's 1105 "Maximum writeset size exceeded"
            └── StorageFailure                (OperationalError) class 58, XX001 XX002, SQLITE_IOERR
                                              SQLITE_CORRUPT SQLITE_NOTADB

``str()`` of a translated error is SQLAlchemy's own text for it (parameters as
the engine's ``hide_parameters`` decides) followed by the package's facts line
(class, SQLSTATE, constraint/table/column, retryable, error id); never the
connection password. :meth:`DatabaseFailure.safe_text` is the one-line form
without SQL or values that the package's own records use.
:meth:`ResilienceError.user_message` is for end users: a category and what to
do, in the requested locale, with no schema, SQL or values.
"""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

from .base import AlreadyApplied as AlreadyApplied
from .base import CircuitOpenError as CircuitOpenError
from .base import DatabaseFailure as DatabaseFailure
from .base import DurableTransactionError as DurableTransactionError
from .base import InvalidCursor as InvalidCursor
from .base import NotAtomic as NotAtomic
from .base import NotSupported as NotSupported
from .base import PoolExhausted as PoolExhausted
from .base import ResilienceError as ResilienceError
from .base import RetryExhausted as RetryExhausted
from .base import combined_class as combined_class
from .messages import user_message as _catalogue_message
from .operations import BatchChunkFailed as BatchChunkFailed
from .operations import JobConflict as JobConflict
from .operations import JobInputMismatch as JobInputMismatch
from .operations import MigrationLockTimeout as MigrationLockTimeout
from .operations import MigrationThroughPooler as MigrationThroughPooler
from .operations import SagaCompensated as SagaCompensated
from .operations import SagaCompensationFailed as SagaCompensationFailed
from .operations import SagaInProgress as SagaInProgress
from .operations import SagaLeaseLost as SagaLeaseLost
from .operations import SagaStepFailed as SagaStepFailed

__all__ = [
    "AlreadyApplied",
    "AuthenticationFailed",
    "BatchChunkFailed",
    "CheckViolation",
    "CircuitOpenError",
    "CommitOutcomeUnknown",
    "ConnectionLost",
    "ConstraintViolation",
    "DatabaseFailure",
    "DatabaseNotFound",
    "DatabaseUnavailable",
    "DeadlockDetected",
    "DurableTransactionError",
    "ExclusionViolation",
    "ForeignKeyViolation",
    "InsufficientResources",
    "InvalidCursor",
    "InvalidData",
    "InvalidStatement",
    "JobConflict",
    "JobInputMismatch",
    "LockNotAvailable",
    "MigrationLockTimeout",
    "MigrationThroughPooler",
    "NotAtomic",
    "NotNullViolation",
    "NotSupported",
    "PermissionDenied",
    "PoolExhausted",
    "QueryTimeout",
    "ReadOnlyServer",
    "ReadOnlyTransaction",
    "ResilienceError",
    "RetryExhausted",
    "SagaCompensated",
    "SagaCompensationFailed",
    "SagaInProgress",
    "SagaLeaseLost",
    "SagaStepFailed",
    "SerializationFailure",
    "SnapshotTooOld",
    "StorageFailure",
    "TooManyConnections",
    "TransactionConflict",
    "UniqueViolation",
]


class DatabaseUnavailable(DatabaseFailure, sa_exc.OperationalError):
    """The database could not be reached: refused, timed out, starting up or shutting down.

    Nothing was sent, so a retry is safe (``retryable=True`` unless the server
    said the database itself is gone).

    Example::

        except DatabaseUnavailable as exc:
            return JSONResponse({"error": exc.user_message("en")}, status_code=503)
    """

    message_key = "database_unavailable"
    default_retryable = True
    sqlalchemy_base = sa_exc.OperationalError

    def user_message(self, locale: str = "en") -> str:
        """As :meth:`ResilienceError.user_message`; a failure that waiting will not
        fix (``retryable`` False) never tells the user to try again in a moment.

        Example::

            >>> DatabaseUnavailable("x", retryable=False).user_message("en")
            'The service is not available right now. Please contact support if this continues.'
        """
        if not self.retryable and type(self).message_key == "database_unavailable":
            return _catalogue_message("service_unavailable", locale)
        return super().user_message(locale)


class TooManyConnections(DatabaseUnavailable):
    """53300: the server or the role's connection limit is reached.

    Example::

        except TooManyConnections:
            ...  # lower pool sizes, or put a pooler in front
    """

    message_key = "too_many_connections"


class AuthenticationFailed(DatabaseUnavailable):
    """28000/28P01: the server rejected the credentials. Not retryable.

    Example::

        except AuthenticationFailed:
            sys.exit("check DATABASE_URL's user and password (or the password provider)")
    """

    message_key = "authentication_failed"
    default_retryable = False


class DatabaseNotFound(DatabaseUnavailable):
    """3D000 / 57P04 (no such database, or it was dropped) or SQLITE_CANTOPEN: not retryable.

    The server (or the file system) answered; waiting will not bring the
    database back, so the end-user message does not say "try again".

    Example::

        except DatabaseNotFound:
            sys.exit("the database named in DATABASE_URL does not exist")
    """

    message_key = "database_not_found"
    default_retryable = False


class ConnectionLost(DatabaseFailure, sa_exc.OperationalError):
    """The connection died before COMMIT was sent; the server rolled the transaction back.

    Re-running the whole unit of work on a new connection is safe.

    Example::

        except ConnectionLost as exc:
            assert exc.retryable  # re-run the whole unit of work
    """

    message_key = "connection_lost"
    default_retryable = True
    sqlalchemy_base = sa_exc.OperationalError


class ReadOnlyServer(DatabaseFailure, sa_exc.OperationalError):
    """25006 from a server that is read-only: a hot standby, or a primary demoted
    or fenced in a failover (``default_transaction_read_only`` on).

    The server rolled the transaction back. On an instrumented engine the
    connection and every pooled connection opened before it are discarded
    (they lead to the same server), so re-running the whole unit of work
    reconnects and reaches the new primary: ``retryable`` is True.
    PostgreSQL 14 and later report ``in_hot_standby`` and
    ``default_transaction_read_only`` to the client, which is how a read-only
    server is told apart from a transaction the application itself made
    READ ONLY (:class:`ReadOnlyTransaction`).

    Example::

        except ReadOnlyServer as exc:  # a failover: the pool's connections were discarded
            assert exc.retryable
    """

    message_key = "read_only_server"
    default_retryable = True
    sqlalchemy_base = sa_exc.OperationalError


class CommitOutcomeUnknown(DatabaseFailure, sa_exc.OperationalError):
    """The connection died while COMMIT was in flight: the work may or may not be committed.

    Never retried blindly; re-run only with an idempotency key or after
    resolving the outcome (``pg_xact_status``).

    Example::

        try:
            await run_transaction(Session, charge)
        except CommitOutcomeUnknown:
            ...  # look the payment up before charging again
    """

    message_key = "commit_outcome_unknown"
    sqlalchemy_base = sa_exc.OperationalError


class QueryTimeout(DatabaseFailure, sa_exc.OperationalError):
    """57014: the statement was cancelled (statement_timeout, pg_cancel_backend).

    Not retried by default: a deterministic timeout would fail again.

    Example::

        async with transaction(Session, statement_timeout=2) as session:
            ...  # QueryTimeout after 2 s
    """

    message_key = "query_timeout"
    sqlalchemy_base = sa_exc.OperationalError


class LockNotAvailable(DatabaseFailure, sa_exc.OperationalError):
    """55P03 (NOWAIT, lock_timeout) or SQLite's "database is locked".

    On PostgreSQL not retried by default (a retry policy may opt in); on SQLite
    retryable, since the busy timeout already waited for the writer.

    Example::

        async with transaction(Session, lock_timeout=1) as session:
            ...  # LockNotAvailable after 1 s instead of waiting forever
    """

    message_key = "lock_not_available"
    sqlalchemy_base = sa_exc.OperationalError


class TransactionConflict(DatabaseFailure, sa_exc.OperationalError):
    """Class 40: the server rolled the transaction back because of a concurrent one.

    Re-running the whole transaction is safe and expected.

    Example::

        except TransactionConflict as exc:  # serialization failure or deadlock
            assert exc.retryable
    """

    message_key = "transaction_conflict"
    default_retryable = True
    sqlalchemy_base = sa_exc.OperationalError


class SerializationFailure(TransactionConflict):
    """40001 (also raised by COMMIT, which is still a definite failure) or SQLITE_BUSY_SNAPSHOT.

    Example::

        await run_transaction(Session, work, isolation_level="SERIALIZABLE")  # re-run on 40001
    """


class DeadlockDetected(TransactionConflict):
    """40P01: this transaction was chosen as the deadlock victim.

    Example::

        except DeadlockDetected:
            ...  # run_transaction re-runs it for you
    """


class SnapshotTooOld(TransactionConflict):
    """72000 (``old_snapshot_threshold``, PostgreSQL 16 and earlier): rows the
    transaction's snapshot needed were cleaned up. A new transaction takes a
    new snapshot, so re-running the whole unit of work is safe.

    Example::

        except SnapshotTooOld:
            ...  # run_transaction re-runs the unit of work
    """

    message_key = "snapshot_too_old"


class ConstraintViolation(DatabaseFailure, sa_exc.IntegrityError):
    """Class 23 (and 40002): the change breaks a constraint. Never retried.

    Example::

        except ConstraintViolation as exc:  # unique, foreign key, not null, check
            return JSONResponse({"error": exc.user_message(locale)}, status_code=409)
    """

    message_key = "constraint_violation"
    sqlalchemy_base = sa_exc.IntegrityError


class UniqueViolation(ConstraintViolation):
    """23505: a unique or primary key constraint.

    Example::

        except UniqueViolation as exc:
            return {"error": exc.user_message("ja"), "constraint": exc.constraint_name}
    """

    message_key = "unique_violation"


class ForeignKeyViolation(ConstraintViolation):
    """23503: a foreign key refers to a missing row, or a referenced row is still used.

    Example::

        except ForeignKeyViolation as exc:
            print(exc.constraint_name, exc.table_name)
    """

    message_key = "foreign_key_violation"


class NotNullViolation(ConstraintViolation):
    """23502: a NOT NULL column got NULL.

    Example::

        except NotNullViolation as exc:
            print(exc.column_name)
    """

    message_key = "not_null_violation"


class CheckViolation(ConstraintViolation):
    """23514: a CHECK constraint failed.

    Example::

        except CheckViolation as exc:  # e.g. stock >= 0
            return {"error": exc.user_message("en"), "constraint": exc.constraint_name}
    """

    message_key = "check_violation"


class ExclusionViolation(ConstraintViolation):
    """23P01: an exclusion constraint failed.

    Example::

        except ExclusionViolation:  # e.g. overlapping bookings
            return {"error": "that slot is taken"}
    """


class InvalidData(DatabaseFailure, sa_exc.DataError):
    """Class 22: a value has the wrong format, is out of range or cannot be stored.

    Example::

        except InvalidData:  # 22xxx: a value the column cannot take
            return {"error": "invalid value"}
    """

    message_key = "invalid_data"
    sqlalchemy_base = sa_exc.DataError


class InvalidStatement(DatabaseFailure, sa_exc.ProgrammingError):
    """Class 42: syntax error, unknown table or column -- a bug, not a transient failure.

    Example::

        except InvalidStatement as exc:  # a bug: not retried
            log.exception("bad SQL (error id %s)", exc.error_id)
    """

    message_key = "invalid_statement"
    sqlalchemy_base = sa_exc.ProgrammingError


class PermissionDenied(InvalidStatement):
    """42501: the role lacks a privilege.

    Example::

        except PermissionDenied as exc:
            log.error("missing grant: %s", exc.safe_text())
    """

    message_key = "permission_denied"


class ReadOnlyTransaction(InvalidStatement):
    """25006 in a transaction the application made READ ONLY (``SET TRANSACTION
    READ ONLY``, ``run_transaction(read_only=True)``) on a server that accepts
    writes: a bug in the unit of work, never retried.

    Example::

        async with transaction(Session, read_only=True) as session:
            session.add(item)  # ReadOnlyTransaction at flush: not retried
    """

    message_key = "invalid_statement"


class InsufficientResources(DatabaseFailure, sa_exc.OperationalError):
    """Class 53 (disk full, out of memory, configuration limit): not retried.

    Example::

        except InsufficientResources as exc:
            log.error("the database is out of resources: %s", exc.safe_text())
    """

    message_key = "insufficient_resources"
    sqlalchemy_base = sa_exc.OperationalError


class WriteSetTooLarge(InsufficientResources):
    """A Galera cluster refused a transaction bigger than ``wsrep_max_ws_size`` (1105).

    Galera replicates a transaction as one write-set, certified on every node
    at COMMIT; one over the limit (2 GB by default, often set far lower) is
    refused whole, and the same transaction would be refused again: not
    retried. Split the work (``bulk_insert`` commits in chunks) or raise the
    limit.

    Example::

        except WriteSetTooLarge:
            await bulk_insert(engine, table, rows, chunk_size=1_000)
    """

    message_key = "write_set_too_large"
    sqlalchemy_base = sa_exc.OperationalError


class StorageFailure(DatabaseFailure, sa_exc.OperationalError):
    """The database could not read or write its storage: class 58 (I/O error),
    XX001/XX002 (corrupted data or index), SQLite's IOERR, CORRUPT and NOTADB.

    Not retried; counts toward the circuit breaker.

    Example::

        except StorageFailure as exc:
            log.critical("storage failure: %s", exc.safe_text())
    """

    message_key = "storage_failure"
    sqlalchemy_base = sa_exc.OperationalError


class PoolerIncompatible(InvalidStatement):
    """A driver's prepared statement was missing or already there: a transaction-mode pooler.

    ``prepared statement "__asyncpg_stmt_5__" does not exist`` (26000) or
    ``prepared statement "_pg3_0" already exists`` (42P05): PgBouncer, RDS
    Proxy or Supavisor in transaction (or statement) mode hands the server
    session to another client between transactions, and the driver's
    session-level prepared statements go with it. A setting, not a transient
    fault: not retried. Create the engine with
    :func:`~sqlalchemy_resilience.deploy.pooler_safe_options` (asyncpg: statement
    caches off, unnamed statements; psycopg: ``prepare_threshold=None``).

    Example::

        engine = create_async_engine(url, **pooler_safe_options(url))  # the fix it names
    """

    advice = (
        "a transaction-mode pooler (PgBouncer, RDS Proxy, Supavisor) is in the path: "
        "create the engine with sqlalchemy_resilience.deploy.pooler_safe_options(url)"
    )
