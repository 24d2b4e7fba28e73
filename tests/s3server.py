"""A real S3 server process for tests: moto's standalone server (``python -m moto.server``).

Use it from a test module with::

    from s3server import S3Bucket, S3Server, s3_bucket, s3_server, s3_server_factory  # noqa: F401

* ``s3_server``: one server per test module that imports it (module scope), started once.
  Do not stop it in a test: other tests share it. For outage tests use
  ``s3_server_factory()``, which gives a private server that the test may stop and restart.
* ``s3_bucket``: a fresh, empty bucket on ``s3_server`` for each test (an :class:`S3Bucket`
  with ``.name``, ``.url``, ``.options`` and ``.site(prefix, **options)``).

The server listens on 127.0.0.1 only, on a free port, in its own process group (killed at
teardown, and by the kernel if pytest dies). Readiness is awaited by polling an HTTP answer,
never by sleeping.

Restarts and state. moto keeps everything in memory, so a plain restart loses every bucket
and object. moto has no state file, but it has a request *recorder*
(``MOTO_ENABLE_RECORDING`` / ``MOTO_RECORDER_FILEPATH``): every request it serves, bodies
included, is appended to a JSON-lines file. With ``persistent=True`` (the default),
:meth:`S3Server.start` after a :meth:`S3Server.stop` replays that file
(``POST /moto-api/recorder/replay-recording``) before returning, so buckets, objects, their
SHA-256 checksums and Object Lock retention dates come back. Limits of that emulation:
version ids and LastModified times change on replay; requests that failed the first time are
replayed and fail again (harmless); a retention date that has passed in the meantime makes
its replayed PUT fail; and replay time grows with everything ever sent to the server, so
keep persistent servers to small data. ``persistent=False`` gives the plain in-memory
behaviour (an empty server after each restart).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port, wait_until

LOOPBACK = "127.0.0.1"
ACCESS_KEY = "testing-access-key"
SECRET_KEY = "testing-secret-key"
REGION = "us-east-1"

# No proxy for loopback, whatever the environment says (urllib here, botocore in clients).
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_NO_PROXY = {"http": "", "https": ""}


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL the server if the pytest process dies without tearing down."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort (non-Linux)
        pass


@dataclass
class S3Server:
    """One moto server process on 127.0.0.1:``port``, restartable on the same port."""

    root: Path
    port: int = field(default_factory=free_port)
    persistent: bool = True
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "moto.log"

    @property
    def recording_path(self) -> Path:
        return self.root / "recording.jsonl"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> S3Server:
        """Start (or restart, on the same port) and return once it serves requests."""
        assert not self.running, "S3 server already running"
        self.root.mkdir(parents=True, exist_ok=True)
        replay = self.persistent and self.recording_path.exists() and self.recording_path.stat().st_size > 0
        if not self.persistent:
            self.recording_path.unlink(missing_ok=True)
        env = dict(os.environ, NO_PROXY=LOOPBACK, no_proxy=LOOPBACK, **self.env)
        if self.persistent:
            env.update(MOTO_ENABLE_RECORDING="true", MOTO_RECORDER_FILEPATH=str(self.recording_path))
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)],
                cwd=self.root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True, preexec_fn=_die_with_parent,
            )
        finally:
            log.close()

        try:
            wait_until(self._answers, timeout=timeout, interval=0.05, what=f"moto S3 server on {self.endpoint}")
            if replay:
                status, body = self._request("POST", "/moto-api/recorder/replay-recording", timeout=timeout)
                if status != 200:
                    raise AssertionError(f"replaying the S3 server's recorded state failed: HTTP {status} {body[:500]!r}")
        except AssertionError as exc:
            self.kill()
            raise AssertionError(f"{exc}\n--- moto log ---\n{self.log_tail()}") from None
        return self

    def _answers(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"moto server exited ({self.process.returncode}) during startup")
        try:
            # An unrouted moto-api path: answered 404 by moto's own Flask app, and never recorded.
            status, _ = self._request("GET", "/moto-api/recorder/ready", timeout=2)
        except OSError:
            return False
        return status == 404

    def _request(self, method: str, path: str, timeout: float) -> tuple[int, bytes]:
        req = urllib.request.Request(self.endpoint + path, method=method, data=b"" if method == "POST" else None)
        try:
            with _OPENER.open(req, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the process group (moto exits cleanly), SIGKILL if it lingers."""
        if not self.running:
            return
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=30)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # -- clients ---------------------------------------------------------------------------------
    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server (fixed test credentials, no proxy, no retries)."""
        import boto3
        from botocore.config import Config

        settings: dict[str, Any] = {"retries": {"total_max_attempts": 1}, "connect_timeout": 5,
                                    "read_timeout": 30, "proxies": _NO_PROXY}
        settings.update(config)
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, config=Config(**settings),
        )

    def make_bucket(self, name: str, object_lock: bool = False) -> str:
        """Create a bucket (with Object Lock, which also turns versioning on, if asked)."""
        self.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
        return name

    def site_options(self, **extra: object) -> dict[str, object]:
        """Options for ``S3Site.from_url`` / ``open_site`` that point at this server."""
        return {"endpoint_url": self.endpoint, "region": REGION, "access_key_id": ACCESS_KEY,
                "secret_access_key": SECRET_KEY, **extra}


@dataclass
class S3Bucket:
    """A bucket on a test server, with what a site needs to reach it."""

    server: S3Server
    name: str

    @property
    def url(self) -> str:
        return f"s3://{self.name}"

    @property
    def options(self) -> dict[str, object]:
        return self.server.site_options()

    def site(self, prefix: str = "", **options: object) -> Any:
        from dicomvault.sites.s3 import S3Site

        url = f"{self.url}/{prefix}" if prefix else self.url
        return S3Site.from_url(url, self.server.site_options(**options))


def unique_bucket_name(stem: str = "dv") -> str:
    return f"{stem}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A started moto S3 server shared by the tests of one module (do not stop it in a test)."""
    server = S3Server(root=tmp_path_factory.mktemp("s3server"), persistent=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> S3Bucket:
    """A fresh, empty bucket (no Object Lock) on the shared server."""
    assert s3_server.running, "the shared s3_server was stopped by a test: use s3_server_factory for outages"
    return S3Bucket(s3_server, s3_server.make_bucket(unique_bucket_name()))


@pytest.fixture
def s3_server_factory(tmp_path: Path) -> Iterator[Callable[..., S3Server]]:
    """``s3_server_factory(persistent=True, env=None)`` -> a private, started server (stopped at teardown)."""
    started: list[S3Server] = []

    def factory(persistent: bool = True, env: dict[str, str] | None = None) -> S3Server:
        server = S3Server(root=tmp_path / f"s3server-{len(started)}", persistent=persistent, env=dict(env or {}))
        started.append(server)
        return server.start()

    yield factory
    for server in started:
        server.stop()


def recorded_requests(server: S3Server) -> list[dict[str, Any]]:
    """The requests a persistent server has recorded (for debugging a replay)."""
    if not server.recording_path.exists():
        return []
    return [json.loads(line) for line in server.recording_path.read_text().splitlines() if line.strip()]
