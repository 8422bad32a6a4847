"""A real HAProxy in front of a cluster's nodes, started and stopped by the suite.

The Debian ``haproxy`` package provides the binary (``.ci/run`` installs it
for the cluster tier). TCP mode and the checks at HAProxy's usual fast
settings: every 500 ms, down after 2 failures, up after 2 successes, and the
sessions of a server marked down cut. Two set-ups:

* Galera: round robin over every node, MySQL's handshake as the health check
  (``option mysql-check``);
* Patroni: only the node whose Patroni REST API answers ``GET /primary`` with
  200 is up (``option httpchk`` on each node's REST port), the usual way to
  route to the leader.
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
    """One HAProxy process in front of ``backends`` (ports on 127.0.0.1).

    Without ``check_ports`` (Galera) the nodes need the check account:
    ``CREATE USER 'haproxy_check'@'127.0.0.1'`` without a password
    (:data:`CHECK_USER`). With ``check_ports`` (Patroni: each node's REST
    port, in node order) a node is up while ``GET /primary`` answers 200 there.
    """

    def __init__(self, backends: Sequence[int], *, check_ports: Sequence[int] = ()) -> None:
        if check_ports and len(check_ports) != len(backends):
            raise ValueError("check_ports: one per backend")
        program = find_haproxy()
        if program is None:
            raise RuntimeError("haproxy is not installed (Debian: apt-get install haproxy)")
        self.program = program
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="sqla-resilience-haproxy-"))
        self.stats_socket = self.dir / "admin.sock"
        self.name = "patroni" if check_ports else "galera"
        servers = "".join(
            f"    server node{i} 127.0.0.1:{port} check"
            + (f" port {check_ports[i]}" if check_ports else "")
            + "\n"
            for i, port in enumerate(backends)
        )
        check = (
            "    option httpchk GET /primary\n    http-check expect status 200\n"
            if check_ports
            else f"    balance roundrobin\n    option mysql-check user {CHECK_USER}\n"
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
            f"listen {self.name}\n"
            f"    bind 127.0.0.1:{self.port}\n"
            f"{check}"
            "    default-server inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions\n"
            f"{servers}"
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start in the foreground (``-db``) and wait until it listens and sees the nodes up
        (Galera: every node; Patroni: one, the leader)."""
        self._proc = subprocess.Popen(
            [self.program, "-db", "-f", str(self.dir / "haproxy.cfg")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.stats_socket.exists, timeout=20, what="haproxy's stats socket")
        if self.name == "patroni":
            wait_until(lambda: self.up() == 1, timeout=20, what="the leader UP at haproxy")
        else:
            wait_until(
                lambda: all(s == "UP" for s in self.states().values()),
                timeout=20,
                what="every node UP at haproxy",
            )

    def up(self) -> int:
        """How many nodes HAProxy routes to now."""
        return sum(state == "UP" for state in self.states().values())

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
            if fields.get("pxname") == self.name and fields.get("svname", "").startswith("node"):
                states[fields["svname"]] = fields.get("status", "").split()[0]
        return states

    def sessions(self) -> dict[str, int]:
        """Sessions each node has had through the proxy (``stot``): connections counted."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        counts: dict[str, int] = {}
        for line in lines[1:]:
            fields = dict(zip(header, line.split(","), strict=False))
            if fields.get("pxname") == self.name and fields.get("svname", "").startswith("node"):
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
