"""Never executed: type-checked by mypy --strict to pin the public API's types."""

from __future__ import annotations

from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine

import sqlalchemy_resilience as sr
from sqlalchemy_resilience.classify import ErrorFacts, extract_facts
from sqlalchemy_resilience.embedded import EmbeddedPostgres
from sqlalchemy_resilience.messages import register_messages, user_message


def sync_usage() -> None:
    engine = create_engine("sqlite://")
    instr: sr.Instrumentation = sr.instrument(engine, log_parameters=False)
    assert sr.instrumentation_of(engine) is instr
    instr.detach()
    translated: BaseException = sr.translate_error(ValueError("x"))
    if isinstance(translated, sr.DatabaseFailure):
        state: str | None = translated.sqlstate
        retry: bool = translated.retryable
        label: str | None = translated.code_label
        text: str = translated.user_message("ja")
        names: tuple[str | None, ...] = (
            translated.constraint_name,
            translated.table_name,
            translated.column_name,
            translated.schema_name,
        )
        del state, retry, label, text, names


async def async_usage() -> None:
    engine = create_async_engine("sqlite+aiosqlite://")
    instr = sr.instrument(engine)
    try:
        async with engine.begin():
            pass
    except sr.UniqueViolation as exc:
        message: str = exc.user_message()
        error_id: str = exc.error_id
        del message, error_id
    except sr.CircuitOpenError as exc:
        wait: float = exc.retry_after
        del wait
    except sr.PoolExhausted as exc:
        status: dict[str, object] = exc.pool_status
        del status
    finally:
        instr.detach()


def helpers() -> None:
    facts: ErrorFacts = extract_facts(ValueError("x"))
    del facts
    register_messages("de", {"unique_violation": "Existiert bereits."})
    msg: str = user_message("unique_violation", "de")
    del msg
    with EmbeddedPostgres() as pg:
        url = pg.url(driver="asyncpg")
        del url
    err = sr.RetryExhausted([sr.ConnectionLost("x")])
    attempts: int = err.attempts
    del attempts
