"""A real Orthanc (the Debian package's /usr/sbin/Orthanc) as a test peer: the hospital's PACS.

Use it from a test module with::

    from orthanc import Orthanc, orthanc, orthanc_factory  # noqa: F401

``orthanc`` is a function-scoped fixture giving a started :class:`Orthanc` with AE title
``ORTHANC``. To change the AE title or any Orthanc option, parametrize it indirectly::

    @pytest.mark.parametrize("orthanc", [{"aet": "PACS", "config": {"UnknownSopClassAccepted": True}}],
                             indirect=True)

or call ``orthanc_factory(aet=..., config=...)`` (several instances per test are fine; all are
stopped at teardown).

Every instance runs on its own free ports with a generated configuration, storage and index in
a private directory; no plugins are loaded and the system service (4242/8042) is never used.
Readiness is awaited by polling ``GET /system`` and the DICOM port, never by sleeping.

Loopback only: Orthanc 1.10 has no bind-address option (its HTTP and DICOM servers listen on
every interface), so the configuration closes them instead: ``RemoteAccessAllowed: false``
refuses HTTP clients other than localhost, and DICOM associations are accepted only from the
modalities registered here (``DicomAlwaysAllow*: false`` + ``DicomCheckModalityHost: true``),
which must be on 127.0.0.1. Register a local SCU (e.g. DCMTK ``storescu`` in a benchmark) with
``add_modality("storescu", "STORESCU", "127.0.0.1", 104)`` before it associates.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import free_port, wait_until

ORTHANC_BINARY = Path("/usr/sbin/Orthanc")
LOOPBACK = "127.0.0.1"

def _die_with_parent() -> None:
    """In the child before exec: SIGKILL Orthanc if the pytest process dies without tearing down."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort (non-Linux)
        pass


# No proxy for loopback, whatever the environment says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class OrthancError(AssertionError):
    """An Orthanc REST call failed; carries the HTTP status, the body and the log tail."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass
class Orthanc:
    """One Orthanc process with a private configuration, storage and index under ``root``."""

    root: Path
    aet: str = "ORTHANC"
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    extra_config: dict[str, Any] = field(default_factory=dict)
    modalities: dict[str, dict[str, Any]] = field(default_factory=dict)
    verbose: bool = True
    process: subprocess.Popen[bytes] | None = None

    # -- paths -----------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "orthanc.json"

    @property
    def log_path(self) -> Path:
        return self.root / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    def config(self) -> dict[str, Any]:
        """The full generated configuration (``extra_config`` wins over the defaults)."""
        cfg: dict[str, Any] = {
            "Name": f"dicomvault-test-{self.aet}",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "StorageCompression": False,
            "Plugins": [],
            "LuaScripts": [],
            "ConcurrentJobs": 2,
            "JobsHistorySize": 100,
            "SaveJobs": False,
            "SyncStorageArea": False,
            # HTTP: loopback clients only, no authentication, no extras.
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "HttpCompressionEnabled": False,
            "HttpDescribeErrors": True,
            "HttpThreadsCount": 8,
            "HttpRequestTimeout": 60,
            "TcpNoDelay": True,
            "ExecuteLuaEnabled": False,
            # DICOM: associations only from the registered (loopback) modalities.
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": False,
            "DicomAlwaysAllowStore": False,
            "DicomAlwaysAllowFind": False,
            "DicomAlwaysAllowFindWorklist": False,
            "DicomAlwaysAllowGet": False,
            "DicomAlwaysAllowMove": False,
            "DicomCheckModalityHost": True,
            "DicomModalitiesInDatabase": False,
            "DicomModalities": dict(self.modalities),
            "DicomScuTimeout": 15,
            "DicomScpTimeout": 30,
            "DicomThreadsCount": 4,
            "DicomEchoChecksFind": False,
            "UnknownSopClassAccepted": False,
            "StorageCommitmentReportsSize": 100,
            "SynchronousCMove": True,
            "OverwriteInstances": False,
            "MetricsEnabled": False,
        }
        cfg.update(self.extra_config)
        return cfg

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> Orthanc:
        assert ORTHANC_BINARY.exists(), f"{ORTHANC_BINARY} missing: run ./scripts/test, which installs orthanc"
        assert self.process is None or self.process.poll() is not None, "Orthanc already running"
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        args = [str(ORTHANC_BINARY), str(self.config_path)]
        if self.verbose:
            args.insert(1, "--verbose")
        env = dict(os.environ, TCP_NODELAY="1")
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                args, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, start_new_session=True, preexec_fn=_die_with_parent,
            )
        finally:
            log.close()

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"Orthanc exited ({self.process.returncode}) during startup:\n{self.log_tail()}")
            try:
                system = self.rest("GET", "/system", timeout=2)
            except (OrthancError, OSError):
                return False
            if system.get("DicomAet") != self.aet:
                raise AssertionError(f"port {self.http_port} answers as {system!r}, not our Orthanc {self.aet}")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(2)
                return s.connect_ex((LOOPBACK, self.dicom_port)) == 0

        try:
            wait_until(ready, timeout=timeout, interval=0.05, what=f"Orthanc {self.aet} GET /system")
        except AssertionError as exc:
            self.kill()
            raise AssertionError(f"{exc}\n--- Orthanc log ---\n{self.log_tail()}") from None
        return self

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (Orthanc shuts down cleanly), SIGKILL if it does not exit in ``timeout``."""
        if self.process is None or self.process.poll() is not None:
            return
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

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    # -- REST ------------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
                timeout: float = 60.0) -> tuple[int, bytes, str]:
        """Raw call: (status, body bytes, content type). Raises :class:`OrthancError` on HTTP >= 400."""
        req = urllib.request.Request(self.url + path, data=body, method=method.upper())
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with _OPENER.open(req, timeout=timeout) as resp:
                return resp.status, resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                detail: Any = json.loads(raw)
            except ValueError:
                detail = raw.decode(errors="replace")
            raise OrthancError(
                f"Orthanc {method.upper()} {path} -> HTTP {exc.code}: {detail}\n--- Orthanc log ---\n{self.log_tail()}",
                status=exc.code, body=detail,
            ) from None

    def rest(self, method: str, path: str, json: Any = None, timeout: float = 60.0) -> Any:  # noqa: A002
        """JSON in, JSON out (``None`` for an empty answer)."""
        import json as _json

        body = None if json is None else _json.dumps(json).encode()
        _status, raw, ctype = self.request(method, path, body, "application/json" if body is not None else None, timeout)
        if not raw:
            return None
        if "json" in ctype or raw[:1] in (b"{", b"["):
            return _json.loads(raw)
        return raw.decode(errors="replace")

    def get_bytes(self, path: str, timeout: float = 60.0) -> bytes:
        return self.request("GET", path, timeout=timeout)[1]

    # -- convenience -----------------------------------------------------------------------------
    def upload(self, path: Path | str | bytes) -> dict[str, Any]:
        """POST /instances with one Part-10 file (path or bytes); returns Orthanc's answer (ID, Parent*, Status)."""
        data = path if isinstance(path, bytes) else Path(path).read_bytes()
        _status, raw, _ctype = self.request("POST", "/instances", data, "application/dicom")
        answer = json.loads(raw)
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise OrthancError(f"upload of {path if not isinstance(path, bytes) else '<bytes>'} -> {answer}", body=answer)
        return answer

    def add_modality(self, name: str, aet: str, host: str, port: int, **options: Any) -> None:
        """PUT /modalities/{name}. ``options`` are Orthanc's per-modality fields (e.g. AllowTranscoding=False)."""
        assert host == LOOPBACK, f"test peers must be on {LOOPBACK}, not {host}"
        spec = {"AET": aet, "Host": host, "Port": int(port), **options}
        self.rest("PUT", f"/modalities/{urllib.parse.quote(name, safe='')}", spec)
        self.modalities[name] = spec

    def echo(self, name: str, timeout: float = 30.0) -> None:
        """POST /modalities/{name}/echo: Orthanc's C-ECHO SCU. Raises OrthancError if it fails."""
        self.rest("POST", f"/modalities/{urllib.parse.quote(name, safe='')}/echo", {}, timeout=timeout)

    def store_to_modality(self, name: str, resources: str | list[str], timeout: float = 120.0,
                          **options: Any) -> dict[str, Any]:
        """POST /modalities/{name}/store, synchronously (C-STORE SCU). ``resources`` are Orthanc IDs
        (patient/study/series/instance). Returns Orthanc's job result (InstancesCount,
        FailedInstancesCount, ...); raises OrthancError if Orthanc reports a failure."""
        if isinstance(resources, str):
            resources = [resources]
        body = {"Resources": list(resources), "Synchronous": True, **options}
        return self.rest("POST", f"/modalities/{urllib.parse.quote(name, safe='')}/store", body, timeout=timeout)

    def storage_commitment(self, name: str, resources: list[str], timeout: float = 60.0) -> dict[str, Any]:
        """POST /modalities/{name}/storage-commitment (N-ACTION); poll ``GET /storage-commitment/{ID}``."""
        return self.rest("POST", f"/modalities/{urllib.parse.quote(name, safe='')}/storage-commitment",
                         {"Resources": list(resources)}, timeout=timeout)

    def lookup(self, uid: str) -> list[dict[str, Any]]:
        """POST /tools/lookup: the Orthanc resources whose DICOM UID/ID is ``uid``."""
        _status, raw, _ = self.request("POST", "/tools/lookup", uid.encode(), "text/plain")
        return json.loads(raw)

    def instance_file(self, instance_id: str) -> bytes:
        """GET /instances/{id}/file: the Part-10 file as Orthanc stores it."""
        return self.get_bytes(f"/instances/{instance_id}/file")

    def instance_metadata(self, instance_id: str, name: str) -> str:
        """GET /instances/{id}/metadata/{name}, e.g. ``TransferSyntax``, ``SopClassUid``."""
        return self.get_bytes(f"/instances/{instance_id}/metadata/{name}").decode()


def _make(root: Path, aet: str = "ORTHANC", config: dict[str, Any] | None = None,
          modalities: dict[str, dict[str, Any]] | None = None, verbose: bool = True) -> Orthanc:
    return Orthanc(root=root, aet=aet, extra_config=dict(config or {}), modalities=dict(modalities or {}),
                   verbose=verbose)


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """``orthanc_factory(aet="ORTHANC", config=None, modalities=None, verbose=True)`` -> started Orthanc."""
    started: list[Orthanc] = []

    def factory(aet: str = "ORTHANC", config: dict[str, Any] | None = None,
                modalities: dict[str, dict[str, Any]] | None = None, verbose: bool = True) -> Orthanc:
        o = _make(tmp_path / f"orthanc-{len(started)}-{aet}", aet, config, modalities, verbose)
        started.append(o)
        return o.start()

    yield factory
    for o in started:
        o.stop()


@pytest.fixture
def orthanc(request: pytest.FixtureRequest, orthanc_factory: Callable[..., Orthanc]) -> Orthanc:
    """A started Orthanc; indirect parametrization with a dict passes ``orthanc_factory`` kwargs."""
    params = getattr(request, "param", None) or {}
    return orthanc_factory(**params)
