"""One writer process for test_sqlite_writers: read-modify-write increments on a shared SQLite file.

``python -m tests.transactions.sqlite_writer MODE DB WORKER OPS`` waits for
``DB.go`` to exist (so all writers start together), then runs OPS
transactions, each: read the counter, think for 2 ms, write counter + 1 and
insert an ``ops`` row. An error is counted as the caller would see it and the
writer carries on. Prints one JSON line: committed transactions and errors.

MODE ``plain``: SQLAlchemy's defaults. ``recipe``: SQLAlchemy's documented
BEGIN recipe on a WAL file. ``resilient``: the same plain Session code on an
engine with ``instrument(engine, sqlite=SQLiteSettings(...))``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, event, exc, text
from sqlalchemy.orm import Session

from sqlalchemy_resilience import instrument
from sqlalchemy_resilience.transactions import SQLiteSettings


def main(mode: str, db: str, worker: int, ops: int) -> None:
    engine = create_engine(f"sqlite:///{db}")
    if mode == "recipe":

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection: object, record: object) -> None:
            dbapi_connection.isolation_level = None  # type: ignore[attr-defined]

        @event.listens_for(engine, "begin")
        def _begin(conn: object) -> None:
            conn.exec_driver_sql("BEGIN")  # type: ignore[attr-defined]

    elif mode == "resilient":
        instrument(engine, sqlite=SQLiteSettings(busy_timeout=120))
    elif mode != "plain":
        raise SystemExit(f"unknown mode {mode!r}")
    go = Path(db + ".go")
    while not go.exists():
        time.sleep(0.005)  # pacing of the writer's load (not a wait)
    committed = errors = 0
    locked = 0
    for i in range(ops):
        try:
            with Session(engine) as session, session.begin():
                value = session.execute(text("SELECT value FROM counter WHERE id = 1")).scalar_one()
                time.sleep(0.002)  # pacing of the writer's load (not a wait)
                session.execute(
                    text("UPDATE counter SET value = :v WHERE id = 1"), {"v": value + 1}
                )
                session.execute(
                    text("INSERT INTO ops (worker, i) VALUES (:w, :i)"), {"w": worker, "i": i}
                )
            committed += 1
        except exc.OperationalError as error:
            errors += 1
            locked += "database is locked" in str(error)
    engine.dispose()
    print(json.dumps({"committed": committed, "errors": errors, "locked": locked}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
