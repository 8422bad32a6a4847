"""The error translation of docs/errors.md as a program you can run (SQLite, no server).

Run it::

    python examples/errors_tour.py

It instruments an engine, provokes a unique violation, translates a raw
driver error by hand, and adds a message catalogue for one more locale.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy import exc as sa_exc

from sqlalchemy_resilience import UniqueViolation


def main() -> None:
    engine = create_engine(f"sqlite:///{Path(tempfile.mkdtemp()) / 'errors.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE users (email TEXT UNIQUE)"))
        conn.execute(text("INSERT INTO users VALUES ('ada@example.com')"))

    # [instrument]
    from sqlalchemy_resilience import instrument
    from sqlalchemy_resilience.errors import translate_error

    instr = instrument(engine)  # Engine or AsyncEngine
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO users VALUES ('ada@example.com')"))
    except UniqueViolation as err:  # still a sqlalchemy.exc.IntegrityError
        print(type(err).__name__, err.retryable, err.table_name, err.column_name)
    instr.detach()  # removes exactly these listeners

    raw = sa_exc.IntegrityError(
        "INSERT ...", {}, sqlite3.IntegrityError("UNIQUE constraint failed: users.email")
    )
    err = translate_error(raw)  # the same translation, by hand
    print(type(err).__name__, err.retryable)
    # [/instrument]

    # [messages]
    from sqlalchemy_resilience.errors import register_messages

    register_messages("de", {"unique_violation": "Dieser Eintrag existiert bereits."})
    print(err.user_message("de-AT"))  # Dieser Eintrag existiert bereits.
    # [/messages]
    engine.dispose()


if __name__ == "__main__":
    main()
