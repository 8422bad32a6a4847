"""User-facing message catalogues."""

from __future__ import annotations

import pytest

import sqlalchemy_resilience as sr
from sqlalchemy_resilience.errors import messages as _messages
from sqlalchemy_resilience.errors.messages import (
    MESSAGE_KEYS,
    available_locales,
    register_messages,
    user_message,
)

# The catalogues the package ships, before any test registers its own.
_SHIPPED = {locale: dict(catalogue) for locale, catalogue in _messages._catalogues.items()}


def test_every_key_has_english_and_japanese() -> None:
    """Both shipped catalogues cover every key, and say something different."""
    for key in MESSAGE_KEYS:
        en, ja = user_message(key, "en"), user_message(key, "ja")
        assert en and ja and en != ja


def test_every_shipped_catalogue_is_complete() -> None:
    """A catalogue added beside en and ja must cover every key itself (no silent fallback)."""
    for locale, catalogue in _SHIPPED.items():
        missing = [key for key in MESSAGE_KEYS if not catalogue.get(key)]
        assert not missing, (locale, missing)


def test_locale_fallback() -> None:
    """Region, case and separators are tolerated; unknown locales fall back to English."""
    assert user_message("unique_violation", "JA_jp") == user_message("unique_violation", "ja")
    assert user_message("unique_violation", "xx-YY") == "This item already exists."
    assert user_message("unique_violation", "") == "This item already exists."


def test_register_messages_and_validation() -> None:
    """Applications add locales; unknown keys and empty texts are refused."""
    register_messages("de", {"unique_violation": "Dieser Eintrag existiert bereits."})
    assert "de" in available_locales()
    assert sr.UniqueViolation("x").user_message("de-AT") == "Dieser Eintrag existiert bereits."
    assert sr.ForeignKeyViolation("x").user_message("de").startswith("This change refers")
    with pytest.raises(ValueError, match="unknown message keys"):
        register_messages("de", {"nope": "x"})
    with pytest.raises(ValueError, match="non-empty string"):
        register_messages("de", {"unique_violation": ""})
    with pytest.raises(ValueError, match="locale must be"):
        register_messages(" ", {})
    with pytest.raises(KeyError):
        user_message("nope")


def test_user_messages_have_no_internals() -> None:
    """No user message mentions SQL, tables, constraints or SQLSTATEs."""
    for key in MESSAGE_KEYS:
        for locale in ("en", "ja"):
            text = user_message(key, locale).lower()
            for word in ("sql", "table", "constraint", "select", "insert", "postgres", "sqlite"):
                assert word not in text, (key, locale)
