"""What every DICOMweb module shares: error replies, UID checks, the audit actor and row, URLs.

Errors are plain text (``text/plain``) with a one-line reason, so a person reading a viewer's
log or ``curl`` output sees why a request was refused; the status code carries the meaning
(400 bad request, 404 unknown UID, 406 representation not offered, 413/415 for STOW-RS).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from dicomvault.audit import AuditEvent, append
from dicomvault.catalog import Catalog

log = logging.getLogger("dicomvault.serve.dicomweb.app")

PREFIX = "/dicomweb"
DICOM_JSON = "application/dicom+json"
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


class DicomwebError(Exception):
    """A request we refuse: ``status`` and a reason meant for the caller."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def error_response(status: int, reason: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(reason + "\n", status_code=status, headers=headers)


def valid_uid(value: str) -> bool:
    """PS3.5 9.1: digits and dots, no empty or zero-padded component, at most 64 characters."""
    return 0 < len(value) <= 64 and _UID.fullmatch(value) is not None


def check_uid(value: str, what: str) -> str:
    if not valid_uid(value):
        raise DicomwebError(400, f"{what} {value[:80]!r} is not a valid UID "
                                 "(digits and dots, no leading zeros, at most 64 characters)")
    return value


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def actor(request: Request) -> str:
    """``dicomweb:<client address>``, with the token's name when the caller showed one."""
    name = request.scope.get("dicomvault.token_name")
    address = client_address(request)
    return f"dicomweb:{name}@{address}" if name else f"dicomweb:{address}"


def service_url(request: Request) -> str:
    """Absolute base of the DICOMweb service, for Retrieve URLs and BulkDataURIs.

    ``[dicomweb] base_url`` when set (behind a reverse proxy); else as the client reached us.
    A Host header without a port means the scheme's default port, but some clients
    (dicomweb-client) send a bare host name whatever the port: when we do not listen on the
    default port, the port we listen on is added, so the URLs we hand out work.
    """
    configured = request.scope.get("dicomvault.base_url")
    if configured:
        return str(configured)
    scheme, netloc = request.url.scheme, request.url.netloc
    server = request.scope.get("server")
    host = netloc.rsplit("]", 1)[-1]
    if ":" not in host and server and server[1] and server[1] != {"http": 80, "https": 443}.get(scheme):
        netloc = f"{netloc}:{server[1]}"
    return f"{scheme}://{netloc}{PREFIX}"


def study_url(base: str, study: str) -> str:
    return f"{base}/studies/{study}"


def series_url(base: str, study: str, series: str) -> str:
    return f"{base}/studies/{study}/series/{series}"


def instance_url(base: str, study: str, series: str, instance: str) -> str:
    return f"{base}/studies/{study}/series/{series}/instances/{instance}"


def append_audit(catalog: Catalog, event: AuditEvent) -> None:
    try:
        with catalog.write() as conn:
            append(conn, event)
    except Exception as exc:  # noqa: BLE001 - a full or read-only disk must not turn a reply into a crash
        log.error("could not write audit row %s %s for %s: %s", event.action, event.outcome, event.actor, exc)


async def audit(catalog: Catalog, request: Request, action: str, subject: str, outcome: str,
                detail: dict[str, Any]) -> None:
    """One audit row for one request (not one per instance), off the event loop."""
    event = AuditEvent(actor=actor(request), action=action, subject=subject, outcome=outcome,
                       detail={"resource": request.url.path, **detail})
    await run_in_threadpool(append_audit, catalog, event)


def audit_later(catalog: Catalog, request: Request, action: str, subject: str, outcome: str,
                detail: dict[str, Any]) -> None:
    """The same, from code that cannot await (a stream closed by a client that went away)."""
    import asyncio

    event = AuditEvent(actor=actor(request), action=action, subject=subject, outcome=outcome,
                       detail={"resource": request.url.path, **detail})
    try:
        asyncio.get_running_loop().run_in_executor(None, append_audit, catalog, event)
    except RuntimeError:  # no loop any more: write it here
        append_audit(catalog, event)


def parse_media_type(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; a=b; c="d"`` -> ("type/subtype", {"a": "b", "c": "d"}), lower-case names."""
    parts = _split_outside_quotes(value, ";")
    media = parts[0].strip().lower() if parts else ""
    params: dict[str, str] = {}
    for item in parts[1:]:
        name, sep, raw = item.partition("=")
        if not sep:
            continue
        raw = raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = raw[1:-1].replace('\\"', '"')
        params[name.strip().lower()] = raw
    return media, params


def parse_accept(value: str) -> list[tuple[str, dict[str, str]]]:
    """Media ranges of an Accept header in order, without those refused with ``q=0``."""
    ranges = []
    for item in _split_outside_quotes(value, ","):
        if not item.strip():
            continue
        media, params = parse_media_type(item)
        try:
            if float(params.get("q", "1")) <= 0:
                continue
        except ValueError:
            pass
        ranges.append((media, params))
    return ranges


def _split_outside_quotes(value: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts
