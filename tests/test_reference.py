"""docs/reference.md lists every metric and every log record field the code creates."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sqlalchemy_resilience"
PAGE = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")

_INSTRUMENT = re.compile(
    r"create_(?:counter|histogram|observable_gauge|observable_up_down_counter)\(\s*"
    r'f?"([a-z_.{}]+)"',
    re.MULTILINE,
)
_EXTRA_KEY = re.compile(r'"(sqlalchemy_resilience\.[a-z_]+)":')


def _sources() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py"))


def test_every_metric_is_in_the_table() -> None:
    names = set(_INSTRUMENT.findall(_sources()))
    # The saga counters are made per event from one f-string.
    names.discard("sqlalchemy_resilience.sagas.{event}")
    from sqlalchemy_resilience.saga.metrics import _DESCRIPTIONS

    names |= {f"sqlalchemy_resilience.sagas.{event}" for event in _DESCRIPTIONS}
    assert names, "no instrument found: the pattern is out of date"
    missing = sorted(n for n in names if f"`{n}`" not in PAGE)
    assert missing == []


def test_every_log_record_field_is_listed() -> None:
    keys = set(_EXTRA_KEY.findall(_sources()))
    # Keys of dicts that are not log records: connection-record info and
    # attribute names of metrics, listed with the metrics.
    not_log_fields = {
        "sqlalchemy_resilience.pinged",
        "sqlalchemy_resilience.recycle_jitter",
        "sqlalchemy_resilience.fresh",
        "sqlalchemy_resilience.primary",
        "sqlalchemy_resilience.circuit_breaker.name",
        "sqlalchemy_resilience.circuit_breaker.state",
        "sqlalchemy_resilience.saga.name",
    }
    missing = sorted(
        k
        for k in keys - not_log_fields
        if f"`{k}`" not in PAGE and f"`.{k.rsplit('.', 1)[1]}`" not in PAGE
    )
    assert missing == []
