"""The operations API under ``/api``: status, restore jobs and drills, for dashboards and scripts.

Restore reports list patients' instances (UIDs, the PACS's refusals) and a job's selection
may hold a Patient ID, so every request must carry a bearer token from ``[http]
api_tokens_file``; a missing or unreadable file refuses everything rather than opening up.
Reads are audited under the token's name, at most once a minute per name, address and path
(a dashboard polls), and refused tokens at most once a minute per address.
"""

from __future__ import annotations

import logging
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dicomvault.archive import Archive
from dicomvault.audit import AuditEvent
from dicomvault.jobs.restore_plan import RestoreError, job_report, recent_jobs, status_lock_dir

from .dicomweb_common import append_audit, client_address
from .status import archive_status
from .tokens import AuditThrottle, TokenFile

log = logging.getLogger(__name__)

REALM = "dicomvault-api"


def api_routes(archive: Archive) -> list[Route]:
    tokens = TokenFile(Path(archive.settings.http.api_tokens_file), label="operations API",
                       missing_hint="`dicomvault init --dir DIR --force` writes one (config rewritten, keys kept), "
                                    "or write name:token lines (tokens of 16+ characters) and chmod 600 it")
    denials, reads = AuditThrottle(), AuditThrottle()

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
        if reads.due((name, address, request.url.path)):
            await audit(request, f"api:{name}@{address}", "read", "success", {"resource": request.url.path})
        return None

    def guarded(handler):  # type: ignore[no-untyped-def]
        async def run(request: Request) -> Response:
            denied = await authorise(request)
            return denied if denied is not None else await handler(request)

        return run

    async def status(_: Request) -> Response:
        return JSONResponse(await run_in_threadpool(archive_status, archive))

    async def restores(_: Request) -> Response:
        """Restore and network-export jobs: unfinished ones and those of the last 7 days."""
        jobs = await run_in_threadpool(recent_jobs, archive.catalog, lock_dir=status_lock_dir(archive.settings))
        return JSONResponse({"jobs": jobs})

    async def restore_job(request: Request) -> Response:
        """One job's progress, per-instance failures (with the PACS's status) and transcodings."""
        try:
            job_id = int(request.path_params["job_id"])
            body = await run_in_threadpool(job_report, archive, job_id)
        except (ValueError, RestoreError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse(body)

    async def drills(_: Request) -> Response:
        """Restore drills: per site the last and the last successful one, alerts, recent runs."""
        from dicomvault.jobs.drill_runs import drill_status, recent_runs

        def gather() -> dict:
            return {**drill_status(archive), "runs": recent_runs(archive.catalog)}

        return JSONResponse(await run_in_threadpool(gather))

    return [Route("/api/status", guarded(status)), Route("/api/restores", guarded(restores)),
            Route("/api/restores/{job_id}", guarded(restore_job)), Route("/api/drills", guarded(drills))]
