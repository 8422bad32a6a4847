"""db.query.summary: the conventions' own examples, and what a summary must never hold."""

from __future__ import annotations

import pytest

from sqlalchemy_resilience.observe import normalize_statement
from sqlalchemy_resilience.observe.summary import MAX_SUMMARY, summarize_statement


@pytest.mark.parametrize(
    ("statement", "summary"),
    [
        # The examples of "Generating a summary of the query" in the conventions.
        ("SELECT * FROM wuser_table WHERE username = ?", "SELECT wuser_table"),
        (
            "INSERT INTO shipping_details (order_id, address) SELECT order_id, address"
            " FROM orders WHERE order_id = ?",
            "INSERT shipping_details SELECT orders",
        ),
        (
            "SELECT * FROM songs, artists WHERE songs.artist_id == artists.id",
            "SELECT songs artists",
        ),
        (
            "SELECT order_date FROM (SELECT * FROM orders o JOIN customers c"
            " ON o.customer_id = c.customer_id)",
            "SELECT SELECT orders customers",
        ),
        ('SELECT * FROM "song list"', 'SELECT "song list"'),
        # What SQLAlchemy and applications send.
        ("UPDATE accounts SET balance = balance - ? WHERE id = ?", "UPDATE accounts"),
        ("DELETE FROM t WHERE id IN (...)", "DELETE t"),
        ("SELECT v FROM accounts WHERE id = ? FOR UPDATE NOWAIT", "SELECT accounts"),
        ("INSERT INTO t (a) VALUES (?) ON CONFLICT (a) DO UPDATE SET a = excluded.a", "INSERT t"),
        (
            "SELECT a.id FROM public.users AS a LEFT OUTER JOIN public.orders o ON a.id = o.uid",
            "SELECT public.users public.orders",
        ),
        (
            "CREATE TABLE IF NOT EXISTS foo (id int, p int REFERENCES bar (id) ON DELETE CASCADE)",
            "CREATE foo",
        ),
        ("SELECT 1", "SELECT"),
        ("COMMIT", "COMMIT"),
        ("SET LOCAL synchronous_commit = ?", "SET"),
    ],
)
def test_summaries(statement: str, summary: str) -> None:
    """Operations and their targets, in the order written, names as written."""
    assert summarize_statement(statement) == summary


def test_no_literal_and_bounded_length() -> None:
    """Made from the normalized statement: no value appears; at most 255 characters, cut between words."""
    raw = "SELECT * FROM t WHERE email = 'secret@example.com' AND id = 42"
    assert summarize_statement(normalize_statement(raw)) == "SELECT t"
    many = "SELECT * FROM " + ", ".join(f"table_number_{i}" for i in range(100))
    out = summarize_statement(many)
    assert len(out) <= MAX_SUMMARY
    assert out.split()[-1].startswith("table_number_")  # not cut inside a name
    assert many.startswith("SELECT * FROM " + out.split(" ", 1)[1].split(" ")[0])
