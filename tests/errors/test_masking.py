"""The password mask: every occurrence of a real password, never the inside of a word."""

from __future__ import annotations

import pytest

from sqlalchemy_resilience._util.masking import mask_secret
from sqlalchemy_resilience.errors.classify import redact_text


@pytest.mark.parametrize(
    ("text", "secret", "expected"),
    [
        ("auth failed: s3cret-pass-word", "s3cret-pass-word", "auth failed: ***"),
        ("xs3cret-pass-wordx", "s3cret-pass-word", "x***x"),  # long: everywhere
        (
            'connection to server at "127.0.0.1", port 1 failed',
            "p",
            'connection to server at "127.0.0.1", port 1 failed',
        ),
        ("user=u password=p host=h", "p", "user=u password=*** host=h"),
        ("a.b*c failed", "a.b*c", "*** failed"),  # no regex meaning in the secret
        ("nothing to hide", None, "nothing to hide"),
        ("nothing to hide", "", "nothing to hide"),
    ],
)
def test_mask_secret(text: str, secret: str | None, expected: str) -> None:
    assert mask_secret(text, secret) == expected


def test_a_one_letter_password_leaves_the_servers_message_readable() -> None:
    """Found with the command line: ``u:p@host`` turned "port 1 failed" into "***ort 1 failed"."""
    message = 'connection to server at "127.0.0.1", port 1 failed: Connection refused'
    assert redact_text(message, secrets=("p",)) == message
