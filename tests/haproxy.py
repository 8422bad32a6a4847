"""A real HAProxy in front of the Galera nodes, started and stopped by the suite.

The Debian ``haproxy`` package provides the binary (``.ci/run`` installs it
for the cluster tier). TCP mode, round robin, MySQL's handshake as the health
check (``option mysql-check``, the usual Galera set-up), and the checks at
HAProxy's usual fast settings: every 500 ms, down after 2 failures, up after 2
successes, and the sessions of a server marked down cut.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy_resilience.testing._servers import free_port
from tests.programs import find_program
from tests.waiting import wait_until

__all__ = ["HAProxy", "find_haproxy"]

CHECK_USER = "haproxy_check"


def find_haproxy() -> str | None:
    """The ``haproxy`` program, or None (Debian puts it in /usr/sbin)."""
    return find_program("haproxy")


class HAProxy:
    """One HAProxy process balancing ``backends`` (ports on 127.0.0.1) round robin.

    The nodes need the check account: ``CREATE USER 'haproxy_check'@'127.0.0.1'``
    without a password (:data:`CHECK_USER`).
    """

    def __init__(self, backends: Sequence[int]) -> None:
        program = find_haproxy()
        if program is None:
            raise RuntimeError("haproxy is not installed (Debian: apt-get install haproxy)")
        self.program = program
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sqla-resilience-haproxy-"))
        self.stats_socket = self.dir / "admin.sock"
        servers = "".join(
            f"    server node{i} 127.0.0.1:{port} check\n" for i, port in enumerate(backends)
        )
        (self.dir / "haproxy.cfg").write_text(
            "global\n"
            "    maxconn 2000\n"
            f"    stats socket {self.stats_socket} mode 600 level admin\n"
            "defaults\n"
            "    mode tcp\n"
            "    timeout connect 2s\n"
            "    timeout client 120s\n"
            "    timeout server 120s\n"
            "listen galera\n"
            f"    bind 127.0.0.1:{self.port}\n"
            "    balance roundrobin\n"
            f"    option mysql-check user {CHECK_USER}\n"
            "    default-server inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions\n"
            f"{servers}"
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start in the foreground (``-db``) and wait until it listens and sees every node up."""
        self._proc = subprocess.Popen(
            [self.program, "-db", "-f", str(self.dir / "haproxy.cfg")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.stats_socket.exists, timeout=20, what="haproxy's stats socket")
        wait_until(
            lambda: all(s == "UP" for s in self.states().values()),
            timeout=20,
            what="every node UP at haproxy",
        )

    def command(self, line: str) -> str:
        """One command on HAProxy's admin socket (``show stat``, ``disable server ...``)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(self.stats_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[str, str]:
        """Each node's state as HAProxy sees it (``UP``, ``DOWN``, ...)."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        states: dict[str, str] = {}
        for line in lines[1:]:
            fields = dict(zip(header, line.split(","), strict=False))
            if fields.get("pxname") == "galera" and fields.get("svname", "").startswith("node"):
                states[fields["svname"]] = fields.get("status", "").split()[0]
        return states

    def sessions(self) -> dict[str, int]:
        """Sessions each node has had through the proxy (``stot``): connections counted."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        counts: dict[str, int] = {}
        for line in lines[1:]:
            fields = dict(zip(header, line.split(","), strict=False))
            if fields.get("pxname") == "galera" and fields.get("svname", "").startswith("node"):
                counts[fields["svname"]] = int(fields.get("stot") or 0)
        return counts

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
            self._proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
