"""A real PostgreSQL server for tests: the Debian package's binaries (/usr/lib/postgresql/<version>/bin).

Use it from a test module with::

    from pgserver import PostgresServer, postgres_server  # noqa: F401

``postgres_server`` is a session-scoped fixture giving one started :class:`PostgresServer`
for the whole test session, however many modules import it (the first request starts it, the
end of the session stops it). Each test takes its own fresh, empty database with
``postgres_server.create_database()``, which returns a SQLAlchemy URL
(``postgresql+psycopg://postgres@127.0.0.1:PORT/NAME``); ``recreate_database(url)`` drops and
recreates one (empty), e.g. to lose a catalog. Do not stop the shared server in a test.

The cluster lives in a private temporary directory, made by ``initdb`` with trust
authentication and UTF8: LC_COLLATE C, so text sorts byte-wise as in SQLite, and LC_CTYPE
C.UTF-8, so ``upper()`` folds beyond ASCII as fuzzy person-name matching needs (under a plain
C LC_CTYPE PostgreSQL's ``upper('ü')`` is ``'ü'``). PostgreSQL refuses to run as root, so
under root every PostgreSQL program runs as the unprivileged ``postgres`` OS user that the
Debian package creates, and the directory is owned by it (made under the system temp dir, not
pytest's root-only tmp tree, for that reason). The server listens on 127.0.0.1 only, on a
free port, plus a unix socket in its directory; fsync and synchronous commit are off (test
data need not survive power loss). It runs in its own process group and gets SIGKILL if the
pytest process dies without tearing down (its backends then exit by themselves). Readiness
is awaited by polling a real connection, never by sleeping.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port, wait_until
from s3server import S3Server

PG_LIB = Path("/usr/lib/postgresql")
LOOPBACK = "127.0.0.1"
SUPERUSER = "postgres"  # the database superuser initdb creates; also the OS user under root
OS_USER = "postgres"


def _parent_death_signal() -> Any:
    """A preexec_fn: SIGKILL the server if the pytest process dies without tearing down.

    libc is loaded here, in pytest: the child has already switched to the postgres user
    (which clears the parent-death signal, so it must be set after), and that user may not
    be able to read this Python's files (e.g. under /root) to import ctypes there."""
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except Exception:  # noqa: BLE001 - best effort (non-Linux)
        return None

    def die_with_parent() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return die_with_parent


def pg_bin_dir() -> Path:
    """``/usr/lib/postgresql/<newest version>/bin`` (the version is whatever Debian installed)."""
    found = sorted((p.parent for p in PG_LIB.glob("*/bin/initdb")),
                   key=lambda d: [int(x) if x.isdigit() else 0 for x in d.parent.name.split(".")])
    if not found:
        pytest.fail(f"PostgreSQL missing (no {PG_LIB}/*/bin/initdb): run scripts/test, which installs postgresql")
    return found[-1]


def _run_as() -> dict[str, Any]:
    """Popen arguments that run a PostgreSQL program as the postgres OS user when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam(OS_USER)
    except KeyError:
        pytest.fail(f"running as root, but there is no {OS_USER!r} OS user for PostgreSQL: install the Debian "
                    "postgresql package (scripts/test does)")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


@dataclass
class PostgresServer:
    """One PostgreSQL cluster and postmaster under ``root`` on 127.0.0.1:``port``."""

    root: Path
    port: int = field(default_factory=free_port)
    bin_dir: Path = field(default_factory=pg_bin_dir)
    process: subprocess.Popen[bytes] | None = None

    # The same process handling as the moto server's: ``running``; ``kill()`` (SIGKILL to the
    # process group: the postmaster and its backends); ``log_tail()``.
    running = S3Server.running
    kill = S3Server.kill
    log_tail = S3Server.log_tail

    # -- paths and addresses ---------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` over TCP (psycopg 3)."""
        return f"postgresql+psycopg://{SUPERUSER}@{LOOPBACK}:{self.port}/{database}"

    def _tool(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.bin_dir / name), *args], capture_output=True, text=True, timeout=120,
                              cwd=self.root, stdin=subprocess.DEVNULL, **_run_as())
        if check and proc.returncode != 0:
            raise AssertionError(f"{name} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
        return proc

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> PostgresServer:
        """initdb (once), then start the postmaster and return once it accepts connections."""
        assert not self.running, "PostgreSQL already running"
        owner = _run_as()
        if owner:
            os.chown(self.root, owner["user"], owner["group"])
        if not (self.data_dir / "PG_VERSION").exists():
            self._tool("initdb", "--pgdata", str(self.data_dir), "--username", SUPERUSER, "--auth", "trust",
                       "--encoding", "UTF8", "--locale", "C.UTF-8", "--lc-collate", "C", "--no-sync",
                       "--no-instructions")
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                 "-c", f"listen_addresses={LOOPBACK}", "-c", f"unix_socket_directories={self.root}",
                 "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
                cwd=self.root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_parent_death_signal(), **owner,
            )
        finally:
            log.close()
        try:
            wait_until(self._accepts, timeout=timeout, interval=0.05, what=f"PostgreSQL on {LOOPBACK}:{self.port}")
        except AssertionError as exc:
            self.kill()
            raise AssertionError(f"{exc}\n--- PostgreSQL log ---\n{self.log_tail()}") from None
        return self

    def _accepts(self) -> bool:
        import psycopg

        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"postgres exited ({self.process.returncode}) during startup")
        try:
            self._connect(connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """``pg_ctl stop -m fast`` (SIGKILL to the process group if it lingers)."""
        if not self.running:
            return
        assert self.process is not None
        self._tool("pg_ctl", "stop", "--pgdata", str(self.data_dir), "--mode", "fast", "--wait",
                   "--timeout", str(int(timeout)), check=False)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    # -- databases -------------------------------------------------------------------------------
    def _connect(self, database: str = "postgres", **options: Any) -> Any:
        import psycopg

        return psycopg.connect(host=LOOPBACK, port=self.port, user=SUPERUSER, dbname=database,
                               autocommit=True, **options)

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database (a generated name by default); returns its SQLAlchemy URL."""
        name = name or f"dv_{uuid.uuid4().hex[:12]}"
        with self._connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, disconnecting whoever still uses it."""
        with self._connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def recreate_database(self, url: str) -> str:
        """Drop the database ``url`` names and create it again, empty; returns the same URL."""
        name = url.rsplit("/", 1)[1]
        self.drop_database(name)
        return self.create_database(name)


_SERVER = pytest.StashKey[PostgresServer]()


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> PostgresServer:
    """The session's started PostgreSQL (do not stop it in a test).

    Kept in the config stash rather than in the fixture's own cache: each module that imports
    this fixture gets its own definition of it, and they must all share one server."""
    server = request.config.stash.get(_SERVER, None)
    if server is None:
        root = Path(tempfile.mkdtemp(prefix="dicomvault-pg-"))  # not under pytest's root-only tmp tree
        server = PostgresServer(root=root)
        request.config.add_cleanup(lambda: shutil.rmtree(root, ignore_errors=True))
        request.config.add_cleanup(server.stop)  # cleanups run last-in first-out: stop, then remove
        server.start()
        request.config.stash[_SERVER] = server
    assert server.running, "the shared PostgreSQL was stopped by a test"
    return server
