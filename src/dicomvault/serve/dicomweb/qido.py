"""QIDO-RS: search studies, series and instances (PS3.18 10.6), on the shared query engine.

The query string is checked here (attribute names, limit, offset, fuzzymatching) and the
matching itself is ``catalog.query.run_query``, the engine C-FIND uses too, so both
services find exactly the same things. A refused search gets 400 with the reason, including
the engine's ``QueryError`` (bad date range, malformed UID...).

Choices where PS3.18 leaves room, kept consistent on every search resource:

- No match: **200 with an empty array** ``[]``. PS3.18 8.3.4.4.1 says 204, which contradicts
  RFC 9110 (a 204 carries no content) and C-FIND (success with zero matches); CP-2473 moves
  DICOMweb to 200. dicomweb-client and viewers accept both.
- Attributes: a name that is not a DICOM keyword or tag, or a key this archive cannot match
  on at that level (e.g. ``Modality`` on /studies: use ``ModalitiesInStudy``), is a 400 with
  the list of keys that work, rather than being silently ignored (which would return more
  than was asked for). ``includefield`` of an attribute the catalog does not hold is ignored
  (the index keeps a fixed set of attributes; WADO-RS metadata has all of them).
- Results per response are capped by ``[dicomweb] query_limit``; when more matches exist,
  the reply carries ``Warning: 299 <service>: There are additional results that can be
  requested`` (PS3.18 8.3.4.4) and the client pages on with ``offset``.
- UID lists may be separated by commas (PS3.18) or backslashes (DICOM).

One ``query`` audit row per search (filters and result count), like ``dicomvault find``.
"""

from __future__ import annotations

import json
from itertools import islice
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from dicomvault.archive.core import Archive
from dicomvault.catalog.query import MATCHABLE_KEYS, Query, QueryError, run_query, supported_keys

from dicomvault.serve.numbers import whole_number
from dicomvault.serve.dicomweb.common import (
    DICOM_JSON,
    DicomwebError,
    audit,
    check_uid,
    instance_url,
    parse_accept,
    series_url,
    service_url,
    study_url,
)

# Default return attributes per level (PS3.18 Tables 10.6.3-3, -4, -5), in the order listed;
# only those the catalog holds are returned. Retrieve URL is added to every result.
STUDY_DEFAULTS = ("StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability", "ModalitiesInStudy",
                  "ReferringPhysicianName", "TimezoneOffsetFromUTC", "PatientName", "PatientID",
                  "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID", "NumberOfStudyRelatedSeries",
                  "NumberOfStudyRelatedInstances")
SERIES_DEFAULTS = ("Modality", "TimezoneOffsetFromUTC", "SeriesDescription", "SeriesInstanceUID", "SeriesNumber",
                   "NumberOfSeriesRelatedInstances", "PerformedProcedureStepStartDate",
                   "PerformedProcedureStepStartTime")
INSTANCE_DEFAULTS = ("SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "TimezoneOffsetFromUTC",
                     "InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames")
RETRIEVE_URL = "00081190"
MAX_QUERY_NUMBER = 10**12  # limit and offset: beyond any archive's matches, well inside a 64-bit column
_CONTROL = {"includefield", "limit", "offset", "fuzzymatching", "accept", "charset"}
_INT_VRS = {"IS", "SL", "SS", "UL", "US", "SV", "UV"}
_FLOAT_VRS = {"DS", "FL", "FD"}
_SINGLE_VALUED_VRS = {"LT", "ST", "UT", "UR"}


def _keyword(name: str) -> str:
    """A query parameter name (keyword or 8-digit tag) as a DICOM keyword, or 400."""
    from pydicom.datadict import keyword_for_tag, tag_for_keyword

    if "." in name:
        raise DicomwebError(400, f"{name!r}: matching on attributes inside sequences is not supported")
    if len(name) == 8 and all(c in "0123456789abcdefABCDEF" for c in name):
        keyword = keyword_for_tag(int(name, 16))
        if not keyword:
            raise DicomwebError(400, f"{name!r} is not a known DICOM attribute tag")
        return keyword
    if tag_for_keyword(name) is None:
        raise DicomwebError(400, f"{name!r} is not a DICOM attribute keyword or tag "
                                 "(query parameters are e.g. PatientID=... or 00100020=...)")
    return name


def _tag(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    return f"{tag_for_keyword(keyword):08X}"


def _int_param(name: str, raw: str, minimum: int) -> int:
    value = whole_number(raw, minimum, MAX_QUERY_NUMBER)
    if value is None:
        kind = "a positive integer" if minimum > 0 else "a non-negative integer"
        raise DicomwebError(400, f"{name} must be {kind} of at most {MAX_QUERY_NUMBER} (ASCII digits), "
                                 f"got {raw[:40]!r}")
    return value


def _encode(vr: str, value: str) -> dict[str, Any]:
    """One attribute in DICOM JSON (PS3.18 F.2) from its DICOM string form."""
    if value == "":
        return {"vr": vr}
    items = [value] if vr in _SINGLE_VALUED_VRS else value.split("\\")
    out: list[Any] = []
    for item in items:
        item = item.strip(" \x00") if vr not in _SINGLE_VALUED_VRS else item.rstrip(" \x00")
        if item == "":
            out.append(None)
        elif vr == "PN":
            groups = item.split("=")
            name = {"Alphabetic": groups[0]}
            if len(groups) > 1 and groups[1]:
                name["Ideographic"] = groups[1]
            if len(groups) > 2 and groups[2]:
                name["Phonetic"] = groups[2]
            out.append(name)
        elif vr in _INT_VRS:
            try:
                out.append(int(item))
            except ValueError:
                out.append(None)
        elif vr in _FLOAT_VRS:
            try:
                number = float(item)
                out.append(int(number) if number.is_integer() and "." not in item and "e" not in item.lower()
                           else number)
            except ValueError:
                out.append(None)
        else:
            out.append(item)
    return {"vr": vr, "Value": out} if any(v is not None for v in out) else {"vr": vr}


def _check_accept(request: Request) -> None:
    accept = request.query_params.get("accept") or request.headers.get("accept")
    if not accept:
        return
    for media, _params in parse_accept(accept):
        if media in (DICOM_JSON, "application/json", "application/*", "*/*"):
            return
    raise DicomwebError(406, f"search results are sent as {DICOM_JSON} only; the Accept header {accept!r} "
                             "does not allow it")


async def search(archive: Archive, request: Request, resource: str) -> Response:
    """GET on /studies, /series, /instances and their nested forms; ``resource`` is the last segment."""
    _check_accept(request)
    level = {"studies": "STUDY", "series": "SERIES", "instances": "IMAGE"}[resource]
    path = request.path_params
    settings = archive.settings.dicomweb
    supported = supported_keys(level)
    filters: dict[str, str] = {}
    includes: list[str] = []
    include_all = fuzzy = False
    limit: int | None = None
    offset = 0

    for name, value in request.query_params.multi_items():
        control = name.lower()
        if control == "includefield":
            for item in (v.strip() for v in value.split(",")):
                if item.lower() == "all":
                    include_all = True
                elif item:
                    includes.append(_keyword(item))
        elif control == "limit":
            limit = _int_param("limit", value, 1)
        elif control == "offset":
            offset = _int_param("offset", value, 0)
        elif control == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise DicomwebError(400, f"fuzzymatching must be true or false, got {value[:20]!r}")
            fuzzy = value.lower() == "true"
        elif control in _CONTROL:
            continue
        else:
            keyword = _keyword(name)
            if keyword in filters:
                raise DicomwebError(400, f"{keyword} is given more than once; a UID list is uid1,uid2")
            if value.strip(" *") and (keyword not in supported or keyword not in MATCHABLE_KEYS):
                usable = ", ".join(k for k in supported if k in MATCHABLE_KEYS)
                hint = " (use ModalitiesInStudy)" if keyword == "Modality" and level == "STUDY" else ""
                raise DicomwebError(400, f"{keyword} cannot be matched on at the {level.lower()} level{hint}; "
                                         f"keys that can: {usable}")
            if keyword in supported and supported[keyword] == "UI":
                value = value.replace(",", "\\")
            if keyword in supported:
                filters[keyword] = value
            else:
                includes.append(keyword)  # an empty (return-key) value for an attribute we do not hold

    for param, keyword, what in (("study", "StudyInstanceUID", "Study Instance UID"),
                                 ("series", "SeriesInstanceUID", "Series Instance UID")):
        if param in path:
            uid = check_uid(path[param], what)
            if filters.get(keyword, "") not in ("", uid):
                raise DicomwebError(400, f"{keyword} in the query ({filters[keyword]!r}) contradicts the path ({uid})")
            filters[keyword] = uid

    cap = settings.query_limit
    page = min(limit or cap, cap)
    query = Query(level=level, filters=filters, root="STUDY", fuzzy_person_names=fuzzy, limit=page + 1,
                  offset=offset)

    if include_all:
        wanted = list(supported)
    else:
        defaults: tuple[str, ...] = ()
        if resource == "studies" or (resource in ("series", "instances") and "study" not in path):
            defaults += STUDY_DEFAULTS
        if resource == "series" or (resource == "instances" and "series" not in path):
            defaults += SERIES_DEFAULTS
        if resource == "instances":
            defaults += INSTANCE_DEFAULTS
        wanted = list(dict.fromkeys([*defaults, *includes, *filters]))
    keys = [(keyword, _tag(keyword), supported[keyword]) for keyword in wanted if keyword in supported]
    base = service_url(request)

    def run() -> tuple[bytes, int, bool]:
        """Query and encode, in a worker thread: (JSON body, results, more matches exist)."""
        rows = run_query(archive.catalog, query)
        try:
            found = list(islice(rows, page + 1))
        finally:
            rows.close()  # type: ignore[attr-defined]
        results = []
        for row in found[:page]:
            item = {tag: _encode(vr, row.get(keyword, "")) for keyword, tag, vr in keys}
            if level == "STUDY":
                url = study_url(base, row["StudyInstanceUID"])
            elif level == "SERIES":
                url = series_url(base, row["StudyInstanceUID"], row["SeriesInstanceUID"])
            else:
                url = instance_url(base, row["StudyInstanceUID"], row["SeriesInstanceUID"], row["SOPInstanceUID"])
            item[RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
            results.append(dict(sorted(item.items())))
        return json.dumps(results).encode(), len(results), len(found) > page

    try:
        body, count, more = await run_in_threadpool(run)
    except QueryError as exc:
        raise DicomwebError(400, str(exc)) from exc

    await audit(archive.catalog, request, "query", path.get("series") or path.get("study") or "", "success", {
        "level": level, "filters": {k: v for k, v in filters.items() if v}, "results": count,
        "offset": offset, "more": more,
    })
    headers = {}
    if more:
        headers["Warning"] = f"299 {base}: There are additional results that can be requested"
    return Response(body, media_type=DICOM_JSON, headers=headers)
