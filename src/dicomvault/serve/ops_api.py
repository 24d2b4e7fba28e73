"""The operations API under ``/api``: status, restore jobs and drills, for dashboards and scripts.

``POST /api/restores`` starts (or resumes) a restore inside ``serve`` (jobs/restore/service.py);
``GET /api/restores/{id}?wait=S`` answers when the job ends or after S seconds (at most 60), so
a script need not poll, whether serve or a ``dicomvault restore`` in a terminal runs the job;
``POST /api/restores/{id}/stop`` stops one, resumable. ``GET /api/holds`` lists legal holds;
``POST /api/holds`` ({"study"|"patient", "reason"}) places one and ``POST
/api/holds/{id}/release`` ({"reason"}) releases it (operator role; jobs/retention/holds.py).
``GET /api/deletions`` lists deletion records (operator); ``POST /api/deletions`` ({"study",
"reason"}) deletes a study as `dicomvault delete --yes` does (admin; jobs/retention/delete.py).
``GET /api/capacity``, ``/api/ingest-history?range=24h|30d`` and ``/api/rto`` (operator) are
capacity planning, the dashboard's ingest charts and the RTO estimate (jobs/capacity.py).
``GET /api/alerts`` lists open alerts (``?all=1``: resolved too) and ``POST
/api/alerts/{id}/ack`` ({"note"}) acknowledges one (operator; jobs/alerts/engine.py).

Restore reports list patients' instances (UIDs, the PACS's refusals) and a job's selection
may hold a Patient ID, so every request must carry a bearer token from ``[http]
api_tokens_file``; a missing or unreadable file refuses everything rather than opening up.
Each route needs a role (serve/tokens.py): ``read`` for every GET, ``operator`` for a POST
that acts (a route may ask for ``admin``); a token without it gets 403 naming the role.
Reads are audited under the token's name, at most once a minute per name, address and path
(a dashboard polls); refusals at most once a minute per address (unknown token) or per name,
address and path (missing role). A line without roles reads, and also acts when its name is
in ``[http] api_operators`` (what such a line meant before roles).
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dicomvault.archive.core import Archive
from dicomvault.audit import AuditEvent
from dicomvault.jobs.restore.plan import RestoreError, job_report, recent_jobs, status_lock_dir
from dicomvault.jobs.restore.service import Conflict, RequestError, RestoreService

from dicomvault.serve.access import Gate, api_tokens
from dicomvault.serve.dicomweb.common import append_audit, client_address
from dicomvault.serve.numbers import job_id_param, seconds_param
from dicomvault.serve.status import archive_status
from dicomvault.audit.throttle import AuditThrottle
from dicomvault.serve.tokens import ADMIN, OPERATOR, READ

REALM = "dicomvault-api"
MAX_WAIT_SECONDS = 60.0


def api_routes(archive: Archive, restores: RestoreService | None = None) -> list[Route]:
    gate = Gate(api_tokens(archive.settings), REALM, "[http] api_tokens_file")
    reads = AuditThrottle()

    async def audit(request: Request, actor: str, action: str, outcome: str, detail: dict) -> None:
        event = AuditEvent(actor=actor, action=action, subject=request.url.path, outcome=outcome, detail=detail)
        await run_in_threadpool(append_audit, archive.catalog, event)

    async def authorise(request: Request, needed: str) -> Response | None:
        address = client_address(request)
        decision = gate.decide(request.headers.get("authorization", ""), needed, address, request.url.path)
        if decision.status == 503:
            return JSONResponse({"error": f"the operations API refuses every request: {decision.reason}"},
                                status_code=503)
        if decision.status == 401 or decision.identity is None:  # no token, or an unknown one
            if decision.audit:
                await audit(request, f"api:{address}", "login", "failure", {"error": "missing or unknown bearer token"})
            return JSONResponse({"error": decision.reason}, status_code=401, headers=decision.headers)
        name = decision.identity.name
        actor = f"api:{name}@{address}"
        request.scope["dicomvault.api_actor"] = actor
        if not decision.allowed:
            if decision.audit:
                await audit(request, actor, "api", "forbidden", {"method": request.method, "needed": decision.needed})
            return JSONResponse({"error": decision.reason, "needed": decision.needed}, status_code=403)
        if request.method == "GET" and reads.due((name, address, request.url.path)):
            await audit(request, actor, "read", "success", {"resource": request.url.path})
        return None

    def guarded(handler, needed: str | None = None):  # type: ignore[no-untyped-def]
        """``handler`` behind the gate: ``needed`` role, else read for GET and operator for what acts."""
        async def run(request: Request) -> Response:
            role = needed or (READ if request.method in ("GET", "HEAD") else OPERATOR)
            denied = await authorise(request, role)
            return denied if denied is not None else await handler(request)

        return run

    async def status(_: Request) -> Response:
        return JSONResponse(await run_in_threadpool(archive_status, archive))

    async def list_restores(_: Request) -> Response:
        """Restore and network-export jobs: unfinished ones and those of the last 7 days."""
        jobs = await run_in_threadpool(recent_jobs, archive.catalog, lock_dir=status_lock_dir(archive.settings))
        return JSONResponse({"jobs": jobs})

    async def start_restore(request: Request) -> Response:
        """Plan or resume a restore and start sending: 202 with the job's progress."""
        actor = request.scope["dicomvault.api_actor"]
        if restores is None:
            return JSONResponse({"error": "this server runs no restore jobs; use `dicomvault restore`"}, status_code=503)
        try:
            body = await request.json()
        except ValueError:
            body = None
        try:
            job = await run_in_threadpool(restores.start, body, actor)
        except RequestError as exc:
            await audit(request, actor, "restore", "refused", {"error": str(exc)})
            return JSONResponse({"error": str(exc)}, status_code=409 if isinstance(exc, Conflict) else 400)
        return JSONResponse(job, status_code=202)

    async def restore_job(request: Request) -> Response:
        """One job's progress, per-instance failures (with the PACS's status) and transcodings."""
        job_id = job_id_param(request.path_params["job_id"])
        if job_id is None:
            return JSONResponse({"error": f"there is no restore job {request.path_params['job_id'][:40]!r}"},
                                status_code=404)
        wait = request.query_params.get("wait")
        if wait is not None and restores is not None:
            seconds = seconds_param(wait)
            if seconds is None:
                return JSONResponse({"error": f"wait={wait[:40]!r}: give seconds (0-{MAX_WAIT_SECONDS:.0f}), "
                                              "e.g. wait=2.5"}, status_code=400)
            await run_in_threadpool(restores.wait, job_id, min(seconds, MAX_WAIT_SECONDS))
        try:
            body = await run_in_threadpool(job_report, archive, job_id)
        except RestoreError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse(body)

    async def stop_restore(request: Request) -> Response:
        job_id = job_id_param(request.path_params["job_id"])
        if job_id is None or restores is None or not restores.stop(job_id):
            return JSONResponse({"error": f"no restore job {request.path_params['job_id'][:40]!r} is running in this server"},
                                status_code=404)
        await audit(request, request.scope["dicomvault.api_actor"], "restore", "stop requested", {"job": job_id})
        return JSONResponse({"stopping": job_id}, status_code=202)

    async def drills(_: Request) -> Response:
        """Restore drills: per site the last and the last successful one, alerts, recent runs."""
        from dicomvault.jobs.drill.runs import drill_status, recent_runs

        def gather() -> dict:
            return {**drill_status(archive.catalog, archive.settings), "runs": recent_runs(archive.catalog)}

        return JSONResponse(await run_in_threadpool(gather))

    async def json_body(request: Request) -> dict:
        try:
            body = await request.json()
        except ValueError:
            body = None
        return body if isinstance(body, dict) else {}

    async def list_holds(request: Request) -> Response:
        """Legal holds, in force and released (``?active=1``: in force only)."""
        from dicomvault.jobs.retention.holds import list_holds as holds_of

        active = request.query_params.get("active", "") in ("1", "true", "yes")
        return JSONResponse({"holds": await run_in_threadpool(holds_of, archive.catalog, active)})

    async def hold_action(request: Request, action: str, act) -> Response:  # type: ignore[no-untyped-def]
        """Run a hold change; a refused one is audited and answered 400 (404: no such hold)."""
        from dicomvault.jobs.retention.holds import HoldError

        actor = request.scope["dicomvault.api_actor"]
        body = await json_body(request)
        try:
            hold = await run_in_threadpool(act, body, actor)
        except HoldError as exc:
            await audit(request, actor, action, "refused", {"error": str(exc)})
            return JSONResponse({"error": str(exc)}, status_code=404 if "no legal hold" in str(exc) else 400)
        return JSONResponse(hold, status_code=201 if request.url.path == "/api/holds" else 200)

    async def add_hold(request: Request) -> Response:
        """Place a hold: {"study": UID} or {"patient": ID}, with "reason"."""
        from dicomvault.jobs.retention.holds import place_hold

        return await hold_action(request, "hold", lambda body, actor: place_hold(
            archive.catalog, study=body.get("study"), patient=body.get("patient"), reason=body.get("reason"),
            actor=actor))

    async def release_hold(request: Request) -> Response:
        """Release a hold: {"reason": TEXT}."""
        from dicomvault.jobs.retention.holds import release

        return await hold_action(request, "hold-release", lambda body, actor: release(
            archive.catalog, request.path_params["hold_id"], reason=body.get("reason"), actor=actor))

    async def list_deletions(request: Request) -> Response:
        """Deletion records, oldest first (``?uids=1``: with their SOP Instance UIDs)."""
        from dicomvault.jobs.retention.delete import list_records

        uids = request.query_params.get("uids", "") in ("1", "true", "yes")
        return JSONResponse({"deletions": await run_in_threadpool(list_records, archive.catalog, None, uids)})

    async def delete_study(request: Request) -> Response:
        """Delete a study everywhere: {"study": UID, "reason": TEXT} (admin), as `dicomvault delete --yes`."""
        from dicomvault.jobs.retention.delete import DeletionError, delete_study as delete

        actor = request.scope["dicomvault.api_actor"]
        body = await json_body(request)
        try:
            record = await run_in_threadpool(lambda: delete(archive, body.get("study"), why="request",
                                                            reason=body.get("reason"), actor=actor))
        except DeletionError as exc:
            held = "legal hold" in str(exc)
            if not held:  # the engine audited the refusal of a held study itself
                await audit(request, actor, "delete", "refused", {"error": str(exc)})
            code = 409 if held else 404 if str(exc).startswith("no study") else 400
            return JSONResponse({"error": str(exc)}, status_code=code)
        return JSONResponse(record, status_code=201)

    async def capacity(_: Request) -> Response:
        """Bytes per modality, growth, per-site space and forecast (jobs/capacity.py)."""
        from dicomvault.jobs.capacity import capacity_report

        return JSONResponse(await run_in_threadpool(capacity_report, archive.catalog, archive.settings))

    async def ingest_history(request: Request) -> Response:
        """``?range=24h|30d``: what arrived per hour or per day, zeros where nothing did."""
        from dicomvault.jobs.capacity import RangeError, ingest_history as history

        try:
            body = await run_in_threadpool(history, archive.catalog, request.query_params.get("range", "24h"))
        except RangeError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(body)

    async def rto(_: Request) -> Response:
        """How long restoring the last 24 h into the PACS would take, at the measured rate."""
        from dicomvault.jobs.capacity import rto_estimate

        return JSONResponse(await run_in_threadpool(rto_estimate, archive.catalog))

    async def list_alerts(request: Request) -> Response:
        """Open alerts (``?all=1``: resolved ones too), oldest first (jobs/alerts/engine.py)."""
        from dicomvault.catalog.alerts import list_alerts as alerts_of
        from dicomvault.jobs.alerts.engine import public

        every = request.query_params.get("all", "") in ("1", "true", "yes")
        alerts = await run_in_threadpool(alerts_of, archive.catalog, every)
        return JSONResponse({"alerts": [public(a) for a in alerts]})

    async def ack_alert(request: Request) -> Response:
        """Acknowledge an open alert ({"note": TEXT} optional): no more reminders."""
        from dicomvault.jobs.alerts.engine import AlertError, acknowledge, public

        actor = request.scope["dicomvault.api_actor"]
        alert_id = job_id_param(request.path_params["alert_id"])
        if alert_id is None:
            return JSONResponse({"error": f"there is no alert {request.path_params['alert_id'][:40]!r}"},
                                status_code=404)
        note = (await json_body(request)).get("note") or ""
        if not isinstance(note, str):
            return JSONResponse({"error": "note must be text"}, status_code=400)
        try:
            alert = await run_in_threadpool(acknowledge, archive.catalog, alert_id, actor, note)
        except AlertError as exc:
            await audit(request, actor, "alert-ack", "refused", {"error": str(exc)})
            return JSONResponse({"error": str(exc)}, status_code=404 if "no alert" in str(exc) else 409)
        return JSONResponse(public(alert))

    return [Route("/api/status", guarded(status)),
            Route("/api/capacity", guarded(capacity, OPERATOR)),
            Route("/api/ingest-history", guarded(ingest_history, OPERATOR)),
            Route("/api/rto", guarded(rto, OPERATOR)),
            Route("/api/alerts", guarded(list_alerts, OPERATOR)),
            Route("/api/alerts/{alert_id}/ack", guarded(ack_alert, OPERATOR), methods=["POST"]),
            Route("/api/holds", guarded(list_holds)),
            Route("/api/holds", guarded(add_hold), methods=["POST"]),
            Route("/api/holds/{hold_id}/release", guarded(release_hold), methods=["POST"]), Route("/api/restores", guarded(list_restores)),
            Route("/api/restores", guarded(start_restore), methods=["POST"]),
            Route("/api/restores/{job_id}", guarded(restore_job)),
            Route("/api/restores/{job_id}/stop", guarded(stop_restore), methods=["POST"]),
            Route("/api/drills", guarded(drills)),
            Route("/api/deletions", guarded(list_deletions, OPERATOR)),
            Route("/api/deletions", guarded(delete_study, ADMIN), methods=["POST"])]
