"""The operations API under ``/api``: status, restore jobs and drills, for dashboards and scripts.

``POST /api/restores`` starts (or resumes) a restore inside ``serve`` (jobs/restore/service.py);
``GET /api/restores/{id}?wait=S`` answers when the job ends or after S seconds (at most 60), so
a script need not poll, whether serve or a ``dicomvault restore`` in a terminal runs the job;
``POST /api/restores/{id}/stop`` stops one, resumable.

Restore reports list patients' instances (UIDs, the PACS's refusals) and a job's selection
may hold a Patient ID, so every request must carry a bearer token from ``[http]
api_tokens_file``; a missing or unreadable file refuses everything rather than opening up.
Reads are audited under the token's name, at most once a minute per name, address and path
(a dashboard polls), and refused tokens at most once a minute per address. Only the token
names in ``[http] api_operators`` (default: init's ``admin``) may act (POST); the others read.
"""

from __future__ import annotations

from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dicomvault.archive.core import Archive
from dicomvault.audit import AuditEvent
from dicomvault.jobs.restore.plan import RestoreError, job_report, recent_jobs, status_lock_dir
from dicomvault.jobs.restore.service import Conflict, RequestError, RestoreService

from dicomvault.serve.dicomweb.common import append_audit, client_address
from dicomvault.serve.status import archive_status
from dicomvault.serve.tokens import AuditThrottle, TokenFile

REALM = "dicomvault-api"
MAX_WAIT_SECONDS = 60.0


def api_routes(archive: Archive, restores: RestoreService | None = None) -> list[Route]:
    tokens = TokenFile(Path(archive.settings.http.api_tokens_file), label="operations API",
                       missing_hint="`dicomvault init --dir DIR --force` writes one (config rewritten, keys kept), "
                                    "or write name:token lines (tokens of 16+ characters) and chmod 600 it")
    denials, reads = AuditThrottle(), AuditThrottle()
    operators = frozenset(archive.settings.http.api_operators)

    async def audit(request: Request, actor: str, action: str, outcome: str, detail: dict) -> None:
        event = AuditEvent(actor=actor, action=action, subject=request.url.path, outcome=outcome, detail=detail)
        await run_in_threadpool(append_audit, archive.catalog, event)

    async def authorise(request: Request) -> Response | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        name = tokens.identify(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        address = client_address(request)
        if tokens.problem:
            return JSONResponse({"error": f"the operations API refuses every request: {tokens.problem}"},
                                status_code=503)
        if name is None:
            if denials.due(address):
                await audit(request, f"api:{address}", "login", "failure", {"error": "missing or unknown bearer token"})
            return JSONResponse({"error": "a valid bearer token is required (Authorization: Bearer <token>); "
                                          "tokens are in the file [http] api_tokens_file names"},
                                status_code=401, headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'})
        actor = f"api:{name}@{address}"
        request.scope["dicomvault.api_actor"] = actor
        if request.method != "GET" and name not in operators:
            await audit(request, actor, "api", "forbidden", {"method": request.method})
            return JSONResponse({"error": f"token {name!r} may read but not act; [http] api_operators names the "
                                          "tokens that may start or stop restores"}, status_code=403)
        if request.method == "GET" and reads.due((name, address, request.url.path)):
            await audit(request, actor, "read", "success", {"resource": request.url.path})
        return None

    def guarded(handler):  # type: ignore[no-untyped-def]
        async def run(request: Request) -> Response:
            denied = await authorise(request)
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

    def _job_id(request: Request) -> int | None:
        try:
            return int(request.path_params["job_id"])
        except ValueError:
            return None

    async def restore_job(request: Request) -> Response:
        """One job's progress, per-instance failures (with the PACS's status) and transcodings."""
        job_id = _job_id(request)
        if job_id is None:
            return JSONResponse({"error": "a job id is a number"}, status_code=404)
        wait = request.query_params.get("wait")
        if wait is not None and restores is not None:
            try:
                seconds = float(wait)
            except ValueError:
                return JSONResponse({"error": f"wait={wait!r}: give seconds, at most {MAX_WAIT_SECONDS:.0f}"},
                                    status_code=400)
            await run_in_threadpool(restores.wait, job_id, max(0.0, min(seconds, MAX_WAIT_SECONDS)))
        try:
            body = await run_in_threadpool(job_report, archive, job_id)
        except RestoreError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse(body)

    async def stop_restore(request: Request) -> Response:
        job_id = _job_id(request)
        if job_id is None or restores is None or not restores.stop(job_id):
            return JSONResponse({"error": f"no restore job {request.path_params['job_id']} is running in this server"},
                                status_code=404)
        await audit(request, request.scope["dicomvault.api_actor"], "restore", "stop requested", {"job": job_id})
        return JSONResponse({"stopping": job_id}, status_code=202)

    async def drills(_: Request) -> Response:
        """Restore drills: per site the last and the last successful one, alerts, recent runs."""
        from dicomvault.jobs.drill.runs import drill_status, recent_runs

        def gather() -> dict:
            return {**drill_status(archive.catalog, archive.settings), "runs": recent_runs(archive.catalog)}

        return JSONResponse(await run_in_threadpool(gather))

    return [Route("/api/status", guarded(status)), Route("/api/restores", guarded(list_restores)),
            Route("/api/restores", guarded(start_restore), methods=["POST"]),
            Route("/api/restores/{job_id}", guarded(restore_job)),
            Route("/api/restores/{job_id}/stop", guarded(stop_restore), methods=["POST"]),
            Route("/api/drills", guarded(drills))]
