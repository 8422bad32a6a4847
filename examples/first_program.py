"""The README's first program: typed errors, a unit of work, in-process statistics (SQLite).

Run it: ``python examples/first_program.py`` (it writes ``readme.db`` in the current directory).
"""

# [program]
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from sqlalchemy_resilience import UniqueViolation, instrument, run_transaction_sync

engine = create_engine("sqlite:///readme.db")
instr = instrument(engine)  # typed errors, statistics, slow-query log, OpenTelemetry metrics
with engine.begin() as conn:
    conn.execute(text("CREATE TABLE IF NOT EXISTS users (email TEXT UNIQUE)"))


def register(session: Session) -> None:  # a whole unit of work: re-run only when that is safe
    session.execute(text("INSERT INTO users VALUES ('ada@example.com')"))


try:
    for _ in range(2):
        run_transaction_sync(sessionmaker(engine), register)
except UniqueViolation as exc:  # still a sqlalchemy.exc.IntegrityError
    print(exc.retryable, "|", exc.user_message("ja"))
failing = instr.stats.top(1, by="errors")[0]  # per statement, in process
print(f"{failing.statement}: {failing.calls} calls, {failing.errors}")
