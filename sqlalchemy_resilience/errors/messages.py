"""End-user-safe messages for translated errors, per locale.

Messages name a category of failure and what the user can do; they never
contain SQL, parameter values, schema names or connection details, so an
application can show them as they are (CWE-209). English is the fallback for
any locale without a catalogue; applications add or override catalogues with
:func:`register_messages`.

Example::

    >>> from sqlalchemy_resilience.errors.messages import user_message
    >>> user_message("unique_violation", "ja")
    'このデータは既に登録されています。'
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

__all__ = ["MESSAGE_KEYS", "available_locales", "register_messages", "user_message"]

_EN: dict[str, str] = {
    "database_error": "Something went wrong while saving or loading your data. Please try again later.",
    "database_unavailable": "The service is temporarily unavailable. Please try again in a moment.",
    "service_unavailable": (
        "The service is not available right now. Please contact support if this continues."
    ),
    "authentication_failed": (
        "The service cannot reach its data because of a configuration problem on our side. "
        "Please contact support if this continues."
    ),
    "database_not_found": (
        "The service cannot find its data because of a problem on our side. "
        "Please contact support if this continues."
    ),
    "read_only_server": (
        "The service is switching to another database server. Please try again in a moment."
    ),
    "too_many_connections": "The service is very busy right now. Please try again in a moment.",
    "connection_lost": "The connection was interrupted before your request finished. Please try again.",
    "commit_outcome_unknown": (
        "We could not confirm whether your change was saved. Please check before trying again."
    ),
    "pool_exhausted": "The service is very busy right now. Please try again in a moment.",
    "query_timeout": "Your request took too long and was stopped. Please try again later.",
    "lock_not_available": "This item is being changed by someone else right now. Please try again.",
    "transaction_conflict": (
        "Your change conflicted with another change made at the same time. Please try again."
    ),
    "snapshot_too_old": (
        "Your request ran for too long while the data was changing. Please try again."
    ),
    "constraint_violation": "This change is not allowed because it conflicts with existing data.",
    "unique_violation": "This item already exists.",
    "foreign_key_violation": (
        "This change refers to something that does not exist, "
        "or something else still depends on it."
    ),
    "not_null_violation": "A required value is missing.",
    "check_violation": "One of the values is not allowed.",
    "invalid_data": "One of the values has an invalid format or is out of range.",
    "permission_denied": "This operation is not permitted.",
    "invalid_statement": "Something went wrong while processing your request.",
    "insufficient_resources": "The service is temporarily unable to process requests. Please try again later.",
    "write_set_too_large": "This request is too large to be saved at once. Please send it in smaller parts.",
    "storage_failure": (
        "The service could not read or save data because of a problem on our side. "
        "Please contact support if this continues."
    ),
    "circuit_open": "The service is temporarily unavailable. Please try again in a moment.",
    "retry_exhausted": "The service could not complete your request. Please try again later.",
    "already_applied": "This request was already processed.",
    "saga_failed": "Your request could not be completed, so it was cancelled; nothing was changed.",
    "in_progress": "This request is still being processed. Please check again in a moment.",
    "invalid_cursor": "This page link is not valid. Please start again from the first page.",
}

_JA: dict[str, str] = {
    "database_error": "データの保存または読み込み中に問題が発生しました。しばらくしてから再度お試しください。",
    "database_unavailable": "サービスは一時的に利用できません。しばらくしてから再度お試しください。",
    "service_unavailable": "サービスは現在ご利用いただけません。解消しない場合はサポートにお問い合わせください。",
    "authentication_failed": "サービス側の設定の問題によりデータに接続できません。解消しない場合はサポートにお問い合わせください。",
    "database_not_found": "サービス側の問題によりデータが見つかりません。解消しない場合はサポートにお問い合わせください。",
    "read_only_server": "データベースサーバーの切り替え中です。しばらくしてから再度お試しください。",
    "too_many_connections": "ただいま大変混み合っています。しばらくしてから再度お試しください。",
    "connection_lost": "処理の完了前に接続が切断されました。再度お試しください。",
    "commit_outcome_unknown": "変更が保存されたかどうかを確認できませんでした。再度実行する前にご確認ください。",
    "pool_exhausted": "ただいま大変混み合っています。しばらくしてから再度お試しください。",
    "query_timeout": "処理に時間がかかりすぎたため中断されました。しばらくしてから再度お試しください。",
    "lock_not_available": "この項目は現在ほかの人が変更しています。再度お試しください。",
    "transaction_conflict": "同時に行われた別の変更と競合しました。再度お試しください。",
    "snapshot_too_old": "処理中にデータが変更され、処理時間が長くなりすぎました。再度お試しください。",
    "constraint_violation": "既存のデータと矛盾するため、この変更はできません。",
    "unique_violation": "このデータは既に登録されています。",
    "foreign_key_violation": "存在しないデータを参照しているか、ほかのデータから参照されているため変更できません。",
    "not_null_violation": "必須の値が入力されていません。",
    "check_violation": "許可されていない値が含まれています。",
    "invalid_data": "値の形式が正しくないか、範囲外です。",
    "permission_denied": "この操作は許可されていません。",
    "invalid_statement": "リクエストの処理中に問題が発生しました。",
    "insufficient_resources": "サービスは一時的に処理できない状態です。しばらくしてから再度お試しください。",
    "write_set_too_large": "このリクエストは一度に保存するには大きすぎます。小さく分けて送信してください。",
    "storage_failure": "サービス側の問題によりデータの読み込みまたは保存ができませんでした。解消しない場合はサポートにお問い合わせください。",
    "circuit_open": "サービスは一時的に利用できません。しばらくしてから再度お試しください。",
    "retry_exhausted": "リクエストを完了できませんでした。しばらくしてから再度お試しください。",
    "already_applied": "このリクエストは既に処理されています。",
    "saga_failed": "リクエストを完了できなかったため取り消しました。変更は行われていません。",
    "in_progress": "このリクエストは現在処理中です。しばらくしてから再度ご確認ください。",
    "invalid_cursor": "このページのリンクは無効です。最初のページからやり直してください。",
}

#: Every message key a translated error can carry.
MESSAGE_KEYS: frozenset[str] = frozenset(_EN)

_catalogues: dict[str, dict[str, str]] = {"en": dict(_EN), "ja": dict(_JA)}
_lock = threading.Lock()


def _normalise(locale: str) -> str:
    return locale.replace("-", "_").split(".")[0].lower()


def available_locales() -> list[str]:
    """The locales with a catalogue, sorted (``["en", "ja", ...]``)."""
    return sorted(_catalogues)


def register_messages(locale: str, messages: Mapping[str, str]) -> None:
    """Add or override messages for ``locale`` (``"de"``, ``"pt_BR"``...).

    Keys missing from ``messages`` fall back to English.

    Args:
        locale: a locale name; ``-`` and ``_`` are equivalent, case is ignored.
        messages: message key to text; keys must be in :data:`MESSAGE_KEYS`.

    Raises:
        ValueError: for an empty locale or an unknown message key.

    Example::

        register_messages("de", {"unique_violation": "Dieser Eintrag existiert bereits."})
    """
    given: object = locale  # callers may be untyped; check at run time
    if not isinstance(given, str) or not given.strip():
        raise ValueError(f"locale must be a non-empty string, got {locale!r}")
    unknown = sorted(set(messages) - MESSAGE_KEYS)
    if unknown:
        raise ValueError(f"unknown message keys {unknown}; allowed keys are {sorted(MESSAGE_KEYS)}")
    for key, text in messages.items():
        value: object = text
        if not isinstance(value, str) or not value:
            raise ValueError(f"message for {key!r} must be a non-empty string, got {text!r}")
    with _lock:
        _catalogues.setdefault(_normalise(locale), {}).update(messages)


def user_message(key: str, locale: str = "en") -> str:
    """The end-user message for ``key`` in ``locale``.

    Lookup tries the full locale (``pt_br``), then its language (``pt``), then English.

    Raises:
        KeyError: for a key not in :data:`MESSAGE_KEYS`.
    """
    if key not in MESSAGE_KEYS:
        raise KeyError(key)
    name = _normalise(locale or "en")
    for candidate in (name, name.split("_")[0]):
        catalogue = _catalogues.get(candidate)
        if catalogue and key in catalogue:
            return catalogue[key]
    return _catalogues["en"][key]
