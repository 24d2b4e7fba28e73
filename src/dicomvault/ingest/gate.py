"""The front door's checkpoint: every DICOM request is decided by ``access.py`` here, and
every refusal is logged and audited (who, from where, what, why) before it is answered.

Both listener engines call ``decide`` before acting, so a refusal never depends on which
engine runs. Refusals are answered with the operation's own status (``NOT_AUTHORIZED``,
PS3.7 0124H) and an Error Comment rather than by refusing the association: one viewer may
legitimately store and be refused a query on the same association.
"""

from __future__ import annotations

import logging
from typing import Any

from dicomvault.access import NOT_AUTHORIZED, AccessPolicy, Decision
from dicomvault.audit import AuditEvent, append
from dicomvault.config import Settings

log = logging.getLogger(__name__)

__all__ = ["NOT_AUTHORIZED", "AccessGate"]


class AccessGate:
    def __init__(self, policy: AccessPolicy, catalog: Any, called_ae: str) -> None:
        self.policy = policy
        self.catalog = catalog
        self.called_ae = called_ae

    @classmethod
    def from_settings(cls, settings: Settings, catalog: Any) -> "AccessGate":
        return cls(AccessPolicy(settings.peers, settings.dicom.anonymous), catalog, settings.dicom.ae_title)

    def decide(self, permission: str, calling_ae: str, address: str, tls_subject: str = "") -> Decision:
        """Allowed, or refused with the refusal already logged and audited."""
        decision = self.policy.check(permission, calling_ae, address, tls_subject)
        if not decision.allowed:
            log.warning("DICOM %s by %s@%s refused: %s", permission, calling_ae, address, decision.reason)
            try:
                with self.catalog.write() as conn:
                    append(conn, AuditEvent(actor=f"dicom:{calling_ae}", action="access-denied", subject=permission,
                                            outcome="denied",
                                            detail={"address": address, "called_ae": self.called_ae,
                                                    "tls_subject": tls_subject, "reason": decision.reason}))
            except Exception:  # noqa: BLE001 - the refusal stands even if the audit row cannot be written
                log.exception("ALERT: could not audit a refused DICOM %s by %s@%s", permission, calling_ae, address)
        return decision
