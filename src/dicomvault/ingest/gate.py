"""The front door's checkpoint: every DICOM request is decided by ``access.py`` here, and
every refusal is logged and audited (who, from where, what, why) before it is answered.

Both listener engines call ``decide`` before acting, so a refusal never depends on which
engine runs. Refusals are answered with the operation's own status (``NOT_AUTHORIZED``,
PS3.7 0124H) and an Error Comment rather than by refusing the association: one viewer may
legitimately store and be refused a query on the same association. A refusal is logged every
time and audited at most once a minute per caller, address and permission (``AuditThrottle``,
as on the HTTP side), so a scanner probing the port cannot flood the audit log.
"""

from __future__ import annotations

import logging
from typing import Any

from dicomvault.access import NOT_AUTHORIZED, AccessPolicy, Decision, exposure
from dicomvault.audit import AuditEvent, append
from dicomvault.audit.throttle import AuditThrottle
from dicomvault.catalog import audit_log
from dicomvault.config import Settings

log = logging.getLogger(__name__)

__all__ = ["NOT_AUTHORIZED", "AccessGate", "access_status"]


class AccessGate:
    def __init__(self, policy: AccessPolicy, catalog: Any, called_ae: str) -> None:
        self.policy = policy
        self.catalog = catalog
        self.called_ae = called_ae
        self._throttle = AuditThrottle()

    @classmethod
    def from_settings(cls, settings: Settings, catalog: Any) -> "AccessGate":
        return cls(AccessPolicy(settings.peers, settings.dicom.anonymous), catalog, settings.dicom.ae_title)

    def decide(self, permission: str, calling_ae: str, address: str, tls_subject: str = "") -> Decision:
        """Allowed, or refused with the refusal already logged and audited."""
        decision = self.policy.check(permission, calling_ae, address, tls_subject)
        if not decision.allowed:
            log.warning("DICOM %s by %s@%s refused: %s", permission, calling_ae, address, decision.reason)
            self._audit(permission, calling_ae, address, decision.reason, tls_subject=tls_subject)
        return decision

    def connection_refused(self, kind: str, address: str, calling_ae: str, reason: str) -> None:
        """The listener's ``on_refusal``: a failed TLS handshake or an AE outside the
        allow-list, refused before any operation (already logged by the listener)."""
        self._audit(kind, calling_ae, address, reason)

    def _audit(self, subject: str, calling_ae: str, address: str, reason: str, **detail: str) -> None:
        if not self._throttle.due((subject, calling_ae, address)):
            return
        try:
            with self.catalog.write() as conn:
                append(conn, AuditEvent(actor=f"dicom:{calling_ae}" if calling_ae else f"tls:{address}",
                                        action="access-denied", subject=subject, outcome="denied",
                                        detail={"address": address, "called_ae": self.called_ae, "reason": reason,
                                                **detail}))
        except Exception:  # noqa: BLE001 - the refusal stands even if the audit row cannot be written
            log.exception("ALERT: could not audit a refused DICOM %s by %s@%s", subject, calling_ae, address)


def access_status(settings: Settings, catalog: Any, now: float) -> dict[str, Any]:
    """The DICOM access posture for ``status``: who may do what, risky settings (alerts), and
    how many requests were refused in the last 24 hours (someone probing, or a peer to add)."""
    with catalog.read() as conn:
        denied = audit_log.count_since(conn, "access-denied", now - 86400)
    return {
        "anonymous": sorted(settings.dicom.anonymous),
        "peers": {peer.name: {"ae_title": peer.ae_title, "permissions": sorted(peer.permissions),
                              "check_host": peer.check_host, "tls_subject": peer.tls_subject}
                  for peer in settings.peers},
        "denied_last_24h": denied,
        "alerts": exposure(settings.peers, settings.dicom.anonymous),
    }
