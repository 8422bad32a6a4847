"""Test mode: instant retries, capped attempts, breakers that admit every call.

For your own tests of code that uses :func:`~sqlalchemy_resilience.run_transaction`,
so they neither sleep nor trip a breaker left over from another test::

    from sqlalchemy_resilience.testing import set_testing

    @pytest.fixture(autouse=True)
    def _resilience_test_mode():
        set_testing(True, attempts=2)
        yield
        set_testing(False)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy_resilience._util.testmode import TEST_MODE

__all__ = ["in_test_mode", "is_testing", "set_testing"]


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def set_testing(enabled: bool, *, attempts: int = 3) -> None:
    """Turn test mode on or off for the whole process.

    Args:
        enabled: on or off.
        attempts: the most attempts any retry makes while on (>= 1).

    Example::

        set_testing(True, attempts=2)  # in conftest.py
    """
    flag: object = enabled  # untyped callers: check at run time
    if not isinstance(flag, bool):
        raise TypeError(f"enabled must be True or False, got {enabled!r}")
    if not _positive_int(attempts):
        raise ValueError(f"attempts must be an int >= 1, got {attempts!r}")
    TEST_MODE.enabled = enabled
    TEST_MODE.attempts = attempts


def is_testing() -> bool:
    """Whether test mode is on.

    Example::

        assert not is_testing()
    """
    return TEST_MODE.enabled


@contextlib.contextmanager
def in_test_mode(*, attempts: int = 3) -> Iterator[None]:
    """Test mode for the block, restoring the previous setting afterwards.

    Example::

        with in_test_mode(attempts=2):
            await run_transaction(Session, work)  # no backoff, at most 2 attempts
    """
    previous = (TEST_MODE.enabled, TEST_MODE.attempts)
    set_testing(True, attempts=attempts)
    try:
        yield
    finally:
        TEST_MODE.enabled, TEST_MODE.attempts = previous
