"""EmbeddedPatroni's arguments and what it says when its programs are missing (no cluster
started here: the cluster tier, tests/patroni, runs one)."""

from __future__ import annotations

import shutil

import pytest

from sqlalchemy_resilience.testing.embedded_patroni import (
    EmbeddedPatroni,
    EmbeddedPatroniError,
    find_patroni,
)


@pytest.mark.parametrize("size", [0, -1, True])
def test_size_must_be_a_positive_int(size: int) -> None:
    with pytest.raises(ValueError, match=rf"size must be an int >= 1, got {size!r}"):
        EmbeddedPatroni(size=size)


def test_timings_patroni_would_refuse_are_refused_first() -> None:
    with pytest.raises(ValueError, match=r"loop_wait \+ 2 \* retry_timeout <= ttl"):
        EmbeddedPatroni(ttl=5, loop_wait=1, retry_timeout=4)


def test_missing_programs_are_named_with_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(EmbeddedPatroniError, match="needs patroni, etcd-server: Debian: apt-get"):
        find_patroni()


def test_the_multi_host_url_lists_every_node_and_asks_for_the_primary() -> None:
    if shutil.which("patroni") is None or shutil.which("etcd") is None:
        pytest.skip("patroni and etcd are not installed (the URL needs an unstarted cluster)")
    cluster = EmbeddedPatroni(size=3)
    try:
        url = cluster.url(driver="asyncpg")
        assert url.query["host"] == tuple(f"127.0.0.1:{n.port}" for n in cluster.nodes)
        assert url.query["target_session_attrs"] == "read-write"
        assert url.password == cluster.password
    finally:
        cluster.stop(cleanup=True)
