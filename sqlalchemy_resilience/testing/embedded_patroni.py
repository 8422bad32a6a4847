"""A throwaway Patroni cluster for tests: PostgreSQL nodes, one etcd, on 127.0.0.1.

:class:`EmbeddedPatroni` starts one etcd (Debian's ``etcd-server``) and
``size`` Patroni agents (Debian's ``patroni``), each running a PostgreSQL of
the system's binaries (the directory of ``pg_ctl``, as
:class:`~sqlalchemy_resilience.testing.embedded.EmbeddedPostgres` finds it).
The first agent bootstraps the cluster; the others clone it with
``pg_basebackup`` and stream from the leader, one of them as the synchronous
standby (``synchronous_mode``). The settings are the usual fast ones for a
test cluster: ``ttl`` 10 s, ``loop_wait`` 1 s, ``retry_timeout`` 4 s, a fast
checkpoint for each clone (without it each replica waits for a spread
checkpoint: minutes), ``pg_rewind`` for a demoted leader.

Every node has its own PostgreSQL and REST ports, so several clusters can
run side by side. As root, etcd, the agents and PostgreSQL run as the
``postgres`` (or ``nobody``) account.

Example::

    from sqlalchemy_resilience.testing.embedded_patroni import EmbeddedPatroni

    with EmbeddedPatroni(size=3) as cluster:
        leader = cluster.leader()
        url = cluster.url(driver="psycopg")  # every node, target_session_attrs=read-write
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy.engine import URL

from ._servers import free_port, unprivileged_account
from .embedded import EmbeddedPostgresError, find_pg_bin

__all__ = ["EmbeddedPatroni", "EmbeddedPatroniError", "PatroniNode", "find_patroni"]


class EmbeddedPatroniError(EmbeddedPostgresError):
    """The cluster could not be started, or did not reach the state asked for in time."""


def find_patroni() -> tuple[str, str]:
    """The ``patroni`` and ``etcd`` programs.

    Raises:
        EmbeddedPatroniError: one is missing, naming what to install.
    """
    patroni = shutil.which("patroni")
    etcd = shutil.which("etcd")
    missing = [name for name, path in (("patroni", patroni), ("etcd-server", etcd)) if not path]
    if missing or patroni is None or etcd is None:
        raise EmbeddedPatroniError(
            f"a Patroni cluster needs {', '.join(missing)}: Debian: apt-get install "
            "--no-install-recommends patroni etcd-server etcd-client"
        )
    return patroni, etcd


def _wait(predicate: Any, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise EmbeddedPatroniError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)  # polling a process we do not own: no event to wait on


class PatroniNode:
    """One member of an :class:`EmbeddedPatroni`: a Patroni agent and its PostgreSQL.

    Example::

        node = cluster.leader()
        node.kill()     # SIGKILL the agent and the postmaster: the machine is gone
        node.start()    # the agent again; it rejoins as a replica (pg_rewind)
    """

    def __init__(self, cluster: EmbeddedPatroni, index: int) -> None:
        self.cluster = cluster
        self.index = index
        self.name = f"node{index}"
        self.port = free_port()
        self.rest_port = free_port()
        self.dir = cluster.base_dir / self.name
        self.data_dir = self.dir / "data"
        self.config = self.dir / "patroni.yml"
        self._proc: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> None:
        c = self.cluster
        pg_hba = [
            "local all all trust",
            "host all all 127.0.0.1/32 scram-sha-256",
            f"host replication {c.replication_user} 127.0.0.1/32 scram-sha-256",
        ]
        config = {
            "scope": c.scope,
            "name": self.name,
            "log": {"level": "WARNING", "dir": str(self.dir)},
            "restapi": {
                "listen": f"127.0.0.1:{self.rest_port}",
                "connect_address": f"127.0.0.1:{self.rest_port}",
            },
            "etcd3": {"hosts": [f"127.0.0.1:{c.etcd_port}"]},
            "bootstrap": {
                "dcs": {
                    "ttl": c.ttl,
                    "loop_wait": c.loop_wait,
                    "retry_timeout": c.retry_timeout,
                    "maximum_lag_on_failover": 1048576,
                    "synchronous_mode": c.synchronous_mode,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "parameters": {
                            "wal_level": "replica",
                            "hot_standby": "on",
                            "wal_log_hints": "on",
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "max_connections": 200,
                            **c.settings,
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"auth-local": "trust"}],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{self.port}",
                "connect_address": f"127.0.0.1:{self.port}",
                "data_dir": str(self.data_dir),
                "bin_dir": str(c.bin_dir),
                "pgpass": str(self.dir / "pgpass"),
                "pg_hba": pg_hba,
                "authentication": {
                    "superuser": {"username": c.superuser, "password": c.password},
                    "replication": {
                        "username": c.replication_user,
                        "password": c.replication_password,
                    },
                    "rewind": {"username": c.superuser, "password": c.password},
                },
                "parameters": {"unix_socket_directories": str(self.dir)},
                "basebackup": [{"checkpoint": "fast"}],
            },
            "tags": {"nofailover": False, "noloadbalance": False},
        }
        # JSON is YAML: no YAML library needed to write Patroni's configuration.
        self.config.write_text(json.dumps(config, indent=2))

    def start(self) -> None:
        """Start the agent (it starts, clones or rewinds its PostgreSQL)."""
        if self.running:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self.cluster._own(self.dir)
        log = open(self.dir / "patroni.out", "ab")  # noqa: SIM115 - the child keeps it
        try:
            self._proc = subprocess.Popen(
                [self.cluster.patroni, str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=self.cluster._env(),
                start_new_session=True,
                **self.cluster._as_account(),
            )
        finally:
            log.close()

    @property
    def running(self) -> bool:
        """Whether the agent process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def agent_pid(self) -> int | None:
        """The Patroni agent's process id, or None when it is not running."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def postmaster_pid(self) -> int | None:
        """The PostgreSQL postmaster's process id (from ``postmaster.pid``), or None."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first)
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def status(self) -> dict[str, Any]:
        """The agent's ``GET /patroni`` (``role``, ``state``, ``timeline``, ...), or ``{}``."""
        return self.cluster._get(self.rest_port, "/patroni") or {}

    def answers(self, path: str) -> bool:
        """Whether ``GET path`` answers 200 (``/primary``, ``/replica``, ``/sync``, ``/health``)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.rest_port}{path}", timeout=2):
                return True
        except (OSError, urllib.error.URLError):
            return False

    def kill(self, *, postmaster: bool = True) -> None:
        """SIGKILL the agent and (by default) the postmaster: the node is gone at once.

        With ``postmaster=False`` only the agent dies and PostgreSQL goes on
        running without it (its leader key expires after ``ttl``).
        """
        pid = self.postmaster_pid
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=30)
            self._proc = None
        if postmaster and pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait(lambda: self.postmaster_pid is None, timeout=30, what=f"{self.name} gone")

    def stop(self) -> None:
        """Stop the agent (SIGTERM: it stops PostgreSQL first), then any postmaster left."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=30)
            self._proc = None
        pid = self.postmaster_pid
        if pid is not None:
            try:
                os.kill(pid, signal.SIGQUIT)  # immediate shutdown
            except ProcessLookupError:
                return
            _wait(lambda: self.postmaster_pid is None, timeout=30, what=f"{self.name} stopped")


class EmbeddedPatroni:
    """A disposable Patroni cluster of ``size`` PostgreSQL nodes and one etcd.

    Args:
        size: how many nodes (at least 1; 3 keeps a synchronous standby through one loss).
        base_dir: where the cluster's directories go; a new temporary directory
            (removed by :meth:`stop` with ``cleanup=True``) when omitted.
        ttl, loop_wait, retry_timeout: Patroni's timings (seconds); the
            leader key expires ``ttl`` seconds after its holder stops renewing it.
        synchronous_mode: Patroni's ``synchronous_mode`` (a commit waits for
            one standby; only a synchronous standby is promoted).
        settings: extra PostgreSQL parameters for every node.

    Example::

        cluster = EmbeddedPatroni(size=3)
        cluster.start()
        try:
            cluster.switchover()
        finally:
            cluster.stop(cleanup=True)
    """

    def __init__(
        self,
        size: int = 3,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        ttl: int = 10,
        loop_wait: int = 1,
        retry_timeout: int = 4,
        synchronous_mode: bool = True,
        settings: Mapping[str, str | int] | None = None,
    ) -> None:
        if isinstance(size, bool) or size < 1:
            raise ValueError(f"size must be an int >= 1, got {size!r}")
        if not loop_wait + 2 * retry_timeout <= ttl:
            raise ValueError(
                f"Patroni needs loop_wait + 2 * retry_timeout <= ttl, got "
                f"loop_wait={loop_wait}, retry_timeout={retry_timeout}, ttl={ttl}"
            )
        self.patroni, self.etcd = find_patroni()
        self.bin_dir = find_pg_bin()
        self._owns_base = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="sqla-resilience-patroni-"))
        os.chmod(self.base_dir, 0o755)  # noqa: S103 - the server account walks into it
        self.ttl, self.loop_wait, self.retry_timeout = ttl, loop_wait, retry_timeout
        self.synchronous_mode = synchronous_mode
        self.settings = dict(settings or {})
        self.scope = "sqlalchemy-resilience"
        self.superuser = "postgres"
        self.password = secrets.token_urlsafe(16)
        self.replication_user = "replicator"
        self.replication_password = secrets.token_urlsafe(16)
        self.etcd_port = free_port()
        self._etcd_peer_port = free_port()
        self._etcd: subprocess.Popen[bytes] | None = None
        self._account = unprivileged_account(("postgres", "nobody")) if os.geteuid() == 0 else None
        if os.geteuid() == 0 and self._account is None:
            raise EmbeddedPatroniError(
                "running as root, and neither a 'postgres' nor a 'nobody' account exists"
            )
        self.nodes = [PatroniNode(self, index) for index in range(size)]

    def __enter__(self) -> EmbeddedPatroni:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(cleanup=True)

    # -- processes -----------------------------------------------------------

    def _as_account(self) -> dict[str, Any]:
        if self._account is None:
            return {}
        return {"user": self._account.pw_uid, "group": self._account.pw_gid, "extra_groups": []}

    def _own(self, path: Path) -> None:
        if self._account is not None:
            os.chown(path, self._account.pw_uid, self._account.pw_gid)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "PATRONI"))}
        env["HOME"] = str(self.base_dir)
        return env

    def start(self, *, timeout: float = 120.0) -> None:
        """Start etcd, bootstrap the leader, then the replicas; wait until every node streams."""
        etcd_dir = self.base_dir / "etcd"
        etcd_dir.mkdir(exist_ok=True)
        self._own(etcd_dir)
        etcd_log = open(self.base_dir / "etcd.out", "ab")  # noqa: SIM115 - the child keeps it
        try:
            self._etcd = subprocess.Popen(
                [
                    self.etcd,
                    "--name=etcd0",
                    f"--data-dir={etcd_dir / 'data'}",
                    f"--listen-client-urls=http://127.0.0.1:{self.etcd_port}",
                    f"--advertise-client-urls=http://127.0.0.1:{self.etcd_port}",
                    f"--listen-peer-urls=http://127.0.0.1:{self._etcd_peer_port}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{self._etcd_peer_port}",
                    f"--initial-cluster=etcd0=http://127.0.0.1:{self._etcd_peer_port}",
                    "--log-level=error",
                ],
                stdin=subprocess.DEVNULL,
                stdout=etcd_log,
                stderr=subprocess.STDOUT,
                env=self._env(),
                start_new_session=True,
                **self._as_account(),
            )
        finally:
            etcd_log.close()
        _wait(
            lambda: self._get(self.etcd_port, "/health") is not None,
            timeout=30,
            what="etcd",
        )
        first, *others = self.nodes
        first.start()
        _wait(lambda: first.answers("/primary"), timeout=timeout, what="the bootstrap leader")
        for node in others:
            node.start()
        self.wait_until_healthy(timeout=timeout)

    def wait_until_healthy(self, *, timeout: float = 120.0) -> None:
        """Wait until there is a leader and every running agent's PostgreSQL is up and streaming."""

        def healthy() -> bool:
            members = self.members()
            running = {n.name for n in self.nodes if n.running}
            if not running or {m.get("name") for m in members} < running:
                return False
            roles = [m.get("role") for m in members if m.get("name") in running]
            states = {m.get("state") for m in members if m.get("name") in running}
            sync_ok = not self.synchronous_mode or len(running) < 2 or "sync_standby" in roles
            return roles.count("leader") == 1 and states <= {"running", "streaming"} and sync_ok

        _wait(healthy, timeout=timeout, what="a leader and every node streaming")

    def stop(self, *, cleanup: bool = False) -> None:
        """Stop the agents (replicas first), then etcd; remove the directory with ``cleanup=True``."""
        leader = self.leader()
        for node in sorted(self.nodes, key=lambda n: n is leader):
            node.stop()
        if self._etcd is not None:
            self._etcd.terminate()
            try:
                self._etcd.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._etcd.kill()
                self._etcd.wait(timeout=30)
            self._etcd = None
        if cleanup and self._owns_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- the REST API ----------------------------------------------------------

    def _get(self, port: int, path: str) -> Any:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            # /patroni on a replica, /primary elsewhere: 503 with the same JSON body.
            try:
                return json.loads(exc.read() or b"null")
            except ValueError:
                return None
        except (OSError, ValueError):
            return None

    def members(self) -> list[dict[str, Any]]:
        """``GET /cluster``'s members (name, role, state, lag) from the first agent that answers."""
        for node in self.nodes:
            if node.running:
                answer = self._get(node.rest_port, "/cluster")
                if isinstance(answer, dict) and "members" in answer:
                    return list(answer["members"])
        return []

    def leader(self) -> PatroniNode | None:
        """The node holding the leader key, or None (an election is going on)."""
        names = [m.get("name") for m in self.members() if m.get("role") == "leader"]
        return next((n for n in self.nodes if n.name in names), None)

    def switchover(self, candidate: PatroniNode | None = None) -> None:
        """A planned switchover (``POST /switchover``) to ``candidate`` or the sync standby.

        Returns once Patroni has accepted it; wait on :meth:`leader` for the new leader.
        """
        leader = self.leader()
        if leader is None:
            raise EmbeddedPatroniError("no leader to switch over from")
        if candidate is None:
            names = [m.get("name") for m in self.members() if m.get("role") == "sync_standby"]
            candidate = next((n for n in self.nodes if n.name in names and n is not leader), None)
        body: dict[str, str] = {"leader": leader.name}
        if candidate is not None:
            body["candidate"] = candidate.name
        request = urllib.request.Request(
            f"http://127.0.0.1:{leader.rest_port}/switchover",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            raise EmbeddedPatroniError(
                f"switchover refused: {exc.code} {exc.read().decode(errors='replace')}"
            ) from exc

    # -- addresses ---------------------------------------------------------------

    def url(self, *, driver: str = "psycopg", database: str = "postgres") -> URL:
        """A multi-host URL listing every node, for the primary (``target_session_attrs=read-write``).

        SQLAlchemy's form: one ``host=`` query entry per node (psycopg and asyncpg).
        """
        query: dict[str, str | list[str]] = {
            "host": [f"127.0.0.1:{node.port}" for node in self.nodes],
            "target_session_attrs": "read-write",
        }
        if driver == "asyncpg":
            query["ssl"] = "disable"
        return URL.create(
            f"postgresql+{driver}",
            username=self.superuser,
            password=self.password,
            database=database,
            query=query,
        )
