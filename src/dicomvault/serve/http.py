"""The HTTP side: liveness and Prometheus metrics (no patient data, no token), the operations
API and DICOMweb (off by default) behind one tokens file with roles (serve/access.py), the
replica store behind its own tokens, and the limits on what one client may hold
(serve/http_limits.py: request timeouts, body sizes)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dicomvault.archive.core import Archive
from dicomvault.jobs.restore.service import RestoreService

from dicomvault.serve.http_limits import RequestLimits, guarded_protocol  # request timeouts, body sizes
from dicomvault.serve.ops_api import api_routes  # /api/status, /api/restores, /api/drills: bearer tokens

log = logging.getLogger(__name__)

STORED_INSTANCES = Gauge("dicomvault_catalog_instances", "Instances indexed in the catalog")
STORED_BYTES = Gauge("dicomvault_catalog_bytes_stored", "Sealed bytes of all stored versions")
READYZ_CACHE_SECONDS = 5.0  # /readyz answers from a judgement at most this old
SITE_UP = Gauge("dicomvault_site_up", "1 when the site answers writes", ["site"])


def build_app(archive: Archive, restores: RestoreService | None = None) -> Starlette:
    async def healthz(_: Request) -> Response:
        site = archive.site.health()
        try:
            with archive.catalog.read() as conn:
                conn.exec_driver_sql("SELECT 1")
            catalog_ok = True
        except Exception:  # noqa: BLE001 - report, don't crash the probe
            catalog_ok = False
        ok = bool(site.get("ok")) and catalog_ok
        body = {"status": "ok" if ok else "degraded", "site": site.get("ok"), "catalog": catalog_ok}
        if "journal_pending" in site:  # acknowledged, not yet indexed and hardened
            body["journal_pending"] = site["journal_pending"]
        if not ok:
            body["error"] = site.get("error") or "catalog unreachable"
        return JSONResponse(body, status_code=200 if ok else 503)

    readiness: dict[str, Any] = {"at": float("-inf"), "body": None}
    readiness_lock = threading.Lock()

    def judged() -> dict[str, Any]:
        """The protection summary, computed at most once per READYZ_CACHE_SECONDS however many
        unauthenticated probes arrive (archive_status reads whole indexes)."""
        from dicomvault.serve.status import archive_status

        with readiness_lock:
            if time.monotonic() - readiness["at"] >= READYZ_CACHE_SECONDS:
                protection = archive_status(archive)["protection"]
                readiness["body"] = {"state": protection["state"], "reasons": [
                    {"code": r["code"], "severity": r["severity"]} for r in protection["reasons"]]}
                readiness["at"] = time.monotonic()
            return readiness["body"]

    async def readyz(_: Request) -> Response:
        """Protection, not liveness: 200 only when protected, else 503. No token (like /healthz):
        it says the state word and each reason's code and severity (site names at most), never a
        reason's text (paths, site errors) or anything about patients; `status --json` has the rest."""
        from starlette.concurrency import run_in_threadpool

        body = await run_in_threadpool(judged)
        return JSONResponse(body, status_code=200 if body["state"] == "protected" else 503)

    async def metrics(_: Request) -> Response:
        stats = archive.catalog.statistics()
        STORED_INSTANCES.set(stats["counts"]["instances"])
        STORED_BYTES.set(stats["bytes_stored"])
        SITE_UP.labels("primary").set(1 if archive.site.health().get("ok") else 0)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    from dicomvault.serve.dicomweb.app import dicomweb_routes  # QIDO-RS, WADO-RS, STOW-RS under /dicomweb
    from dicomvault.serve.replica_api import replica_routes  # this vault as another vault's vault:// site
    from dicomvault.serve.dashboard import dashboard_routes  # /, /login, /study/{uid}: behind a session or token

    from dicomvault.serve.dicomweb.common import PREFIX as DICOMWEB
    from dicomvault.serve.replica_api import PREFIX as REPLICA

    http = archive.settings.http

    def body_limit(path: str) -> int | None:
        """STOW-RS and the replica store check their own bodies (after authenticating); the rest: JSON."""
        return None if path.startswith((DICOMWEB, REPLICA)) else http.max_body_bytes

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics),
                *api_routes(archive, restores), *replica_routes(archive.settings.replica_store, archive.catalog),
                *dicomweb_routes(archive), *dashboard_routes(archive)],
        middleware=[Middleware(RequestLimits, request_timeout=http.request_timeout, limit_for=body_limit)],
    )


def _tls_options(archive: Archive, host: str) -> dict[str, str]:
    """uvicorn's TLS settings from ``[http] tls_cert_file/tls_key_file``, checked now.

    uvicorn loads them inside its own thread, where a bad file would only kill the thread and
    leave ``serve`` running without HTTP; loading them here turns that into a one-line error.
    """
    http = archive.settings.http
    from dicomvault.serve.dicomweb.app import plain_http_warning

    if (warning := plain_http_warning(archive, host)) is not None:
        log.warning("%s", warning)
    if not http.tls_cert_file:
        if archive.settings.replica_store.enabled and host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("[replica_store] is enabled over plain HTTP on %s: sender tokens travel in clear; "
                        "set [http] tls_cert_file and tls_key_file", host)
        return {}
    import ssl

    from dicomvault.config import ConfigError

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(http.tls_cert_file, http.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[http] tls_cert_file {http.tls_cert_file} / tls_key_file {http.tls_key_file} cannot be "
                          f"used for HTTPS: {exc}") from exc
    return {"ssl_certfile": http.tls_cert_file, "ssl_keyfile": http.tls_key_file}


class HttpServer:
    def __init__(self, archive: Archive, host: str, port: int, restores: RestoreService | None = None) -> None:
        # lifespan="off": the app has no startup/shutdown handlers, and a forced stop (see stop())
        # would otherwise log the cancelled lifespan task as an error.
        # http=: uvicorn's h11 protocol with a deadline on request headers (serve/http_limits.py).
        config = uvicorn.Config(build_app(archive, restores), host=host, port=port, log_level="warning", access_log=False,
                                lifespan="off", http=guarded_protocol(archive.settings.http.request_timeout),
                                **_tls_options(archive, host))  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)

    def start(self, timeout: float = 30) -> None:
        """Start serving and return once the port is bound.

        Waiting here means a caller that sees the DICOM port answer can rely on HTTP too, and a
        port that cannot be bound becomes an error at start-up rather than a dead thread found
        later by the first dashboard user. uvicorn logs the bind error and exits its thread.
        """
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.started():
            if not self.thread.is_alive():
                raise OSError(f"the HTTP server stopped while starting on {self.server.config.host}:"
                              f"{self.server.config.port} (see the error above; is the port in use?)")
            if time.monotonic() > deadline:
                raise OSError(f"the HTTP server did not start within {timeout:.0f} s")
            self.thread.join(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=3)
        if self.thread.is_alive():
            # An idle keep-alive TLS connection (a sending vault's pool) closes only once the peer
            # answers our close_notify, which an idle client never does: after 3 s of grace for
            # requests in flight, stop waiting for connections instead of hanging for the join.
            self.server.force_exit = True
            self.thread.join(timeout=7)

    def started(self) -> bool:
        return bool(getattr(self.server, "started", False))
