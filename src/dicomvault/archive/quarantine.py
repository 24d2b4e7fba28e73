"""Quarantine: a site that suddenly shows many damaged or missing copies (what ransomware
encrypting a NAS, or someone emptying a bucket, looks like) is taken out of service.

While quarantined, a site is not a source for repairs or reads (``Repository`` fallbacks)
and is not repaired either: rewriting thousands of objects onto a share an attacker may
still control would only feed it. The operator investigates, then clears the quarantine
(``dicomvault sites clear NAME``); the next verification repairs the site. Every step is
audited and ``status`` alerts while a quarantine is in force.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from dicomvault.audit import AuditEvent, append
from dicomvault.catalog import quarantine as q

if TYPE_CHECKING:
    from dicomvault.catalog import Catalog

# The signature: at least this many bad copies, and at least this share of those checked.
MIN_BAD = 5
MIN_SHARE = 0.10


def looks_like_mass_damage(checked: int, bad: int) -> bool:
    return bad >= MIN_BAD and checked > 0 and bad / checked >= MIN_SHARE


def active(catalog: "Catalog") -> dict[str, dict[str, Any]]:
    """Sites in quarantine now: name -> {since, reason}."""
    with catalog.read() as conn:
        rows = q.active_quarantines(conn)
    return {row.site: {"since": row.since, "reason": row.reason} for row in rows}


REPAIR_GRACE = 24 * 3600.0  # after an operator clears a site, mass repairs onto it are expected


def recently_cleared(catalog: "Catalog", site: str, now: float | None = None) -> bool:
    """Whether an operator cleared this site's quarantine within ``REPAIR_GRACE``: it is still
    full of bad copies, and the verification that repairs them must not quarantine it again."""
    now = time.time() if now is None else now
    with catalog.read() as conn:
        cleared = q.last_cleared_at(conn, site)
    return cleared is not None and now - cleared < REPAIR_GRACE


def quarantine(catalog: "Catalog", site: str, reason: str, actor: str) -> None:
    if site in active(catalog):
        return
    with catalog.write() as conn:
        q.add_quarantine(conn, site, time.time(), reason)
        append(conn, AuditEvent(actor=actor, action="quarantine", subject=site, outcome="quarantined",
                                detail={"reason": reason}))


def clear(catalog: "Catalog", site: str, actor: str) -> bool:
    """End a quarantine; False when the site was not quarantined."""
    with catalog.write() as conn:
        count = q.clear_quarantine(conn, site, time.time(), actor)
        if count:
            append(conn, AuditEvent(actor=actor, action="quarantine", subject=site, outcome="cleared", detail={}))
    return bool(count)


def alerts(quarantined: dict[str, dict[str, Any]]) -> list[str]:
    """Status alerts for the quarantines ``active`` returned."""
    return [f"site {site} is QUARANTINED since {time.strftime('%Y-%m-%d %H:%M', time.localtime(info['since']))}: "
            f"{info['reason']}; it is not used for repairs, reads or restores until you investigate and run "
            f"`dicomvault sites clear {site}`" for site, info in quarantined.items()]
