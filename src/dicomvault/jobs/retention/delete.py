"""The deletion engine: the one way a study (or a rejected instance) leaves the archive, for
a `dicomvault delete` request, the retention rules and IOCM rejections alike.

1. **Refuse** a study a legal hold covers (``holds.deletable``; a patient-scope hold counts):
   ``DeletionError`` naming the hold, and an audited refusal (``delete``, outcome ``refused``).
2. **Plan**: every instance, every version's object id and stored bytes (``catalog/deletions``).
3. **One catalog transaction**: the deletion record (kept for good), one outcome row per site
   (``pending``; a ``dicom://`` PACS is ``not ours``), the rows removed (instances, versions,
   copies and owed copies, rejections, emptied series / study / patient, keep-until), the study
   key shredded (``shred_study_key``) and the audit event ``delete`` (ATNA: Study Deleted).
   From here on the study is gone from every answer; the caches of every process follow
   (``Catalog.notice_deletions``).
4. **Per site** (the primary and every replica that keeps ciphertext): each object is removed
   with ``Site.delete``; an object the site will not remove (``DeletionRefused``: Object Lock,
   a write-once partner vault) is counted ``locked``; one already absent ``missing``. A site
   that cannot be reached stays ``pending`` and is retried (serve's scheduler, `dicomvault
   deletions retry`); every outcome is written to the record and audited (``deletion-site``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from dicomvault.archive.keystore import delete_key_record
from dicomvault.audit import AuditEvent, append
from dicomvault.catalog import deletions, holds
from dicomvault.catalog.db import PRIMARY_SITE
from dicomvault.sites import DeletionRefused, Site, SiteError, open_site

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from dicomvault.archive.core import Archive

log = logging.getLogger(__name__)

KINDS = ("request", "retention", "rejection")
MAX_REASON = 1024
RETRY_FIRST = 60.0  # seconds before an unreachable site is tried again; doubles up to RETRY_LONGEST
RETRY_LONGEST = 3600.0
Progress = Callable[[int, int], None]  # (objects done, objects in all) across sites


class DeletionError(Exception):
    """A deletion that cannot be done (held, unknown study, bad input); nothing changed."""


def shred_study_key(archive: "Archive", conn: "Connection", study_uid: str, deletion_id: int) -> None:
    """The catalog's copy of the study key goes with the study's rows (after its versions,
    which reference it) and is named in the record; each site's key record goes with that
    site's objects (``finish_sites``), so a site that is unreachable now is shredded later."""
    removed = deletions.delete_study_key(conn, study_uid, deletion_id)
    if removed is not None:
        archive.keys.forget([removed[0]])


def _text(value: object, label: str, limit: int) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if not text:
        raise DeletionError(f"{label} is required")
    if len(text) > limit:
        raise DeletionError(f"{label} is {len(text)} characters; at most {limit}")
    return text


def _reason(reason: object) -> str:
    return _text(reason, "a reason (who asked and why, e.g. \"patient request 2026-31, DPO J. Doe\")", MAX_REASON)


def site_plan(archive: "Archive") -> list[tuple[str, str]]:
    """(site, first state) of a deletion: the primary and every replica, a PACS ``not ours``."""
    return [(PRIMARY_SITE, "pending"), *[(r.name, "not ours" if r.is_pacs else "pending")
                                          for r in archive.settings.replicas]]


def _delete_planned(archive: "Archive", conn: "Connection", plan: deletions.Plan, *, why: str, rule: str,
                    reason: str, actor: str, now: float) -> int:
    deletion_id = deletions.add_record(conn, plan, why=why, rule=rule, reason=reason, actor=actor, now=now,
                                       sites=site_plan(archive))
    gone = deletions.remove(conn, plan, deletion_id=deletion_id, now=now)
    if gone["studies"]:
        shred_study_key(archive, conn, plan.study_uid, deletion_id)
    append(conn, AuditEvent(actor=actor, action="delete", subject=plan.study_uid, detail={
        "deletion": deletion_id, "why": why, "rule": rule, "reason": reason, "study": plan.study_uid,
        "patient": plan.patient_id, "instances": len(plan.instances), "versions": len(plan.versions),
        "bytes": plan.bytes, "whole_study": bool(gone["studies"]),
        **({} if gone["studies"] else {"sop_uids": plan.sop_uids[:100]})}))
    return deletion_id


def _refuse(conn: "Connection", actor: str, study_uid: str, why: str, reason: str, refusal: str) -> None:
    append(conn, AuditEvent(actor=actor, action="delete", subject=study_uid, outcome="refused",
                            detail={"study": study_uid, "why": why, "reason": reason, "error": refusal}))


def _forget(archive: "Archive") -> None:
    """This process's caches, at once (other processes notice at their next write or ingest)."""
    archive.catalog.forget_cached_keys()


def delete_study(archive: "Archive", study_uid: object, *, why: str, reason: object, actor: str, rule: str = "",
                 progress: Progress | None = None) -> dict[str, Any]:
    """Delete a study everywhere; returns its deletion record (see ``record_dict``)."""
    if why not in KINDS:
        raise DeletionError(f"why is one of {', '.join(KINDS)}, got {why!r}")
    uid = _text(study_uid, "a Study Instance UID", 64)
    text = _reason(reason)
    refusal = ""
    with archive.catalog.write() as conn:
        if not holds.study_exists(conn, uid):
            raise DeletionError(f"no study {uid} in the catalog (check the Study Instance UID)")
        allowed, why_not = holds.deletable(conn, uid)
        if not allowed:
            _refuse(conn, actor, uid, why, text, why_not)
            refusal = why_not
        else:
            plan = deletions.plan_study(conn, uid)
            assert plan is not None
            deletion_id = _delete_planned(archive, conn, plan, why=why, rule=rule, reason=text, actor=actor,
                                          now=time.time())
    if refusal:
        raise DeletionError(f"study {uid} is not deleted: {refusal}")
    _forget(archive)
    finish_sites(archive, deletion_id, actor=actor, progress=progress)
    return get(archive, deletion_id)


def delete_instances(archive: "Archive", references: Sequence[tuple[str, str, str]], *, why: str = "rejection",
                     reason: object, actor: str, rule: str = "",
                     progress: Progress | None = None) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Delete these (study, series, SOP Instance UID) instances: one deletion per study they
    are stored under (the study's rows go with its last instance). Returns (records, refused:
    [{"study", "error"}] for studies a hold covers). Instances not stored are left out."""
    if why not in KINDS:
        raise DeletionError(f"why is one of {', '.join(KINDS)}, got {why!r}")
    text = _reason(reason)
    with archive.catalog.read() as conn:
        plans = deletions.plan_instances(conn, [sop for _study, _series, sop in references])
    done: list[int] = []
    refused: list[dict[str, str]] = []
    for planned in plans:
        with archive.catalog.write() as conn:
            allowed, why_not = holds.deletable(conn, planned.study_uid)
            if not allowed:
                _refuse(conn, actor, planned.study_uid, why, text, why_not)
                refused.append({"study": planned.study_uid, "error": why_not})
                continue
            plan = next(iter(deletions.plan_instances(conn, planned.sop_uids)), None)  # afresh, inside the lock
            if plan is None:
                continue
            done.append(_delete_planned(archive, conn, plan, why=why, rule=rule, reason=text, actor=actor,
                                        now=time.time()))
    if done:
        _forget(archive)
    for deletion_id in done:
        finish_sites(archive, deletion_id, actor=actor, progress=progress)
    return [get(archive, deletion_id) for deletion_id in done], refused


# --- step 4: the sites -------------------------------------------------------------------------

def _open_site(archive: "Archive", name: str, opened: dict[str, Site]) -> Site:
    if name == PRIMARY_SITE:
        return archive.site
    if name not in opened:
        replica = next((r for r in archive.settings.replicas if r.name == name), None)
        if replica is None:
            raise DeletionError(f"site {name} is no longer configured ([sites.{name}])")
        opened[name] = open_site(replica.url, replica.option_map)
    return opened[name]


def site_outcome(locked: int, error: str, key_id: str, key_embedded: bool) -> str:
    """One site's state: every object gone (``deleted``); some kept by the site but the study's
    key record gone from it (``shredded``: unreadable once no site and no catalog holds the
    key); some kept by a site with a key inside them (``locked``: sealed before key records);
    or not done yet (``pending``)."""
    if error:
        return "pending"
    if not locked:
        return "deleted"
    return "shredded" if key_id and not key_embedded else "locked"


def _remove_from(site: Site, objects: Iterable[tuple[str, int]], tick: Callable[[], None],
                 key_id: str = "") -> tuple[int, int, int, str]:
    """(deleted, locked, missing, error) for one site, its key record last; stops at the first
    failure that is not a lock."""
    deleted = locked = missing = 0
    for object_id, _size in objects:
        try:
            if site.stat(object_id) is None:
                missing += 1
            else:
                site.delete(object_id)
                deleted += 1
        except DeletionRefused:
            locked += 1
        except SiteError as exc:
            return deleted, locked, missing, str(exc)
        tick()
    if key_id and site.capabilities.keys:
        try:
            delete_key_record(site, key_id)
        except SiteError as exc:
            return deleted, locked, missing, f"key record not deleted: {exc}"
    return deleted, locked, missing, ""


def finish_sites(archive: "Archive", deletion_id: int, *, actor: str, only: Iterable[str] | None = None,
                 progress: Progress | None = None) -> list[dict[str, Any]]:
    """Try every pending site of one deletion (or those in ``only``); their outcomes."""
    with archive.catalog.read() as conn:
        record = deletions.get_record(conn, deletion_id)
        rows = [r for r in deletions.site_rows(conn, [deletion_id]).get(deletion_id, []) if r.state == "pending"]
    if record is None:
        raise DeletionError(f"there is no deletion {deletion_id}")
    wanted = None if only is None else set(only)
    rows = [r for r in rows if wanted is None or r.site in wanted]
    objects = [(str(o), int(s)) for o, s in json.loads(record.objects)]
    total, done = len(objects) * len(rows), 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    outcomes = []
    opened: dict[str, Site] = {}
    try:
        for row in rows:
            try:
                site = _open_site(archive, row.site, opened)
                deleted, locked, missing, error = _remove_from(site, objects, tick, record.key_id)
                state = site_outcome(locked, error, record.key_id, record.key_embedded)
            except (DeletionError, SiteError) as exc:
                deleted = locked = missing = 0
                error, state = str(exc), "error" if isinstance(exc, DeletionError) else "pending"
            now = time.time()
            backoff = min(RETRY_LONGEST, RETRY_FIRST * 2 ** min(int(row.attempts), 10))
            retry_at = now + backoff if state == "pending" else 0.0
            result = {"site": row.site, "state": state, "objects": len(objects), "deleted": deleted,
                       "locked": locked, "missing": missing, "error": error or None}
            with archive.catalog.write() as conn:
                deletions.record_site(conn, deletion_id, row.site, state=state, deleted=deleted, locked=locked,
                                      missing=missing, error=error or None, now=now, next_attempt_at=retry_at)
                append(conn, AuditEvent(actor=actor, action="deletion-site", subject=record.study_uid, outcome=state,
                                        detail={"deletion": deletion_id, "study": record.study_uid,
                                                "patient": record.patient_id, **result}))
            if error:
                log.warning("deletion %d on site %s: %s (%s)", deletion_id, row.site, state, error)
            outcomes.append(result)
    finally:
        for site in opened.values():
            site.close()
    return outcomes


def retry_pending(archive: "Archive", *, actor: str, due_only: bool = True,
                  progress: Progress | None = None) -> list[dict[str, Any]]:
    """Every pending site task (only those due, with ``due_only``); their outcomes."""
    with archive.catalog.read() as conn:
        tasks = deletions.pending_tasks(conn, time.time() if due_only else None)
    by_deletion: dict[int, list[str]] = {}
    for task in tasks:
        by_deletion.setdefault(int(task.deletion_id), []).append(task.site)
    outcomes = []
    for deletion_id, sites in by_deletion.items():
        outcomes += [{"deletion": deletion_id, **result}
                     for result in finish_sites(archive, deletion_id, actor=actor, only=sites, progress=progress)]
    return outcomes


# --- the record as the CLI and the API show it --------------------------------------------------

def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def record_dict(row: Any, sites: Sequence[Any], with_uids: bool = True) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": row.id, "when": _iso(row.created_at), "created_at": row.created_at, "who": row.actor,
        "why": row.why, "rule": row.rule, "reason": row.reason, "study_uid": row.study_uid,
        "patient_id": row.patient_id, "instances": row.instances, "versions": row.versions, "bytes": row.bytes,
        "completed": row.completed_at is not None, "completed_at": _iso(row.completed_at),
        "study_key": {"id": row.key_id or None, "embedded": bool(row.key_embedded),
                      # every copy left anywhere is unreadable: the key is gone from the catalog
                      # and from every site (none pending), and no object carries it
                      "shredded": bool(row.key_id) and not row.key_embedded and all(
                          s.state in ("deleted", "shredded", "not ours") for s in sites)},
        "sites": [{"site": s.site, "state": s.state, "objects": s.objects, "deleted": s.deleted, "locked": s.locked,
                   "missing": s.missing, "attempts": s.attempts, "last_error": s.last_error,
                   "updated": _iso(s.updated_at)} for s in sites],
    }
    if with_uids:
        entry["sop_instance_uids"] = json.loads(row.sop_uids)
    return entry


def get(archive: "Archive", deletion_id: object) -> dict[str, Any]:
    if isinstance(deletion_id, bool) or not str(deletion_id).strip().isdigit() or len(str(deletion_id)) > 18:
        raise DeletionError(f"a deletion id is a whole number (see `dicomvault deletions`), got {str(deletion_id)[:40]!r}")
    number = int(str(deletion_id).strip())
    with archive.catalog.read() as conn:
        row = deletions.get_record(conn, number)
        if row is None:
            raise DeletionError(f"there is no deletion {number}")
        return record_dict(row, deletions.site_rows(conn, [number]).get(number, []))


def list_records(catalog: Any, since: float | None = None, with_uids: bool = False) -> list[dict[str, Any]]:
    with catalog.read() as conn:
        rows = deletions.list_records(conn, since)
        sites = deletions.site_rows(conn, [r.id for r in rows])
    return [record_dict(row, sites.get(row.id, []), with_uids) for row in rows]


def preview(archive: "Archive", study_uid: object) -> dict[str, Any]:
    """What ``delete_study`` would take (nothing changes): counts, bytes, sites, holds."""
    uid = _text(study_uid, "a Study Instance UID", 64)
    with archive.catalog.read() as conn:
        plan = deletions.plan_study(conn, uid)
        if plan is None:
            raise DeletionError(f"no study {uid} in the catalog (check the Study Instance UID)")
        allowed, why_not = holds.deletable(conn, uid)
        copies = deletions.copies_by_site(conn, [o for o, _s in plan.objects])
    return {"study_uid": uid, "patient_id": plan.patient_id, "instances": len(plan.instances),
            "versions": len(plan.versions), "bytes": plan.bytes, "held": not allowed,
            "hold": None if allowed else why_not,
            "sites": [{"site": name, "state": state, "copies": copies.get(name, 0)} for name, state in site_plan(archive)]}


def deletion_status(catalog: Any, now: float | None = None) -> dict[str, Any]:
    """For ``status``: deletions in the last 30 days and site tasks still pending."""
    now = time.time() if now is None else now
    with catalog.read() as conn:
        counts = deletions.counts(conn, now - 30 * 86400, now - 86400)
    return {"last_30_days": {"deletions": counts["deletions"], "instances": counts["instances"],
                             "bytes": counts["bytes"], "locked_sites": counts["locked_sites"]},
            "pending_sites": counts["pending_sites"], "pending_over_24h": counts["pending_over_24h"]}
