"""The one access decision for the HTTP front door: who calls, and may they do this?

The operations API and DICOMweb ask the same question of the same kind of tokens file, and
must refuse the same way: 503 while the file is unusable (never open up), 401 without a
valid bearer token, 403 naming the role needed when the token lacks it. Refusals are
audited, at most once a minute per caller and resource (``AuditThrottle``), so a client
retrying in a loop cannot flood the hash-chained log; each route renders the answer in its
own format (JSON for /api, text for DICOMweb).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dicomvault.config import Settings
from dicomvault.audit.throttle import AuditThrottle
from dicomvault.serve.tokens import OPERATOR, READ, Identity, TokenFile


@dataclass(frozen=True)
class Decision:
    """``allowed`` with the caller's ``identity`` (None: anonymous access), or a refusal to render."""

    allowed: bool
    identity: Identity | None = None
    status: int = 200
    reason: str = ""
    needed: str = ""
    audit: bool = False  # write an audit row for this refusal (not throttled away)
    headers: dict[str, str] = field(default_factory=dict)


class Gate:
    def __init__(self, tokens: TokenFile, realm: str, where: str,
                 anonymous_roles: frozenset[str] = frozenset()) -> None:
        self.tokens = tokens
        self.realm = realm
        self.where = where  # the setting that names the file, for the 401 reason
        self.anonymous_roles = anonymous_roles
        self._unknown, self._forbidden = AuditThrottle(), AuditThrottle()

    def decide(self, authorization: str, needed: str, address: str, resource: str) -> Decision:
        if not authorization and needed in self.anonymous_roles:
            return Decision(True)  # a trusted network's viewer without tokens (DICOMweb's anonymous_roles)
        identity = self.tokens.bearer(authorization)
        if self.tokens.problem:
            return Decision(False, status=503, reason=self.tokens.problem)
        if identity is None:
            return Decision(False, status=401, audit=self._unknown.due(address),
                            reason=f"a valid bearer token is required (Authorization: Bearer <token>); tokens are "
                                   f"in the file {self.where} names",
                            headers={"WWW-Authenticate": f'Bearer realm="{self.realm}"'})
        if not identity.may(needed):
            return Decision(False, identity, status=403, needed=needed,
                            audit=self._forbidden.due((identity.name, address, resource)),
                            reason=f"token {identity.name!r} has the role(s) {identity.describe()}; this request "
                                   f"needs {needed!r} (or admin): add it to the token's line in {self.where}")
        return Decision(True, identity)


def api_tokens(settings: Settings, label: str = "operations API") -> TokenFile:
    """``[http] api_tokens_file``: the one tokens file of the API (and of DICOMweb by default)."""
    operators = frozenset(settings.http.api_operators)
    return TokenFile(Path(settings.http.api_tokens_file), label=label,
                     missing_hint="`dicomvault init --dir DIR --force` writes one (config rewritten, keys kept), "
                                  "or write name:token:roles lines (tokens of 16+ characters) and chmod 600 it",
                     default_roles=lambda name: legacy_api_roles(name, operators))


def legacy_api_roles(name: str, operators: frozenset[str]) -> tuple[str, ...]:
    """What a ``name:token`` line without roles meant in the API file: read, and act for an operator."""
    return (READ, OPERATOR) if name in operators else (READ,)
