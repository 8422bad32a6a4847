"""A throwaway MariaDB Galera cluster for tests: three nodes on 127.0.0.1.

:class:`EmbeddedGalera` starts ``size`` :class:`EmbeddedMariaDB` nodes with
the Galera 4 provider (Debian's ``galera-4``): the first bootstraps a new
cluster (``--wsrep-new-cluster``), the others join it and receive its data by
rsync state transfer (``wsrep_sst_rsync`` from ``mariadb-server``, and
``rsync``). Every node listens on its own ports (client, group
communication, incremental and full state transfer), so several clusters can
run side by side. Failure detection is tightened to seconds (Galera's own
defaults take up to 15 s to declare a node gone) so that tests of a lost node
run in seconds.

Example::

    from sqlalchemy_resilience.testing.embedded_galera import EmbeddedGalera

    with EmbeddedGalera(size=3) as cluster:
        urls = [node.url(driver="pymysql") for node in cluster.nodes]
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from ._servers import free_port
from .embedded_mariadb import EmbeddedMariaDB, EmbeddedMariaDBError

__all__ = ["EmbeddedGalera", "GaleraNode", "find_galera_provider"]

_PROVIDERS = ("/usr/lib/galera/libgalera_smm.so", "/usr/lib/libgalera_smm.so")

# Seconds, not Galera's defaults: a node that stops answering is suspected
# after 3 s and evicted after 6 s, and a partition waits 5 s for a primary
# component before giving up (tests lose nodes on purpose).
_FAST_FAILURE_DETECTION = (
    "evs.suspect_timeout=PT3S;evs.inactive_timeout=PT6S;evs.install_timeout=PT6S;"
    "pc.wait_prim_timeout=PT5S;gcache.size=64M"
)


def find_galera_provider() -> Path:
    """The Galera 4 provider library: ``GALERA_PROVIDER``, or Debian's ``galera-4`` path.

    Also checks that rsync state transfer can run (``rsync`` and
    ``wsrep_sst_rsync`` on PATH).

    Raises:
        EmbeddedMariaDBError: something is missing, naming what to install.
    """
    candidates = [os.environ.get("GALERA_PROVIDER", ""), *_PROVIDERS]
    provider = next((Path(c) for c in candidates if c and Path(c).is_file()), None)
    missing = [] if provider is not None else ["galera-4"]
    if shutil.which("wsrep_sst_rsync") is None:
        missing.append("mariadb-server (wsrep_sst_rsync)")
    if shutil.which("rsync") is None:
        missing.append("rsync")
    if missing or provider is None:
        raise EmbeddedMariaDBError(
            f"a Galera cluster needs {', '.join(missing)}: Debian: apt-get install "
            "--no-install-recommends galera-4 mariadb-server rsync"
        )
    return provider


class GaleraNode(EmbeddedMariaDB):
    """One node of an :class:`EmbeddedGalera`: a MariaDB server with the Galera provider.

    A joining node receives the cluster's data by state transfer instead of
    being installed, and the accounts come with it.

    After a lost quorum (two of three nodes gone), start the lost nodes
    together: the primary component is restored once every member of the
    last one is back, so one of them alone waits for the other.

    Example::

        node = cluster.nodes[1]
        node.stop(mode="kill")   # the cluster goes on with two
        node.start()             # rejoins (incremental state transfer)
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        index: int,
        port: int,
        password: str,
        settings: Mapping[str, str],
    ) -> None:
        super().__init__(base_dir, port=port, password=password, settings=settings)
        self.index = index
        self.name = f"node{index}"
        # Set for the one start that creates the cluster.
        self.bootstrap = False

    def _arguments(self) -> list[str]:
        args = super()._arguments()
        return [*args, "--wsrep-new-cluster"] if self.bootstrap else args

    def start(self, *, timeout: float = 120.0) -> None:
        """Start the node: bootstrap the cluster, or join it (a state transfer when new)."""
        if self.bootstrap:
            super().start(timeout=timeout)
            return
        # A joiner's data directory is filled by the state transfer; the
        # server account must own it.
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        if self._account is not None:
            for path in (self.base_dir, self.data_dir):
                os.chmod(path, 0o755)  # noqa: S103
                os.chown(path, self._account.pw_uid, self._account.pw_gid)
        self._spawn()
        self.wait_until_accepting(timeout=timeout)


class EmbeddedGalera:
    """A disposable Galera cluster of ``size`` MariaDB nodes.

    Args:
        size: how many nodes (at least 1; 3 keeps a quorum through one loss).
        base_dir: where the nodes' directories go; a new temporary directory
            (removed by :meth:`stop` with ``cleanup=True``) when omitted.
        settings: extra ``mariadbd`` options for every node.

    Example::

        cluster = EmbeddedGalera(size=3)
        cluster.start()
        try:
            print([node.port for node in cluster.nodes])
        finally:
            cluster.stop(cleanup=True)
    """

    def __init__(
        self,
        size: int = 3,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(size, bool) or size < 1:
            raise ValueError(f"size must be an int >= 1, got {size!r}")
        provider = find_galera_provider()
        self._owns_base = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="sqla-resilience-galera-"))
        os.chmod(self.base_dir, 0o755)  # noqa: S103 - the server account walks into it
        ports = [(free_port(), free_port(), free_port(), free_port()) for _ in range(size)]
        members = ",".join(f"127.0.0.1:{group}" for _, group, _, _ in ports)
        # One root password: the accounts travel with the state transfer.
        self.password = secrets.token_urlsafe(16)
        self.nodes: list[GaleraNode] = []
        for index, (port, group, ist, sst) in enumerate(ports):
            options = f"gmcast.listen_addr=tcp://127.0.0.1:{group};ist.recv_addr=127.0.0.1:{ist};"
            node_settings = {
                "wsrep-on": "ON",
                "wsrep-provider": str(provider),
                "wsrep-cluster-name": "sqlalchemy_resilience",
                "wsrep-cluster-address": f"gcomm://{members}",
                "wsrep-node-name": f"node{index}",
                "wsrep-node-address": f"127.0.0.1:{group}",
                "wsrep-node-incoming-address": f"127.0.0.1:{port}",
                "wsrep-provider-options": options + _FAST_FAILURE_DETECTION,
                "wsrep-sst-method": "rsync",
                "wsrep-sst-receive-address": f"127.0.0.1:{sst}",
                "binlog-format": "ROW",
                "innodb-autoinc-lock-mode": "2",
                "default-storage-engine": "InnoDB",
                **(settings or {}),
            }
            self.nodes.append(
                GaleraNode(
                    self.base_dir / f"node{index}",
                    index=index,
                    port=port,
                    password=self.password,
                    settings=node_settings,
                )
            )

    def __enter__(self) -> EmbeddedGalera:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(cleanup=True)

    def start(self, *, timeout: float = 120.0) -> None:
        """Bootstrap the first node, then join the others one at a time."""
        first = self.nodes[0]
        first.bootstrap = True
        try:
            first.start(timeout=timeout)
        finally:
            first.bootstrap = False
        for node in self.nodes[1:]:
            node.start(timeout=timeout)

    def stop(self, *, cleanup: bool = False) -> None:
        """Stop every node (the last one cleanly); remove the directory with ``cleanup=True``."""
        for node in reversed(self.nodes):
            node.stop(mode="fast")
        if cleanup and self._owns_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def status(self, node: GaleraNode) -> dict[str, str]:
        """The node's ``wsrep_%`` status variables (``wsrep_cluster_size``, ...)."""
        out = node.execute_as_admin("SHOW GLOBAL STATUS LIKE 'wsrep\\_%'")
        status: dict[str, str] = {}
        for line in out.splitlines():
            name, _, value = line.partition("\t")
            status[name] = value
        return status

    @property
    def ports(self) -> Sequence[int]:
        """The nodes' client ports, in node order."""
        return [node.port for node in self.nodes]
