"""STOW-RS: POST /studies[/{study}] with multipart/related; type="application/dicom" (PS3.18 10.5).

Each part must be a DICOM Part-10 file. It goes through the same ``Ingestor.ingest`` as
C-STORE and ``import`` (``wait_for_index=True``): the object is sealed, fsynced and indexed
before its outcome is known, so a 200 means every instance is durable (promise 1), and
every stored or refused instance has its own ``store`` audit row written by ingest.

Parts are read and stored one at a time (see ``dicomweb_multipart``): memory holds one
instance, whatever the request size; the body is capped by ``[dicomweb] max_request_bytes``.

Response (application/dicom+json): ReferencedSOPSequence for stored instances (a re-sent,
identical instance counts as stored), FailedSOPSequence with a FailureReason for the others:

- 0xA700 out of resources: our storage or catalog refused (full, read-only...): retry later;
- 0xA900 the instance belongs to another study than the one in the URL (/studies/{study});
- 0xC000 cannot understand: not a Part-10 DICOM file, malformed, truncated, a part that is
  not application/dicom, or a part cut short by a broken body;
- 0x0110 processing failure: anything unexpected on our side (logged).

Status: 200 all stored; 202 some stored, some failed; 409 none stored. Refused before any
part is stored: 415 (not multipart/related; type="application/dicom"), 400 (no boundary,
malformed framing, no parts), 413 (larger than the cap). If the framing breaks after some
parts were stored, those stay stored (they are durable and reported), the broken remainder
is a 0xC000 failure and the status is 202. The reasons for failures are in a ``Warning``
header (the first ten failed parts) and in the server log.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from dicomvault.archive.core import Archive
from dicomvault.audit import AuditEvent, append
from dicomvault.dicom import DicomFormatError, parse_part10
from dicomvault.archive.write import IngestRejected

from dicomvault.serve.dicomweb import multipart as mp
from dicomvault.serve.dicomweb.common import (
    DICOM_JSON,
    DicomwebError,
    actor,
    check_uid,
    client_address,
    instance_url,
    log,
    parse_media_type,
    service_url,
    study_url,
)

OUT_OF_RESOURCES = 0xA700
STUDY_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
MAX_WARNINGS = 10


@dataclass
class Outcome:
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    failure: int | None = None  # FailureReason, None when stored
    reason: str = ""


def _best_effort_uids(data: bytes) -> tuple[str, str]:
    """SOP Class/Instance UIDs of a part we refuse, when they can be read at all."""
    try:
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True,
                             specific_tags=["SOPClassUID", "SOPInstanceUID"])
        return str(ds.get("SOPClassUID", "") or ""), str(ds.get("SOPInstanceUID", "") or "")
    except Exception:  # noqa: BLE001 - nothing readable: the failure item has no UIDs
        return "", ""


def _audit_refusal(archive: Archive, who: str, source: str, subject: str, reason: str) -> None:
    try:
        with archive.catalog.write() as conn:
            append(conn, AuditEvent(actor=who, action="store", subject=subject, outcome="rejected",
                                    detail={"reason": reason, "source": source}))
    except Exception as exc:  # noqa: BLE001 - a full disk must not turn a refusal into a crash
        log.error("could not audit a refused STOW-RS part (%s): %s", reason, exc)


def store_part(archive: Archive, data: bytes, target_study: str | None, who: str, source: str) -> Outcome:
    """Ingest one part, durably, or say why not (blocking: call from a worker thread)."""
    if len(data) < 132 or data[128:132] != b"DICM":
        sop_class, sop_instance = _best_effort_uids(data)
        reason = "not a DICOM Part-10 file (no 128-byte preamble and 'DICM' prefix)"
        _audit_refusal(archive, who, source, sop_instance, reason)
        return Outcome(sop_class, sop_instance, "", "", CANNOT_UNDERSTAND, reason)
    try:
        attrs = parse_part10(data).attributes
    except DicomFormatError:
        attrs = None  # ingest refuses it with the reason (and audits the refusal)
    if attrs is not None and target_study is not None and attrs.study_uid != target_study:
        reason = f"instance belongs to study {attrs.study_uid}, not to {target_study} named in the URL"
        _audit_refusal(archive, who, source, attrs.sop_instance_uid, reason)
        return Outcome(attrs.sop_class_uid, attrs.sop_instance_uid, attrs.study_uid, attrs.series_uid,
                       STUDY_MISMATCH, reason)
    try:
        archive.ingestor.ingest(data, source=source, actor=who, wait_for_index=True)
    except IngestRejected as exc:
        failure = OUT_OF_RESOURCES if exc.kind == "storage" else CANNOT_UNDERSTAND
        if attrs is not None:
            return Outcome(attrs.sop_class_uid, attrs.sop_instance_uid, attrs.study_uid, attrs.series_uid,
                           failure, exc.reason)
        return Outcome(*_best_effort_uids(data), "", "", failure, exc.reason)
    except Exception as exc:  # noqa: BLE001 - report the part as failed, keep serving
        log.exception("STOW-RS: unexpected failure storing a part from %s", who)
        uids = (attrs.sop_class_uid, attrs.sop_instance_uid) if attrs is not None else _best_effort_uids(data)
        return Outcome(*uids, "", "", PROCESSING_FAILURE, f"processing failure ({type(exc).__name__})")
    if attrs is None:  # ingest parses with the same function, so it refused it too; for completeness
        return Outcome(*_best_effort_uids(data), "", "")
    return Outcome(attrs.sop_class_uid, attrs.sop_instance_uid, attrs.study_uid, attrs.series_uid)


def _request_boundary(request: Request) -> str:
    raw = request.headers.get("content-type", "")
    media, params = parse_media_type(raw)
    kind = params.get("type", "").lower()
    if media != "multipart/related" or kind not in ("application/dicom", ""):
        if media == "multipart/related" and kind in ("application/dicom+json", "application/dicom+xml"):
            raise DicomwebError(415, f"STOW-RS with {kind} metadata and bulk data is not supported here; "
                                     'send the instances as multipart/related; type="application/dicom"')
        raise DicomwebError(415, 'STOW-RS takes multipart/related; type="application/dicom" (one Part-10 file per '
                                 f"part), not {raw[:100]!r}")
    boundary = params.get("boundary", "")
    if not boundary:
        raise DicomwebError(400, "the Content-Type multipart/related has no boundary parameter")
    if not mp.valid_boundary(boundary):
        raise DicomwebError(400, f"the multipart boundary {boundary[:80]!r} is not valid (1-{mp.MAX_BOUNDARY} characters "
                                 "of those RFC 2046 allows, not ending in a space)")
    return boundary


def _dataset(outcomes: list[Outcome], base: str, target_study: str | None, extra_failure: str | None) -> dict:
    stored = [o for o in outcomes if o.failure is None]
    failed = [o for o in outcomes if o.failure is not None]
    body: dict[str, Any] = {}
    studies = {o.study_uid for o in stored} | ({target_study} if target_study else set())
    if len(studies) == 1:
        body["00081190"] = {"vr": "UR", "Value": [study_url(base, next(iter(studies)))]}

    def ui(value: str) -> dict:
        return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}

    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [
            {"00081150": ui(o.sop_class_uid), "00081155": ui(o.sop_instance_uid),
             "00081190": {"vr": "UR", "Value": [instance_url(base, o.study_uid, o.series_uid, o.sop_instance_uid)]}}
            for o in stored
        ]}
    items = [{"00081150": ui(o.sop_class_uid), "00081155": ui(o.sop_instance_uid),
              "00081197": {"vr": "US", "Value": [o.failure]}} for o in failed]
    if extra_failure:
        items.append({"00081150": ui(""), "00081155": ui(""), "00081197": {"vr": "US", "Value": [CANNOT_UNDERSTAND]}})
    if items:
        body["00081198"] = {"vr": "SQ", "Value": items}
    return body


async def store(archive: Archive, request: Request) -> Response:
    target = request.path_params.get("study")
    if target is not None:
        check_uid(target, "Study Instance UID")
    boundary = _request_boundary(request)
    cap = archive.settings.dicomweb.max_request_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise DicomwebError(413, f"the request body ({declared} bytes) exceeds the limit of {cap} bytes "
                                 "([dicomweb] max_request_bytes); send fewer instances per request")
    who, source = actor(request), f"stow:{client_address(request)}"
    outcomes: list[Outcome] = []
    broken: str | None = None
    too_large = False
    try:
        async for part in mp.read_parts(request.stream(), boundary, cap):
            media, _params = parse_media_type(part.headers.get("content-type", "application/dicom"))
            if media != "application/dicom":
                sop_class, sop_instance = _best_effort_uids(part.body)
                reason = f"part of type {media!r} refused: each part must be application/dicom"
                await run_in_threadpool(_audit_refusal, archive, who, source, sop_instance, reason)
                outcomes.append(Outcome(sop_class, sop_instance, "", "", CANNOT_UNDERSTAND, reason))
                continue
            outcomes.append(await run_in_threadpool(store_part, archive, part.body, target, who, source))
            del part
    except mp.BodyTooLarge as exc:
        broken, too_large = exc.args[0], True
    except mp.MultipartError as exc:
        broken = str(exc)
    except ClientDisconnect:
        broken = "the client disconnected before the end of the body"
        log.warning("STOW-RS from %s: %s (%d part(s) processed)", who, broken, len(outcomes))

    if broken is not None:
        if not outcomes:  # refused as a whole (the router audits it)
            raise DicomwebError(413 if too_large else 400, f"malformed multipart/related body: {broken}"
                                if not too_large else broken)
        await run_in_threadpool(_audit_refusal, archive, who, source, target or "", f"malformed request: {broken}")
    if not outcomes:
        raise DicomwebError(400, "the multipart/related body holds no parts")

    stored = sum(1 for o in outcomes if o.failure is None)
    failed = len(outcomes) - stored + (1 if broken else 0)
    status = 200 if not failed else (409 if not stored else 202)
    warnings = [f"{o.sop_instance_uid or 'part'}: {o.reason}" for o in outcomes if o.failure is not None]
    if broken:
        warnings.append(f"body: {broken}")
    headers = {}
    if warnings:
        text = "; ".join(" ".join(w.replace('"', "'").split()) for w in warnings[:MAX_WARNINGS])
        text = text.encode("latin-1", "replace").decode("latin-1")
        headers["Warning"] = f'299 {service_url(request)}: "{text}"'[:4000]
        log.warning("STOW-RS from %s: %d stored, %d failed: %s", who, stored, failed, text)
    body = _dataset(outcomes, service_url(request), target, broken)
    return Response(json.dumps(body).encode(), status_code=status, media_type=DICOM_JSON, headers=headers)
