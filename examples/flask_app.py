"""A sync Flask application that already has its engine and sessions: one line plugs the package in.

Run it::

    pip install "sqlalchemy-resilience[psycopg]" flask
    DATABASE_URL=postgresql+psycopg://app:pw@localhost/app flask --app examples.flask_app run

    curl -X POST localhost:5000/notes -H 'content-type: application/json' -d '{"title": "a"}'
    curl -X POST localhost:5000/notes -H 'content-type: application/json' -d '{"title": "a"}'  # 409
    curl localhost:5000/notes; curl localhost:5000/health; curl localhost:5000/stats

What it shows:

* the application's own ``engine`` and ``Session`` stay exactly as they were;
  ``instrument(engine)`` is the only change needed for typed errors (a
  duplicate title is a ``UniqueViolation``, still an ``IntegrityError`` for
  the existing ``except`` clause), the slow-query log, statistics and metrics;
* ``SyncDatabase(engine)`` wraps that same engine, leaving its settings alone,
  for what the application did not have: ``run_transaction`` (a deadlock or a
  restart re-runs the unit of work), ``health()`` and ``snapshot()``;
* errors answered with ``user_message`` in the client's language, never SQL.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, jsonify, request
from sqlalchemy import String, create_engine, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from sqlalchemy_resilience import ResilienceError, SyncDatabase, instrument


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "flask_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(80), unique=True)


def create_app(url: str) -> Flask:
    """The application on ``url``: its engine and sessions as any Flask app would have them."""
    engine = create_engine(url, pool_size=5, max_overflow=5)
    Base.metadata.create_all(engine)
    SessionLocal = sessionmaker(engine, expire_on_commit=False)

    # The one line that plugs the package into the existing engine.
    instrument(engine, slow_query_threshold=0.5)
    # And the facade on the same engine, for retried units of work and health.
    db = SyncDatabase(engine, name="notes")
    db.start()

    app = Flask(__name__)
    app.extensions["db"] = db

    def language() -> str:
        best = request.accept_languages.best_match(["en", "ja"])
        return best or "en"

    @app.errorhandler(ResilienceError)
    def translated(exc: ResilienceError) -> Any:
        status = 409 if isinstance(exc, sa_exc.IntegrityError) else 503
        return jsonify(error=exc.user_message(language()), error_id=exc.error_id), status

    @app.post("/notes")
    def add_note() -> Any:
        title = str((request.get_json(silent=True) or {}).get("title", ""))
        if not title:
            return jsonify(error="title is required"), 400

        # The existing code's style: a session, add, commit. A duplicate raises
        # UniqueViolation, which is also the IntegrityError it always caught.
        with SessionLocal() as session:
            note = Note(title=title)
            session.add(note)
            session.commit()
            return jsonify(id=note.id, title=note.title), 201

    @app.post("/notes/<int:note_id>/rename")
    def rename(note_id: int) -> Any:
        title = str((request.get_json(silent=True) or {}).get("title", ""))

        def unit(session: Session) -> str | None:
            note = session.get(Note, note_id, with_for_update=True)
            if note is None:
                return None
            note.title = title
            return note.title

        renamed = db.run_transaction(unit)  # re-run on a deadlock or a restart
        if renamed is None:
            return jsonify(error="no such note"), 404
        return jsonify(id=note_id, title=renamed)

    @app.get("/notes")
    def list_notes() -> Any:
        rows = db.fetch_all(select(Note.id, Note.title).order_by(Note.id))
        return jsonify([{"id": r.id, "title": r.title} for r in rows])

    @app.get("/health")
    def health() -> Any:
        report = db.health(timeout=1.0)
        return jsonify(report.to_dict()), 200 if report.ok else 503

    @app.get("/stats")
    def stats() -> Any:
        return jsonify(db.snapshot(top=5))

    return app


if os.environ.get("DATABASE_URL"):  # `flask --app examples.flask_app run`
    app = create_app(os.environ["DATABASE_URL"])
