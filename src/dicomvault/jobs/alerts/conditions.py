"""The alert conditions: ONE function, ``alert_conditions(status)``, over what
``archive_status()`` (serve/status.py) reports.

Two sources:

* ``status["protection"]["reasons"]`` (when present): each reason is a condition with its
  ``code`` as the key and its ``severity`` ("at risk" | "unprotected") as given.
* every string in ``status["alerts"]``: severity "at risk", key ``status:`` + a slug of the
  text's headline. The headline is the text up to its first ": ", "; " or " (" that follows
  at least three words (the rest is usually a detail such as an error message, which changes
  from one failure to the next); numbers are
  removed with a unit of up to three letters right after them ("3 min", "2 h", "5 GiB", "4%":
  counts, sizes, ages and row ids change while the condition stays the same),
  letters lowercased and runs of other characters made one "-", e.g. "site nas unreachable:
  [Errno 30] ..." -> ``status:site-nas-unreachable``, "site nas: 3 copies dead-lettered; fix
  ..." -> ``status:site-nas-copies-dead-lettered``, "primary site has only 5 GiB free (4%)" ->
  ``status:primary-site-has-only-free``. A headline longer than 80 characters is cut and
  followed by 8 hex digits of its SHA-256, so two long ones never share a key.

The same key twice (two texts with one headline) is one condition whose texts are joined.

A status line that says what a protection reason already says (``site nas unreachable: ...``
beside ``site-down:nas``) is left out (``_covered``): one outage, one alert.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

AT_RISK, UNPROTECTED = "at risk", "unprotected"
SEVERITIES = (AT_RISK, UNPROTECTED)
MAX_SLUG = 80
_CUT = re.compile(r": |; | \(")
_NUMBER = re.compile(r"[0-9][0-9.,]*\s*(?:[a-z%]{1,3}\b|%)?")


@dataclass(frozen=True)
class Condition:
    key: str
    severity: str
    text: str


def status_key(text: str) -> str:
    """The stable key of one ``status["alerts"]`` string (see the module's docstring)."""
    headline = text
    for cut in _CUT.finditer(text):
        if len(_NUMBER.sub(" ", text[:cut.start()]).split()) >= 3:
            headline = text[:cut.start()]
            break
    slug = re.sub(r"[^a-z]+", "-", _NUMBER.sub(" ", headline.lower())).strip("-") or "alert"
    if len(slug) > MAX_SLUG:
        slug = slug[:MAX_SLUG].rstrip("-") + "-" + hashlib.sha256(slug.encode()).hexdigest()[:8]
    return f"status:{slug}"


# A protection reason's kind -> words of the status lines that report the same thing about
# the reason's site (archive/readiness.py and serve/status.py say it in these words).
_SAME_AS = {"site-down": ("unreachable", "unhealthy"), "dead-letters": ("dead-letter",),
            "snapshot-stale": ("snapshot",), "drill-failed": ("drill",), "drill-overdue": ("drill",),
            "scrub-overdue": ("scrub", "proven", "proof"), "site-quarantined": ("quarantin",)}


def _covered(text: str, codes: list[str]) -> bool:
    """Whether a status line reports what one of these protection reasons already does."""
    lowered = text.lower()
    for code in codes:
        kind, _, site = code.partition(":")
        words = _SAME_AS.get(kind, ())
        if site and re.search(rf"\b{re.escape(site.lower())}\b", lowered) and any(w in lowered for w in words):
            return True
    return False


def alert_conditions(status: dict[str, Any]) -> list[Condition]:
    """Every condition the archive is in now, in a stable order (protection reasons first)."""
    found: dict[str, Condition] = {}

    def add(key: str, severity: str, text: str) -> None:
        if key in found:
            before = found[key]
            worse = UNPROTECTED if UNPROTECTED in (before.severity, severity) else AT_RISK
            found[key] = Condition(key, worse, before.text if text in before.text else f"{before.text}; {text}")
        else:
            found[key] = Condition(key, severity, text)

    protection = status.get("protection")
    codes: list[str] = []
    if isinstance(protection, dict):
        for reason in protection.get("reasons") or []:
            if not isinstance(reason, dict) or not reason.get("code"):
                continue
            severity = reason.get("severity") if reason.get("severity") in SEVERITIES else AT_RISK
            add(str(reason["code"])[:200], str(severity), str(reason.get("text") or reason["code"]))
            codes.append(str(reason["code"]))
    for text in status.get("alerts") or []:
        if not _covered(str(text), codes):
            add(status_key(str(text)), AT_RISK, str(text))
    return list(found.values())


def protection_level(status: dict[str, Any], conditions: list[Condition]) -> int:
    """0 protected, 1 at risk, 2 unprotected: ``status["protection"]["state"]`` when present,
    else the worst condition's severity."""
    protection = status.get("protection")
    if isinstance(protection, dict) and protection.get("state") in ("protected", AT_RISK, UNPROTECTED):
        return ("protected", AT_RISK, UNPROTECTED).index(protection["state"])
    if any(c.severity == UNPROTECTED for c in conditions):
        return 2
    return 1 if conditions else 0
