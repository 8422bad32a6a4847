"""Kept for ``sqlalchemy_resilience.messages``; see :mod:`sqlalchemy_resilience.errors.messages`."""

from __future__ import annotations

from sqlalchemy_resilience.errors.messages import MESSAGE_KEYS as MESSAGE_KEYS
from sqlalchemy_resilience.errors.messages import available_locales as available_locales
from sqlalchemy_resilience.errors.messages import register_messages as register_messages
from sqlalchemy_resilience.errors.messages import user_message as user_message

__all__ = ["MESSAGE_KEYS", "available_locales", "register_messages", "user_message"]
