"""A throwaway PostgreSQL server for demos and tests.

:class:`EmbeddedPostgres` runs ``initdb`` and ``pg_ctl`` from whatever binaries
it finds -- ``PG_BIN``, ``pg_ctl`` on ``PATH``, Debian's
``/usr/lib/postgresql/*/bin`` or the ``pgserver`` wheel -- in a temporary
directory, listening on ``127.0.0.1`` at a free port and on a unix socket in
that directory. PostgreSQL refuses to run as root, so when the current process
is root the server runs as an unprivileged account (``postgres`` if it exists,
else ``nobody``). It also exposes the controls fault-injection tests need:
restart, crash (immediate stop), ``SIGSTOP``/``SIGCONT`` and the postmaster pid.

Example::

    from sqlalchemy_resilience.testing.embedded import EmbeddedPostgres

    with EmbeddedPostgres() as pg:
        url = pg.url(driver="asyncpg")  # postgresql+asyncpg://postgres:...@127.0.0.1:PORT/postgres
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from sqlalchemy.engine import URL

from ._servers import free_port, unprivileged_account

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError", "find_pg_bin"]

# Settings chosen for a small, disposable test server: no durability work that
# only protects against an OS crash (the tests crash the server, not the OS),
# and enough connections for pool tests on a 2-core machine.
_DEFAULT_SETTINGS: Mapping[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "max_connections": "60",
    "shared_buffers": "32MB",
    "fsync": "off",
    "full_page_writes": "off",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] %u@%d '",
    "dynamic_shared_memory_type": "posix",
}


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be found, initialised or started."""


def _bin_dir_candidates() -> Iterator[Path]:
    env_bin = os.environ.get("PG_BIN")
    if env_bin:
        yield Path(env_bin)
    on_path = shutil.which("pg_ctl")
    if on_path:
        yield Path(on_path).resolve().parent
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    yield from debian
    try:
        import pgserver  # noqa: F401  (imported for its bundled binaries)
    except ImportError:
        return
    import importlib.util

    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        yield Path(spec.origin).parent / "pginstall" / "bin"


def find_pg_bin() -> Path:
    """Return the directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Looks at ``PG_BIN``, then ``pg_ctl`` on ``PATH``, then
    ``/usr/lib/postgresql/*/bin`` (newest first), then the ``pgserver`` wheel.

    Raises:
        EmbeddedPostgresError: when none of them holds the three programs.

    Example::

        >>> find_pg_bin()  # doctest: +SKIP
        PosixPath('/usr/lib/postgresql/15/bin')
    """
    tried: list[str] = []
    for candidate in _bin_dir_candidates():
        tried.append(str(candidate))
        if all((candidate / name).is_file() for name in ("initdb", "pg_ctl", "postgres")):
            return candidate
    raise EmbeddedPostgresError(
        "no PostgreSQL binaries found (looked in: "
        + (", ".join(tried) or "nothing")
        + "); install PostgreSQL, set PG_BIN, or `pip install sqlalchemy-resilience[embedded]`"
    )


_free_port = free_port


def _unprivileged_account() -> pwd.struct_passwd:
    account = unprivileged_account(("postgres", "nobody"))
    if account is None:
        raise EmbeddedPostgresError(
            "running as root, and neither a 'postgres' nor a 'nobody' account exists to run the server"
        )
    return account


def _world_traversable(path: Path) -> bool:
    return all(os.stat(part).st_mode & 0o001 for part in [path, *path.parents])


class EmbeddedPostgres:
    """A disposable PostgreSQL cluster in a temporary directory.

    Args:
        base_dir: where the data directory, socket and log go; a new temporary
            directory (removed by :meth:`stop` with ``cleanup=True``) when omitted.
        port: TCP port on 127.0.0.1; a free one when omitted.
        superuser: name of the cluster's superuser role.
        password: the superuser's password (random when omitted); TCP
            connections authenticate with SCRAM, the unix socket trusts.
        settings: extra ``postgresql.conf`` settings, values as SQL literals
            (``{"max_connections": "30"}``).
        bin_dir: directory of the PostgreSQL programs; :func:`find_pg_bin` when omitted.

    Example::

        pg = EmbeddedPostgres()
        pg.start()
        try:
            print(pg.url(driver="psycopg"))
        finally:
            pg.stop()
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        superuser: str = "postgres",
        password: str | None = None,
        settings: Mapping[str, str] | None = None,
        bin_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if port is not None and not (0 < port < 65536):
            raise ValueError(f"port must be between 1 and 65535, got {port!r}")
        self._owns_base = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="sqla-resilience-pg-"))
        self.bin_dir = Path(bin_dir) if bin_dir is not None else find_pg_bin()
        self.port = port or _free_port()
        self.superuser = superuser
        self.password = password or secrets.token_urlsafe(16)
        self.settings = {**_DEFAULT_SETTINGS, **(settings or {})}
        self.data_dir = self.base_dir / "data"
        self.socket_dir = self.base_dir / "sock"
        self.log_file = self.base_dir / "postgresql.log"
        self._account = _unprivileged_account() if os.geteuid() == 0 else None
        self._started = False

    # -- lifecycle -------------------------------------------------------

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(cleanup=True)

    def _run(self, args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self._account is not None:
            kwargs["user"] = self._account.pw_uid
            kwargs["group"] = self._account.pw_gid
            kwargs["extra_groups"] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        proc = subprocess.run(  # type: ignore[call-overload]
            list(args),
            capture_output=True,
            text=True,
            env=env,
            cwd=str(self.base_dir),
            check=False,
            **kwargs,
        )
        if check and proc.returncode != 0:
            log_tail = ""
            if self.log_file.exists():
                log_tail = "\n".join(self.log_file.read_text(errors="replace").splitlines()[-20:])
            raise EmbeddedPostgresError(
                f"{Path(args[0]).name} failed with exit code {proc.returncode}:\n"
                f"{proc.stdout}{proc.stderr}{log_tail}"
            )
        return proc  # type: ignore[no-any-return]

    def _prepare_binaries(self) -> None:
        # As root the server runs as another account, which must be able to
        # reach the binaries; a wheel under /root is not reachable, so copy it.
        if self._account is None or _world_traversable(self.bin_dir):
            return
        install_root = self.bin_dir.parent
        target = self.base_dir / "pginstall"
        if not target.exists():
            shutil.copytree(install_root, target, symlinks=True)
        self.bin_dir = target / "bin"

    def initdb(self) -> None:
        """Create the data directory (done by :meth:`start` when missing)."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self._prepare_binaries()
        pwfile = self.base_dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._account is not None:
            # The server account must traverse into its data directory.
            os.chmod(self.base_dir, 0o755)  # noqa: S103
            for path in (self.base_dir, self.socket_dir, pwfile):
                os.chown(path, self._account.pw_uid, self._account.pw_gid)
        try:
            self._run(
                [
                    str(self.bin_dir / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    self.superuser,
                    "--pwfile",
                    str(pwfile),
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ]
            )
        finally:
            pwfile.unlink(missing_ok=True)
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as fh:
            fh.write("\n# sqlalchemy-resilience embedded server\n")
            fh.write(f"port = {self.port}\n")
            fh.write(f"unix_socket_directories = '{self.socket_dir}'\n")
            for key, value in self.settings.items():
                fh.write(f"{key} = {value}\n")

    def start(self, *, timeout: float = 60.0) -> None:
        """Initialise the cluster when needed and start the server, waiting until it accepts."""
        if not (self.data_dir / "PG_VERSION").exists():
            self.initdb()
        self._run(
            [
                str(self.bin_dir / "pg_ctl"),
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
                "-w",
                "-t",
                str(int(timeout)),
            ]
        )
        self._started = True

    def stop(self, *, mode: str = "fast", cleanup: bool = False, timeout: float = 60.0) -> None:
        """Stop the server (``mode`` is pg_ctl's: smart, fast or immediate).

        With ``cleanup=True`` the temporary directory is removed as well when
        this object created it.
        """
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"mode must be 'smart', 'fast' or 'immediate', got {mode!r}")
        if self._started and (self.data_dir / "postmaster.pid").exists():
            # A stopped (SIGSTOP) postmaster never answers pg_ctl; wake it first.
            pid = self.postmaster_pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            self._run(
                [
                    str(self.bin_dir / "pg_ctl"),
                    "stop",
                    "-D",
                    str(self.data_dir),
                    "-m",
                    mode,
                    "-w",
                    "-t",
                    str(int(timeout)),
                ],
                check=False,
            )
        self._started = False
        if cleanup and self._owns_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def start_standby(self, *, timeout: float = 60.0) -> EmbeddedPostgres:
        """A hot standby of this running server (streaming replication), started.

        The standby is a copy made by ``pg_basebackup`` (same superuser and
        password), on a port of its own; it reports ``in_hot_standby = on``
        and refuses writes (25006) until :meth:`promote` makes it a primary.
        Stop it like any other server.

        Example::

            standby = pg.start_standby()
            ...
            standby.promote()  # now it accepts writes: a failover
        """
        if not self.running:
            raise EmbeddedPostgresError("start_standby needs this server running")
        standby = EmbeddedPostgres(
            superuser=self.superuser,
            password=self.password,
            settings=self.settings,
            bin_dir=self.bin_dir,
        )
        standby.socket_dir.mkdir(parents=True, exist_ok=True)
        if standby._account is not None:
            os.chmod(standby.base_dir, 0o755)  # noqa: S103
            for path in (standby.base_dir, standby.socket_dir):
                os.chown(path, standby._account.pw_uid, standby._account.pw_gid)
        self._run(
            [
                str(self.bin_dir / "pg_basebackup"),
                "-D",
                str(standby.data_dir),
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                self.superuser,
                "--write-recovery-conf",
                "--wal-method=stream",
                "--checkpoint=fast",
                "--no-sync",
            ]
        )
        with (standby.data_dir / "postgresql.conf").open("a") as fh:
            fh.write("\n# sqlalchemy-resilience embedded standby\n")
            fh.write(f"port = {standby.port}\n")
            fh.write(f"unix_socket_directories = '{standby.socket_dir}'\n")
        standby.start(timeout=timeout)
        return standby

    def promote(self, *, timeout: float = 60.0) -> None:
        """Make this standby a primary (``pg_ctl promote``), waiting until it accepts writes."""
        self._run(
            [
                str(self.bin_dir / "pg_ctl"),
                "promote",
                "-D",
                str(self.data_dir),
                "-w",
                "-t",
                str(int(timeout)),
            ]
        )

    def restart(self, *, mode: str = "fast", timeout: float = 60.0) -> None:
        """Stop the server with ``mode`` and start it again."""
        self.stop(mode=mode, timeout=timeout)
        self.start(timeout=timeout)

    def crash_restart(self) -> None:
        """Stop immediately (no checkpoint, clients see EOF) and start again with crash recovery."""
        self.restart(mode="immediate")

    @property
    def running(self) -> bool:
        """Whether the postmaster process is alive."""
        pid = self.postmaster_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def postmaster_pid(self) -> int | None:
        """The postmaster's pid from ``postmaster.pid``, or None when not running."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().splitlines()[0]
        except (FileNotFoundError, IndexError):
            return None
        return int(first)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Freeze the postmaster with SIGSTOP for the block (new connections hang), then SIGCONT."""
        pid = self.postmaster_pid()
        if pid is None:
            raise EmbeddedPostgresError("the server is not running")
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    def wait_until_accepting(self, *, timeout: float = 30.0) -> None:
        """Poll with ``pg_isready`` until the server accepts connections."""
        deadline = time.monotonic() + timeout
        pg_isready = self.bin_dir / "pg_isready"
        while time.monotonic() < deadline:
            proc = self._run(
                [str(pg_isready), "-h", "127.0.0.1", "-p", str(self.port), "-q"], check=False
            )
            if proc.returncode == 0:
                return
            time.sleep(0.05)
        raise EmbeddedPostgresError(f"server on port {self.port} not accepting after {timeout}s")

    # -- addresses -------------------------------------------------------

    def url(
        self,
        *,
        driver: str = "psycopg",
        database: str = "postgres",
        username: str | None = None,
        password: str | None = None,
    ) -> URL:
        """A SQLAlchemy URL for TCP on 127.0.0.1.

        Args:
            driver: ``asyncpg``, ``psycopg`` (sync or async by engine) or ``psycopg_async``.
            database: database name.
            username: role; the superuser when omitted (then ``password`` defaults to its password).
            password: the role's password.
        """
        user = username or self.superuser
        if username is None and password is None:
            password = self.password
        query: dict[str, str] = {}
        if driver == "asyncpg":
            # asyncpg's default sslmode=prefer sends an SSLRequest over TCP.
            query["ssl"] = "disable"
        return URL.create(
            f"postgresql+{driver}",
            username=user,
            password=password,
            host="127.0.0.1",
            port=self.port,
            database=database,
            query=query,
        )
