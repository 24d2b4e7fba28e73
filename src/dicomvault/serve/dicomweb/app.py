"""DICOMweb under ``/dicomweb``: the routes, access control and the error/audit envelope.

The services themselves live in one module each: ``dicomweb_qido`` (search),
``dicomweb_wado`` (retrieve), ``dicomweb_stow`` (store); ``dicomweb_multipart``,
``dicomweb_content`` and ``dicomweb_catalog`` hold what they share.

Access control. DICOMweb hands out patient data, so it is off unless ``[dicomweb] enabled =
true`` (a disabled service answers 404 saying how to enable it). Every request must carry
``Authorization: Bearer <token>`` from the one tokens file of the HTTP side, ``[http]
api_tokens_file`` (serve/tokens.py: roles per line; QIDO-RS and WADO-RS need ``read``,
STOW-RS needs ``store``; 403 naming the role otherwise). An old ``[dicomweb] tokens_file``,
when set, is used instead, and its lines without roles read and store, as every token did
before roles. ``[dicomweb] anonymous_roles`` (default none) grants roles to requests without
a token, for a viewer on a trusted network that cannot send one. The token's name goes into
the audit actor (``dicomweb:<name>@<address>``). Use HTTPS (``[http] tls_cert_file``) beyond
one host.

Errors: every refusal is a status with a plain-text reason, and is audited (action ``read``,
``query`` or ``store``, outcome ``failure``); an unexpected exception is logged with its
traceback and answered 500 without details. The server keeps serving either way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from dicomvault.archive.core import Archive

from dicomvault.serve.dicomweb import qido as dicomweb_qido
from dicomvault.serve.dicomweb import stow as dicomweb_stow
from dicomvault.serve.dicomweb import wado as dicomweb_wado
from dicomvault.serve.access import Gate, api_tokens
from dicomvault.serve.dicomweb.common import PREFIX, DicomwebError, audit, client_address, error_response, log
from dicomvault.serve.tokens import READ, STORE, TokenFile

Handler = Callable[..., Awaitable[Response]]


def _subject(request: Request) -> str:
    params = request.path_params
    return params.get("instance") or params.get("series") or params.get("study") or ""


def dicomweb_routes(archive: Archive) -> list[BaseRoute]:
    settings = archive.settings.dicomweb
    if not settings.enabled:
        async def disabled(_: Request) -> Response:
            return error_response(404, "DICOMweb is disabled on this archive; set [dicomweb] enabled = true "
                                       "(it serves patient data: see the README before enabling it)")

        return [Route(PREFIX, disabled, methods=["GET", "POST"]),
                Mount(PREFIX, routes=[Route("/{rest:path}", disabled, methods=["GET", "POST"])])]

    if settings.tokens_file:  # the old, DICOMweb-only file: a line without roles reads and stores
        tokens = TokenFile(Path(settings.tokens_file), label="DICOMweb", default_roles=lambda _name: (READ, STORE))
        where = "[dicomweb] tokens_file"
        log.info("DICOMweb takes its tokens from %s ([dicomweb] tokens_file) instead of [http] api_tokens_file; "
                 "lines without roles there read and store", settings.tokens_file)
    else:
        tokens, where = api_tokens(archive.settings, label="DICOMweb"), "[http] api_tokens_file"
    if settings.anonymous_roles:
        log.warning("DICOMweb grants %s to requests without a token ([dicomweb] anonymous_roles): anyone who "
                    "reaches the port can do that", " and ".join(settings.anonymous_roles))
    gate = Gate(tokens, "dicomweb", where, frozenset(settings.anonymous_roles))

    async def authorise(request: Request, needed: str, action: str) -> Response | None:
        decision = gate.decide(request.headers.get("authorization", ""), needed, client_address(request),
                               request.url.path)
        if decision.status == 503:
            log.error("DICOMweb refuses every request: %s", decision.reason)
            return error_response(503, "DICOMweb access tokens are misconfigured on the server (see its log)")
        if decision.identity is not None:
            request.scope["dicomvault.token_name"] = decision.identity.name
        if decision.allowed:
            return None
        if decision.audit:
            if decision.status == 401:
                await audit(archive.catalog, request, "login", "", "failure", {"error": "missing or unknown bearer token"})
            else:
                await audit(archive.catalog, request, action, _subject(request), "forbidden",
                            {"status": 403, "needed": decision.needed})
        return error_response(decision.status, decision.reason, decision.headers)

    def endpoint(handler: Handler, action: str, *args: Any) -> Callable[[Request], Awaitable[Response]]:
        needed = STORE if action == "store" else READ

        async def run(request: Request) -> Response:
            request.scope["dicomvault.base_url"] = settings.base_url
            denied = await authorise(request, needed, action)
            if denied is not None:
                return denied
            try:
                return await handler(archive, request, *args)
            except DicomwebError as exc:
                log.info("DICOMweb %s %s refused (%d): %s", request.method, request.url.path, exc.status, exc.reason)
                await audit(archive.catalog, request, action, _subject(request), "failure",
                            {"status": exc.status, "error": exc.reason})
                return error_response(exc.status, exc.reason)
            except Exception as exc:  # noqa: BLE001 - answer, log, keep serving
                log.exception("DICOMweb %s %s failed", request.method, request.url.path)
                await audit(archive.catalog, request, action, _subject(request), "failure",
                            {"status": 500, "error": f"{type(exc).__name__}: {exc}"})
                return error_response(500, f"internal error ({type(exc).__name__}); the server log has the details")

        return run

    search, retrieve, metadata = dicomweb_qido.search, dicomweb_wado.retrieve, dicomweb_wado.metadata
    study, series, instance = "/studies/{study}", "/studies/{study}/series/{series}", \
        "/studies/{study}/series/{series}/instances/{instance}"
    get, post = ["GET"], ["POST"]
    routes = [
        # QIDO-RS
        Route("/studies", endpoint(search, "query", "studies"), methods=get),
        Route(f"{study}/series", endpoint(search, "query", "series"), methods=get),
        Route(f"{series}/instances", endpoint(search, "query", "instances"), methods=get),
        Route(f"{study}/instances", endpoint(search, "query", "instances"), methods=get),
        Route("/series", endpoint(search, "query", "series"), methods=get),
        Route("/instances", endpoint(search, "query", "instances"), methods=get),
        # STOW-RS
        Route("/studies", endpoint(dicomweb_stow.store, "store"), methods=post),
        Route(study, endpoint(dicomweb_stow.store, "store"), methods=post),
        # WADO-RS
        Route(study, endpoint(retrieve, "read"), methods=get),
        Route(series, endpoint(retrieve, "read"), methods=get),
        Route(instance, endpoint(retrieve, "read"), methods=get),
        Route(f"{study}/metadata", endpoint(metadata, "read"), methods=get),
        Route(f"{series}/metadata", endpoint(metadata, "read"), methods=get),
        Route(f"{instance}/metadata", endpoint(metadata, "read"), methods=get),
        Route(f"{instance}/frames/{{frames}}", endpoint(dicomweb_wado.frames, "read"), methods=get),
        Route(f"{instance}/bulkdata", endpoint(dicomweb_wado.bulkdata, "read"), methods=get),
        Route(f"{instance}/bulkdata/{{path:path}}", endpoint(dicomweb_wado.bulkdata, "read"), methods=get),
    ]
    return [Mount(PREFIX, routes=routes)]


def plain_http_warning(archive: Archive, host: str) -> str | None:
    """A warning for ``serve`` when DICOMweb would send patient data in clear beyond loopback."""
    settings = archive.settings
    if not settings.dicomweb.enabled or settings.http.tls_cert_file or host in ("127.0.0.1", "::1", "localhost"):
        return None
    guard = "anyone who reaches the port reads them" if settings.dicomweb.anonymous_roles else "bearer tokens travel"
    return (f"[dicomweb] is enabled over plain HTTP on {host}: patient data travels in clear and {guard}; "
            "set [http] tls_cert_file and tls_key_file, or bind to a trusted network only")


__all__ = ["dicomweb_routes", "plain_http_warning"]
