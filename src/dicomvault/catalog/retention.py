"""Retention: each study's keep-until date under the ``[retention]`` rules, and which studies
are due for deletion.

``decide`` is the rule semantics, pure: the first ``[[retention.rules]]`` entry whose every
match key matches the study decides; none matching, ``default`` does. A rule's ``keep``
counts from the Study Date (the day the study arrived when it has none); ``keep_after_age``
keeps until the patient's birthday of that age plus the period; a rule with both keeps until
the later of the two. A patient without a usable birth date is of unknown age: an
``age_below`` rule never matches them, and a ``keep_after_age`` they reach keeps the study
forever (never a guess that could delete a minor's study early).

The dates live in ``study_retention``, one row per study with the hash of the rules that made
it: ingest computes a study's row when it gains a series, SOP class or sender
(``recompute_study``); ``refresh`` recomputes every study whose row is missing or was made by
other rules (run at ``serve`` start and by ``dicomvault retention plan``).
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, delete, func, insert, not_, or_, select

from . import schema as t
from .chunks import in_chunks
from .holds import held_clause
from dicomvault.config import RetentionRule, RetentionSettings, parse_period

if TYPE_CHECKING:
    from .db import Catalog

DEFAULT_RULE = "default"
_r = t.study_retention


@dataclass
class StudyFacts:
    """What the rules look at, for one study."""

    study_uid: str
    study_date: str = ""  # DICOM DA, YYYYMMDD
    birth_date: str = ""
    arrived: float = 0.0  # when the catalog first saw it (epoch seconds)
    modalities: set[str] = field(default_factory=set)
    sop_classes: set[str] = field(default_factory=set)
    calling_aes: set[str] = field(default_factory=set)


def parse_da(value: str) -> date | None:
    """A DICOM DA ("YYYYMMDD", or the old "YYYY.MM.DD") as a date; None when absent or invalid."""
    digits = (value or "").strip().replace(".", "")
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def add_period(start: date, period: str) -> date:
    """``start`` plus "10y" / "18mo" / "30d"; a 29 February or 31st lands on the month's last day."""
    count, unit = parse_period(period)
    if unit == "days":
        return start + timedelta(days=count)
    months = start.month - 1 + (count * 12 if unit == "years" else count)
    year, month = start.year + months // 12, months % 12 + 1
    if year > 9999:
        return date.max
    return date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


def age_on(birth: date, day: date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def anchor_date(facts: StudyFacts) -> date:
    """The day a ``keep`` period counts from: the Study Date, else the day it arrived (UTC)."""
    return parse_da(facts.study_date) or datetime.fromtimestamp(facts.arrived or time.time(), timezone.utc).date()


def _matches(rule: RetentionRule, facts: StudyFacts) -> bool:
    if rule.modality and not {m.upper() for m in facts.modalities} & set(rule.modality):
        return False
    if rule.sop_class and not any(
            uid.startswith(p[:-1]) if p.endswith("*") else uid == p for p in rule.sop_class for uid in facts.sop_classes):
        return False
    if rule.calling_ae and not facts.calling_aes & set(rule.calling_ae):
        return False
    if rule.age_below is not None:
        birth = parse_da(facts.birth_date)
        if birth is None or age_on(birth, anchor_date(facts)) >= rule.age_below:
            return False
    return True


def _keep_until(keep: str, keep_after_age: tuple[int, str] | None, facts: StudyFacts) -> date | None:
    """The last day to keep under one rule's keep terms; None = forever."""
    candidates: list[date] = []
    if keep == "forever":
        return None
    if keep:
        candidates.append(add_period(anchor_date(facts), keep))
    if keep_after_age is not None:
        birth = parse_da(facts.birth_date)
        if birth is None:
            return None  # unknown age: never delete on a guess
        candidates.append(add_period(add_period(birth, f"{keep_after_age[0]}y") if keep_after_age[0] else birth,
                                     keep_after_age[1]))
    return max(candidates)


def decide(settings: RetentionSettings, facts: StudyFacts) -> tuple[date | None, str]:
    """(last day to keep or None for forever, the name of the rule that decided)."""
    for rule in settings.rules:
        if _matches(rule, facts):
            return _keep_until(rule.keep, rule.keep_after_age, facts), rule.name
    return _keep_until(settings.default, None, facts), DEFAULT_RULE


# --- the study_retention rows ---------------------------------------------------------------

def _calling_ae(source: str) -> str:
    """``dimse:AE@host:port`` -> AE; other sources (import, STOW) name no AE."""
    if not source.startswith("dimse:"):
        return ""
    return source[len("dimse:"):].rpartition("@")[0].strip()


def study_facts(conn: Connection, settings: RetentionSettings, study_uids: Sequence[str]) -> list[StudyFacts]:
    """The facts of these studies (unknown UIDs are left out); sets the rules do not look at
    stay empty, so the cost follows the rules in force."""
    s, p, se, i, v = t.studies, t.patients, t.series, t.instances, t.versions
    rows = conn.execute(select(s.c.id, s.c.study_uid, s.c.study_date, s.c.created_at, p.c.birth_date)
                        .select_from(s.join(p, s.c.patient_pk == p.c.id)).where(s.c.study_uid.in_(study_uids))).all()
    by_pk = {row.id: StudyFacts(row.study_uid, row.study_date or "", row.birth_date or "", row.created_at)
             for row in rows}
    if not by_pk:
        return []
    pks = list(by_pk)
    for pk, modality in conn.execute(select(se.c.study_pk, se.c.modality).distinct().where(se.c.study_pk.in_(pks))):
        if modality:
            by_pk[pk].modalities.add(modality)
    if any(rule.sop_class for rule in settings.rules):
        for pk, uid in conn.execute(select(se.c.study_pk, i.c.sop_class_uid).distinct().select_from(
                i.join(se, i.c.series_pk == se.c.id)).where(se.c.study_pk.in_(pks))):
            by_pk[pk].sop_classes.add(uid)
    if any(rule.calling_ae for rule in settings.rules):
        for pk, source in conn.execute(select(se.c.study_pk, v.c.source).distinct().select_from(
                v.join(i, v.c.instance_pk == i.c.id).join(se, i.c.series_pk == se.c.id))
                .where(se.c.study_pk.in_(pks), v.c.source.like("dimse:%"))):
            ae = _calling_ae(source)
            if ae:
                by_pk[pk].calling_aes.add(ae)
    return list(by_pk.values())


def _store(conn: Connection, settings: RetentionSettings, facts: Iterable[StudyFacts], now: float) -> int:
    fingerprint = settings.fingerprint()
    rows = []
    for f in facts:
        until, rule = decide(settings, f)
        rows.append({"study_uid": f.study_uid, "keep_until": until.isoformat() if until else None, "rule": rule,
                     "rules_hash": fingerprint, "computed_at": now})
    if rows:
        conn.execute(delete(_r).where(_r.c.study_uid.in_([row["study_uid"] for row in rows])))
        conn.execute(insert(_r), rows)
    return len(rows)


def recompute_study(conn: Connection, settings: RetentionSettings, study_uid: str, now: float | None = None) -> None:
    """Recompute one study's keep-until in the caller's transaction (ingest; a demographics change)."""
    _store(conn, settings, study_facts(conn, settings, [study_uid]), time.time() if now is None else now)


def recompute_changed(conn: Connection, settings: RetentionSettings, changed: Sequence[tuple[str, int]]) -> None:
    """A correction changed these (kind, pk) rows (``Catalog.on_followed``): recompute the
    keep-until of every study they bear on, in the same transaction. A patient's birth date
    decides an age rule for all of its studies; a series' modality, its study's rules."""
    s, se = t.studies, t.series
    pks = {kind: [pk for k, pk in changed if k == kind] for kind in ("patient", "study", "series")}
    clauses = []
    if pks["study"]:
        clauses.append(s.c.id.in_(pks["study"]))
    if pks["patient"]:
        clauses.append(s.c.patient_pk.in_(pks["patient"]))
    if pks["series"]:
        clauses.append(s.c.id.in_(select(se.c.study_pk).where(se.c.id.in_(pks["series"]))))
    if not clauses:
        return
    uids = list(conn.execute(select(s.c.study_uid).where(or_(*clauses))).scalars())
    for chunk in in_chunks(uids):
        _store(conn, settings, study_facts(conn, settings, chunk), time.time())


def _stale(fingerprint: str) -> Any:
    """SQL true for a study whose keep-until is missing or was computed under other rules."""
    return not_(select(_r.c.study_uid).where(_r.c.study_uid == t.studies.c.study_uid,
                                             _r.c.rules_hash == fingerprint).exists())


def stale_studies(conn: Connection, fingerprint: str) -> list[str]:
    return list(conn.execute(select(t.studies.c.study_uid).where(_stale(fingerprint))).scalars())


def refresh(catalog: "Catalog", settings: RetentionSettings) -> int:
    """Recompute every stale study (a rule change makes them all stale); returns how many."""
    with catalog.read() as conn:
        stale = stale_studies(conn, settings.fingerprint())
    now = time.time()
    done = 0
    for chunk in in_chunks(stale):
        with catalog.write() as conn:
            done += _store(conn, settings, study_facts(conn, settings, chunk), now)
    return done


def today(now: float) -> str:
    return datetime.fromtimestamp(now, timezone.utc).date().isoformat()


def _expired(now: float) -> Any:
    return _r.c.keep_until.is_not(None) & (_r.c.keep_until < today(now))


def due_for_deletion(conn: Connection, now: float) -> list[Any]:
    """Studies whose keep-until day has passed and that no hold covers, oldest expiry first:
    (study_uid, keep_until, rule)."""
    s = t.studies
    return conn.execute(select(_r.c.study_uid, _r.c.keep_until, _r.c.rule)
                        .select_from(_r.join(s, s.c.study_uid == _r.c.study_uid))
                        .where(_expired(now), not_(held_clause(s.c.study_uid, s.c.patient_pk)))
                        .order_by(_r.c.keep_until, _r.c.study_uid)).all()


def plan_rows(conn: Connection, now: float) -> list[Any]:
    """Every study with its keep-until, rule, bytes stored (all versions), patient and whether
    a hold covers it: the material of ``dicomvault retention plan``."""
    s, p, se, i, v = t.studies, t.patients, t.series, t.instances, t.versions
    sizes = (select(se.c.study_pk, func.sum(v.c.size_stored).label("bytes"))
             .select_from(v.join(i, v.c.instance_pk == i.c.id).join(se, i.c.series_pk == se.c.id))
             .group_by(se.c.study_pk).subquery())
    return conn.execute(select(
        s.c.study_uid, s.c.study_date, p.c.patient_id, _r.c.keep_until, _r.c.rule,
        func.coalesce(sizes.c.bytes, 0).label("bytes"),
        held_clause(s.c.study_uid, s.c.patient_pk).label("held"))
        .select_from(s.join(p, s.c.patient_pk == p.c.id).outerjoin(_r, _r.c.study_uid == s.c.study_uid)
                     .outerjoin(sizes, sizes.c.study_pk == s.c.id))
        .order_by(_r.c.keep_until, s.c.study_uid)).all()


def counts(conn: Connection, now: float, fingerprint: str) -> dict[str, int]:
    """For `status`: studies due (expired, unheld), expired but held, and stale rows."""
    s = t.studies
    held = held_clause(s.c.study_uid, s.c.patient_pk)
    base = select(func.count()).select_from(_r.join(s, s.c.study_uid == _r.c.study_uid)).where(_expired(now))
    return {"due": int(conn.execute(base.where(not_(held))).scalar() or 0),
            "expired_held": int(conn.execute(base.where(held)).scalar() or 0),
            "stale": int(conn.execute(select(func.count()).select_from(s).where(_stale(fingerprint))).scalar() or 0)}
