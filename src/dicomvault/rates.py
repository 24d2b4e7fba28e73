"""Bandwidth rates as written in dicomvault.toml (``"20MB/s"``, ``"unlimited"``, ``"paused"``).

A value type below ``config``, so settings are checked when they are loaded while the
token bucket that spends them (``replicate/throttle.py``) stays above.
"""

from __future__ import annotations

import re


class ThrottleConfigError(ValueError):
    """A rate or a schedule window in the configuration cannot be understood."""


# --- rates ----------------------------------------------------------------------------------

_RATE_EXPECTED = 'expected e.g. "20MB/s" or "unlimited"'
_RATE_RE = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<prefix>[kKMGT]i?)?B/s")
_PREFIXES: dict[str | None, int] = {
    None: 1,
    "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "ki": 2**10, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}
_BITS_RE = re.compile(r".*(?:b/s|bps|bit/s)", re.IGNORECASE)


def parse_rate(text: str) -> float | None:
    """Bytes per second from ``"20MB/s"``, ``"500 KB/s"``, ``"1.5 MiB/s"``; None for ``"unlimited"``.

    MB is 10^6 bytes and MiB 2^20, as on every network-equipment datasheet. ``"paused"`` (or
    a zero rate) means nothing is sent, which is how a schedule keeps replication off the
    link during, say, a nightly PACS backup. Only a capital B (bytes) is accepted: a silently
    misread "100Mb/s" (bits) would be off by a factor of eight.
    """
    if not isinstance(text, str):
        raise ThrottleConfigError(f"bad rate {text!r}: {_RATE_EXPECTED}")
    stripped = text.strip()
    keyword = stripped.lower()
    if keyword == "unlimited":
        return None
    if keyword == "paused":
        return 0.0
    match = _RATE_RE.fullmatch(stripped)
    if match is None:
        hint = " (rates are bytes per second, written with a capital B)" if _BITS_RE.fullmatch(stripped) else ""
        raise ThrottleConfigError(f"bad rate {text!r}: {_RATE_EXPECTED}{hint}")
    return float(match["number"]) * _PREFIXES[match["prefix"]]
