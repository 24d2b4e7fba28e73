"""The web dashboard on the HTTP port: ``/`` (readiness at a glance), ``/study/{uid}``, ``/login``,
``/logout``; assets under ``/dashboard/static`` ship in the package (no CDN, works offline).

Who may look: a token of ``[http] api_tokens_file`` with the role ``read`` (or above), shown
once in the login form (a session cookie follows, serve/dashboard/session.py) or on every
request as ``Authorization: Bearer``; acknowledging an alert needs ``operator``. Without
either, a page redirects to /login and shows nothing. Failed logins are audited (``login``
``failure``, at most once a minute per address, as the API does); a login, a logout and every
study page read (a PHI read: ``read`` with the study's UID) are audited under
``dashboard:NAME@ADDRESS``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dicomvault.archive.core import Archive
from dicomvault.audit import AuditEvent
from dicomvault.audit.throttle import AuditThrottle
from dicomvault.catalog import dashboard as q
from dicomvault.serve.access import api_tokens
from dicomvault.serve.dashboard import pages, sources
from dicomvault.serve.dashboard.figures import Figures
from dicomvault.serve.dashboard.session import COOKIE, LOGIN_COOKIE, Session, Sessions, load_key
from dicomvault.serve.dicomweb.common import append_audit, client_address
from dicomvault.serve.status import archive_status
from dicomvault.serve.tokens import OPERATOR, READ, Identity, token_digest

STATIC = Path(__file__).parent / "static"
UID = re.compile(r"[0-9]+(\.[0-9]+)*")
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
           "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
           "X-Content-Type-Options": "nosniff"}
MAX_FORM = 8192


def html(body: str, status: int = 200, **extra: str) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={**HEADERS, **extra})


def dashboard_routes(archive: Archive) -> list[Route | Mount]:
    tokens = api_tokens(archive.settings, label="dashboard")
    sessions = Sessions(load_key(Path(archive.settings.http.api_tokens_file).parent / "dashboard-session.key"))
    failed = AuditThrottle()

    async def audit(request: Request, actor: str, action: str, subject: str, outcome: str, detail: dict) -> None:
        event = AuditEvent(actor=actor, action=action, subject=subject, outcome=outcome,
                           detail={"resource": request.url.path, **detail})
        await run_in_threadpool(append_audit, archive.catalog, event)

    def who(request: Request) -> tuple[Identity | None, Session | None]:
        """The caller: a bearer token, else the session cookie's (its token re-checked now)."""
        header = request.headers.get("authorization", "")
        if header:
            return tokens.bearer(header), None
        session = sessions.find(request.cookies.get(COOKIE, ""))
        if session is None:
            return None, None
        identity = tokens.by_digest(session.token_digest)
        if identity is None:  # the token's line was removed: the session ends with it
            sessions.close(session.sid)
        return identity, session if identity is not None else None

    async def viewer(request: Request, needed: str = READ) -> tuple[Identity, Session | None] | Response:
        identity, session = who(request)
        if identity is None:
            if request.headers.get("authorization"):
                if failed.due(client_address(request)):
                    await audit(request, f"dashboard:{client_address(request)}", "login", "", "failure",
                                {"error": "unknown bearer token"})
                return Response("a valid bearer token or a session is required\n", status_code=401, headers=HEADERS)
            return RedirectResponse("/login", status_code=303, headers=HEADERS)
        if not identity.may(needed):
            return html(pages.page("Not allowed", f"<p class=\"error\">Token {pages.e(identity.name)} has the role(s) "
                                   f"{pages.e(identity.describe())}; this needs {pages.e(needed)} (or admin).</p>",
                                   identity.name, session.csrf if session else ""), 403)
        return identity, session

    def actor(request: Request, identity: Identity) -> str:
        return f"dashboard:{identity.name}@{client_address(request)}"

    async def form(request: Request) -> dict[str, str]:
        body = await request.body()
        if len(body) > MAX_FORM:
            return {}
        return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}

    def csrf_ok(session: Session | None, fields: dict[str, str]) -> bool:
        """A POST must carry its session's CSRF token (a bearer caller has no cookie to abuse)."""
        import hmac

        return session is None or hmac.compare_digest(fields.get("csrf", "").encode(), session.csrf.encode())

    def login_form(message: str = "", status: int = 200) -> Response:
        nonce, token = sessions.login_nonce()
        response = html(pages.login_page(token, message), status)
        response.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, httponly=True, samesite="strict", path="/login")
        return response

    async def login(request: Request) -> Response:
        if request.method == "GET":
            return login_form(tokens.problem and f"The dashboard refuses every login: {tokens.problem}" or "")
        fields = await form(request)
        address = client_address(request)
        if not sessions.login_form_ok(request.cookies.get(LOGIN_COOKIE, ""), fields.get("csrf", "")):
            return login_form("The form expired; log in again.", 400)
        token = fields.get("token", "").strip()
        identity = tokens.lookup(token) if token else None
        if tokens.problem:
            return login_form(f"The dashboard refuses every login: {tokens.problem}", 503)
        if identity is None or not identity.may(READ):
            if failed.due(address):
                await audit(request, f"dashboard:{address}", "login", "", "failure",
                            {"error": "unknown token" if identity is None else f"token {identity.name} lacks read"})
            message = ("That token is not valid." if identity is None else
                       f"Token {identity.name} has the role(s) {identity.describe()}; the dashboard needs read or above.")
            return login_form(message, 401 if identity is None else 403)
        _, cookie = sessions.open(token_digest(token))
        await audit(request, actor(request, identity), "login", "", "success", {"session": "dashboard"})
        response = RedirectResponse("/", status_code=303, headers=HEADERS)
        response.set_cookie(COOKIE, cookie, max_age=int(sessions.lifetime), httponly=True, samesite="strict",
                            secure=request.url.scheme == "https", path="/")
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def logout(request: Request) -> Response:
        found = await viewer(request)
        if isinstance(found, Response):
            return found
        identity, session = found
        if request.method == "GET":
            return html(pages.page("Log out", "<p>Log out of the dashboard?</p>", identity.name,
                                   session.csrf if session else ""))
        if not csrf_ok(session, await form(request)):
            return html(pages.page("Refused", "<p class=\"error\">The form is stale; reload the page.</p>"), 400)
        if session is not None:
            sessions.close(session.sid)
            await audit(request, actor(request, identity), "logout", "", "success", {"session": "dashboard"})
        response = RedirectResponse("/login", status_code=303, headers=HEADERS)
        response.delete_cookie(COOKIE, path="/")
        return response

    def first_screen_data() -> dict[str, Any]:
        status = archive_status(archive)
        history = {r: sources.ingest_history(archive, r) for r in sources.RANGES}
        return {"status": status, "protection": sources.protection(status), "alerts": sources.alerts(archive, status),
                "history": history, "capacity": sources.capacity(archive), "rto": sources.rto(archive)}

    figures = Figures(first_screen_data)

    async def home(request: Request) -> Response:
        found = await viewer(request)
        if isinstance(found, Response):
            return found
        identity, session = found
        fresh = request.query_params.get("fresh", "") in ("1", "true", "yes")
        data, age = await run_in_threadpool(figures.get, fresh)
        csrf = session.csrf if session else ""
        body = pages.first_screen(**data, age=age, may_ack=identity.may(OPERATOR), csrf=csrf)
        return html(pages.page("Readiness", body, identity.name, csrf))

    async def find_study(request: Request) -> Response:
        uid = request.query_params.get("uid", "").strip()
        return RedirectResponse(f"/study/{uid}" if UID.fullmatch(uid) and len(uid) <= 64 else "/", status_code=303)

    async def study(request: Request) -> Response:
        found = await viewer(request)
        if isinstance(found, Response):
            return found
        identity, session = found
        uid = request.path_params["uid"]
        csrf = session.csrf if session else ""
        if not UID.fullmatch(uid) or len(uid) > 64:
            return html(pages.page("Bad request", f"<p class=\"error\">{pages.e(uid[:70])} is not a UID "
                                   "(digits and dots, at most 64 characters).</p>", identity.name, csrf), 400)

        def gather() -> dict[str, Any] | None:
            with archive.catalog.read() as conn:
                summary = q.study_summary(conn, uid)
                if summary is None:
                    return None
                return {"study": summary, "copies": q.study_copies(conn, uid),
                        "holds": q.study_holds(conn, uid, summary["patient_id"]), "keep": q.study_keep_until(conn, uid),
                        "audit": q.study_audit(conn, uid)}

        data = await run_in_threadpool(gather)
        await audit(request, actor(request, identity), "read", uid, "success" if data else "failure",
                    {} if data else {"error": "no such study"})
        if data is None:
            return html(pages.page("Not found", f"<p class=\"error\">No study {pages.e(uid)} in the catalog.</p>",
                                   identity.name, csrf), 404)
        return html(pages.page(f"Study {uid}", pages.study_page(**data, now=time.time()), identity.name, csrf))

    async def acknowledge(request: Request) -> Response:
        found = await viewer(request, OPERATOR)
        if isinstance(found, Response):
            return found
        identity, session = found
        if not csrf_ok(session, await form(request)):
            return html(pages.page("Refused", "<p class=\"error\">The form is stale; reload the page.</p>"), 400)
        try:
            alert_id = int(request.path_params["alert_id"])
            await run_in_threadpool(sources.acknowledge, archive, alert_id, actor(request, identity))
        except (ValueError, sources.NotAvailable) as exc:
            return html(pages.page("Refused", f"<p class=\"error\">{pages.e(exc)}</p>", identity.name,
                                   session.csrf if session else ""), 409)
        return RedirectResponse("/", status_code=303, headers=HEADERS)

    return [Route("/", home), Route("/login", login, methods=["GET", "POST"]),
            Route("/logout", logout, methods=["GET", "POST"]), Route("/study", find_study),
            Route("/study/{uid}", study), Route("/alerts/{alert_id}/ack", acknowledge, methods=["POST"]),
            Mount("/dashboard/static", app=StaticFiles(directory=str(STATIC)), name="dashboard-static")]
