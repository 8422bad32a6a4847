"""A real PgBouncer in front of the test PostgreSQL, started and stopped by the suite.

The Debian ``pgbouncer`` package provides the binary (``.ci/run`` installs it);
where it is absent, :func:`find_pgbouncer` returns None and the tests skip with
the reason (in CI, ``CI=true``, they fail instead: a missing server must not
turn into a silently green run). PgBouncer refuses to run as root, so as root
it runs as the same unprivileged account as the embedded server.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from sqlalchemy.engine import URL

from sqlalchemy_resilience.testing._servers import free_port
from tests.programs import find_program
from tests.waiting import wait_until

__all__ = ["PgBouncer", "find_pgbouncer"]


def find_pgbouncer() -> str | None:
    """The ``pgbouncer`` program, or None (Debian puts it in /usr/sbin, off a user's PATH)."""
    return find_program("pgbouncer")


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


class PgBouncer:
    """One PgBouncer process: ``pool_mode`` and ``pool_size`` per database, SCRAM to clients.

    ``users`` maps role names to passwords; PgBouncer logs in to the server
    with them and checks clients against them.
    """

    def __init__(
        self,
        server_host: str,
        server_port: int,
        users: dict[str, str],
        *,
        pool_mode: str = "transaction",
        pool_size: int = 10,
        max_client_conn: int = 200,
    ) -> None:
        program = find_pgbouncer()
        if program is None:
            raise RuntimeError("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
        self.program = program
        self.pool_mode = pool_mode
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sqla-resilience-pgbouncer-"))
        self.log_file = self.dir / "pgbouncer.log"
        (self.dir / "userlist.txt").write_text(
            "".join(f"{_quote(u)} {_quote(p)}\n" for u, p in users.items())
        )
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={server_host} port={server_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            f"unix_socket_dir = {self.dir}\n"
            f"auth_type = scram-sha-256\n"
            f"auth_file = {self.dir / 'userlist.txt'}\n"
            f"pool_mode = {pool_mode}\n"
            f"default_pool_size = {pool_size}\n"
            "min_pool_size = 0\n"
            "reserve_pool_size = 0\n"
            f"max_client_conn = {max_client_conn}\n"
            f"max_db_connections = {pool_size}\n"
            f"logfile = {self.log_file}\n"
            f"pidfile = {self.dir / 'pgbouncer.pid'}\n"
            # asyncpg sends these as startup parameters; PgBouncer must pass them.
            "ignore_startup_parameters = extra_float_digits,options,statement_timeout\n"
            "server_reset_query = DISCARD ALL\n"
            "admin_users = \n"
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._account = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    self._account = pwd.getpwnam(name)
                    break
                except KeyError:
                    continue
            if self._account is None:  # pragma: no cover - depends on the machine
                raise RuntimeError("running as root with no 'postgres' or 'nobody' account")
            for path in [self.dir, *self.dir.iterdir()]:
                os.chown(path, self._account.pw_uid, self._account.pw_gid)

    def start(self, *, timeout: float = 20.0) -> None:
        kwargs: dict[str, object] = {}
        if self._account is not None:
            kwargs = {
                "user": self._account.pw_uid,
                "group": self._account.pw_gid,
                "extra_groups": [],
            }
        self._proc = subprocess.Popen(  # type: ignore[call-overload]
            [self.program, str(self.dir / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=str(self.dir),
            **kwargs,
        )
        proc = self._proc

        def listening() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited at start:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        try:
            wait_until(listening, timeout=timeout, what="pgbouncer listening")
        except TimeoutError:
            raise RuntimeError(
                f"pgbouncer did not listen within {timeout} s:\n{self.log_tail()}"
            ) from None

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def url(self, server_url: URL) -> URL:
        """``server_url`` pointed at PgBouncer instead of the server."""
        return server_url.set(host="127.0.0.1", port=self.port)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)  # SIGINT: safe shutdown, no waiting for clients
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
