"""The truth in one word: is this archive *protected*, *at risk* or *unprotected*?

A pure function of facts ``archive_status()`` already gathers (serve/status.py), so every rule
can be tested with plain dicts:

- **unprotected**: the copy policy cannot be met for some instance with what is configured:
  fewer sites that keep copies than ``[policy] copies``, fewer off-site ones than
  ``[policy] offsite_copies``. Nothing will fix it by itself; a person must add a site.
- **at risk**: the policy can be met but is not being met or proven now: a copy owed for
  longer than ``[policy] rpo``, copies dead-lettered, a site unreachable, quarantined or added
  but not started, a scrub or restore drill overdue or switched off, a drill failed, a catalog
  snapshot stale or switched off, the only recovery key still on this host.
- **protected**: none of the above.

Each reason has a stable ``code`` (``kind`` or ``kind:site``, for monitoring and the alert
engine), its severity and one plain sentence saying what is wrong and what to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PROTECTED, AT_RISK, UNPROTECTED = "protected", "at risk", "unprotected"
STATES = (PROTECTED, AT_RISK, UNPROTECTED)
EXIT_CODES = {PROTECTED: 0, AT_RISK: 1, UNPROTECTED: 2}


def _ago(seconds: float) -> str:
    for below, size, unit in ((90, 1, "s"), (90 * 60, 60, "min"), (48 * 3600, 3600, "h")):
        if seconds < below:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds / 86400:.0f} d"


def assess(report: Mapping[str, Any], *, counted_sites: Mapping[str, bool], rpo_seconds: float,
           rpo: str, recovery_key_on_host: str | None) -> dict[str, Any]:
    """The ``protection`` field: ``{"state", "reasons": [{"code", "severity", "text"}]}``.

    ``report`` is the status dict (counts, policy, sites, scrub, drills, snapshots);
    ``counted_sites`` the sites whose copies count (name -> off-site, archive/copies.py);
    ``recovery_key_on_host`` the path of a recovery private key found in the data directory."""
    reasons: list[dict[str, str]] = []

    def reason(code: str, severity: str, text: str) -> None:
        reasons.append({"code": code, "severity": severity, "text": text})

    instances = int(report.get("counts", {}).get("instances", 0) or 0)
    policy = report.get("policy", {})
    wanted, wanted_offsite = int(policy.get("copies", 1)), int(policy.get("offsite_copies", 0))
    held = f"every image ({instances}) has" if instances else "every image will have"
    if len(counted_sites) < wanted:
        reason("policy-unmet:copies", UNPROTECTED,
               f"the policy asks for {wanted} copies but only {len(counted_sites)} site(s) keep one: {held} "
               f"{len(counted_sites)} copy. Add a site: `dicomvault sites add NAME URL`")
    offsite = sum(1 for is_offsite in counted_sites.values() if is_offsite)
    if offsite < wanted_offsite:
        reason("policy-unmet:offsite", UNPROTECTED,
               f"the policy asks for {wanted_offsite} off-site copy(ies) but {offsite} off-site site(s) are "
               f"configured: a fire or flood here loses {'everything' if instances else 'every image'}. Add one: "
               "`dicomvault sites add offsite s3://bucket/prefix` (or a NAS in another building)")

    sites: Mapping[str, Any] = report.get("sites", {})
    primary = sites.get("primary", {})
    if primary and not primary.get("ok", True):
        reason("site-down:primary", AT_RISK, f"the primary site does not answer ({primary.get('error', 'unknown')}): "
                                             "new images cannot be stored; check its disk")
    quarantined = report.get("scrub", {}).get("quarantined", {}) or {}
    for name, entry in sites.items():
        if name == "primary":
            continue
        if entry.get("started") is False:
            reason(f"site-not-started:{name}", AT_RISK,
                   f"site {name} was added after `dicomvault serve` started: nothing is copied to it "
                   f"({entry.get('backlog_objects', 0)} object(s) owed) until you restart serve")
        if not entry.get("reachable", True):
            error = entry.get("site_error") or entry.get("last_error") or "no answer"
            reason(f"site-down:{name}", AT_RISK,
                   f"site {name} is unreachable ({error}): copies to it wait; fix it or its network "
                   f"(`dicomvault sites test {name}`)")
        age = entry.get("oldest_owed_age_seconds")
        if entry.get("backlog_objects") and age is not None and age > rpo_seconds:
            reason(f"backlog-over-rpo:{name}", AT_RISK,
                   f"site {name} is owed {entry['backlog_objects']} copy(ies), the oldest for {_ago(age)} "
                   f"(RPO {rpo}): images newer than that would be lost with this building; see "
                   f"`dicomvault sites status`")
        if entry.get("dead_letters"):
            reason(f"dead-letters:{name}", AT_RISK,
                   f"site {name}: {entry['dead_letters']} copy(ies) gave up after repeated failures; fix the "
                   f"cause, then `dicomvault sites retry {name}`")
    for name in quarantined:
        reason(f"site-quarantined:{name}", AT_RISK,
               f"site {name} is quarantined (damaged copies found): its copies are not trusted until you "
               f"investigate and run `dicomvault sites clear {name}`")

    scrub = report.get("scrub", {})
    if scrub and not scrub.get("enabled", True):
        reason("scrub-disabled", AT_RISK, "[scrub] enabled = false: nobody proves the copies are still readable; "
                                          "turn it on or run `dicomvault verify` on a schedule")
    for name, entry in (scrub.get("sites") or {}).items():
        if entry.get("overdue"):
            reason(f"scrub-overdue:{name}", AT_RISK,
                   f"site {name}: {entry['overdue']} copy(ies) not proven readable within [scrub] period "
                   f"{scrub.get('period')}: is `dicomvault serve` running? By hand: `dicomvault verify --site {name}`")

    drills = report.get("drills", {})
    if drills and not drills.get("enabled", True):
        reason("drill-disabled", AT_RISK, "[drill] enabled = false: no restore is ever rehearsed; turn it on or "
                                          "run `dicomvault drill` on a schedule")
    for name, entry in (drills.get("sites") or {}).items():
        last = entry.get("last_run") or {}
        if last.get("state") == "failure":
            reason(f"drill-failed:{name}", AT_RISK,
                   f"the last restore drill from site {name} failed: fix it (`dicomvault verify --site {name}`), "
                   f"then `dicomvault drill --site {name}`")
        elif drills.get("enabled", True) and entry.get("overdue"):
            reason(f"drill-overdue:{name}", AT_RISK,
                   f"no successful restore drill from site {name} within two [drill] periods "
                   f"({drills.get('every')}): is `dicomvault serve` running? By hand: `dicomvault drill --site {name}`")

    snapshots = report.get("snapshots", {})
    if snapshots and not snapshots.get("enabled", True):
        reason("snapshots-disabled", AT_RISK, "[snapshots] enabled = false: a rebuild after losing this host must "
                                              "open every object; turn it on or run `dicomvault snapshot`")
    for name, entry in (snapshots.get("sites") or {}).items():
        if entry.get("stale"):
            reason(f"snapshot-stale:{name}", AT_RISK,
                   f"site {name} holds no recent catalog snapshot (every {snapshots.get('every')}): is "
                   "`dicomvault serve` running? `dicomvault snapshot` takes one now")

    if recovery_key_on_host:
        reason("recovery-key-on-host", AT_RISK,
               f"the recovery private key is still at {recovery_key_on_host} on this host: if this host is lost, "
               "so is the only key that opens the off-site copies. Move it offline (safe, sealed envelope, HSM) "
               "and delete it here")

    state = (UNPROTECTED if any(r["severity"] == UNPROTECTED for r in reasons)
             else AT_RISK if reasons else PROTECTED)
    return {"state": state, "reasons": reasons}


def headline(protection: Mapping[str, Any]) -> str:
    """``PROTECTED`` / ``AT RISK: 2 reasons`` for the first line a person reads."""
    state = str(protection["state"]).upper()
    count = len(protection.get("reasons", []))
    return state if not count else f"{state}: {count} reason{'s' if count != 1 else ''}"
