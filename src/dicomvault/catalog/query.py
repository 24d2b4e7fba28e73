"""Query matching for C-FIND and QIDO-RS: one engine, the standard's matching rules (PS3.4 C.2.2.2).

The DIMSE C-FIND SCP (serve/qr/find.py) and QIDO-RS (serve/dicomweb/qido.py) both call
``run_query``; they differ only in how they encode the rows.

Input
-----
- ``Query.level``: PATIENT, STUDY, SERIES or IMAGE (QIDO's /instances is IMAGE). ``root``:
  PATIENT (Patient Root) or STUDY (Study Root; it has no PATIENT level).
- ``Query.filters`` maps a DICOM keyword to the matching value exactly as it came in the
  identifier / query string (multi-valued values joined with a backslash). An empty string
  (or a lone ``*``) means universal matching: the key is only asked for as a return key.
  Leading/trailing spaces and NUL padding are ignored.
- Keys that are not in ``supported_keys(level)`` (e.g. OtherPatientIDs, or a SERIES key in a
  STUDY query) and the computed counts (NumberOf...) and AvailableTransferSyntaxUID are
  matched universally (PS3.4 lets an SCP skip matching on keys it does not support): they
  never narrow the result. ``MATCHABLE_KEYS`` lists every key that does narrow it.

Matching (by the attribute's VR)
--------------------------------
- UI: single UID or a UID list ``uid1\\uid2`` (any of them). Wildcards are refused.
- DA: single date ``YYYYMMDD`` or range ``A-B`` / ``-B`` / ``A-`` (inclusive; a reversed
  range matches nothing; empty stored values never match a range). Non-dates are refused.
- TM: ``HH[MM[SS[.F{1,6}]]]`` single value or range; a value matches every stored time it is
  a prefix of (``1200`` matches 12:00:00-12:00:59.999999), an upper bound is inclusive at
  its own precision. Combined date-time range matching is not supported.
- Everything else (PN, LO, SH, CS, IS): exact, case-sensitive; ``*`` (any sequence) and
  ``?`` (one character) wildcards; several values ``A\\B`` match if any does. PN compares
  case-insensitively (Unicode case folding) when ``fuzzy_person_names`` is set.
- ModalitiesInStudy matches a study having any series whose Modality matches any of the
  given values; SOPClassesInStudy one having any instance of any of the given classes.
- On SQLite, wildcards use GLOB (case-sensitive, can use the column's index for a literal
  prefix such as ``SMI*``); elsewhere LIKE with escaped metacharacters (case-sensitive on
  PostgreSQL). Fuzzy PN uses a registered ``dv_fold`` (str.casefold) on SQLite, ``upper()``
  elsewhere.

Output
------
``run_query`` validates the query at once (raising ``QueryError``) and returns a lazy
iterator (a generator): rows are fetched ``CHUNK_ROWS`` at a time from a streaming cursor,
never the whole result. It holds one catalog read connection (one consistent snapshot)
until it is exhausted or closed; close it (``.close()``) when stopping early, e.g. on a
C-CANCEL. Each row is a dict keyword -> DICOM string value ("" when not known), with
exactly the keys of ``supported_keys(level)`` in that order: the level's own attributes and
those of every level above it, computed ones included. Multi-valued values
(ModalitiesInStudy, SOPClassesInStudy) are sorted and joined with a backslash; counts are
decimal strings. At STUDY level and below, PatientName is the name recorded with the study;
at PATIENT level the patient record's name. One exception, for speed: below PATIENT level
the NumberOfPatientRelated* counts are filled only when the query names one of them in
``filters`` (as a return key, ""), otherwise they are "" (they cost a walk over every
instance of the patient, 5-10x the study's own).

Order (stable; limit/offset apply to it):
- PATIENT: PatientName, PatientID, IssuerOfPatientID (database collation; code points on
  SQLite)
- STUDY:   StudyDate desc, StudyTime desc, StudyInstanceUID desc (newest first, undated last)
- SERIES:  study order, then SeriesNumber numerically, SeriesInstanceUID
- IMAGE:   series order, then InstanceNumber numerically, SOPInstanceUID
(numerically = shorter first, then by text: right for integers without leading zeros).

Computed attributes: why per-chunk queries over covering indexes and no counters
--------------------------------------------------------------------------------
Counts, ModalitiesInStudy and SOPClassesInStudy are computed per chunk of streamed rows
by one query over the chunk's studies (``_SERIES_OF_STUDIES``): per series, its modality,
a count of its instances and the min/max of their SOP classes, all from the covering
indexes series(study_pk, modality) and instances(series_pk, sop_class_uid) that migration
0004 creates (replacing the single-column indexes, so ingest writes no extra index entry
per instance). The cost per row is proportional to its study's instances (an index range
walk), never to the catalog size.

IOCM rejections (``catalog/rejections.py``): while the ``rejections`` table holds a row (one
probe per query), every level keeps only rows with a visible instance, ModalitiesInStudy and
SOPClassesInStudy match only visible instances, and the series holding a rejected instance
(found per chunk by ``_REJECTED_SERIES``) get their counts and SOP classes recomputed without
them (``_VISIBLE_CLASSES``); other series keep the covering-index pass.

Denormalised counters (series/study instance counts kept by ``Catalog.add_version``) would
make the read O(series) instead, but they add UPDATEs to every ingest transaction, must be
kept right by every future writer (deletion, retention, rebuild-index, bulk tools) and
drift silently when one forgets. The plain index meets the C-FIND latency target with
margin (benchmarks/README.md), so the catalog stays an index of facts; counters remain the
upgrade path.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, bindparam, exists, func, literal, or_, select

from . import rejections
from . import schema as t

if TYPE_CHECKING:
    from dicomvault.catalog.db import Catalog

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
ROOTS = ("PATIENT", "STUDY")  # Patient Root and Study Root information models

CHUNK_ROWS = 200  # rows fetched (and enriched with computed attributes) per round trip


class QueryError(ValueError):
    """The query cannot be run as asked: the message says why (shown to the caller)."""


@dataclass(frozen=True)
class Query:
    level: str  # one of LEVELS ("IMAGE" is also what QIDO's /instances asks for)
    filters: Mapping[str, str] = field(default_factory=dict)  # keyword -> matching value ("" = universal)
    root: str = "STUDY"  # C-FIND information model; QIDO uses STUDY
    fuzzy_person_names: bool = False  # case-insensitive PN matching
    limit: int | None = None
    offset: int = 0


# --- the attributes ---------------------------------------------------------------------

_p, _st, _se, _i, _v = t.patients, t.studies, t.series, t.instances, t.versions


@dataclass(frozen=True)
class _Attr:
    keyword: str
    vr: str
    column: Any = None  # catalog column; None for computed attributes


_ATTRS: dict[str, tuple[_Attr, ...]] = {
    "PATIENT": (
        _Attr("PatientName", "PN", _p.c.patient_name),  # studies.patient_name below PATIENT level
        _Attr("PatientID", "LO", _p.c.patient_id),
        _Attr("IssuerOfPatientID", "LO", _p.c.issuer),
        _Attr("PatientBirthDate", "DA", _p.c.birth_date),
        _Attr("PatientSex", "CS", _p.c.sex),
        _Attr("NumberOfPatientRelatedStudies", "IS"),
        _Attr("NumberOfPatientRelatedSeries", "IS"),
        _Attr("NumberOfPatientRelatedInstances", "IS"),
    ),
    "STUDY": (
        _Attr("StudyInstanceUID", "UI", _st.c.study_uid),
        _Attr("StudyDate", "DA", _st.c.study_date),
        _Attr("StudyTime", "TM", _st.c.study_time),
        _Attr("AccessionNumber", "SH", _st.c.accession_number),
        _Attr("StudyID", "SH", _st.c.study_id),
        _Attr("StudyDescription", "LO", _st.c.study_description),
        _Attr("ReferringPhysicianName", "PN", _st.c.referring_physician),
        _Attr("ModalitiesInStudy", "CS"),
        _Attr("SOPClassesInStudy", "UI"),
        _Attr("NumberOfStudyRelatedSeries", "IS"),
        _Attr("NumberOfStudyRelatedInstances", "IS"),
    ),
    "SERIES": (
        _Attr("SeriesInstanceUID", "UI", _se.c.series_uid),
        _Attr("Modality", "CS", _se.c.modality),
        _Attr("SeriesNumber", "IS", _se.c.series_number),
        _Attr("SeriesDescription", "LO", _se.c.series_description),
        _Attr("BodyPartExamined", "CS", _se.c.body_part),
        _Attr("NumberOfSeriesRelatedInstances", "IS"),
    ),
    "IMAGE": (
        _Attr("SOPInstanceUID", "UI", _i.c.sop_instance_uid),
        _Attr("SOPClassUID", "UI", _i.c.sop_class_uid),
        _Attr("InstanceNumber", "IS", _i.c.instance_number),
        _Attr("AvailableTransferSyntaxUID", "UI"),  # of the latest stored version
    ),
}
_COMPUTED_MATCHABLE = ("ModalitiesInStudy", "SOPClassesInStudy")
MATCHABLE_KEYS = frozenset(
    a.keyword for attrs in _ATTRS.values() for a in attrs if a.column is not None
) | frozenset(_COMPUTED_MATCHABLE)


def _level_of(level: str) -> str:
    name = str(level).strip().upper()
    if name not in LEVELS:
        raise QueryError(f"unknown query level {level!r}: expected one of {', '.join(LEVELS)}")
    return name


def _attrs(level: str) -> list[_Attr]:
    out: list[_Attr] = []
    for name in LEVELS[: LEVELS.index(level) + 1]:
        out.extend(_ATTRS[name])
    return out


def supported_keys(level: str) -> dict[str, str]:
    """Keyword -> VR of every attribute a row at ``level`` carries (this level and above)."""
    return {a.keyword: a.vr for a in _attrs(_level_of(level))}


# --- matching -----------------------------------------------------------------------------

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DATE = re.compile(r"^[0-9]{8}$")
_TIME = re.compile(r"^([0-9]{2})(([0-9]{2})(([0-9]{2})(\.[0-9]{1,6})?)?)?$")


def _check_uid(keyword: str, uid: str) -> str:
    if "*" in uid or "?" in uid:
        raise QueryError(f"{keyword}: wildcards are not allowed in a UID ({uid!r}); use a UID list uid1\\uid2")
    if not uid or len(uid) > 64 or not _UID.match(uid):
        raise QueryError(f"{keyword}: {uid!r} is not a valid UID (digits and dots, at most 64 characters)")
    return uid


def _check_date(keyword: str, value: str, whole: str) -> str:
    if not _DATE.match(value):
        raise QueryError(
            f"{keyword}: {whole!r} is not a DICOM date or date range (YYYYMMDD, YYYYMMDD-YYYYMMDD, -YYYYMMDD, YYYYMMDD-)"
        )
    try:
        _dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        raise QueryError(f"{keyword}: {value!r} is not a valid calendar date") from None
    return value


def _check_time(keyword: str, value: str, whole: str) -> str:
    value = value.replace(":", "")  # ACR-NEMA style HH:MM:SS
    m = _TIME.match(value)
    if not m:
        raise QueryError(
            f"{keyword}: {whole!r} is not a DICOM time or time range (HHMMSS.FFFFFF, A-B, -B, A-)"
        )
    hh, mm, ss = m.group(1), m.group(3), m.group(5)
    if int(hh) > 23 or (mm is not None and int(mm) > 59) or (ss is not None and int(ss) > 60):
        raise QueryError(f"{keyword}: {value!r} is not a valid time of day")
    return value


def _split_range(keyword: str, value: str) -> tuple[str, str] | None:
    if "-" not in value:
        return None
    parts = value.split("-")
    if len(parts) != 2 or parts == ["", ""]:
        raise QueryError(f"{keyword}: {value!r} is not a valid range (A-B, -B or A-)")
    return parts[0], parts[1]


def _date_condition(keyword: str, column: Any, value: str) -> Any:
    if "\\" in value:
        raise QueryError(f"{keyword}: a date key takes one value or one range, not a list ({value!r})")
    bounds = _split_range(keyword, value)
    if bounds is None:
        return column == _check_date(keyword, value, value)
    low, high = (_check_date(keyword, b, value) if b else "" for b in bounds)
    conditions = [column != ""]
    if low:
        conditions.append(column >= low)
    if high:
        conditions.append(column <= high)
    return and_(*conditions)


def _after_prefix(time: str) -> str:
    """The smallest TM string above every time that starts with ``time`` ("1200" -> "1201",
    "0959" -> "0960", "093000.5" -> "093000.6"): digits only, so it compares right in any
    collation (a sentinel like "~" does not under a locale collation on PostgreSQL)."""
    digits = time.replace(".", "")
    bumped = str(int(digits) + 1).zfill(len(digits))
    dot = time.find(".")
    return bumped if dot < 0 else bumped[:dot] + "." + bumped[dot:]


def _time_condition(keyword: str, column: Any, value: str) -> Any:
    if "\\" in value:
        raise QueryError(f"{keyword}: a time key takes one value or one range, not a list ({value!r})")
    bounds = _split_range(keyword, value)
    if bounds is None:
        exact = _check_time(keyword, value, value)  # every stored time it is a prefix of
        return and_(column >= exact, column < _after_prefix(exact))
    low, high = (_check_time(keyword, b, value) if b else "" for b in bounds)
    conditions = [column != ""]
    if low:
        conditions.append(column >= low)
    if high:
        conditions.append(column < _after_prefix(high))  # inclusive at the bound's precision
    return and_(*conditions)


def _has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


class _Matcher:
    """Builds SQL conditions for one query, for one database dialect."""

    def __init__(self, dialect: str, fuzzy: bool, hide: bool = False) -> None:
        self.sqlite = dialect == "sqlite"
        self.fuzzy = fuzzy
        self.hide = hide  # IOCM: only instances not rejected count (catalog/rejections.py)
        self.uses_fold = False  # a fuzzy condition needs dv_fold registered (SQLite)

    def _fold(self, expression: Any) -> Any:
        if self.sqlite:
            self.uses_fold = True
            return func.dv_fold(expression)
        return func.upper(expression)

    def text_value(self, column: Any, value: str, vr: str) -> Any:
        fuzzy = self.fuzzy and vr == "PN"
        if not _has_wildcard(value):
            if fuzzy:
                return self._fold(column) == self._fold(literal(value))
            return column == value
        if self.sqlite:
            pattern = value.replace("[", "[[]")  # GLOB's only other metacharacter; * and ? keep their meaning
            if fuzzy:
                return self._fold(column).op("GLOB")(self._fold(literal(pattern)))
            return column.op("GLOB")(pattern)
        like = (
            value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").replace("*", "%").replace("?", "_")
        )
        if fuzzy:
            return self._fold(column).like(self._fold(literal(like)), escape="\\")
        return column.like(like, escape="\\")

    def condition(self, keyword: str, vr: str, column: Any, value: str) -> Any:
        if vr == "UI":
            uids = [_check_uid(keyword, u.strip(" \x00")) for u in value.split("\\")]
            return column == uids[0] if len(uids) == 1 else column.in_(uids)
        if vr == "DA":
            return _date_condition(keyword, column, value)
        if vr == "TM":
            return _time_condition(keyword, column, value)
        alternatives = [v for v in (v.strip(" \x00") for v in value.split("\\")) if v]
        if not alternatives or "*" in alternatives:
            return None  # one alternative is universal: the key does not narrow the result
        conditions = [self.text_value(column, v, vr) for v in dict.fromkeys(alternatives)]
        return conditions[0] if len(conditions) == 1 else or_(*conditions)

    def modalities_in_study(self, value: str) -> Any:
        other = _se.alias("mis")
        cond = self.condition("ModalitiesInStudy", "CS", other.c.modality, value)
        if cond is None:
            return None
        conditions = [other.c.study_pk == _st.c.id, cond]
        if self.hide:
            conditions.append(_has_visible_instance(other))
        return exists(select(literal(1)).select_from(other).where(*conditions))

    def sop_classes_in_study(self, value: str) -> Any:
        ser, ins = _se.alias("cis_series"), _i.alias("cis_instances")
        cond = self.condition("SOPClassesInStudy", "UI", ins.c.sop_class_uid, value)
        conditions = [ser.c.study_pk == _st.c.id, cond] + ([rejections.visible(ins)] if self.hide else [])
        return exists(
            select(literal(1))
            .select_from(ser.join(ins, ins.c.series_pk == ser.c.id))
            .where(*conditions)
        )


def _has_visible_instance(series: Any) -> Any:
    """SQL: ``series`` (the table or an alias) holds an instance that is not rejected."""
    ins = _i.alias("vis_instances")
    return exists(select(literal(1)).select_from(ins).where(ins.c.series_pk == series.c.id, rejections.visible(ins)))


def _hidden_condition(level: str) -> Any:
    """SQL: the row at ``level`` has something left once rejected instances are hidden (a study
    whose every instance is rejected disappears, and so does a patient with nothing left)."""
    if level == "IMAGE":
        return rejections.visible(_i)
    if level == "SERIES":
        return _has_visible_instance(_se)
    ser = _se.alias("vis_series")
    if level == "STUDY":
        return exists(select(literal(1)).select_from(ser).where(ser.c.study_pk == _st.c.id,
                                                                  _has_visible_instance(ser)))
    sty = _st.alias("vis_studies")
    return exists(select(literal(1)).select_from(sty.join(ser, ser.c.study_pk == sty.c.id))
                  .where(sty.c.patient_pk == _p.c.id, _has_visible_instance(ser)))


# --- the plan -----------------------------------------------------------------------------


@dataclass
class _Plan:
    level: str
    statement: Any
    uses_fold: bool
    keys: list[str]
    plain: list[str]  # keywords read straight from the row
    patient_counts: bool  # compute NumberOfPatientRelated* (always at PATIENT level, else on request)
    hide: bool = False  # rejected instances exist: hide them and leave them out of every count


def _column_for(attr: _Attr, level: str) -> Any:
    if attr.keyword == "PatientName" and level != "PATIENT":
        return _st.c.patient_name  # the name as recorded with the study (indexed)
    return attr.column


def _plan(query: Query, dialect: str, hide: bool = False) -> _Plan:
    level = _level_of(query.level)
    root = str(query.root).strip().upper()
    if root not in ROOTS:
        raise QueryError(f"unknown information model root {query.root!r}: expected PATIENT or STUDY")
    if root == "STUDY" and level == "PATIENT":
        raise QueryError("the Study Root information model has no PATIENT level; use the Patient Root model")
    if query.limit is not None and (not isinstance(query.limit, int) or query.limit < 0):
        raise QueryError(f"limit must be a non-negative integer, not {query.limit!r}")
    if not isinstance(query.offset, int) or query.offset < 0:
        raise QueryError(f"offset must be a non-negative integer, not {query.offset!r}")

    attrs = _attrs(level)
    matcher = _Matcher(dialect, query.fuzzy_person_names, hide)
    by_keyword = {a.keyword: a for a in attrs}
    where: list[Any] = []
    for keyword, raw in query.filters.items():
        attr = by_keyword.get(keyword)
        if attr is None:
            continue  # not a key of this level: universal matching (PS3.4 lets an SCP skip it)
        value = "" if raw is None else str(raw).strip(" \x00")
        if value in ("", "*"):
            continue  # universal matching
        if keyword == "ModalitiesInStudy":
            cond = matcher.modalities_in_study(value)
        elif keyword == "SOPClassesInStudy":
            cond = matcher.sop_classes_in_study(value)
        elif attr.column is None:
            continue  # a computed count: return key only
        else:
            cond = matcher.condition(keyword, attr.vr, _column_for(attr, level), value)
        if cond is not None:
            where.append(cond)

    # The row's SQL-read values first (in supported_keys order), then the pks that computed
    # attributes are looked up by: patient, study, series.
    plain = [a.keyword for a in attrs if a.column is not None]
    columns = [_column_for(a, level).label(a.keyword) for a in attrs if a.column is not None]
    pks = [_p.c.id.label("_patient_pk")]
    if level == "PATIENT":
        source: Any = _p
        order: list[Any] = [_p.c.patient_name, _p.c.patient_id, _p.c.issuer, _p.c.id]
        where.append(_p.c.merged_into.is_(None))  # merged away by HL7 A40: its studies moved
    else:
        source = _st.join(_p, _st.c.patient_pk == _p.c.id)
        pks.append(_st.c.id.label("_study_pk"))
        order = [_st.c.study_date.desc(), _st.c.study_time.desc(), _st.c.study_uid.desc()]
    if level in ("SERIES", "IMAGE"):
        source = _se.join(source, _se.c.study_pk == _st.c.id)
        pks.append(_se.c.id.label("_series_pk"))
        order += [func.length(_se.c.series_number), _se.c.series_number, _se.c.series_uid]
    if level == "IMAGE":
        source = _i.join(source, _i.c.series_pk == _se.c.id)
        latest_ts = (
            select(_v.c.transfer_syntax_uid)
            .where(_v.c.instance_pk == _i.c.id)
            .order_by(_v.c.version.desc())
            .limit(1)
            .correlate(_i)
            .scalar_subquery()
        )
        columns.append(latest_ts.label("AvailableTransferSyntaxUID"))
        plain.append("AvailableTransferSyntaxUID")
        order += [func.length(_i.c.instance_number), _i.c.instance_number, _i.c.sop_instance_uid]
    columns += pks
    if hide:
        where.append(_hidden_condition(level))

    statement = select(*columns).select_from(source).where(*where).order_by(*order)
    if query.limit is not None:
        statement = statement.limit(query.limit)
    if query.offset:
        statement = statement.offset(query.offset)
    patient_counts = level == "PATIENT" or any(k in query.filters for k in _PATIENT_COUNTS)
    return _Plan(level, statement, matcher.uses_fold, [a.keyword for a in attrs], plain, patient_counts, hide)


# --- computed attributes ------------------------------------------------------------------


@dataclass
class _StudyStats:
    series: dict[int, int] = field(default_factory=dict)  # series pk -> instances
    modalities: set[str] = field(default_factory=set)
    sop_classes: set[str] = field(default_factory=set)
    _values: tuple[str, str, str, str] | None = None  # built at the first row that needs it

    @property
    def instances(self) -> int:
        return sum(self.series.values())

    def values(self) -> tuple[str, str, str, str]:
        """ModalitiesInStudy, SOPClassesInStudy, NumberOfStudyRelatedSeries/Instances."""
        if self._values is None:
            self._values = ("\\".join(sorted(self.modalities)), "\\".join(sorted(self.sop_classes)),
                            str(len(self.series)), str(self.instances))
        return self._values


@dataclass
class _PatientStats:
    studies: dict[int, _StudyStats]
    _counts: tuple[str, str, str] | None = None

    def counts(self) -> tuple[str, str, str]:
        """NumberOfPatientRelatedStudies/Series/Instances."""
        if self._counts is None:
            studies = [s for s in self.studies.values() if s.series]  # none left: every instance rejected
            self._counts = (str(len(studies)), str(sum(len(s.series) for s in studies)),
                            str(sum(s.instances for s in studies)))
        return self._counts


# The series of the chunk's studies (or of every study of the chunk's patients), each with
# its instance count and its smallest and largest SOP class: study/patient counts,
# ModalitiesInStudy and (nearly always) SOPClassesInStudy in one pass over covering indexes.
# The count walks the series' entries of instances(series_pk, sop_class_uid); min and max
# are one index seek each. Only a series holding several SOP classes (min != max) needs a
# second look (_SERIES_CLASSES) for what lies between.
_SERIES_INSTANCES = select(func.count()).select_from(_i).where(_i.c.series_pk == _se.c.id).correlate(_se)
_SERIES_COLUMNS = (
    _se.c.id,
    _se.c.modality,
    _SERIES_INSTANCES.scalar_subquery(),
    _SERIES_INSTANCES.with_only_columns(func.min(_i.c.sop_class_uid)).scalar_subquery(),
    _SERIES_INSTANCES.with_only_columns(func.max(_i.c.sop_class_uid)).scalar_subquery(),
)
_SERIES_OF_STUDIES = select(_se.c.study_pk, *_SERIES_COLUMNS).where(
    _se.c.study_pk.in_(bindparam("pks", expanding=True))
)
_SERIES_OF_PATIENTS = (
    select(_st.c.patient_pk, _st.c.id, *_SERIES_COLUMNS)
    .select_from(_st.outerjoin(_se, _se.c.study_pk == _st.c.id))
    .where(_st.c.patient_pk.in_(bindparam("pks", expanding=True)))
)
_SERIES_CLASSES = (
    select(_i.c.series_pk, _i.c.sop_class_uid)
    .where(_i.c.series_pk.in_(bindparam("pks", expanding=True)))
    .group_by(_i.c.series_pk, _i.c.sop_class_uid)
)
# With rejections: which of the given series hold a rejected instance, and for those the
# instances left per SOP class (rare, so the covering-index pass above stays as it is).
_REJECTED_SERIES = (
    select(_i.c.series_pk).distinct()
    .select_from(t.rejections.join(_i, _i.c.sop_instance_uid == t.rejections.c.sop_instance_uid))
    .where(_i.c.series_pk.in_(bindparam("pks", expanding=True)))
)
_VISIBLE_CLASSES = (
    select(_i.c.series_pk, _i.c.sop_class_uid, func.count())
    .where(_i.c.series_pk.in_(bindparam("pks", expanding=True)), rejections.visible(_i))
    .group_by(_i.c.series_pk, _i.c.sop_class_uid)
)
_PATIENT_COUNTS = ("NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries", "NumberOfPatientRelatedInstances")
_STUDY_COMPUTED = ("ModalitiesInStudy", "SOPClassesInStudy", "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")


class _Enricher:
    """Computed attributes for one chunk of rows, by one query for the chunk's studies (or,
    when patient counts are wanted, for every study of the chunk's patients). What the
    previous chunk computed is reused (rows come ordered by hierarchy); nothing more is
    kept, so memory stays bounded by the chunk."""

    def __init__(self, conn: Any, plan: _Plan) -> None:
        self.conn = conn
        self.plan = plan
        self.level = plan.level
        self.patients: dict[int, _PatientStats] = {}
        self.studies: dict[int, _StudyStats] = {}
        n = len(plan.plain)
        self.n_plain, self.patient_at, self.study_at, self.series_at = n, n, n + 1, n + 2
        self.template = dict.fromkeys(plan.keys, "")

    def _touched(self, rows: list[Any], at: int) -> dict[int, dict[str, int]]:
        """Series (of ``rows``, series pk at ``at``) holding a rejected instance -> their
        visible instances per SOP class; empty when nothing is hidden."""
        if not self.plan.hide:
            return {}
        pks = sorted({r[at] for r in rows if r[at] is not None})
        touched = [pk for (pk,) in self.conn.execute(_REJECTED_SERIES, {"pks": pks})] if pks else []
        visible: dict[int, dict[str, int]] = {pk: {} for pk in touched}
        if touched:
            for series_pk, sop_class, count in self.conn.execute(_VISIBLE_CLASSES, {"pks": touched}):
                visible[series_pk][sop_class] = int(count)
        return visible

    def _add_series(self, stats: _StudyStats, series_pk: Any, modality: str, count: int, low: Any, high: Any,
                    mixed: dict[int, _StudyStats], touched: dict[int, dict[str, int]] | None = None) -> None:
        if series_pk is None:
            return  # a study without series (outer join)
        if touched and series_pk in touched:
            classes = touched[series_pk]
            if classes:  # a series whose every instance is rejected is not there
                stats.series[series_pk] = sum(classes.values())
                stats.sop_classes.update(classes)
                if modality:
                    stats.modalities.add(modality)
            return
        stats.series[series_pk] = int(count)
        if modality:
            stats.modalities.add(modality)
        if low is not None:
            stats.sop_classes.add(low)
            stats.sop_classes.add(high)
            if low != high:
                mixed[series_pk] = stats

    def _classes_between(self, mixed: dict[int, _StudyStats]) -> None:
        if mixed:
            for series_pk, sop_class in self.conn.execute(_SERIES_CLASSES, {"pks": sorted(mixed)}):
                mixed[series_pk].sop_classes.add(sop_class)

    def _load_patients(self, chunk: Sequence[Any]) -> None:
        at = self.patient_at
        wanted = {r[at] for r in chunk}
        patients = {pk: self.patients[pk] for pk in wanted if pk in self.patients}
        missing = sorted(wanted - patients.keys())
        if missing:
            mixed: dict[int, _StudyStats] = {}
            for pk in missing:
                patients[pk] = _PatientStats({})
            rows = self.conn.execute(_SERIES_OF_PATIENTS, {"pks": missing}).all()
            touched = self._touched(rows, 2)
            for patient_pk, study_pk, series_pk, modality, count, low, high in rows:
                stats = patients[patient_pk].studies.get(study_pk)
                if stats is None:
                    stats = patients[patient_pk].studies[study_pk] = _StudyStats()
                self._add_series(stats, series_pk, modality, count, low, high, mixed, touched)
            self._classes_between(mixed)
        self.patients = patients

    def _load_studies(self, chunk: Sequence[Any]) -> None:
        at = self.study_at
        wanted = {r[at] for r in chunk}
        studies = {pk: self.studies[pk] for pk in wanted if pk in self.studies}
        if self.plan.patient_counts:  # the patients' query has read these studies already
            for r in chunk:
                studies[r[at]] = self.patients[r[self.patient_at]].studies.setdefault(r[at], _StudyStats())
        missing = sorted(wanted - studies.keys())
        if missing:
            mixed: dict[int, _StudyStats] = {}
            for pk in missing:
                studies[pk] = _StudyStats()
            rows = self.conn.execute(_SERIES_OF_STUDIES, {"pks": missing}).all()
            touched = self._touched(rows, 1)
            for study_pk, series_pk, modality, count, low, high in rows:
                self._add_series(studies[study_pk], series_pk, modality, count, low, high, mixed, touched)
            self._classes_between(mixed)
        self.studies = studies

    def rows(self, chunk: Sequence[Any]) -> Iterator[dict[str, str]]:
        plan, level, template, n_plain = self.plan, self.level, self.template, self.n_plain
        if plan.patient_counts:
            self._load_patients(chunk)
        if level != "PATIENT":
            self._load_studies(chunk)
        for r in chunk:
            row = template.copy()
            row.update(zip(plan.plain, ("" if v is None else v for v in r[:n_plain])))
            if plan.patient_counts:
                row.update(zip(_PATIENT_COUNTS, self.patients[r[self.patient_at]].counts()))
            if level != "PATIENT":
                stats = self.studies[r[self.study_at]]
                row.update(zip(_STUDY_COMPUTED, stats.values()))
                if level != "STUDY":
                    row["NumberOfSeriesRelatedInstances"] = str(stats.series.get(r[self.series_at], 0))
            yield row


# --- running ------------------------------------------------------------------------------


def _fold(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


def _register_fold(conn: Any) -> None:
    raw = conn.connection.dbapi_connection
    raw.create_function("dv_fold", 1, _fold, deterministic=True)


def statement_for(query: Query, dialect: str = "sqlite") -> Any:
    """The main SELECT ``run_query`` would execute (for EXPLAIN in benchmarks and tests)."""
    return _plan(query, dialect).statement


def run_query(catalog: "Catalog", query: Query) -> Iterator[dict[str, str]]:
    """Stream the matches of ``query``, in a stable order.

    Raises ``QueryError`` here, before any row, when the query is invalid; returns a
    generator that reads the catalog lazily, CHUNK_ROWS rows at a time.
    """
    plan = _plan(query, catalog.engine.dialect.name)
    return _stream(catalog, plan, query)


def _stream(catalog: "Catalog", plan: _Plan, query: Query) -> Iterator[dict[str, str]]:
    with catalog.read() as conn:
        if rejections.any_rejected(conn):  # IOCM: hide rejected instances (none: no cost)
            plan = _plan(query, catalog.engine.dialect.name, hide=True)
        if plan.uses_fold:
            _register_fold(conn)
        result = conn.execute(plan.statement.execution_options(stream_results=True, yield_per=CHUNK_ROWS))
        enricher = _Enricher(conn, plan)
        try:
            for chunk in result.partitions(CHUNK_ROWS):
                yield from enricher.rows(chunk)
        finally:
            result.close()
