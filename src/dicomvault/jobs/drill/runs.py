"""The ``drill_runs`` table: recording each site's restore drill, auditing it, and reading the
history back for ``dicomvault status`` and ``GET /api/drills`` (:func:`drill_status`).

Kept apart from the drill itself (``drill.py``) because ``status``, the API and the
schedule read the history without restoring anything.

A site's drill is a row inserted as ``running`` and finished as ``success`` or ``failure``
in the transaction that appends its ``drill`` audit event. A drill whose process died
leaves its row ``running``; the next drill (which holds the drill lock, so no other drill
is live on this host) marks such rows ``interrupted``, which is no verdict on the site:
alerts and the schedule look only at success and failure.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from dicomvault.audit import AuditEvent, append
from dicomvault.catalog import drills, snapshots
from dicomvault.config import parse_duration

from dicomvault.jobs.verify.job import readable_site_names

if TYPE_CHECKING:
    from dicomvault.catalog import Catalog
    from dicomvault.config import Settings

RUNNING, SUCCESS, FAILURE, INTERRUPTED = "running", "success", "failure", "interrupted"
FINISHED = (SUCCESS, FAILURE)
MAX_FAILURES_KEPT = 200  # per run in the row and the audit event; the CLI report has them all
HISTORY = 50  # runs listed by GET /api/drills


def start_run(catalog: "Catalog", site: str, actor: str, target: str, started_at: float) -> int:
    return drills.add_run(catalog, site=site, actor=actor, target=target, started_at=started_at, state=RUNNING)


def finish_run(catalog: "Catalog", run_id: int, actor: str, state: str, summary: dict[str, Any]) -> None:
    """Store the outcome (``summary``: site, target, studies, instances, bytes, seconds, picks,
    failures) and audit it in the same transaction."""
    failures = summary["failures"][:MAX_FAILURES_KEPT]
    with catalog.write() as conn:
        drills.record_outcome(
            conn, run_id, state=state, finished_at=time.time(), studies=summary["studies"],
            instances=summary["instances"], bytes_=summary["bytes"], seconds=summary["seconds"],
            picks=json.dumps(summary["picks"], separators=(",", ":")),
            failures=json.dumps(failures, separators=(",", ":")))
        append(conn, AuditEvent(actor=actor, action="drill", subject=summary["site"],
                                outcome=SUCCESS if state == SUCCESS else "failure" if state == FAILURE else state,
                                detail={"run_id": run_id, "target": summary["target"], "studies": summary["studies"],
                                        "instances": summary["instances"], "bytes": summary["bytes"],
                                        "seconds": summary["seconds"],
                                        "picks": [{"study_uid": p["study_uid"], "why": p["why"]}
                                                  for p in summary["picks"]],
                                        "failures": failures, "failure_count": len(summary["failures"])}))


def interrupt_stale(catalog: "Catalog", actor: str) -> int:
    """Rows left ``running`` by a drill that died become ``interrupted`` (audited)."""
    with catalog.write() as conn:
        stale = drills.runs_in_state(conn, RUNNING)
        for row in stale:
            drills.set_run_state(conn, row.id, INTERRUPTED, time.time())
            append(conn, AuditEvent(actor=actor, action="drill", subject=row.site, outcome=INTERRUPTED,
                                    detail={"run_id": row.id, "reason": "the drill's process stopped before it "
                                                                        "finished"}))
    return len(stale)


def last_started(catalog: "Catalog") -> dict[str, float]:
    """Per site, when its latest finished (success or failure) drill started: the schedule's clock."""
    return drills.last_started_per_site(catalog, FINISHED)


def _summary(row: Any, now: float) -> dict[str, Any]:
    failures = json.loads(row.failures or "[]")
    when = row.finished_at or row.started_at
    return {"run_id": row.id, "state": row.state, "actor": row.actor, "target": row.target,
            "started_at": row.started_at, "finished_at": row.finished_at, "age_seconds": round(now - when, 1),
            "studies": row.studies, "instances": row.instances, "bytes": int(row.bytes),
            "seconds": round(float(row.seconds), 3), "picks": json.loads(row.picks or "[]"),
            "failures": failures}


def recent_runs(catalog: "Catalog", limit: int = HISTORY, now: float | None = None) -> list[dict[str, Any]]:
    """The latest ``limit`` drill runs of every site, newest first."""
    now = time.time() if now is None else now
    return [{"site": row.site, **_summary(row, now)} for row in drills.recent_runs(catalog, limit)]


def ago(seconds: float) -> str:
    """``4 s``, ``12 min``, ``2 h``, ``3 d``: how long ago, for alert lines."""
    seconds = max(0.0, seconds)
    for below, size, unit in ((90, 1, "s"), (90 * 60, 60, "min"), (48 * 3600, 3600, "h")):
        if seconds < below:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds / 86400:.0f} d"


def drill_status(catalog: "Catalog", archive_settings: "Settings", now: float | None = None) -> dict[str, Any]:
    """Per readable site: the last drill, the last successful one (with a one-line summary such
    as "2 h ago, 12 studies, 4.1 s") and a drill in progress; plus alerts.

    Alerts: the site's latest drill failed; or, while the ``[drill]`` schedule is on, its last
    successful drill is older than two periods (a site never drilled is not alerted: the
    schedule drills it soon after ``serve`` starts)."""
    now = time.time() if now is None else now
    settings = archive_settings.drill
    every = parse_duration(settings.every)
    finished = drills.latest_run_per_site(catalog, states=FINISHED)
    succeeded = drills.latest_run_per_site(catalog, state=SUCCESS)
    running = drills.latest_run_per_site(catalog, state=RUNNING)
    sites: dict[str, Any] = {}
    alerts: list[str] = []
    with catalog.read() as conn:  # a site never drilled is overdue once its data is two periods old
        oldest = snapshots.oldest_received_at(conn)
    for name in readable_site_names(archive_settings):
        last, good, live = finished.get(name), succeeded.get(name), running.get(name)
        since = good.started_at if good is not None else oldest
        entry: dict[str, Any] = {"last_run": _summary(last, now) if last is not None else None,
                                 "last_success": None, "running": None,
                                 # no successful drill for two periods (archive/readiness.py: at risk)
                                 "overdue": since is not None and now - float(since) > 2 * every}
        if good is not None:
            ok = _summary(good, now)
            ok["summary"] = (f"{ago(ok['age_seconds'])} ago, {ok['studies']} studies, {ok['instances']} instances, "
                             f"{ok['seconds']:.1f} s")
            entry["last_success"] = ok
        if live is not None:
            entry["running"] = {"run_id": live.id, "started_at": live.started_at, "actor": live.actor,
                                "age_seconds": round(now - live.started_at, 1)}
        sites[name] = entry
        if last is not None and last.state == FAILURE:
            problems = entry["last_run"]["failures"]
            first = f"; first: {problems[0]['object']}: {problems[0]['problem']}" if problems else ""
            alerts.append(f"restore drill from site {name} FAILED {ago(entry['last_run']['age_seconds'])} ago "
                          f"({len(problems)} problem(s){first}); fix it (`dicomvault verify --site {name}`), "
                          f"then `dicomvault drill --site {name}`")
        elif settings.enabled and good is not None and now - good.started_at > 2 * every:
            alerts.append(f"no successful restore drill from site {name} for {ago(now - good.started_at)} "
                          f"([drill] every = \"{settings.every}\"): is `dicomvault serve` running? By hand: "
                          f"`dicomvault drill --site {name}`")
    return {"enabled": settings.enabled, "every": settings.every, "random": settings.random, "sites": sites,
            "alerts": alerts}
