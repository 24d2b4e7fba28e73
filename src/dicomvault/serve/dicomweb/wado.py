"""WADO-RS: studies, series and instances as the original Part-10 files; metadata, bulk data, frames.

Instances go out as ``multipart/related; type="application/dicom"``, one part per instance,
each the very bytes that were archived (decrypted and checked against their recorded SHA-256
by ``Repository.load``). The response is streamed: instances are decrypted one at a time in a
worker thread, the next one while the event loop sends the current one (at most two in
memory), so a large study never sits in memory. The first instance is opened before the
response starts, so a damaged object or a missing site fails the request with a status and a
reason; a later failure can only abort the response (no terminating chunk, no closing
boundary: clients see an incomplete body, never a shorter "complete" study) and is logged
and audited.

Transfer syntax: with no ``transfer-syntax`` parameter, or ``transfer-syntax=*``, an instance
is sent as stored. This deliberately differs from PS3.18's default (Explicit VR Little
Endian): this is a byte-exact archive, and a client that wants another syntax says so. A
different syntax is produced only when that is lossless and cheap, between the uncompressed
little-endian syntaxes (pydicom re-writes the dataset); anything else (decompressing,
compressing) is refused with 406 and a reason, before any byte is sent.

Every request writes one ``read`` audit row (actor ``dicomweb:<client>``), not one per instance:
here on success or when a started stream breaks, in the router for a refused request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from dicomvault.archive.core import Archive
from dicomvault.catalog import VersionRecord
from dicomvault.archive.repository import IntegrityError

from dicomvault.serve.dicomweb import content
from dicomvault.serve.dicomweb import multipart as mp
from dicomvault.serve.dicomweb.catalog import latest_versions, missing_reason
from dicomvault.serve.numbers import whole_number
from dicomvault.serve.dicomweb.common import (
    DICOM_JSON,
    DicomwebError,
    audit,
    audit_later,
    check_uid,
    instance_url,
    log,
    parse_accept,
    service_url,
)

MAX_FRAMES_PER_REQUEST = 10_000


def _consume(future: "asyncio.Future[bytes]") -> None:
    """Retrieve the outcome of a read-ahead nobody will await (stream stopped), so asyncio stays quiet."""
    if not future.cancelled():
        future.exception()


def _reason(exc: Exception) -> str:
    return exc.reason if isinstance(exc, DicomwebError) else f"{type(exc).__name__}: {exc}"


def _path_uids(request: Request) -> tuple[str, str | None, str | None]:
    params = request.path_params
    study = check_uid(params["study"], "Study Instance UID")
    series = check_uid(params["series"], "Series Instance UID") if "series" in params else None
    instance = check_uid(params["instance"], "SOP Instance UID") if "instance" in params else None
    return study, series, instance


def _accept(request: Request) -> str | None:
    """The Accept header, or the ``accept`` query parameter that overrides it (PS3.18 8.3.3.1)."""
    return request.query_params.get("accept") or request.headers.get("accept") or None


async def _records(archive: Archive, request: Request) -> tuple[str, list[tuple[VersionRecord, str]]]:
    study, series, instance = _path_uids(request)
    records = await run_in_threadpool(latest_versions, archive.catalog, study, series, instance)
    if not records:
        reason = await run_in_threadpool(missing_reason, archive.catalog, study, series, instance)
        # 410 Gone: it was here and an IOCM rejection note rejected it; 404 otherwise.
        raise DicomwebError(410 if "rejected" in reason else 404, reason)
    return instance or series or study, records


def _load(archive: Archive, record: VersionRecord) -> bytes:
    try:
        _meta, data = archive.repository.load(record.object_id, record.sha256)
    except IntegrityError as exc:
        raise DicomwebError(500, f"instance {record.sop_instance_uid} version {record.version} failed "
                                 f"verification and is not served: {exc}") from exc
    except KeyError as exc:
        raise DicomwebError(500, f"instance {record.sop_instance_uid} version {record.version}: its object is "
                                 "missing from the primary site") from exc
    except OSError as exc:
        raise DicomwebError(503, f"the primary site cannot be read: {exc.strerror or exc}") from exc
    return data


# --- content negotiation --------------------------------------------------------------------


def dicom_syntax_chooser(accept: str | None) -> Callable[[str], str]:
    """From the Accept header: a function stored syntax -> syntax to send (or DicomwebError 406)."""
    wanted: list[str] = []
    for media, params in parse_accept(accept) if accept else [("multipart/related", {})]:
        kind = params.get("type", "application/dicom").lower()
        if media in ("*/*", "multipart/*"):
            wanted.append("*")
        elif media == "multipart/related" and kind in ("application/dicom", "application/*", "*/*"):
            wanted.append(params.get("transfer-syntax", "*"))
        elif media == "application/dicom":
            wanted.append(params.get("transfer-syntax", "*"))
    if not wanted:
        raise DicomwebError(406, 'instances are returned as multipart/related; type="application/dicom"; '
                                 f"the Accept header {accept!r} does not allow it")

    def choose(stored: str) -> str:
        if "*" in wanted or stored in wanted:
            return stored
        for syntax in wanted:
            if content.can_transcode(stored, syntax):
                return syntax
        offered = "as stored (transfer-syntax=*)"
        if stored in content.TRANSCODE_FROM:
            offered += " or in " + ", ".join(sorted(content.TRANSCODE_TO - {stored}))
        raise DicomwebError(406, f"an instance is stored in transfer syntax {stored}; it can be sent {offered}; "
                                 f"conversion to {', '.join(wanted)} is not offered (not lossless or not cheap)")

    return choose


def bulk_media(accept: str | None, stored: str) -> str:
    """The media type to send frames / bulk data of an instance stored in ``stored`` as, or 406.

    Native pixels go out as little-endian application/octet-stream. Encapsulated frames go
    out as stored: in their own media type (image/jpeg...), or as application/octet-stream
    when the client accepts that with ``transfer-syntax=*`` or the stored syntax (viewers such
    as OHIF ask this way and decode by the part's transfer-syntax). Decompressing is not offered.
    """
    native = content.is_native(stored)
    own, syntax = content.frame_media_type(stored), _sent_syntax(stored)
    if not accept:
        return own
    for requested, params in parse_accept(accept):
        if requested in ("*/*", "multipart/*"):
            return own
        kind = params.get("type", "application/octet-stream").lower() if requested == "multipart/related" else requested
        asked = params.get("transfer-syntax")
        if kind == "*/*" or kind == own or (kind.endswith("/*") and own.startswith(kind[:-1])):
            if asked in (None, "*", syntax) or (native and asked in content.TRANSCODE_TO):
                return own
        if kind == "application/octet-stream" and not native and asked in ("*", stored):
            return kind
    hint = "" if native else f"; the pixels are stored compressed ({stored}) and decompression is not offered"
    raise DicomwebError(406, f"this data can be sent as multipart/related; type=\"{own}\" (transfer syntax {syntax})"
                             f"{' or as application/octet-stream with transfer-syntax=*' if not native else ''}; "
                             f"the Accept header {accept!r} allows neither{hint}")


# --- instances ------------------------------------------------------------------------------


async def retrieve(archive: Archive, request: Request) -> Response:
    subject, records = await _records(archive, request)
    choose = dicom_syntax_chooser(_accept(request))
    targets = [choose(record.transfer_syntax_uid) for record, _cls in records]  # 406 before any byte

    def load_as(index: int) -> bytes:
        record = records[index][0]
        data = _load(archive, record)
        if targets[index] != record.transfer_syntax_uid:
            data = content.transcode(data, targets[index])
        return data

    first: bytes | None = await run_in_threadpool(load_as, 0)
    boundary = mp.new_boundary()

    async def body() -> AsyncIterator[bytes]:
        nonlocal first
        sent, size, done = 0, 0, False
        ahead: asyncio.Future[bytes] | None = None
        try:
            for index in range(len(records)):
                if first is not None:
                    data, first = first, None
                else:
                    assert ahead is not None
                    data, ahead = await ahead, None
                if index + 1 < len(records):  # decrypt the next one while this one is sent
                    ahead = asyncio.ensure_future(run_in_threadpool(load_as, index + 1))
                    ahead.add_done_callback(_consume)
                yield mp.part_header(boundary, f"application/dicom; transfer-syntax={targets[index]}")
                yield data
                yield mp.part_end()
                sent, size = sent + 1, size + len(data)
                del data
            await audit(archive.catalog, request, "read", subject, "success",
                        {"instances": sent, "bytes": size, "of": len(records)})
            done = True
            yield mp.closing(boundary)
        except Exception as exc:  # the status is sent already: cut the stream (no closing boundary)
            reason = _reason(exc)
            log.error("WADO-RS %s cut short after %d of %d instances: %s", request.url.path, sent, len(records), reason)
            done = True
            await audit(archive.catalog, request, "read", subject, "failure",
                        {"instances": sent, "bytes": size, "of": len(records), "error": reason})
            raise
        finally:
            if ahead is not None:
                ahead.cancel()
            if not done:  # the client went away (or the task was cancelled): we cannot await here
                audit_later(archive.catalog, request, "read", subject, "failure",
                            {"instances": sent, "bytes": size, "of": len(records), "error": "client disconnected"})

    return StreamingResponse(body(), media_type=mp.content_type("application/dicom", boundary))


async def metadata(archive: Archive, request: Request) -> Response:
    subject, records = await _records(archive, request)
    base = service_url(request)

    def build(index: int) -> bytes:
        record = records[index][0]
        ds = content.read_dataset(_load(archive, record))
        url = instance_url(base, record.study_uid, record.series_uid, record.sop_instance_uid)
        return json.dumps(content.metadata_json(ds, url, record.transfer_syntax_uid)).encode()

    first: bytes | None = await run_in_threadpool(build, 0)

    async def body() -> AsyncIterator[bytes]:
        nonlocal first
        sent, done = 0, False
        try:
            for index in range(len(records)):
                if first is not None:
                    item, first = first, None
                else:
                    item = await run_in_threadpool(build, index)
                yield (b"[" if index == 0 else b",") + item
                sent += 1
            await audit(archive.catalog, request, "read", subject, "success", {"view": "metadata", "instances": sent})
            done = True
            yield b"]"
        except Exception as exc:
            reason = _reason(exc)
            log.error("WADO-RS metadata %s cut short after %d instances: %s", request.url.path, sent, reason)
            done = True
            await audit(archive.catalog, request, "read", subject, "failure",
                        {"view": "metadata", "instances": sent, "error": reason})
            raise
        finally:
            if not done:
                audit_later(archive.catalog, request, "read", subject, "failure",
                            {"view": "metadata", "instances": sent, "error": "client disconnected"})

    return StreamingResponse(body(), media_type=DICOM_JSON)


# --- frames and bulk data (one instance: held in memory while it is cut up) -----------------


def _frame_numbers(raw: str) -> list[int]:
    numbers = []
    for item in raw.split(","):
        number = whole_number(item, 1, 2**31 - 1)  # Number of Frames is an IS: at most 2^31 - 1
        if number is None:
            raise DicomwebError(400, f"frame list {raw[:80]!r}: frame numbers are positive integers (ASCII digits) "
                                     "separated by commas")
        numbers.append(number)
    if len(numbers) > MAX_FRAMES_PER_REQUEST:
        raise DicomwebError(400, f"at most {MAX_FRAMES_PER_REQUEST} frames per request")
    return numbers


def _multipart(parts: list[tuple[str, bytes, dict[str, str]]], kind: str) -> Response:
    boundary = mp.new_boundary()
    chunks: list[bytes] = []
    for part_type, data, extra in parts:
        chunks += [mp.part_header(boundary, part_type, extra), data, mp.part_end()]
    chunks.append(mp.closing(boundary))
    return Response(b"".join(chunks), media_type=mp.content_type(kind, boundary))


async def _single_instance(archive: Archive, request: Request,
                           work: Callable[[Any, VersionRecord], Response], view: str) -> Response:
    subject, records = await _records(archive, request)
    record = records[0][0]

    def run() -> Response:
        return work(content.read_dataset(_load(archive, record)), record)

    response = await run_in_threadpool(run)
    await audit(archive.catalog, request, "read", subject, "success", {"view": view, "bytes": len(response.body)})
    return response


def _sent_syntax(stored: str) -> str:
    """Native pixels always go out little endian; encapsulated frames in their own syntax."""
    return content.EXPLICIT_LE if content.is_native(stored) else stored


async def frames(archive: Archive, request: Request) -> Response:
    numbers = _frame_numbers(request.path_params["frames"])
    accept = _accept(request)

    def work(ds: Any, record: VersionRecord) -> Response:
        stored = record.transfer_syntax_uid
        media = bulk_media(accept, stored)
        data = content.frames(ds, stored, numbers)
        part_type = f"{media}; transfer-syntax={_sent_syntax(stored)}"
        return _multipart([(part_type, frame, {}) for frame in data], media)

    return await _single_instance(archive, request, work, f"frames {request.path_params['frames']}")


async def bulkdata(archive: Archive, request: Request) -> Response:
    path = request.path_params.get("path", "").strip("/")
    accept = _accept(request)
    base = service_url(request)

    def element_parts(ds: Any, record: VersionRecord, element_path: str,
                      check: bool) -> tuple[str, list[tuple[str, bytes, dict]]]:
        uri = f"{instance_url(base, record.study_uid, record.series_uid, record.sop_instance_uid)}/bulkdata/{element_path}"
        location = {"Content-Location": uri}
        if element_path.upper() == "7FE00010":
            stored = record.transfer_syntax_uid
            media = bulk_media(accept if check else None, stored)
            part_type = f"{media}; transfer-syntax={_sent_syntax(stored)}"
            return media, [(part_type, value, location) for value in content.pixel_bulk(ds, stored)]
        elem = content.find_element(ds, element_path)
        media = bulk_media(accept if check else None, content.EXPLICIT_LE)  # other binary values: as they are
        return media, [(media, bytes(elem.value), location)]

    def work(ds: Any, record: VersionRecord) -> Response:
        if path:
            media, found = element_parts(ds, record, path, check=True)
            return _multipart(found, media)
        parts: list[tuple[str, bytes, dict]] = []
        for element_path, _elem in content.bulk_elements(ds):
            parts += element_parts(ds, record, element_path, check=False)[1]
        if not parts:
            raise DicomwebError(404, "the instance has no bulk data")
        return _multipart(parts, "application/octet-stream")

    return await _single_instance(archive, request, work, f"bulkdata {path or 'all'}")
