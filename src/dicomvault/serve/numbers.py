"""Numbers from URLs and query strings, checked before they reach the catalog.

``int()`` takes Unicode digits (``"٣"``, ``"²"`` passes ``isdigit`` and then fails) and
numbers of any size, which the database then refuses with an exception (a 500). Every route
that reads a number from a request goes through here instead: ASCII digits only, within a
stated range, else None for the route to answer 400 (a query value) or 404 (an id in a path).
"""

from __future__ import annotations

import math
import re

_DIGITS = re.compile(r"[0-9]{1,19}")
_DECIMAL = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9})?")
INT64_MAX = 2**63 - 1  # the largest id or offset a catalog column (SQLite, PostgreSQL BIGINT) holds


def whole_number(raw: str, minimum: int = 0, maximum: int = INT64_MAX) -> int | None:
    """``raw`` as an int in [minimum, maximum] when it is plain ASCII digits, else None."""
    text = raw.strip()
    if not _DIGITS.fullmatch(text):
        return None
    value = int(text)
    return value if minimum <= value <= maximum else None


def job_id_param(raw: str) -> int | None:
    """A job id from a path: a positive whole number a catalog row can have, else None (404)."""
    return whole_number(raw, minimum=1)


def seconds_param(raw: str) -> float | None:
    """A duration in seconds (``2``, ``0.5``): finite and non-negative, else None."""
    text = raw.strip()
    if not _DECIMAL.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None
