"""A throwaway MariaDB server for demos and tests.

:class:`EmbeddedMariaDB` runs ``mariadb-install-db`` and ``mariadbd`` (Debian's
``mariadb-server-core`` package, or ``MARIADB_BIN``) in a temporary directory,
listening on ``127.0.0.1`` at a free port and on a unix socket in that
directory. ``mariadbd`` refuses to run as root without ``--user``, so when the
current process is root the server runs as an unprivileged account (``mysql``
if it exists, else ``nobody``). It exposes the controls fault-injection tests
need: stop, kill (a crash: InnoDB recovers on the next start), restart,
``SIGSTOP``/``SIGCONT`` and the server's pid.

Example::

    from sqlalchemy_resilience.testing.embedded_mariadb import EmbeddedMariaDB

    with EmbeddedMariaDB() as db:
        url = db.url(driver="aiomysql")  # mysql+aiomysql://root:...@127.0.0.1:PORT/test
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from sqlalchemy.engine import URL

from ._servers import free_port, unprivileged_account

__all__ = ["EmbeddedMariaDB", "EmbeddedMariaDBError", "find_mariadb_bin"]

_PROGRAMS = ("mariadbd", "mariadb-install-db")

# A small, disposable server: no binary log, no durability work that only
# protects against an OS crash (tests kill the server, not the OS), and
# enough connections for pool tests on a 2-core machine.
_DEFAULT_SETTINGS: Mapping[str, str] = {
    "skip-log-bin": "",
    "innodb-buffer-pool-size": "64M",
    "innodb-log-file-size": "32M",
    "innodb-flush-log-at-trx-commit": "2",
    "max-connections": "200",
    "character-set-server": "utf8mb4",
    "collation-server": "utf8mb4_general_ci",
    "skip-name-resolve": "",
}


class EmbeddedMariaDBError(RuntimeError):
    """The embedded server could not be found, initialised or started."""


def find_mariadb_bin() -> dict[str, Path]:
    """The paths of ``mariadbd`` and ``mariadb-install-db``: ``MARIADB_BIN``, ``PATH``, ``/usr/sbin``.

    Raises:
        EmbeddedMariaDBError: a program is missing, naming where it looked and
            what to install.
    """
    found: dict[str, Path] = {}
    where = [os.environ.get("MARIADB_BIN", ""), "/usr/sbin", "/usr/bin", "/usr/local/bin"]
    for name in _PROGRAMS:
        path = shutil.which(name)
        for folder in where:
            if path is None and folder and (Path(folder) / name).is_file():
                path = str(Path(folder) / name)
        if path is not None:
            found[name] = Path(path)
    missing = [name for name in _PROGRAMS if name not in found]
    if missing:
        raise EmbeddedMariaDBError(
            f"no {' or '.join(missing)} found (looked in MARIADB_BIN, PATH, /usr/sbin); "
            "Debian: apt-get install --no-install-recommends mariadb-server-core"
        )
    return found


_free_port = free_port


def _unprivileged_account() -> pwd.struct_passwd:
    account = unprivileged_account(("mysql", "nobody"))
    if account is None:
        raise EmbeddedMariaDBError(
            "running as root, and neither a 'mysql' nor a 'nobody' account exists to run the server"
        )
    return account


class EmbeddedMariaDB:
    """A disposable MariaDB server in a temporary directory.

    Args:
        base_dir: where the data directory, socket and log go; a new temporary
            directory (removed by :meth:`stop` with ``cleanup=True``) when omitted.
        port: TCP port on 127.0.0.1; a free one when omitted.
        password: the ``root`` account's password for TCP connections (random
            when omitted); the unix socket authenticates the server's own OS
            account only, as Debian's packages do.
        settings: extra ``mariadbd`` options without the leading dashes
            (``{"innodb-lock-wait-timeout": "5"}``; ``""`` for a flag).

    Example::

        db = EmbeddedMariaDB()
        db.start()
        try:
            print(db.url(driver="pymysql"))
        finally:
            db.stop(cleanup=True)
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        password: str | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        if port is not None and not (0 < port < 65536):
            raise ValueError(f"port must be between 1 and 65535, got {port!r}")
        self._owns_base = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="sqla-resilience-mariadb-"))
        self.programs = find_mariadb_bin()
        self.port = port or _free_port()
        self.password = password or secrets.token_urlsafe(16)
        self.settings = {**_DEFAULT_SETTINGS, **(settings or {})}
        self.data_dir = self.base_dir / "data"
        self.socket = self.base_dir / "mysqld.sock"
        self.pid_file = self.base_dir / "mysqld.pid"
        self.log_file = self.base_dir / "error.log"
        self._account = _unprivileged_account() if os.geteuid() == 0 else None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle -------------------------------------------------------

    def __enter__(self) -> EmbeddedMariaDB:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop(cleanup=True)

    def _user_kwargs(self) -> dict[str, object]:
        if self._account is None:
            return {}
        return {
            "user": self._account.pw_uid,
            "group": self._account.pw_gid,
            "extra_groups": [],
        }

    def _log_tail(self, lines: int = 20) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def install(self) -> None:
        """Create the data directory (done by :meth:`start` when missing)."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self._account is not None:
            # The server account must reach and own its directory.
            os.chmod(self.base_dir, 0o755)  # noqa: S103
            os.chown(self.base_dir, self._account.pw_uid, self._account.pw_gid)
        proc = subprocess.run(  # type: ignore[call-overload]
            [
                str(self.programs["mariadb-install-db"]),
                "--no-defaults",
                f"--datadir={self.data_dir}",
                "--auth-root-authentication-method=socket",
                "--skip-test-db",
                *([f"--user={self._account.pw_name}"] if self._account is not None else []),
            ],
            capture_output=True,
            text=True,
            cwd=str(self.base_dir),
            check=False,
            **self._user_kwargs(),
        )
        if proc.returncode != 0:
            raise EmbeddedMariaDBError(
                f"mariadb-install-db failed with exit code {proc.returncode}:\n"
                f"{proc.stdout}{proc.stderr}"
            )

    def _arguments(self) -> list[str]:
        args = [
            str(self.programs["mariadbd"]),
            "--no-defaults",
            f"--datadir={self.data_dir}",
            "--bind-address=127.0.0.1",
            f"--port={self.port}",
            f"--socket={self.socket}",
            f"--pid-file={self.pid_file}",
            f"--log-error={self.log_file}",
        ]
        if self._account is not None:
            args.append(f"--user={self._account.pw_name}")
        args += [
            f"--{key}={value}" if value else f"--{key}" for key, value in self.settings.items()
        ]
        return args

    def start(self, *, timeout: float = 60.0) -> None:
        """Install when needed and start the server, waiting until it accepts connections."""
        first = not (self.data_dir / "mysql").is_dir()
        if first:
            self.install()
        self._spawn()
        self.wait_until_accepting(timeout=timeout)
        if first:
            self._create_tcp_root()

    def _spawn(self) -> None:
        self.pid_file.unlink(missing_ok=True)
        self._proc = subprocess.Popen(  # type: ignore[call-overload]
            self._arguments(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=str(self.base_dir),
            **self._user_kwargs(),
        )

    def _create_tcp_root(self) -> None:
        # The installer's root authenticates by socket only; tests connect
        # over TCP with a password, with every privilege.
        literal = self.password.replace("\\", "\\\\").replace("'", "\\'")
        self.execute_as_admin(
            f"CREATE USER 'root'@'127.0.0.1' IDENTIFIED BY '{literal}';"
            " GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;"
            " CREATE DATABASE IF NOT EXISTS test;"
        )

    def execute_as_admin(self, sql: str) -> str:
        """Run ``sql`` through the ``mariadb`` client over the unix socket; its output.

        The statements are the caller's own (test set-up), never user input.
        """
        client = shutil.which("mariadb") or shutil.which("mysql")
        if client is None:
            raise EmbeddedMariaDBError(
                "the mariadb client is missing: apt-get install mariadb-client-core"
            )
        # The installer gives root, and the OS account that ran it, a socket
        # login (unix_socket authentication): this process's own account.
        account = "root" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        proc = subprocess.run(
            [
                client,
                "--no-defaults",
                f"--socket={self.socket}",
                f"--user={account}",
                "--batch",
                "--skip-column-names",
                "-e",
                sql,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise EmbeddedMariaDBError(f"mariadb client failed: {proc.stderr.strip()}")
        return str(proc.stdout)

    def wait_until_accepting(self, *, timeout: float = 60.0) -> None:
        """Wait until the server answers on its TCP port (and its pid file is written)."""
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise EmbeddedMariaDBError(
                    f"mariadbd exited with code {self._proc.returncode}:\n{self._log_tail()}"
                )
            if self.pid_file.exists():
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock,
                ):
                    # The server speaks first: a handshake packet means it accepts.
                    sock.settimeout(2.0)
                    if sock.recv(4):
                        return
            if time.monotonic() > deadline:
                raise EmbeddedMariaDBError(
                    f"mariadbd did not accept connections within {timeout} s:\n{self._log_tail()}"
                )
            time.sleep(0.02)

    def stop(self, *, mode: str = "fast", cleanup: bool = False, timeout: float = 60.0) -> None:
        """Stop the server: ``fast`` (SIGTERM, a clean shutdown) or ``kill`` (SIGKILL, a crash).

        With ``cleanup=True`` the temporary directory is removed as well when
        this object created it.
        """
        if mode not in ("fast", "kill"):
            raise ValueError(f"mode must be 'fast' or 'kill', got {mode!r}")
        pid = self.server_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # a paused server never handles SIGTERM
                os.kill(pid, signal.SIGKILL if mode == "kill" else signal.SIGTERM)
        if self._proc is not None:
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=timeout)
            self._proc = None
        if cleanup and self._owns_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def restart(self, *, mode: str = "fast", timeout: float = 60.0) -> None:
        """Stop the server with ``mode`` and start it again (after ``kill``: crash recovery)."""
        self.stop(mode=mode, timeout=timeout)
        self.start(timeout=timeout)

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def server_pid(self) -> int | None:
        """The server's pid, or None when it is not running."""
        if not self.running:
            return None
        assert self._proc is not None
        return int(self._proc.pid)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Freeze the server with SIGSTOP for the block (everything hangs), then SIGCONT."""
        pid = self.server_pid()
        if pid is None:
            raise EmbeddedMariaDBError("the server is not running")
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    # -- addresses -------------------------------------------------------

    def url(
        self,
        *,
        driver: str = "pymysql",
        database: str = "test",
        username: str | None = None,
        password: str | None = None,
    ) -> URL:
        """A SQLAlchemy URL for TCP on 127.0.0.1.

        Args:
            driver: ``pymysql``, ``aiomysql``, ``asyncmy`` or ``mysqldb``.
            database: database name (``test`` exists).
            username: account; ``root`` when omitted (then ``password`` defaults to its password).
            password: the account's password.
        """
        user = username or "root"
        if username is None and password is None:
            password = self.password
        return URL.create(
            f"mysql+{driver}",
            username=user,
            password=password,
            host="127.0.0.1",
            port=self.port,
            database=database,
            query={"charset": "utf8mb4"},
        )

    def arguments(self) -> Sequence[str]:
        """The ``mariadbd`` command line this object starts (for a log or a bug report)."""
        return tuple(self._arguments())
