"""The operations API from this host's command line: hand a restore to the running server.

A restore of a whole archive takes hours; run from a terminal it dies with the operator's
SSH session. ``dicomvault restore --in-server`` gives the job to ``serve`` instead
(``POST /api/restores``) and only follows it, so losing the terminal loses nothing. The
CLI runs as the archive's owner, so it reads an operator's token from ``[http]
api_tokens_file`` itself; nothing has to be typed or exported.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

FOLLOW_SECONDS = 2.0  # each progress request waits this long for the job to end
# The server answers once the job is created, before its items are written; ordering the
# studies of a whole vault is one grouped query, ~1.2 s per million instances.
START_TIMEOUT = 300.0


class ServerError(Exception):
    """The server could not be reached or refused the request; the message says why."""


class ServerClient:
    def __init__(self, base_url: str, token: str, context: ssl.SSLContext | None = None) -> None:
        self.base_url = base_url
        self.token = token
        self.context = context

    @classmethod
    def for_settings(cls, settings: Any) -> "ServerClient":
        http = settings.http
        if not http.enabled:
            raise ServerError("[http] enabled = false: this archive's server has no API to hand the job to")
        host = "127.0.0.1" if http.bind in ("0.0.0.0", "", "::") else http.bind
        context = None
        if http.tls_cert_file:
            # Our own certificate, often self-signed and issued for a host name, not loopback.
            context = ssl.create_default_context(cafile=http.tls_cert_file)
            context.check_hostname = False
        scheme = "https" if context else "http"
        return cls(f"{scheme}://{host}:{http.port}", operator_token(http.api_tokens_file, http.api_operators), context)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 30) -> dict[str, Any]:
        request = urllib.request.Request(
            self.base_url + path, method=method, data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self.context) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as refused:
            try:
                reason = json.loads(refused.read()).get("error") or refused.reason
            except ValueError:
                reason = refused.reason
            raise ServerError(f"the server refused {method} {path} ({refused.code}): {reason}") from refused
        except (urllib.error.URLError, OSError) as exc:
            cause = getattr(exc, "reason", exc)
            raise ServerError(f"no dicomvault server answers at {self.base_url} ({cause}); start `dicomvault serve` "
                              "or run the restore without --in-server") from exc

    def run_restore(self, body: dict[str, Any], progress: Callable[[], Any]) -> dict[str, Any]:
        """Start the job, follow it to its end with a bar, return its report."""
        job = self.call("POST", "/api/restores", body, timeout=START_TIMEOUT)
        done = lambda report: report["sent"] + report["failed"]  # noqa: E731
        with progress() as bar:
            task = bar.add_task(f"job {job['id']} to {job['peer']} (in the server)", total=job["total"],
                                completed=done(job))
            report = job
            while report["state"] in ("planning", "running"):
                report = self.call("GET", f"/api/restores/{job['id']}?wait={FOLLOW_SECONDS}",
                                   timeout=FOLLOW_SECONDS + 30)
                bar.update(task, completed=done(report))
        return report


def operator_token(path: str, operators: tuple[str, ...]) -> str:
    """The token of the first line granting the operator role (admin does; so does a line
    without roles whose name is in ``[http] api_operators``)."""
    from pathlib import Path

    from dicomvault.serve.access import legacy_api_roles
    from dicomvault.serve.tokens import OPERATOR, token_with_role

    try:
        token = token_with_role(Path(path), OPERATOR, lambda name: legacy_api_roles(name, frozenset(operators)))
    except (OSError, UnicodeDecodeError) as exc:
        raise ServerError(f"cannot read the API tokens file {path}: {exc}") from exc
    if token is None:
        raise ServerError(f"no token in {path} has the operator or admin role (or, without roles, a name in "
                          f"[http] api_operators: {', '.join(operators)})")
    return token
